//! Black-box federation scenarios for Tidewire live in `tests/tests/*.rs`: each starts real nodes
//! in process with the `tidewire-testkit` (real gRPC, real mutual TLS, real sled stores in temp
//! dirs) and checks one promise of `DESIGN.md` from the outside. This library is empty.
#![forbid(unsafe_code)]
