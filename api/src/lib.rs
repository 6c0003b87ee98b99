//! Chorus HTTP control plane.
