use super::*;

fn params(pairs: &[(&str, &str)]) -> ListParams {
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_string())
    };
    ListParams {
        queue: get("queue"),
        order_id: get("order_id"),
        reason: get("reason"),
        status: get("status"),
        limit: get("limit"),
        cursor: get("cursor"),
    }
}

fn refused(pairs: &[(&str, &str)]) -> String {
    match params(pairs).parse() {
        Err(ApiError::BadRequest(detail)) => detail,
        other => panic!("{pairs:?} accepted: {other:?}"),
    }
}

#[test]
fn no_parameters_mean_the_newest_fifty_open_letters() {
    assert_eq!(
        params(&[]).parse().unwrap(),
        Filter {
            resolved: Some(false),
            limit: DEFAULT_LIMIT,
            ..Filter::default()
        }
    );
    assert_eq!(params(&[("status", "all")]).parse().unwrap().resolved, None);
    assert_eq!(
        params(&[("status", "resolved"), ("limit", "500")])
            .parse()
            .unwrap(),
        Filter {
            resolved: Some(true),
            limit: 500,
            ..Filter::default()
        }
    );
}

#[test]
fn every_bad_parameter_is_refused_by_name() {
    assert!(refused(&[("status", "closed")]).starts_with("status:"));
    assert!(refused(&[("limit", "0")]).starts_with("limit:"));
    assert!(refused(&[("limit", "501")]).starts_with("limit:"));
    assert!(refused(&[("limit", "ten")]).starts_with("limit:"));
    assert!(refused(&[("cursor", "%%%")]).starts_with("cursor:"));
    assert!(refused(&[("order_id", "42")]).starts_with("order_id:"));
}

#[test]
fn a_long_body_is_previewed_and_a_short_one_shown_whole() {
    let mut l = DeadLetter {
        payload: "é".repeat(PREVIEW_CHARS + 1),
        ..crate::store::tests::stored(None, None, None)
    };
    let long = DeadLetterSummary::from(&l).payload_preview;
    assert_eq!(long.chars().count(), PREVIEW_CHARS + 1);
    assert!(long.ends_with('…'));
    l.payload = "short".into();
    assert_eq!(DeadLetterSummary::from(&l).payload_preview, "short");
}
