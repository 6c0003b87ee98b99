//! The JSON shapes of the API. Field names follow the reference clients (Talkspace for
//! users and rooms, Chillout for messages); see docs/CONFIGURATION.md and the OpenAPI document.

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::ToSchema;

use crate::store::{FileId, Message, MessageType, Room, RoomType, User};

pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

pub fn avatar_url(base_url: &str, file: &FileId) -> String {
    format!("{}/storage/{}", base_url.trim_end_matches('/'), file)
}

pub fn attachment_url(kind: MessageType, file: &FileId) -> Option<String> {
    match kind {
        MessageType::Voice => Some(format!("/api/voice/{file}")),
        MessageType::Image => Some(format!("/api/image/{file}")),
        _ => None,
    }
}

/// The caller's own record (the only place a phone number appears).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserJson {
    pub id: String,
    pub phone: String,
    pub name: Option<String>,
    /// URL of the avatar image, or null.
    pub avatar: Option<String>,
    pub activated: bool,
    pub created_at: String,
}

impl UserJson {
    pub fn own(u: &User, base_url: &str) -> Self {
        Self {
            id: u.id.to_string(),
            phone: u.phone.clone(),
            name: u.name.clone(),
            avatar: u.avatar.as_ref().map(|f| avatar_url(base_url, f)),
            activated: u.activated,
            created_at: rfc3339(u.created_at),
        }
    }
}

/// Another user as others see them: no phone number.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq)]
pub struct PublicUser {
    pub id: String,
    pub name: Option<String>,
    pub avatar: Option<String>,
}

impl PublicUser {
    pub fn of(u: &User, base_url: &str) -> Self {
        Self {
            id: u.id.to_string(),
            name: u.name.clone(),
            avatar: u.avatar.as_ref().map(|f| avatar_url(base_url, f)),
        }
    }
}

/// `{user, auth}` as the Talkspace client expects after login, refresh and activation.
/// `accessToken`/`refreshToken` are present only when the client asked for tokens in the
/// body (API clients without a cookie jar).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthResponse {
    pub user: Option<UserJson>,
    pub auth: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoomJson {
    pub id: String,
    pub topic: String,
    pub room_type: RoomType,
    pub owner_id: String,
    pub owner: Option<PublicUser>,
    /// Users allowed to speak right now (from the live room state).
    pub speakers: Vec<PublicUser>,
    /// Connected participants right now.
    pub total_people: u32,
    pub created_at: String,
    /// Only in the owner's view of a private room that has an invite code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invite_code: Option<String>,
}

impl RoomJson {
    pub fn build(
        room: &Room,
        owner: Option<PublicUser>,
        speakers: Vec<PublicUser>,
        total_people: u32,
        viewer_is_owner: bool,
    ) -> Self {
        Self {
            id: room.id.to_string(),
            topic: room.topic.clone(),
            room_type: room.room_type,
            owner_id: room.owner_id.to_string(),
            owner,
            speakers,
            total_people,
            created_at: rfc3339(room.created_at),
            invite_code: if viewer_is_owner {
                room.invite_code.clone()
            } else {
                None
            },
        }
    }
}

/// A chat message: Chillout's fields (`_id`, `username`, `message`, `type`, `url`,
/// `createdAt`) plus `id`, `roomId`, `userId`, `fileId`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageJson {
    #[serde(rename = "_id")]
    pub underscore_id: String,
    pub id: String,
    pub room_id: String,
    pub user_id: String,
    pub username: String,
    pub message: String,
    /// text, voice, image, call_notification, call_ended
    #[serde(rename = "type")]
    #[schema(value_type = String, example = "text")]
    pub kind: MessageType,
    pub url: Option<String>,
    pub file_id: Option<String>,
    pub created_at: String,
    /// Voice notes: playing time in seconds, measured by the server at upload (null
    /// when the format could not be measured, and for other messages).
    pub duration: Option<f64>,
}

impl MessageJson {
    pub fn of(m: &Message) -> Self {
        Self {
            underscore_id: m.id.to_string(),
            id: m.id.to_string(),
            room_id: m.room_id.to_string(),
            user_id: m.author_id.to_string(),
            username: m.author_name.clone(),
            message: if m.kind == MessageType::Voice {
                String::new()
            } else {
                m.text.clone()
            },
            kind: m.kind,
            url: m
                .attachment
                .as_ref()
                .and_then(|f| attachment_url(m.kind, f)),
            file_id: m.attachment.as_ref().map(|f| f.to_string()),
            created_at: rfc3339(m.created_at),
            duration: voice_duration(m),
        }
    }
}

/// A voice note has no text, so its stored `text` holds the duration measured at
/// upload, in whole milliseconds (`voice_text`); this reads it back as seconds.
/// Anything else (older notes stored with an empty text) has no duration.
pub fn voice_duration(m: &Message) -> Option<f64> {
    if m.kind != MessageType::Voice {
        return None;
    }
    m.text.parse::<u64>().ok().map(|ms| ms as f64 / 1000.0)
}

/// The stored text of a voice note of `duration_ms` (see `voice_duration`).
pub fn voice_text(duration_ms: Option<u64>) -> String {
    duration_ms.map(|ms| ms.to_string()).unwrap_or_default()
}
