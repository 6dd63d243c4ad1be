//! What each request is made to be: the seeded mix of kinds, the body of each kind, and
//! its buyer.

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// Price of an `insufficient_fund` order: above any new user's credits.
pub(crate) const INSUFFICIENT_PRICE: i64 = 100_000;
/// Amount of an `out_of_stock` order: above any stock.
pub(crate) const OUT_OF_STOCK_AMOUNT: i64 = 1_000_000;

/// What a request is made to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Plain,
    InsufficientFund,
    OutOfStock,
    /// One of the server's fault flags, by its request field.
    Fault(&'static str),
}

/// The fault flags the purchase API knows.
pub(crate) use backend::api::purchase::FAULT_FLAGS;

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Plain => "plain",
            Kind::InsufficientFund => "insufficient_fund",
            Kind::OutOfStock => "out_of_stock",
            Kind::Fault(flag) => flag,
        }
    }

    fn from_name(name: &str) -> Option<Kind> {
        match name {
            "insufficient_fund" => Some(Kind::InsufficientFund),
            "out_of_stock" => Some(Kind::OutOfStock),
            _ => FAULT_FLAGS
                .iter()
                .copied()
                .find(|f| *f == name)
                .map(Kind::Fault),
        }
    }
}

/// Shares of special requests; whatever they leave is plain purchases.
#[derive(Debug, Clone, PartialEq)]
pub struct Mix {
    shares: Vec<(Kind, f64)>,
}

impl Mix {
    /// `key=share,...` with shares in 0..1 summing to at most 1, or `none`.
    pub fn parse(s: &str) -> Result<Mix, String> {
        let s = s.trim();
        if s.is_empty() || s == "none" {
            return Ok(Mix { shares: Vec::new() });
        }
        let mut shares: Vec<(Kind, f64)> = Vec::new();
        for part in s.split(',') {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("--mix: {part:?} is not key=share"))?;
            let key = key.trim();
            let kind = Kind::from_name(key).ok_or_else(|| {
                format!(
                    "--mix: unknown key {key:?} (known: insufficient_fund, out_of_stock, {})",
                    FAULT_FLAGS.join(", ")
                )
            })?;
            let share: f64 = value
                .trim()
                .parse()
                .ok()
                .filter(|v: &f64| (0.0..=1.0).contains(v))
                .ok_or_else(|| format!("--mix: {key}={value}: a share is a number in 0..1"))?;
            if shares.iter().any(|(k, _)| *k == kind) {
                return Err(format!("--mix: {key} given twice"));
            }
            shares.push((kind, share));
        }
        let total: f64 = shares.iter().map(|(_, v)| v).sum();
        if total > 1.0 + 1e-9 {
            return Err(format!("--mix: shares sum to {total}, more than 1"));
        }
        Ok(Mix { shares })
    }

    /// The kind of request `index` under `seed`. A pure function of both, so a closed
    /// loop's clients, whatever order they race in, send the same kinds as a rerun.
    pub fn pick(&self, seed: u64, index: u64) -> Kind {
        let u = unit(seed, index);
        let mut upto = 0.0;
        for (kind, share) in &self.shares {
            upto += share;
            if u < upto {
                return *kind;
            }
        }
        Kind::Plain
    }

    /// As the report shows it: key → share.
    pub(crate) fn as_map(&self) -> BTreeMap<String, f64> {
        self.shares
            .iter()
            .map(|(k, v)| (k.name().to_string(), *v))
            .collect()
    }
}

/// A uniform number in [0, 1) from (seed, index): SplitMix64, whose output is fixed by its
/// definition (a library RNG's stream may change between versions; a seed must not).
pub(crate) fn unit(seed: u64, index: u64) -> f64 {
    let mut z = seed.wrapping_add(index.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// The body of a purchase of `kind`.
pub(crate) fn purchase_body(kind: Kind, username: &str, price: i64, amount: i64) -> Value {
    match kind {
        Kind::Plain => json!({"username": username, "price": price, "amount": amount}),
        Kind::InsufficientFund => {
            json!({"username": username, "price": INSUFFICIENT_PRICE, "amount": amount})
        }
        Kind::OutOfStock => {
            json!({"username": username, "price": 0, "amount": OUT_OF_STOCK_AMOUNT})
        }
        Kind::Fault(flag) => {
            json!({"username": username, "price": price, "amount": amount, flag: true})
        }
    }
}

/// The buyer of request `index`: users are per run, so that runs never share balances.
pub(crate) fn username(run_id: &str, index: u64, users: u64) -> String {
    format!("lg-{run_id}-{}", index % users.max(1))
}

#[cfg(test)]
mod tests;
