//! A Tidewire node: the gRPC services, links to peers, link-state routing, durable outboxes, the
//! single policy egress path and the disclosure ledger.
//!
//! Start one with [`server::start`] from a validated [`config::NodeConfig`].
#![forbid(unsafe_code)]

pub mod auth;
pub mod config;
pub mod consent;
pub mod error;
pub mod ledger;
pub mod link;
pub mod metrics;
pub mod node;
pub mod routing;
pub mod server;
pub mod services;
pub mod subscribe;
pub mod tls;
pub mod users;

pub use config::NodeConfig;
pub use error::NodeError;
pub use node::{Author, Node};
pub use server::{Running, start};
