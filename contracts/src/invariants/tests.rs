use super::*;

#[test]
fn invariants_are_numbered_from_one_in_order() {
    let ids: Vec<u8> = Invariant::ALL.iter().map(|i| i.id()).collect();
    assert_eq!(ids, [1, 2, 3, 4, 5]);
    for (at, i) in Invariant::ALL.iter().enumerate() {
        assert_eq!(i.index(), at);
    }
}
