use super::*;

fn parse(pairs: &[(&str, &str)], header: &[&str]) -> Result<StreamRequest, InvalidValue> {
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_string())
    };
    let params = StreamParams {
        username: get("username"),
        order_id: get("order_id"),
        last_event_id: get("last_event_id"),
    };
    let mut headers = HeaderMap::new();
    for h in header {
        headers.append(LAST_EVENT_ID, HeaderValue::from_str(h).unwrap());
    }
    params.parse(&headers)
}

#[test]
fn no_parameters_mean_every_order_from_now_on() {
    let r = parse(&[], &[]).unwrap();
    assert_eq!(r.filter, Filter::default());
    assert_eq!(r.last_event_id, None);
}

#[test]
fn filters_are_kept_in_the_stored_form() {
    let id = OrderId::new();
    let upper = id.to_string().to_uppercase();
    let r = parse(&[("username", "bob"), ("order_id", &upper)], &[]).unwrap();
    assert_eq!(r.filter.username.as_deref(), Some("bob"));
    assert_eq!(r.filter.order_id, Some(id.to_string()));
    assert_eq!(
        parse(&[("username", "")], &[]).unwrap().filter.username,
        None
    );
}

#[test]
fn a_bad_value_is_refused_naming_it() {
    for (pairs, header, field) in [
        (vec![("order_id", "nope")], vec![], "order_id"),
        (vec![("order_id", "")], vec![], "order_id"),
        (vec![("username", " bob")], vec![], "username"),
        (vec![("last_event_id", "-1")], vec![], "last_event_id"),
        (vec![("last_event_id", "1e3")], vec![], "last_event_id"),
        (vec![("last_event_id", "")], vec![], "last_event_id"),
        (
            vec![("last_event_id", "99999999999999999999")],
            vec![],
            "last_event_id",
        ),
        (vec![], vec!["x"], "Last-Event-ID"),
        (vec![], vec!["+4"], "Last-Event-ID"),
        (vec![], vec!["1", "2"], "Last-Event-ID"),
    ] {
        let e = parse(&pairs, &header).unwrap_err();
        assert_eq!(e.field, field, "{pairs:?} {header:?}: {e}");
    }
}

#[test]
fn the_header_wins_over_the_parameter_and_an_empty_header_is_absent() {
    let r = parse(&[("last_event_id", "5")], &["9"]).unwrap();
    assert_eq!(r.last_event_id, Some(9));
    let r = parse(&[("last_event_id", "5")], &[""]).unwrap();
    assert_eq!(r.last_event_id, Some(5));
    assert_eq!(parse(&[], &["0"]).unwrap().last_event_id, Some(0));
}
