//! The one error type of every HTTP API (the backend's, the dead-letter service's, the
//! audit's). Every refusal, axum's own rejections included, goes out as
//! `{"error": <code>, "detail": <text>}` with the status its variant documents.

use crate::domain::InvalidValue;
use axum::{
    Json,
    extract::rejection::{BytesRejection, PathRejection, QueryRejection},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa::{PartialSchema, ToSchema};

/// Bodies above this are refused with 413 before they are parsed.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 `malformed_json`: the body is not JSON, or not a JSON object.
    #[error("{0}")]
    MalformedJson(String),
    /// 400 `bad_request`: a path segment or query string that cannot be read (e.g. an order
    /// id that is not a UUID).
    #[error("{0}")]
    BadRequest(String),
    /// 403 `fault_injection_disabled`: a fault flag was set while `FAULT_INJECTION=off`.
    #[error("{flag}: fault injection is disabled (FAULT_INJECTION=off)")]
    FaultInjectionDisabled { flag: &'static str },
    /// 401 `unauthorized`, with `WWW-Authenticate: Bearer`: an operator endpoint was called
    /// without `Authorization: Bearer <token>`.
    #[error("{0}")]
    Unauthorized(String),
    /// 403 `forbidden`: an operator endpoint was called with a wrong token, or from another
    /// host while no token is configured.
    #[error("{0}")]
    Forbidden(String),
    /// 404 `not_found`: no such order, user or route.
    #[error("{0}")]
    NotFound(String),
    /// 409 `conflict`: the request contradicts an earlier one (an `Idempotency-Key` reused
    /// with a different body); the detail names what conflicts.
    #[error("{0}")]
    Conflict(String),
    /// 405 `method_not_allowed`.
    #[error("method not allowed on this path")]
    MethodNotAllowed,
    /// 408 `request_timeout`, with `Connection: close`: the request's body did not arrive
    /// within `HTTP_BODY_TIMEOUT_MS`; nothing was done, and the connection is closed.
    #[error("{0}")]
    RequestTimeout(String),
    /// 413 `body_too_large`: the body is over [`MAX_BODY_BYTES`].
    #[error("the body is over {} bytes", MAX_BODY_BYTES)]
    BodyTooLarge,
    /// 422 `invalid_field`: a field is missing, of the wrong type or out of range; the
    /// detail starts with the field's name.
    #[error(transparent)]
    InvalidField(#[from] InvalidValue),
    /// 429 `busy`, with `Retry-After`: the same costly operation is already running (one
    /// audit at a time); the request may be sent again later.
    #[error("{detail}; retry after {retry_after_s} s")]
    Busy { detail: String, retry_after_s: u64 },
    /// 429 `rate_limited`, with `Retry-After`: this client sent more requests than its rate
    /// limit allows (`PURCHASE_RATE_LIMIT`); nothing was done, and the request may be sent
    /// again after the `Retry-After` seconds.
    #[error("{detail}; retry after {retry_after_s} s")]
    RateLimited { detail: String, retry_after_s: u64 },
    /// 503 `unavailable`: the database does not answer; the request may be retried.
    #[error("the database is unavailable, retry later")]
    Unavailable(#[source] sqlx::Error),
    /// 503 `overloaded`, with `Retry-After`: more work is waiting than the marketplace
    /// takes on (orders past `MAX_BACKLOG`, or requests in flight past
    /// `HTTP_MAX_REQUESTS_IN_FLIGHT`); nothing was stored, and the same request may be sent
    /// again later.
    #[error("{detail}; retry after {retry_after_s} s")]
    Overloaded { detail: String, retry_after_s: u64 },
    /// 500 `internal`: logged with its cause; the client only learns that it happened.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson(_) | ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::FaultInjectionDisabled { .. } | ApiError::Forbidden(_) => {
                StatusCode::FORBIDDEN
            }
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Busy { .. } | ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::InvalidField(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable(_) | ApiError::Overloaded { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable, machine-readable code clients match on.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MalformedJson(_) => "malformed_json",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::FaultInjectionDisabled { .. } => "fault_injection_disabled",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::Busy { .. } => "busy",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::RequestTimeout(_) => "request_timeout",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::BodyTooLarge => "body_too_large",
            ApiError::InvalidField(_) => "invalid_field",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Overloaded { .. } => "overloaded",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        // Only a database that cannot be reached is worth a retry; anything else is a bug.
        match e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_) => ApiError::Unavailable(e),
            other => ApiError::Internal(other.into()),
        }
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::BodyTooLarge
        } else {
            ApiError::MalformedJson(format!("the body could not be read: {}", r.body_text()))
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::BadRequest(r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::BadRequest(unknown_parameter(&r.body_text()).unwrap_or_else(|| r.body_text()))
    }
}

/// A query string that names a parameter its route does not take (the route's parameters
/// are `#[serde(deny_unknown_fields)]`), said the way every other refusal is: starting with
/// the name at fault. `None` for any other rejection. serde words it "unknown field `x`,
/// expected `a` or `b`" (or "expected one of …").
fn unknown_parameter(text: &str) -> Option<String> {
    let (_, rest) = text.split_once("unknown field `")?;
    let (name, rest) = rest.split_once('`')?;
    let expected = rest
        .split_once("expected ")
        .map(|(_, e)| e.replace("one of ", "").replace('`', ""))
        .unwrap_or_default();
    Some(format!(
        "{name}: not a parameter of this route (it takes {expected})"
    ))
}

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"error": "invalid_field", "detail": "amount: must be greater than 0"}))]
pub struct ErrorBody {
    /// `malformed_json`, `bad_request`, `unauthorized`, `forbidden`,
    /// `fault_injection_disabled`, `not_found`, `conflict`, `method_not_allowed`,
    /// `request_timeout`, `body_too_large`, `invalid_field`, `busy`, `rate_limited`,
    /// `unavailable`, `overloaded` or `internal`.
    pub error: String,
    /// What is wrong, for a person; for `invalid_field` it starts with the field's name.
    pub detail: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Internal(cause) => {
                tracing::error!(error = %format!("{cause:#}"), "request failed");
            }
            ApiError::Unavailable(cause) => tracing::warn!(error = %cause, "database unavailable"),
            _ => {}
        }
        let body = ErrorBody {
            error: self.code().to_string(),
            detail: self.to_string(),
        };
        let mut response = (self.status(), Json(body)).into_response();
        let headers = response.headers_mut();
        match self {
            ApiError::Overloaded { retry_after_s, .. }
            | ApiError::Busy { retry_after_s, .. }
            | ApiError::RateLimited { retry_after_s, .. } => {
                headers.insert(
                    axum::http::header::RETRY_AFTER,
                    axum::http::HeaderValue::from(retry_after_s),
                );
            }
            ApiError::RequestTimeout(_) => {
                // The rest of the body is unread: the connection cannot carry another request.
                headers.insert(
                    axum::http::header::CONNECTION,
                    axum::http::HeaderValue::from_static("close"),
                );
            }
            ApiError::Unauthorized(_) => {
                headers.insert(
                    axum::http::header::WWW_AUTHENTICATE,
                    axum::http::HeaderValue::from_static("Bearer realm=\"marketplace operator\""),
                );
            }
            _ => {}
        }
        response
    }
}

// The error's schema is the body it renders to.
impl PartialSchema for ApiError {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        ErrorBody::schema()
    }
}

impl ToSchema for ApiError {}

#[cfg(test)]
mod tests;
