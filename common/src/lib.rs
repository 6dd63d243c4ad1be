//! The runtime every service shares: bus, storage, outbox/inbox, configuration, telemetry,
//! HTTP. The contracts (domain values, messages, topology, catalog) live in the `contracts`
//! crate, which has no I/O; they are re-exported here under their old paths.

pub use contracts::{catalog, domain, invariants, messages, rows, targets, topology};

pub mod backoff;
pub mod bus;
pub mod config;
pub mod db;
pub mod health;
pub mod http_error;
pub mod http_server;
pub mod inbox;
pub mod metrics;
pub mod operator;
pub mod outbox;
pub mod paging;
pub mod pending;
pub mod rate_limit;
pub mod room;
pub mod service;
pub mod shutdown;
pub mod snapshot;
pub mod strict_json;
pub mod telemetry;
pub mod time;
pub mod tls;
pub mod worker;
