//! The integration suite on the async-std adapter.
#![cfg(feature = "async-std")]

use crate::common;
use crate::suite;

all_tests!(common::AsyncStdRt);
