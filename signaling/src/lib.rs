//! Chorus signaling.

pub mod protocol;
