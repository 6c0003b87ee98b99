//! Chorus audio SFU.
