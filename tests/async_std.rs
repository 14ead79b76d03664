//! The integration suite on the async-std adapter.
#![cfg(feature = "async-std")]

mod common;
mod suite;

all_tests!(common::AsyncStdRt);
