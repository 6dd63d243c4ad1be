#[test]
fn rfc3339_formats_utc_milliseconds() {
    assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00.000Z");
    assert_eq!(super::rfc3339(1_500), "1970-01-01T00:00:01.500Z");
    assert_eq!(
        super::rfc3339(1_795_251_127_800),
        "2026-11-21T08:52:07.800Z"
    );
}
