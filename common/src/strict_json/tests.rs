use super::*;

#[test]
fn a_repeated_key_at_any_depth_is_refused_naming_it() {
    let e = parse(br#"{"kill_payment": false, "kill_payment": true}"#).unwrap_err();
    assert!(e.contains("duplicate key \"kill_payment\""), "{e}");
    let e = parse(br#"{"a": [{"b": 1, "b": 2}]}"#).unwrap_err();
    assert!(e.contains("\"b\""), "{e}");
    // Escapes spell the same key.
    assert!(parse(br#"{"a": 1, "\u0061": 2}"#).is_err());
}

#[test]
fn everything_else_parses_as_serde_json_does() {
    let v = parse(br#"{"a": 1, "b": {"a": 2}, "c": [1, "x", null, true, 1.5, {"a": 3}]}"#).unwrap();
    assert_eq!(v["b"]["a"], 2);
    for doc in [
        &br#"{"a": 1, "b": {"a": 2}, "c": [1, "x", null, true, 1.5, {"a": 3}]}"#[..],
        br#"{"big": 18446744073709551615, "neg": -9223372036854775808, "f": 1e300, "s": "\u00e9\n"}"#,
        b"[]",
        b"3.0",
    ] {
        let ours = parse(doc).unwrap();
        let theirs: Value = serde_json::from_slice(doc).unwrap();
        assert_eq!(ours, theirs, "{}", String::from_utf8_lossy(doc));
    }
    assert!(parse(b"[1, 2]").is_ok());
    assert!(parse(b"{").is_err());
    assert!(parse(b"{} {}").is_err());
    assert!(parse(br#""just a string""#).is_ok());
}
