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
mod tests;
