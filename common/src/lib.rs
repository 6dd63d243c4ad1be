//! Shared by every service: the message contracts, the domain values they carry, and the
//! runtime around them (bus, storage, outbox/inbox, configuration, telemetry).

pub mod domain;
pub mod messages;
pub mod topology;
