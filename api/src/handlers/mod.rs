//! HTTP handlers, one module per area; request/response types live next to their handlers.

pub mod auth;
pub mod blobs;
pub mod chat;
pub mod health;
pub mod profile;
pub mod rooms;
