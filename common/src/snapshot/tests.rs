use super::*;

#[test]
fn a_window_is_the_order_ids_after_its_start_up_to_its_end() {
    assert_eq!(
        OrderWindow { lo: None, hi: None }.filter(),
        ("WHERE order_id IS NOT NULL".to_string(), vec![])
    );
    assert_eq!(
        OrderWindow {
            lo: Some("a"),
            hi: Some("b"),
        }
        .filter(),
        (
            "WHERE order_id IS NOT NULL AND order_id > $1 AND order_id <= $2".to_string(),
            vec!["a", "b"]
        )
    );
    assert_eq!(
        OrderWindow {
            lo: None,
            hi: Some("b"),
        }
        .filter(),
        (
            "WHERE order_id IS NOT NULL AND order_id <= $1".to_string(),
            vec!["b"]
        )
    );
}
