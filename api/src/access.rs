//! Who may see and join which room: the rule shared by the HTTP handlers and the
//! signaling server. Open and social rooms admit every authenticated user; private rooms
//! admit the owner and invited users (an invite code, once redeemed, adds the user to the
//! invited list). A room the caller may not see is reported exactly like a missing one.

use crate::store::{Room, RoomId, RoomStore, RoomType, StoreError, UserId};

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// Unknown, or private and the user is not admitted (indistinguishable on purpose).
    #[error("room not found")]
    NotFound,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Whether `user` may see `room`.
pub fn may_see(room: &Room, user: &UserId) -> bool {
    match room.room_type {
        RoomType::Open | RoomType::Social => true,
        RoomType::Private => room.owner_id == *user || room.invited.contains(user),
    }
}

/// The room if `user` may see it: the opening of every room and chat operation, over
/// HTTP and the socket alike.
pub async fn visible_room<S: RoomStore + ?Sized>(
    store: &S,
    room: &RoomId,
    user: &UserId,
) -> Result<Room, AccessError> {
    match store.get_room(room).await? {
        Some(r) if may_see(&r, user) => Ok(r),
        _ => Err(AccessError::NotFound),
    }
}

/// The room if `user` may see and join it ([`visible_room`]: seeing a room is what
/// admits to it). Used by signaling before admitting a socket.
pub async fn can_join<S: RoomStore + ?Sized>(
    store: &S,
    room: &RoomId,
    user: &UserId,
) -> Result<Room, AccessError> {
    visible_room(store, room, user).await
}
