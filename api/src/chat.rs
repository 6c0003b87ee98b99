//! Chat operations shared by the HTTP handlers and the signaling side (through the
//! binary's adapter): who may post and delete, message validation, and storage with room
//! activity. These functions do not notify the live side; the HTTP handlers call
//! [`crate::live::LiveRooms`] hooks afterwards, and signaling broadcasts itself.
//! Errors are [`ApiError`]s: signaling can forward their `code()` and message.

use crate::error::{ApiError, ApiResult};
use crate::handlers::rooms::visible_room;
use crate::state::AppState;
use crate::store::{Message, MessageId, MessageType, RoomId, User, UserId};

/// The author and their display name; posting needs a name (messages record it).
pub async fn author(state: &AppState, user: &UserId) -> ApiResult<(User, String)> {
    let user = state
        .store
        .get_user(user)
        .await?
        .ok_or_else(|| ApiError::unauthorized("invalid_token", "Unknown user"))?;
    let name = user.name.clone().ok_or_else(|| {
        ApiError::forbidden(
            "not_activated",
            "Set your name before posting (POST /api/activate)",
        )
    })?;
    Ok((user, name))
}

/// Cleans and checks a text message: control characters (but newline and tab) and
/// text-direction overrides go, the rest is trimmed, and what is left must be visible and
/// within the configured length. The one place chat text is checked, for HTTP and the
/// socket alike (signaling's adapter calls [`post_text`]).
pub fn validate_text(state: &AppState, raw: &str) -> ApiResult<String> {
    let max = state.config.max_message_chars;
    crate::text::clean_message(raw, max).map_err(|_| {
        ApiError::bad_request(
            "invalid_message",
            format!("Message must be 1 to {max} visible characters"),
        )
    })
}

/// Stores a message and moves the room's activity forward.
pub async fn store_message(state: &AppState, msg: &Message) -> ApiResult<()> {
    state.store.insert_message(msg.clone()).await?;
    state.store.touch_room(&msg.room_id, msg.created_at).await?;
    Ok(())
}

/// Posts a text message as `user` in `room` (which they must be allowed to see).
pub async fn post_text(
    state: &AppState,
    room: &RoomId,
    user: &UserId,
    text: &str,
) -> ApiResult<Message> {
    let room = visible_room(state, room, user).await?;
    let text = validate_text(state, text)?;
    let (user, name) = author(state, user).await?;
    let msg = Message {
        id: MessageId::generate(),
        room_id: room.id,
        author_id: user.id,
        author_name: name,
        kind: MessageType::Text,
        text,
        attachment: None,
        created_at: state.now(),
    };
    store_message(state, &msg).await?;
    Ok(msg)
}

/// Stores a system notice (`call_notification` / `call_ended`) attributed to `user`
/// under `author_name`. Signaling posts these for participants it admitted, who may be
/// guests the store does not know (minted load-test tokens), so the user is not looked
/// up; the room must still be visible to them.
pub async fn post_system(
    state: &AppState,
    room: &RoomId,
    user: &UserId,
    author_name: &str,
    kind: MessageType,
    text: &str,
) -> ApiResult<Message> {
    if !matches!(kind, MessageType::CallNotification | MessageType::CallEnded) {
        return Err(ApiError::bad_request(
            "invalid_message_type",
            "Only call notices are system messages",
        ));
    }
    let room = visible_room(state, room, user).await?;
    let msg = Message {
        id: MessageId::generate(),
        room_id: room.id,
        author_id: user.clone(),
        author_name: author_name.to_owned(),
        kind,
        text: text.chars().take(state.config.max_message_chars).collect(),
        attachment: None,
        created_at: state.now(),
    };
    store_message(state, &msg).await?;
    Ok(msg)
}

/// Deletes a message of `room` (with its attachment bytes) if `user` is its author or the
/// room owner. Unknown messages, or messages of another room, are 404.
pub async fn delete_message(
    state: &AppState,
    room: &RoomId,
    message: &MessageId,
    user: &UserId,
) -> ApiResult<Message> {
    let room = visible_room(state, room, user).await?;
    let msg = state
        .store
        .get_message(message)
        .await?
        .filter(|m| m.room_id == room.id)
        .ok_or(ApiError::NotFound("message"))?;
    if msg.author_id != *user && room.owner_id != *user {
        return Err(ApiError::forbidden(
            "not_author",
            "Only the author or the room owner can delete this message",
        ));
    }
    state.store.delete_message(&msg.id).await?;
    Ok(msg)
}
