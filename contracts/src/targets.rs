//! The services of the marketplace, and the targets of its binary: `all` runs every service
//! in one process, any other target one service, as one container would. A service's name
//! is its store's name (a SQLite file, a PostgreSQL schema), its broker connection's and
//! its traces' `service.name`.

use std::fmt;

use crate::messages::Worker;

/// One service: a store of its own and a connection to the broker of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Service {
    Backend,
    Manager,
    Order,
    Payment,
    Inventory,
    Delivery,
    DeadLetter,
}

impl Service {
    /// Every service, in the order `--help` lists them.
    pub const ALL: [Service; 7] = [
        Service::Backend,
        Service::Manager,
        Service::Order,
        Service::Payment,
        Service::Inventory,
        Service::Delivery,
        Service::DeadLetter,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Service::Backend => "backend",
            Service::Manager => "manager",
            Service::Order => "order",
            Service::Payment => "payment",
            Service::Inventory => "inventory",
            Service::Delivery => "delivery",
            Service::DeadLetter => "dead-letter",
        }
    }

    /// What it does, for `--help`.
    pub const fn what(self) -> &'static str {
        match self {
            Service::Backend => "HTTP API, Swagger UI, read models, analytics",
            Service::Manager => "saga orchestrator",
            Service::Order => "order worker",
            Service::Payment => "payment worker (users' credits)",
            Service::Inventory => "inventory worker (stock per product of the catalog, restocks)",
            Service::Delivery => "delivery worker",
            Service::DeadLetter => "dead-letter store",
        }
    }

    pub fn parse(name: &str) -> Option<Service> {
        Service::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl From<Worker> for Service {
    fn from(worker: Worker) -> Service {
        match worker {
            Worker::Order => Service::Order,
            Worker::Payment => Service::Payment,
            Worker::Inventory => Service::Inventory,
            Worker::Delivery => Service::Delivery,
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What one process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Every service (the default).
    All,
    One(Service),
}

impl Target {
    pub const ALL_NAME: &'static str = "all";

    pub fn parse(name: &str) -> Option<Target> {
        match name {
            Target::ALL_NAME => Some(Target::All),
            _ => Service::parse(name).map(Target::One),
        }
    }

    pub fn runs(self, service: Service) -> bool {
        match self {
            Target::All => true,
            Target::One(s) => s == service,
        }
    }

    /// Every target with what it runs, for `--help`.
    pub fn documented() -> impl Iterator<Item = (&'static str, &'static str)> {
        std::iter::once((
            Target::ALL_NAME,
            "every service below in one process (default)",
        ))
        .chain(Service::ALL.into_iter().map(|s| (s.name(), s.what())))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::All => f.write_str(Target::ALL_NAME),
            Target::One(s) => s.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests;
