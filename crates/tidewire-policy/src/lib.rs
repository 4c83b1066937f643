//! The Tidewire policy language: how a node decides, for each destination, whether a case
//! notification may go there and which fields go in clear, generalised or redacted.
//!
//! Every byte that leaves a node passes a [`Policy`]; this crate is that decision, kept pure (no
//! I/O except [`Policy::load`], no gRPC, no storage) so that it can be tested exhaustively and
//! explained to an administrator exactly as the node applies it.
//!
//! - [`Policy::parse`] / [`Policy::load`]: the TOML language of `docs/POLICY.md`, validated with
//!   line and column on every error ([`PolicyError`]);
//! - [`Policy::evaluate`]: one notification, one destination ([`Party`]) → a [`Decision`];
//! - [`Decision::intersect`]: what a copy seen by several destinations may carry;
//! - [`Policy::standing_consent`]: the origin's pre-approval of onward transfer;
//! - [`explain`]: a decision made readable, with the exact body the destination would receive.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod decision;
mod error;
mod eval;
mod explain;
mod generalise;
mod party;
mod policy;

#[cfg(test)]
mod tests;

pub use decision::{Decision, FieldAction, FieldDecision};
pub use error::PolicyError;
pub use explain::{Explanation, FieldExplanation, explain};
pub use party::Party;
pub use policy::Policy;
