//! Chorus HTTP control plane.

pub mod store;
