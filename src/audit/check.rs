//! The audit's pure core: what the stores hold in, findings out, one function per
//! invariant. No I/O and no clock: the time is an argument.

use std::collections::{BTreeMap, HashMap, HashSet};

use common::{
    domain::OrderStatus,
    invariants::Invariant,
    messages::TimelineEvent,
    rows::{DeliveryStatus, PaymentStatus, ReservationStatus},
};

pub(super) use common::invariants::{AcceptedOrder, SagaRow};

use super::{DeadLetterCounts, InvariantReport, LISTED, OrderCounts, Report, Violation};

/// What the audit reads of every store for one window of order ids.
#[derive(Debug, Default)]
pub(super) struct Window {
    /// backend: the accepted orders as users see them.
    pub(super) orders: Vec<AcceptedOrder>,
    /// manager: order id → saga.
    pub(super) sagas: HashMap<String, SagaRow>,
    /// order service: order id → (status, created).
    pub(super) order_records: HashMap<String, (String, bool)>,
    /// payment: order id → status.
    pub(super) payments: HashMap<String, String>,
    /// inventory: order id → status.
    pub(super) reservations: HashMap<String, String>,
    /// delivery: order id → status.
    pub(super) deliveries: HashMap<String, String>,
    /// dead-letter: order ids that have a dead letter.
    pub(super) dead_lettered_orders: HashSet<String>,
}

/// What one window's checks found: its counts and, per invariant, its violations sorted
/// by orders then detail.
#[derive(Debug, Default)]
pub(super) struct Findings {
    pub(super) counts: OrderCounts,
    pub(super) violations: [Vec<Violation>; 5],
}

/// The audit so far: counts summed over the windows, and per invariant the violations
/// listed (the first [`LISTED`] found) and how many others there are.
#[derive(Debug, Default)]
pub(super) struct Tally {
    counts: OrderCounts,
    listed: [Vec<Violation>; 5],
    unlisted: [u64; 5],
}

impl Tally {
    /// Records a violation of `invariant`.
    pub(super) fn push(&mut self, invariant: Invariant, violation: Violation) {
        let i = invariant.index();
        if self.listed[i].len() < LISTED {
            self.listed[i].push(violation);
        } else {
            self.unlisted[i] += 1;
        }
    }

    /// Counts violations of `invariant` that are not listed.
    pub(super) fn unlisted(&mut self, invariant: Invariant, n: usize) {
        self.unlisted[invariant.index()] += n as u64;
    }

    /// Whether a violation of `invariant` found now would be listed.
    pub(super) fn has_room(&self, invariant: Invariant) -> bool {
        self.listed[invariant.index()].len() < LISTED
    }

    /// Adds one window's findings. Windows added in order of their ids list the violations
    /// with the smallest order ids, whatever the window size.
    pub(super) fn add(&mut self, findings: Findings) {
        let Findings { counts, violations } = findings;
        self.counts.accepted += counts.accepted;
        self.counts.r#final += counts.r#final;
        self.counts.in_flight += counts.in_flight;
        for (status, n) in counts.by_status {
            *self.counts.by_status.entry(status).or_default() += n;
        }
        for (invariant, found) in Invariant::ALL.into_iter().zip(violations) {
            for v in found {
                self.push(invariant, v);
            }
        }
    }

    pub(super) fn report(
        self,
        now: i64,
        grace_ms: i64,
        dead_letters: DeadLetterCounts,
        outbox_backlog: BTreeMap<String, i64>,
    ) -> Report {
        let invariants: Vec<InvariantReport> = Invariant::ALL
            .into_iter()
            .zip(self.listed.into_iter().zip(self.unlisted))
            .map(|(invariant, (mut violations, unlisted))| {
                violations.sort_by(by_orders_then_detail);
                InvariantReport {
                    id: invariant.id(),
                    name: invariant.name().into(),
                    ok: violations.is_empty() && unlisted == 0,
                    violations,
                    unlisted,
                }
            })
            .collect();
        Report {
            ok: invariants.iter().all(|i| i.ok),
            checked_at_ms: now,
            grace_ms,
            orders: self.counts,
            dead_letters,
            outbox_backlog,
            invariants,
        }
    }
}

fn by_orders_then_detail(a: &Violation, b: &Violation) -> std::cmp::Ordering {
    a.orders.cmp(&b.orders).then(a.detail.cmp(&b.detail))
}

fn is_final(status: &str) -> bool {
    OrderStatus::parse(status).is_ok_and(OrderStatus::is_final)
}

/// The time the checks judge by: whatever changed less than `grace_ms` ago is in flight.
#[derive(Debug, Clone, Copy)]
struct Clock {
    now: i64,
    grace_ms: i64,
}

impl Clock {
    fn old(self, at_ms: i64) -> bool {
        self.now - at_ms >= self.grace_ms
    }
}

impl Window {
    /// The sagas final and settled long enough for every store to agree with them.
    fn settled(&self, clock: Clock) -> impl Iterator<Item = (&String, &SagaRow)> {
        self.sagas
            .iter()
            .filter(move |(_, saga)| is_final(&saga.status) && clock.old(saga.updated_at_ms))
    }
}

fn violation(detail: String, order_id: &str) -> Violation {
    Violation {
        detail,
        orders: vec![order_id.to_string()],
    }
}

