//! The products the marketplace sells (`PRODUCTS`), their opening stock and, for some, a
//! catalog price.
//!
//! The inventory stocks each product on its first start; the backend refuses a purchase
//! of a product the catalog does not list, or at another price than the catalog's, before
//! anything is stored. Both read the same variable, so they agree on the catalog.

use std::fmt;

use crate::domain::{Credits, InvalidValue, OrderTerms, Product};

/// One product of the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub product: Product,
    /// What the inventory holds when it first stocks the product.
    pub opening_stock: i64,
    /// The price a purchase must name; None lets the buyer name it (the compatibility
    /// contract's `late_token`, bought at any price, even 0).
    pub price: Option<Credits>,
}

/// Every product on sale, in the order `PRODUCTS` lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog(Vec<Listing>);

impl Catalog {
    /// The one-product catalog of the compatibility contract: `late_token` with
    /// `opening_stock`, at the buyer's price.
    pub fn single(opening_stock: i64) -> Self {
        Self(vec![Listing {
            product: Product::default(),
            opening_stock,
            price: None,
        }])
    }

    /// Parses `late_token=500,early_token=200@5`: `name=stock[@price]`, comma separated.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut listings: Vec<Listing> = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (name, rest) = item
                .split_once('=')
                .ok_or_else(|| format!("{item:?}: expected name=stock or name=stock@price"))?;
            let product = Product::parse(name.trim())
                .map_err(|e| format!("{:?}: the name {}", name.trim(), e.problem))?;
            let (stock, price) = match rest.split_once('@') {
                Some((stock, price)) => (stock, Some(price)),
                None => (rest, None),
            };
            let opening_stock: i64 = stock
                .trim()
                .parse()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| format!("{item:?}: the stock must be an integer ≥ 0"))?;
            let price = price
                .map(|p| {
                    p.trim()
                        .parse::<i64>()
                        .ok()
                        .and_then(|p| Credits::new(p).ok())
                        .ok_or_else(|| format!("{item:?}: the price must be an integer ≥ 0"))
                })
                .transpose()?;
            if listings.iter().any(|l| l.product == product) {
                return Err(format!("{product} is listed twice"));
            }
            listings.push(Listing {
                product,
                opening_stock,
                price,
            });
        }
        if listings.is_empty() {
            return Err("lists no product".into());
        }
        Ok(Self(listings))
    }

    pub fn listings(&self) -> &[Listing] {
        &self.0
    }

    pub fn get(&self, product: &Product) -> Option<&Listing> {
        self.0.iter().find(|l| &l.product == product)
    }

    /// Whether `terms` may be bought: a listed product, at its catalog price if it has one.
    /// The refusal names the field at fault.
    pub fn check(&self, terms: &OrderTerms) -> Result<(), InvalidValue> {
        let listing = self.get(&terms.product).ok_or_else(|| {
            InvalidValue::new(
                "product",
                format!(
                    "no product named {:?}; the catalog has {self}",
                    terms.product.as_str()
                ),
            )
        })?;
        match listing.price {
            Some(price) if price != terms.price => Err(InvalidValue::new(
                "price",
                format!(
                    "{} sells at {} credits a token, got {}",
                    listing.product,
                    price.get(),
                    terms.price.get()
                ),
            )),
            _ => Ok(()),
        }
    }
}

/// The product names, comma separated.
impl fmt::Display for Catalog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, l) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(l.product.as_str())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
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
}
