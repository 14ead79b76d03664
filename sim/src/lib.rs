//! Placeholder until the simulation issue lands.
