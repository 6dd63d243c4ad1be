use super::username::{EDGE_WHITESPACE, REFUSED_BMP};
use super::*;

#[test]
fn the_refused_tables_are_the_unicode_control_format_and_whitespace_characters() {
    use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
    let within = |ranges: &[(char, char)], c: char| ranges.iter().any(|&(a, b)| a <= c && c <= b);
    // A range of chars skips the surrogates by itself.
    for c in '\u{0}'..='\u{ffff}' {
        let refused = c.is_control() || c.general_category() == GeneralCategory::Format;
        assert_eq!(within(REFUSED_BMP, c), refused, "U+{:04X}", u32::from(c));
        let edge = c.is_whitespace() && !c.is_control();
        assert_eq!(within(EDGE_WHITESPACE, c), edge, "U+{:04X}", u32::from(c));
    }
    let p = username_pattern();
    assert!(
        p.starts_with("^[^\\u0000-\\u001f") && p.ends_with("])?$"),
        "{p}"
    );
}

#[test]
fn username_is_nfc_and_refuses_invisible_and_edge_whitespace() {
    // One name, two spellings: one account.
    let composed = Username::parse("jos\u{e9}").unwrap();
    let decomposed = Username::parse("jose\u{301}").unwrap();
    assert_eq!(composed, decomposed);
    assert_eq!(decomposed.as_str(), "jos\u{e9}");
    for (name, code) in [
        ("alice\u{200b}", "U+200B"),
        ("\u{feff}alice", "U+FEFF"),
        ("ali\u{202e}ecil", "U+202E"),
        ("al\u{200d}ice", "U+200D"),
        ("al\u{2066}ice", "U+2066"),
        ("al\u{ad}ice", "U+00AD"),
    ] {
        let e = Username::parse(name).unwrap_err();
        assert!(e.to_string().starts_with("username: "), "{e}");
        assert!(e.to_string().contains(code), "{name:?}: {e}");
    }
    for name in [" alice", "alice ", "alice\u{3000}", "\u{a0}alice"] {
        let e = Username::parse(name).unwrap_err();
        assert!(e.to_string().contains("whitespace"), "{name:?}: {e}");
    }
    assert!(Username::parse("alice smith").is_ok());
    assert!(Username::parse("Zoë 山田").is_ok());
}

#[test]
fn username_refuses_empty_long_and_control_characters() {
    assert!(Username::parse("").is_err());
    assert!(Username::parse("   ").is_err());
    assert!(Username::parse("a".repeat(65)).is_err());
    assert!(Username::parse("bad\nname").is_err());
    assert!(Username::parse("é".repeat(64)).is_ok());
    assert_eq!(Username::parse("alice").unwrap().as_str(), "alice");
}

#[test]
fn quantity_must_be_positive_and_price_not_negative() {
    assert!(Quantity::new(0).is_err());
    assert!(Quantity::new(-1).is_err());
    assert!(Credits::new(-1).is_err());
    assert!(Credits::new(0).is_ok());
}

#[test]
fn order_total_overflow_is_refused_naming_price() {
    let u = Username::parse("bob").unwrap();
    let err = OrderTerms::new(
        u.clone(),
        Credits::new(i64::MAX).unwrap(),
        Quantity::new(2).unwrap(),
    )
    .unwrap_err();
    assert_eq!(err.field, "price");
    let ok = OrderTerms::new(u, Credits::new(7).unwrap(), Quantity::new(3).unwrap()).unwrap();
    assert_eq!(ok.total().get(), 21);
}

#[test]
fn terms_refuse_invalid_values_when_decoded_from_a_message() {
    let bad = r#"{"username":"x","price":-1,"amount":1}"#;
    assert!(serde_json::from_str::<OrderTerms>(bad).is_err());
    let overflow = format!(r#"{{"username":"x","price":{},"amount":2}}"#, i64::MAX);
    assert!(serde_json::from_str::<OrderTerms>(&overflow).is_err());
    let good = r#"{"username":"x","price":2,"amount":1}"#;
    assert!(serde_json::from_str::<OrderTerms>(good).is_ok());
}

#[test]
fn status_round_trips_through_its_contract_name() {
    for st in OrderStatus::ALL {
        assert_eq!(OrderStatus::parse(st.as_str()).unwrap(), st);
        let json = serde_json::to_string(&st).unwrap();
        assert_eq!(json, format!("\"{}\"", st.as_str()));
    }
}
