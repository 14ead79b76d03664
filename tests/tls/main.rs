//! TLS, one module per subject (`cargo test --test tls resumption::` runs one): the TLS
//! listener in process (`tls::`), session resumption (`resumption::`, in process and
//! against the echo example with openssl and Python) and ACME against pebble (`acme::`).

#[macro_use]
#[path = "../common/mod.rs"]
mod common;

mod acme;
mod resumption;
mod tls;
