//! privatelink's daemon and CLI: the domain model, the desired map content it implies,
//! and the data plane that holds it.

pub mod api;
pub mod apply;
pub mod cli;
pub mod client;
pub mod config;
pub mod counters;
pub mod daemon;
pub mod dataplane;
pub mod desired;
pub mod dns;
pub mod error;
pub mod fleet;
pub mod flowlog;
pub mod health;
pub mod metrics;
pub mod model;
pub mod monitor;
pub mod notify;
pub mod ops;
pub mod process;
pub mod reconcile;
pub mod store;
