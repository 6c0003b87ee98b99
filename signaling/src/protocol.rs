//! Signaling protocol messages.
