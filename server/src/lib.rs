//! snowlease-server library.
pub mod generator;
