use super::*;

#[test]
fn context_survives_a_round_trip_through_headers() {
    let cx = remote_context("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", true);
    let headers = inject(&cx);
    assert_eq!(
        headers.get("traceparent").map(String::as_str),
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    );
    let back = extract(headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    assert_eq!(
        trace_id(&back).as_deref(),
        Some("0af7651916cd43dd8448eb211c80319c")
    );
    assert_eq!(span_id(&back).as_deref(), Some("b7ad6b7169203331"));
    assert!(sampled(&back));
}

#[test]
fn no_context_means_no_headers_and_no_ids() {
    assert!(inject(&Context::new()).is_empty());
    assert_eq!(trace_id(&extract([("traceparent", "garbage")])), None);
    assert_eq!(trace_id(&remote_context("zz", "00", true)), None);
}
