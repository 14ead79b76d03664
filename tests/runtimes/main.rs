//! The integration suite (`suite.rs`, generic over the runtime adapter) on every adapter, one
//! module each: `smol::`, `tokio::` (plus the tokio listener) and `async_std::`.
//! `cargo test --test runtimes tokio::` runs one adapter's.

#[macro_use]
#[path = "../common/mod.rs"]
mod common;
#[macro_use]
mod suite;

mod async_std;
mod smol;
mod tokio;
