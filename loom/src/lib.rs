//! Runs berth's loom models: see `tests/models.rs`. Nothing here; the crate exists so the
//! release build the models need leaves out berth's dev-dependencies.
#![forbid(unsafe_code)]
