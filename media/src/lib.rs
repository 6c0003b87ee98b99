//! Chorus audio SFU.

pub mod ids;
pub mod level;
pub mod rewrite;
pub mod router;
pub mod slots;
