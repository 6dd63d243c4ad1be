//! The mix keeps its shares under a seed, and each kind of request has its body.

use std::collections::BTreeMap;

use serde_json::json;

use super::*;
use crate::loadgen::options::INITIAL_CREDITS;

#[test]
fn the_mix_is_seeded_and_keeps_its_shares() {
    let mix = Mix::parse("insufficient_fund=0.2,out_of_stock=0.1,kill_payment=0.05").unwrap();
    let n = 100_000u64;
    let mut counts: BTreeMap<Kind, u64> = BTreeMap::new();
    for i in 0..n {
        *counts.entry(mix.pick(42, i)).or_default() += 1;
    }
    let share = |k| counts.get(&k).copied().unwrap_or(0) as f64 / n as f64;
    assert!((share(Kind::InsufficientFund) - 0.2).abs() < 0.01);
    assert!((share(Kind::OutOfStock) - 0.1).abs() < 0.01);
    assert!((share(Kind::Fault("kill_payment")) - 0.05).abs() < 0.01);
    assert!((share(Kind::Plain) - 0.65).abs() < 0.01);
    // The same seed picks the same kinds; another seed others.
    let picks = |seed| (0..200).map(|i| mix.pick(seed, i)).collect::<Vec<_>>();
    assert_eq!(picks(7), picks(7));
    assert_ne!(picks(7), picks(8));
    assert!(Mix::parse("none").unwrap().pick(1, 1) == Kind::Plain);
    assert!((0..1000).all(|i| (0.0..1.0).contains(&unit(u64::MAX, i))));
}

#[test]
fn bodies_make_each_kind_of_order() {
    assert_eq!(
        purchase_body(Kind::Plain, "u", 2, 3),
        json!({"username": "u", "price": 2, "amount": 3})
    );
    let poor = purchase_body(Kind::InsufficientFund, "u", 1, 1);
    assert!(poor["price"].as_i64().unwrap() * poor["amount"].as_i64().unwrap() > INITIAL_CREDITS);
    assert_eq!(
        purchase_body(Kind::OutOfStock, "u", 1, 1),
        json!({"username": "u", "price": 0, "amount": OUT_OF_STOCK_AMOUNT})
    );
    assert_eq!(
        purchase_body(Kind::Fault("timeout_inventory"), "u", 1, 1),
        json!({"username": "u", "price": 1, "amount": 1, "timeout_inventory": true})
    );
}
