//! The library half of the `tidewire` command: the development PKI, client connections, the
//! commands themselves and in-process federations (used by `demo`, `bench` and the test kit).
#![forbid(unsafe_code)]

pub mod client;
pub mod cmds;
pub mod demo;
pub mod envelope_cmd;
pub mod pki;
