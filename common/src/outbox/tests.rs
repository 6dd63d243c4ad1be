use super::*;

#[test]
fn a_stored_header_table_gives_back_only_its_trace_context() {
    let stored = r#"{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "x-death": [{"count": 1}], "x-delivery-count": 5}"#;
    let trace = trace_headers_from_json(stored).unwrap();
    assert_eq!(trace.len(), 1);
    assert!(trace["traceparent"].starts_with("00-0af7"));
    assert_eq!(trace_headers_from_json(r#"{"x-death": []}"#), None);
    assert_eq!(trace_headers_from_json("not json"), None);
}
