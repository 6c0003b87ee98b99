//! Chorus signaling: the WebSocket protocol (`protocol`, usable alone with
//! `default-features = false`) and, with the `server` feature, the WebSocket
//! endpoint, per-connection sessions and rooms' live state.
//!
//! The binary builds a [`Signaling`] from a [`SignalingConfig`], the
//! [`SignalingPorts`] it implements over the control plane and the SFU, and the SFU's
//! event stream, then merges [`Signaling::routes`] into its axum router.

pub mod protocol;

#[cfg(feature = "server")]
pub mod cluster;
#[cfg(feature = "server")]
mod config;
#[cfg(feature = "server")]
mod distributed;
#[cfg(feature = "server")]
mod error;
#[cfg(feature = "server")]
pub mod ports;
#[cfg(feature = "server")]
mod rate;
#[cfg(feature = "server")]
mod rooms;
#[cfg(feature = "server")]
mod server;
#[cfg(feature = "server")]
mod session;
#[cfg(feature = "server")]
mod sfu;

#[cfg(feature = "server")]
pub use config::SignalingConfig;
#[cfg(feature = "server")]
pub use error::SignalingError;
#[cfg(feature = "server")]
pub use ports::{
    AuthUser, Authenticator, CallEvent, ChatStore, DeleteOutcome, MediaControl, MediaEvents,
    RoomAccess, RoomDirectory,
};
#[cfg(feature = "server")]
pub use rooms::{RoomSnapshot, SignalingStats};
#[cfg(feature = "server")]
pub use server::{Signaling, SignalingPorts};
#[cfg(feature = "server")]
pub use sfu::sfu_events;
