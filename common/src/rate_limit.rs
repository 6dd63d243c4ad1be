//! A per-client rate limit (a token bucket per client address), for routes a single client
//! could otherwise flood: `POST /api/purchase/` with `PURCHASE_RATE_LIMIT` set.
//!
//! Defends against: one client placing orders as fast as it can, filling the backlog
//! (`MAX_BACKLOG`) and the sagas' queue ahead of everyone else. It is a fairness bound, not
//! the overload bound (that is `HTTP_MAX_REQUESTS_IN_FLIGHT` and `MAX_BACKLOG`).
//!
//! The client is the connection's peer address ([`crate::operator::peer`]); headers such as
//! `X-Forwarded-For` are not trusted, since any client can set them. Behind a proxy every
//! client is the proxy: limit there instead (e.g. Traefik's `RateLimit` middleware). An
//! IPv6 client is its /64, which one host usually holds whole. A request without a known
//! peer (built in-process) is not limited.
//!
//! Memory is bounded: at most [`MAX_TRACKED_CLIENTS`] buckets. When a new client would
//! exceed it, buckets that have refilled (indistinguishable from a new client's) are
//! forgotten first, then, if that is not enough, the least recently seen eighth. A client
//! forgotten that way starts again with a full burst: under a flood of distinct addresses
//! the limit fails open for the oldest of them rather than refusing new clients.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    extract::{Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};
use tokio::time::Instant;

use crate::http_error::ApiError;

/// The most clients whose buckets are kept (about 60 bytes each: some 4 MB at most).
pub const MAX_TRACKED_CLIENTS: usize = 65_536;

/// A rate and a burst, per client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests per second a client may keep sending (`PURCHASE_RATE_LIMIT`).
    pub per_second: u32,
    /// Requests a client may send at once after a quiet spell (`PURCHASE_RATE_BURST`).
    pub burst: u32,
}

/// The buckets of every client seen recently.
pub struct RateLimiter {
    limit: RateLimit,
    /// Where the refusals point the client (the variable that sets the limit).
    setting: &'static str,
    max_clients: usize,
    clients: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl RateLimiter {
    /// A limiter of `limit`, whose refusals name `setting`.
    pub fn new(limit: RateLimit, setting: &'static str) -> Self {
        Self::with_capacity(limit, setting, MAX_TRACKED_CLIENTS)
    }

    fn with_capacity(limit: RateLimit, setting: &'static str, max_clients: usize) -> Self {
        RateLimiter {
            limit,
            setting,
            max_clients: max_clients.max(1),
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from `client`'s bucket at `now`; refused, how long until the next
    /// one would be admitted.
    pub fn admit(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let rate = f64::from(self.limit.per_second);
        let burst = f64::from(self.limit.burst);
        let key = client_key(client);
        let mut clients = self.clients.lock().expect("rate limiter poisoned");
        if clients.len() >= self.max_clients && !clients.contains_key(&key) {
            self.make_room(&mut clients, now);
        }
        let bucket = clients.entry(key).or_insert(Bucket {
            tokens: burst,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }

    /// Buckets currently kept.
    pub fn tracked_clients(&self) -> usize {
        self.clients.lock().expect("rate limiter poisoned").len()
    }

    fn make_room(&self, clients: &mut HashMap<IpAddr, Bucket>, now: Instant) {
        // A bucket that has refilled is what a new client gets: forgetting it changes nothing.
        let refill =
            Duration::from_secs_f64(f64::from(self.limit.burst) / f64::from(self.limit.per_second));
        clients.retain(|_, b| now.saturating_duration_since(b.updated) < refill);
        if clients.len() < self.max_clients {
            return;
        }
        // Every one of them is active: forget the least recently seen eighth at once, so
        // that a flood of new clients costs one pass per eighth, not one per client.
        let mut seen: Vec<Instant> = clients.values().map(|b| b.updated).collect();
        let (_, cutoff, _) = seen.select_nth_unstable(clients.len() / 8);
        let cutoff = *cutoff;
        clients.retain(|_, b| b.updated > cutoff);
    }
}

/// The key of a client: its address, IPv4-mapped IPv6 as IPv4, other IPv6 as its /64.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

/// Middleware: refuses a request past its client's limit with `429 rate_limited` and
/// `Retry-After` (whole seconds, at least 1), before the handler reads anything.
pub async fn enforce(
    State(limiter): State<Arc<RateLimiter>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(client) = crate::operator::peer(request.extensions()) else {
        return next.run(request).await;
    };
    match limiter.admit(client, Instant::now()) {
        Ok(()) => next.run(request).await,
        Err(wait) => ApiError::RateLimited {
            detail: format!(
                "more than {} requests per second from this client ({}={}, burst {})",
                limiter.limit.per_second,
                limiter.setting,
                limiter.limit.per_second,
                limiter.limit.burst
            ),
            retry_after_s: wait.as_secs_f64().ceil().max(1.0) as u64,
        }
        .into_response(),
    }
}

#[cfg(test)]
mod tests;