/// The per-order invariants over one window (1, 4, 5, and the parts of 2 and 3 that are
/// about one order), with its counts.
pub(super) fn check_window(w: &Window, now: i64, grace_ms: i64) -> Findings {
    let clock = Clock { now, grace_ms };
    let mut violations: [Vec<Violation>; 5] = Default::default();
    for invariant in Invariant::ALL {
        let mut found = match invariant {
            Invariant::EveryOrderFinishes => every_order_finishes(w, clock),
            Invariant::CreditsBalance => effects_follow_the_saga(
                w,
                clock,
                &w.payments,
                PaymentStatus::Charged.as_str(),
                "payment",
            ),
            Invariant::StockBalances => effects_follow_the_saga(
                w,
                clock,
                &w.reservations,
                ReservationStatus::Reserved.as_str(),
                "reservation",
            ),
            Invariant::NoEffectTwice => no_effect_twice(w, clock),
            Invariant::NothingLost => nothing_lost(w, clock),
        };
        found.sort_by(by_orders_then_detail);
        violations[invariant.index()] = found;
    }
    Findings {
        counts: counts(w),
        violations,
    }
}

fn counts(w: &Window) -> OrderCounts {
    let mut counts = OrderCounts::default();
    for o in &w.orders {
        counts.accepted += 1;
        *counts.by_status.entry(o.status.clone()).or_default() += 1;
        if is_final(&o.status) {
            counts.r#final += 1;
        } else {
            counts.in_flight += 1;
        }
    }
    counts
}

/// 1: every accepted order is final, and the read model agrees with its saga.
fn every_order_finishes(w: &Window, clock: Clock) -> Vec<Violation> {
    let mut found = Vec::new();
    for o in &w.orders {
        let saga = w.sagas.get(&o.order_id);
        if !is_final(&o.status) && clock.old(o.placed_at_ms) {
            let why = match saga {
                Some(saga) => format!("saga {} ({})", saga.phase, saga.status),
                None => "no saga".into(),
            };
            let age_s = (clock.now - o.placed_at_ms) / 1000;
            found.push(violation(
                format!("still {} {age_s} s after it was placed; {why}", o.status),
                &o.order_id,
            ));
        }
        if let Some(saga) = saga.filter(|s| is_final(&s.status) && clock.old(s.updated_at_ms))
            && saga.status != o.status
            && clock.old(o.updated_at_ms)
        {
            found.push(violation(
                format!(
                    "the backend shows {} but the saga ended {}",
                    o.status, saga.status
                ),
                &o.order_id,
            ));
        }
    }
    found
}

/// 2 and 3 (and 4 for deliveries), per order: a store keeps a settled saga's effect
/// (its row is `kept`) if and only if the order succeeded.
fn effects_follow_the_saga(
    w: &Window,
    clock: Clock,
    rows: &HashMap<String, String>,
    kept: &str,
    what: &str,
) -> Vec<Violation> {
    w.settled(clock)
        .filter_map(|(order_id, saga)| {
            let success = saga.status == OrderStatus::Success.as_str();
            let detail = match rows.get(order_id) {
                Some(status) if (status == kept) != success => {
                    format!("{what} is {status} but the order ended {}", saga.status)
                }
                None if success => format!("the order succeeded without a {what}"),
                _ => return None,
            };
            Some(violation(detail, order_id))
        })
        .collect()
}

/// 4: no step answered twice (done, refused or failed: it ran twice); the order service
/// and the delivery agree with a settled saga.
fn no_effect_twice(w: &Window, clock: Clock) -> Vec<Violation> {
    let mut found = Vec::new();
    for (order_id, saga) in &w.sagas {
        let mut answers: BTreeMap<&str, usize> = BTreeMap::new();
        for (step, event) in &saga.timeline {
            if event.is_some_and(TimelineEvent::is_answer) {
                *answers.entry(step.as_str()).or_default() += 1;
            }
        }
        for (step, n) in answers.into_iter().filter(|(_, n)| *n > 1) {
            found.push(violation(format!("{step} answered {n} times"), order_id));
        }
    }
    for (order_id, saga) in w.settled(clock) {
        if let Some((status, created)) = w.order_records.get(order_id)
            && *created
            && status != &saga.status
        {
            found.push(violation(
                format!(
                    "the order service recorded {status}, the saga ended {}",
                    saga.status
                ),
                order_id,
            ));
        }
    }
    found.extend(effects_follow_the_saga(
        w,
        clock,
        &w.deliveries,
        DeliveryStatus::Scheduled.as_str(),
        "delivery",
    ));
    found
}

/// 5, per order: an accepted order whose saga never started was dead-lettered, a saga
/// belongs to an accepted order, and a step the saga saw dead-lettered is in the store.
fn nothing_lost(w: &Window, clock: Clock) -> Vec<Violation> {
    let mut found = Vec::new();
    for o in &w.orders {
        if !w.sagas.contains_key(&o.order_id)
            && clock.old(o.placed_at_ms)
            && !w.dead_lettered_orders.contains(&o.order_id)
        {
            found.push(violation(
                "accepted, but the manager never received it and no dead letter holds it".into(),
                &o.order_id,
            ));
        }
    }
    let accepted: HashSet<&str> = w.orders.iter().map(|o| o.order_id.as_str()).collect();
    for (order_id, saga) in &w.sagas {
        if !accepted.contains(order_id.as_str()) && clock.old(saga.updated_at_ms) {
            found.push(violation(
                "the manager has a saga the backend never accepted (or lost)".into(),
                order_id,
            ));
        }
        if w.dead_lettered_orders.contains(order_id) {
            continue;
        }
        for (step, _) in saga
            .timeline
            .iter()
            .filter(|(_, e)| *e == Some(TimelineEvent::DeadLettered))
        {
            found.push(violation(
                format!(
                    "the saga saw {step} dead-lettered, but the dead-letter store has nothing for the order"
                ),
                order_id,
            ));
        }
    }
    found
}
