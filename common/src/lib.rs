//! Shared by every service: the message contracts, the domain values they carry, and the
//! runtime around them (bus, storage, outbox/inbox, configuration, telemetry).

pub mod backoff;
pub mod bus;
pub mod catalog;
pub mod config;
pub mod db;
pub mod domain;
pub mod health;
pub mod http_error;
pub mod http_server;
pub mod inbox;
pub mod messages;
pub mod metrics;
pub mod operator;
pub mod outbox;
pub mod paging;
pub mod rate_limit;
pub mod room;
pub mod service;
pub mod shutdown;
pub mod strict_json;
pub mod telemetry;
pub mod time;
pub mod tls;
pub mod topology;
pub mod worker;
