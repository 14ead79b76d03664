//! berth in process, one module per subject (`cargo test --test api limits::` runs one):
//! HTTP, several listeners, limits and PROXY headers, fault points, overload, readiness,
//! regressions, hooks off the accept loop, tokio's readiness, inherited listeners.

#[macro_use]
#[path = "../common/mod.rs"]
mod common;

mod activation;
mod faults;
mod http;
mod limits;
mod listeners;
mod overload;
mod readiness;
mod regressions;
mod reports;
mod tokio_readiness;
