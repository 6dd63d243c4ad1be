use super::*;

async fn rendered(e: ApiError) -> (StatusCode, serde_json::Value) {
    let response = e.into_response();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
        .await
        .unwrap();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn an_invalid_field_is_422_and_its_detail_starts_with_the_field() {
    let (status, body) =
        rendered(InvalidValue::new("amount", "must be greater than 0").into()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        body,
        serde_json::json!({"error": "invalid_field", "detail": "amount: must be greater than 0"})
    );
}

#[tokio::test]
async fn an_internal_error_does_not_leak_its_cause() {
    let (status, body) =
        rendered(ApiError::Internal(anyhow::anyhow!("secret table exploded"))).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body["error"], "internal");
    assert!(!body.to_string().contains("secret"), "{body}");
}

#[tokio::test]
async fn a_disabled_fault_flag_is_403_naming_the_flag() {
    let (status, body) = rendered(ApiError::FaultInjectionDisabled {
        flag: "kill_payment",
    })
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body["detail"],
        "kill_payment: fault injection is disabled (FAULT_INJECTION=off)"
    );
}

#[tokio::test]
async fn an_overload_is_503_with_retry_after() {
    let response = ApiError::Overloaded {
        detail: "too much".into(),
        retry_after_s: 2,
    }
    .into_response();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "2");
}

#[tokio::test]
async fn a_rate_limited_request_is_429_with_retry_after() {
    let response = ApiError::RateLimited {
        detail: "too fast".into(),
        retry_after_s: 3,
    }
    .into_response();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "3");
    let (_, body) = rendered(ApiError::RateLimited {
        detail: "too fast".into(),
        retry_after_s: 3,
    })
    .await;
    assert_eq!(
        body,
        serde_json::json!({"error": "rate_limited", "detail": "too fast; retry after 3 s"})
    );
}

#[tokio::test]
async fn a_body_timeout_is_408_and_closes_the_connection() {
    let response = ApiError::RequestTimeout("slow".into()).into_response();
    assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
    assert_eq!(response.headers()["connection"], "close");
    let (_, body) = rendered(ApiError::RequestTimeout("slow".into())).await;
    assert_eq!(body["error"], "request_timeout");
}

#[test]
fn an_unreachable_database_is_503_and_a_bad_row_is_500() {
    assert_eq!(
        ApiError::from(sqlx::Error::PoolTimedOut).status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        ApiError::from(sqlx::Error::Decode("bad".into())).status(),
        StatusCode::INTERNAL_SERVER_ERROR
    );
}

#[test]
fn an_unknown_query_parameter_is_named_first_with_what_the_route_takes() {
    assert_eq!(
        unknown_parameter(
            "Failed to deserialize query string: unknown field `bucket`, expected `bucket_s` or `window_s`"
        )
        .as_deref(),
        Some("bucket: not a parameter of this route (it takes bucket_s or window_s)")
    );
    assert_eq!(
        unknown_parameter(
            "Failed to deserialize query string: unknown field `x`, expected one of `a`, `b`, `c`"
        )
        .as_deref(),
        Some("x: not a parameter of this route (it takes a, b, c)")
    );
    assert_eq!(
        unknown_parameter("Failed to deserialize query string: invalid digit"),
        None
    );
}
