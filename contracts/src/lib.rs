//! What the services agree on, and nothing that does I/O: the domain's types, the messages
//! they exchange, the broker's topology (queues, routing keys), the catalog and the services
//! themselves (the binary's targets). The pure saga ([`saga`](../saga/index.html)) and every
//! service build on it; the runtime (`common`) re-exports it.

pub mod catalog;
pub mod domain;
pub mod invariants;
pub mod messages;
pub mod rows;
pub mod targets;
pub mod topology;
