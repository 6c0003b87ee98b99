//! What the control plane needs from the live (signaling) side, as a small trait the
//! binary implements: who is in a room right now, and hooks so HTTP-made changes
//! (messages posted or deleted over HTTP, rooms deleted) reach connected clients.

use crate::store::{Message, MessageId, RoomId, UserId};

/// A room's live state at one instant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LiveRoomInfo {
    /// Connected participants (connections, so two tabs of one user count twice).
    pub total_people: u32,
    /// Users currently allowed to speak, in display order.
    pub speakers: Vec<UserId>,
}

pub trait LiveRooms: Send + Sync + 'static {
    /// Cheap and non-blocking: called for every room of a listing.
    fn snapshot(&self, room: &RoomId) -> LiveRoomInfo;

    /// A message was stored through HTTP (text post, voice or image upload); broadcast it.
    fn message_created(&self, _message: &Message) {}

    /// A message was deleted through HTTP; tell the room.
    fn message_deleted(&self, _room: &RoomId, _message: &MessageId) {}

    /// The room was deleted by its owner; disconnect its participants.
    fn room_deleted(&self, _room: &RoomId) {}

    /// Rooms with someone in them right now. The sweeper counts being occupied as
    /// activity, so a room never expires (nor is dropped by a MongoDB TTL index) while
    /// people are in it, however quiet they are.
    fn occupied_rooms(&self) -> Vec<RoomId> {
        Vec::new()
    }
}

/// No live state at all (tests, or a control plane run without the media side).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoLiveRooms;

impl LiveRooms for NoLiveRooms {
    fn snapshot(&self, _room: &RoomId) -> LiveRoomInfo {
        LiveRoomInfo::default()
    }
}
