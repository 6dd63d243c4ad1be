use super::*;

fn params(pairs: &[(&str, &str)]) -> ListParams {
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_string())
    };
    ListParams {
        username: get("username"),
        status: get("status"),
        limit: get("limit"),
        cursor: get("cursor"),
        idle_ms: get("idle_ms"),
    }
}

#[test]
fn no_parameters_mean_the_newest_fifty_of_everyone() {
    let f = params(&[]).parse().unwrap().unwrap();
    assert_eq!(
        (f.username, f.status, f.before, f.limit),
        (None, None, None, DEFAULT_LIMIT)
    );
}

#[test]
fn an_empty_username_counts_as_absent_but_an_empty_typed_parameter_is_refused() {
    let f = params(&[("username", "")]).parse().unwrap().unwrap();
    assert_eq!(f.username, None);
    for name in ["status", "limit", "cursor"] {
        let e = params(&[(name, "")]).parse().unwrap_err();
        assert_eq!(e.field, name);
    }
}

#[test]
fn a_bad_parameter_is_refused_naming_it() {
    for (name, value) in [
        ("limit", "0"),
        ("limit", "201"),
        ("limit", "-1"),
        ("limit", "many"),
        ("status", "NOT_A_STATUS"),
        ("cursor", "%%%garbage"),
    ] {
        let e = params(&[(name, value)]).parse().unwrap_err();
        assert_eq!(e.field, name, "{name}={value}: {e}");
    }
}

#[test]
fn a_username_that_could_never_buy_matches_nothing() {
    assert!(params(&[("username", "bob\0")]).parse().unwrap().is_none());
    assert!(
        params(&[("username", &"a".repeat(65))])
            .parse()
            .unwrap()
            .is_none()
    );
}

#[test]
fn valid_parameters_are_all_kept() {
    let id = OrderId::new();
    let f = params(&[
        ("username", "bob"),
        ("status", "TIMEOUT"),
        ("limit", "200"),
        ("cursor", &id.to_string()),
    ])
    .parse()
    .unwrap()
    .unwrap();
    assert_eq!(f.username.as_deref(), Some("bob"));
    assert_eq!(f.status, Some(OrderStatus::Timeout));
    assert_eq!(f.before, Some(id));
    assert_eq!(f.limit, 200);
}

#[test]
fn idle_ms_is_a_time_before_now_within_a_day() {
    let before = common::time::now_ms();
    let f = params(&[("idle_ms", "10000")]).parse().unwrap().unwrap();
    let at = f.updated_before_ms.unwrap();
    assert!((before - 10_000..=common::time::now_ms() - 10_000).contains(&at));
    assert_eq!(
        params(&[]).parse().unwrap().unwrap().updated_before_ms,
        None
    );
    for bad in ["-1", "86400001", "1.5", ""] {
        let e = params(&[("idle_ms", bad)]).parse().unwrap_err();
        assert!(e.to_string().starts_with("idle_ms: "), "{bad}: {e}");
    }
}
