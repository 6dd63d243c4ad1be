use super::*;
use crate::domain::{Quantity, Username};

fn terms(product: &str, price: i64) -> OrderTerms {
    OrderTerms::new(
        Username::parse("ann").unwrap(),
        Credits::new(price).unwrap(),
        Quantity::new(2).unwrap(),
    )
    .unwrap()
    .of(Product::parse(product).unwrap())
}

#[test]
fn a_catalog_lists_stock_and_an_optional_price_per_product() {
    let c = Catalog::parse("late_token=500, early_token=200@5").unwrap();
    assert_eq!(c.listings().len(), 2);
    assert_eq!(c.listings()[0], Catalog::single(500).listings()[0]);
    let early = &c.listings()[1];
    assert_eq!(
        (early.product.as_str(), early.opening_stock, early.price),
        ("early_token", 200, Some(Credits::new(5).unwrap()))
    );
    assert_eq!(c.to_string(), "late_token, early_token");
}

#[test]
fn a_bad_catalog_is_refused_with_the_item_at_fault() {
    for (text, problem) in [
        ("", "lists no product"),
        ("late_token", "expected name=stock"),
        ("late_token=-1", "stock must be an integer"),
        ("late_token=5@x", "price must be an integer"),
        ("late token=5", "the name may hold"),
        ("a=1,a=2", "listed twice"),
    ] {
        let e = Catalog::parse(text).unwrap_err();
        assert!(e.contains(problem), "{text:?}: {e}");
    }
}

#[test]
fn a_purchase_must_name_a_listed_product_at_its_catalog_price() {
    let c = Catalog::parse("late_token=500,early_token=200@5").unwrap();
    assert_eq!(c.check(&terms("late_token", 0)), Ok(()));
    assert_eq!(c.check(&terms("early_token", 5)), Ok(()));
    let e = c.check(&terms("early_token", 4)).unwrap_err();
    assert_eq!(e.field, "price");
    assert_eq!(e.problem, "early_token sells at 5 credits a token, got 4");
    let e = c.check(&terms("gold", 1)).unwrap_err();
    assert_eq!(e.field, "product");
    assert_eq!(
        e.problem,
        "no product named \"gold\"; the catalog has late_token, early_token"
    );
}
