//! privatelink's daemon and CLI: the domain model, the desired map content it implies,
//! and the data plane that holds it.

pub mod api;
pub mod cli;
pub mod client;
pub mod daemon;
pub mod dataplane;
pub mod desired;
pub mod health;
pub mod model;
pub mod neigh;
pub mod ops;
pub mod reconcile;
pub mod store;
