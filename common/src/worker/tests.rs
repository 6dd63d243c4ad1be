use super::*;
use crate::{
    domain::Username,
    messages::{CreditsChanged, StockChanged},
};

fn credits(user: &str, version: i64) -> Event {
    Event::CreditsChanged(CreditsChanged {
        username: Username::parse(user).unwrap(),
        credits: 500 - version,
        version,
    })
}

fn stock(version: i64) -> Event {
    Event::StockChanged(StockChanged {
        product: "late_token".into(),
        stock: 500 - version,
        version,
    })
}

#[test]
fn of_several_updates_of_one_balance_or_stock_only_the_newest_is_published() {
    let batch = vec![
        credits("ann", 1),
        stock(4),
        credits("bob", 7),
        credits("ann", 3),
        stock(5),
        credits("ann", 2),
    ];
    assert_eq!(
        newest_only(batch),
        vec![credits("bob", 7), credits("ann", 3), stock(5)]
    );
}
