//! The integration suite on the smol adapter.
#![cfg(feature = "smol")]

use crate::common;
use crate::suite;

all_tests!(common::SmolRt);
