//! The integration suite on the smol adapter.
#![cfg(feature = "smol")]

mod common;
mod suite;

all_tests!(common::SmolRt);
