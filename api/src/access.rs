//! Who may see and join which room: the rule shared by the HTTP handlers and the
//! signaling server. Open and social rooms admit every authenticated user; private rooms
//! admit the owner and invited users (an invite code, once redeemed, adds the user to the
//! invited list). A room the caller may not see is reported exactly like a missing one.

use crate::store::{Room, RoomId, RoomStore, RoomType, StoreError, UserId};

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// Unknown, malformed, or private and the user is not admitted (indistinguishable on purpose).
    #[error("room not found")]
    NotFound,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Room ids are 24-hex generated ids or chat slugs: `^[A-Za-z0-9_-]{1,64}$`.
pub fn is_valid_room_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Whether `user` may see `room`.
pub fn may_see(room: &Room, user: &UserId) -> bool {
    match room.room_type {
        RoomType::Open | RoomType::Social => true,
        RoomType::Private => room.owner_id == *user || room.invited.contains(user),
    }
}

/// The room if `user` may see and join it. Used by signaling before admitting a socket.
pub async fn can_join<S: RoomStore + ?Sized>(
    store: &S,
    room: &RoomId,
    user: &UserId,
) -> Result<Room, AccessError> {
    if !is_valid_room_id(room.as_str()) {
        return Err(AccessError::NotFound);
    }
    match store.get_room(room).await? {
        Some(r) if may_see(&r, user) => Ok(r),
        _ => Err(AccessError::NotFound),
    }
}
