use axum::http::StatusCode;
use common::messages::Faults;
use serde_json::{Value, json};

use super::*;

fn refusal(body: &Value) -> (StatusCode, String) {
    let e = parse(body.to_string().as_bytes()).unwrap_err();
    (e.status(), e.to_string())
}

fn assert_names(body: &Value, field: &str) {
    let (status, detail) = refusal(body);
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {detail}");
    assert!(
        detail.starts_with(&format!("{field}: ")),
        "{body}: {detail}"
    );
}

fn valid() -> Value {
    json!({"username": "alice", "price": 3, "amount": 2})
}

fn with(field: &str, value: Value) -> Value {
    let mut body = valid();
    body[field] = value;
    body
}

#[test]
fn a_valid_body_parses_with_flags_defaulting_to_false() {
    let p = parse(valid().to_string().as_bytes()).unwrap();
    assert_eq!(p.terms.username.as_str(), "alice");
    assert_eq!(p.terms.total().get(), 6);
    assert_eq!(p.faults, Faults::default());
}

#[test]
fn flags_and_unknown_fields_are_read_and_ignored_respectively() {
    let mut body = with("kill_payment", json!(true));
    body["timeout_deliver"] = json!(null);
    body["padding"] = json!("whatever");
    let p = parse(body.to_string().as_bytes()).unwrap();
    assert!(p.faults.kill_payment);
    assert!(!p.faults.timeout_deliver);
    assert_eq!(first_fault(&p.faults), Some("kill_payment"));
}

#[test]
fn malformed_json_is_400() {
    for raw in [
        &b"{\"username\": \"bob\", \"price\": 1,"[..],
        b"not json",
        b"[1, 2",
        b"",
        b"\xff\xfe",
    ] {
        let e = parse(raw).unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{raw:?}");
        assert_eq!(e.code(), "malformed_json");
    }
}

#[test]
fn a_body_that_is_not_an_object_is_400() {
    for body in [json!([]), json!("purchase"), json!(1), json!(null)] {
        assert_eq!(refusal(&body).0, StatusCode::BAD_REQUEST);
    }
}

#[test]
fn a_missing_field_is_422_naming_it() {
    for field in ["username", "price", "amount"] {
        let mut body = valid();
        body.as_object_mut().unwrap().remove(field);
        assert_eq!(
            refusal(&body),
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("{field}: missing")
            )
        );
    }
}

#[test]
fn a_whole_number_written_with_a_fraction_is_that_integer_as_json_schema_says() {
    let mut body = with("price", json!(3.0));
    body["amount"] = json!(2.0);
    let p = parse(body.to_string().as_bytes()).unwrap();
    assert_eq!((p.terms.price.get(), p.terms.amount.get()), (3, 2));
}

#[test]
fn a_wrongly_typed_field_is_422_naming_it() {
    let cases = [
        ("price", json!("ten")),
        ("price", json!(1.5)),
        ("price", json!(null)),
        ("price", json!(9_223_372_036_854_775_808u64)),
        ("price", json!(1e30)),
        ("amount", json!("1")),
        ("amount", json!(2.5)),
        ("amount", json!([1])),
        ("username", json!(123)),
        ("username", json!(null)),
        ("kill_payment", json!("yes")),
        ("timeout_deliver", json!(1)),
        ("kill_create", json!({})),
    ];
    for (field, value) in cases {
        assert_names(&with(field, value), field);
    }
    assert_eq!(
        refusal(&with("price", json!("ten"))).1,
        "price: must be an integer, got a string"
    );
}

#[test]
fn an_amount_not_above_zero_and_a_negative_price_are_422() {
    for amount in [json!(0), json!(-1), json!(i64::MIN)] {
        assert_names(&with("amount", amount), "amount");
    }
    for price in [json!(-1), json!(i64::MIN)] {
        assert_names(&with("price", price), "price");
    }
    assert!(parse(with("price", json!(0)).to_string().as_bytes()).is_ok());
}

#[test]
fn a_price_or_amount_beyond_its_bound_is_422_naming_it_so_no_total_overflows() {
    for (price, amount, field) in [
        (1i64 << 62, 4i64, "price"),
        (i64::MAX, 2, "price"),
        (MAX_PRICE + 1, 1, "price"),
        (3_037_000_500, 3_037_000_500, "amount"),
        (1, MAX_AMOUNT + 1, "amount"),
    ] {
        let mut body = with("price", json!(price));
        body["amount"] = json!(amount);
        assert_names(&body, field);
    }
    // The largest of both is a total that fits.
    let mut body = with("price", json!(MAX_PRICE));
    body["amount"] = json!(MAX_AMOUNT);
    assert!(parse(body.to_string().as_bytes()).is_ok());
}

#[test]
fn a_bad_username_is_422_naming_username() {
    for name in [
        "",
        " ",
        &"a".repeat(65),
        &"é".repeat(65),
        "bob\n",
        "bob\0",
        "tab\there",
        "bell\x07",
        "del\x7f",
    ] {
        assert_names(&with("username", json!(name)), "username");
    }
    assert!(
        parse(
            with("username", json!("é".repeat(64)))
                .to_string()
                .as_bytes()
        )
        .is_ok()
    );
}

#[test]
fn no_flag_set_means_no_fault_to_refuse() {
    assert_eq!(first_fault(&Faults::default()), None);
    let f = Faults {
        timeout_deliver: true,
        kill_inventory: true,
        ..Faults::default()
    };
    assert_eq!(first_fault(&f), Some("kill_inventory"));
}
