//! Chat rooms by slug (Chillout's `/api/room/{roomId}`), message history and posting,
//! message deletion, and voice-note / image uploads and downloads.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::multipart::{Multipart, MultipartError, MultipartRejection};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::BytesMut;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};

use crate::access::visible_room;
use crate::audio_duration::audio_duration_ms;
use crate::auth::AuthUser;
use crate::chat;
use crate::dto::{MessageJson, attachment_url, voice_text};
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult, ErrorBody};
use crate::handlers::blobs::blob_response;
use crate::media::{sniff_audio, sniff_image};
use crate::state::AppState;
use crate::store::{
    BlobKind, BlobMeta, FileId, Message, MessageCursor, MessageId, MessageType, Room, RoomId,
    RoomType, StoreError, UserId,
};

pub const DEFAULT_HISTORY_PAGE: u32 = 50;
pub const MAX_HISTORY_PAGE: u32 = 200;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// `nextCursor` of the previous page: return messages older than it.
    pub before: Option<String>,
    /// Page size, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChatRoomResponse {
    pub room_id: String,
    /// The newest `limit` messages older than `before`, in chronological order (oldest
    /// first, as the Chillout client renders them).
    pub messages: Vec<MessageJson>,
    /// Pass as `before` to get the previous (older) page; null when there is none.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct PostMessageRequest {
    /// The text, 1 to `MAX_MESSAGE_CHARS` characters after trimming.
    #[schema(required = true, nullable = false)]
    pub message: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UploadResponse {
    /// Where the bytes are served (`/api/voice/{id}` or `/api/image/{id}`).
    pub url: String,
    /// The chat message the upload created.
    pub message: MessageJson,
}

/// Opaque history cursor: `<unix nanos>_<message id>`.
fn encode_cursor(m: &Message) -> String {
    format!("{}_{}", m.created_at.unix_timestamp_nanos(), m.id)
}

fn decode_cursor(s: &str) -> Option<MessageCursor> {
    let (nanos, id) = s.split_once('_')?;
    let created_at = OffsetDateTime::from_unix_timestamp_nanos(nanos.parse().ok()?).ok()?;
    Some(MessageCursor {
        created_at,
        id: MessageId::parse(id).ok()?,
    })
}

/// Chat room by slug: its history, creating it (a `social` room owned by the caller) on
/// first use. Slugs match `^[A-Za-z0-9_-]{1,64}$`.
#[utoipa::path(get, path = "/api/room/{roomId}", tag = "chat",
    params(("roomId" = String, Path), HistoryQuery),
    responses(
        (status = 200, body = ChatRoomResponse),
        (status = 400, body = ErrorBody, description = "bad cursor or limit"),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "invalid slug, or private room not visible"),
        (status = 429, body = ErrorBody, description = "the room does not exist yet and the caller created too many rooms"),
    ))]
pub async fn get_chat_room(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiPath(room_id): ApiPath<RoomId>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> ApiResult<Json<ChatRoomResponse>> {
    let limit = q.limit.unwrap_or(DEFAULT_HISTORY_PAGE);
    if !(1..=MAX_HISTORY_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit must be 1 to {MAX_HISTORY_PAGE}"),
        ));
    }
    let before = match q.before.as_deref().filter(|s| !s.is_empty()) {
        Some(c) => Some(
            decode_cursor(c)
                .ok_or_else(|| ApiError::bad_request("invalid_cursor", "Invalid cursor"))?,
        ),
        None => None,
    };
    let room = get_or_create_chat_room(&state, &room_id, &auth.user_id).await?;
    let mut page = state
        .store
        .list_messages(&room.id, before.as_ref(), limit + 1)
        .await?;
    let more = page.len() > limit as usize;
    page.truncate(limit as usize);
    let next_cursor = if more {
        page.last().map(encode_cursor)
    } else {
        None
    };
    page.reverse();
    Ok(Json(ChatRoomResponse {
        room_id: room.id.into_string(),
        messages: page.iter().map(MessageJson::of).collect(),
        next_cursor,
    }))
}

async fn get_or_create_chat_room(
    state: &AppState,
    slug: &RoomId,
    user: &UserId,
) -> ApiResult<Room> {
    if state.store.get_room(slug).await?.is_none() {
        crate::handlers::rooms::check_room_quota(state, user)?;
        let now = state.now();
        let room = Room {
            id: slug.clone(),
            topic: slug.to_string(),
            room_type: RoomType::Social,
            owner_id: user.clone(),
            invited: Vec::new(),
            invite_code: None,
            created_at: now,
            last_activity: now,
        };
        match state.store.create_room(room).await {
            // Lost a race with another first visitor: theirs stands.
            Ok(()) | Err(StoreError::Conflict) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(visible_room(state.store.as_ref(), slug, user).await?)
}

/// Posts a text message.
#[utoipa::path(post, path = "/api/room/{roomId}/messages", tag = "chat",
    params(("roomId" = String, Path)), request_body = PostMessageRequest,
    responses(
        (status = 201, body = MessageJson),
        (status = 400, body = ErrorBody, description = "empty or too long"),
        (status = 403, body = ErrorBody, description = "caller has no name yet"),
        (status = 404, body = ErrorBody),
    ))]
pub async fn post_message(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiPath(room_id): ApiPath<RoomId>,
    ApiJson(req): ApiJson<PostMessageRequest>,
) -> ApiResult<(StatusCode, Json<MessageJson>)> {
    let text = req.message.as_deref().unwrap_or("");
    let msg = chat::post_text(&state, &room_id, &auth.user_id, text).await?;
    state.live.message_created(&msg);
    Ok((StatusCode::CREATED, Json(MessageJson::of(&msg))))
}

/// Deletes a message (its author or the room owner) and its attachment bytes.
#[utoipa::path(delete, path = "/api/room/{roomId}/messages/{messageId}", tag = "chat",
    params(("roomId" = String, Path), ("messageId" = String, Path)),
    responses(
        (status = 204),
        (status = 403, body = ErrorBody, description = "neither author nor room owner"),
        (status = 404, body = ErrorBody),
    ))]
pub async fn delete_message(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiPath((room_id, message_id)): ApiPath<(RoomId, MessageId)>,
) -> ApiResult<StatusCode> {
    let msg = chat::delete_message(&state, &room_id, &message_id, &auth.user_id).await?;
    state.live.message_deleted(&msg.room_id, &msg.id);
    Ok(StatusCode::NO_CONTENT)
}

fn multipart_error(e: MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge("Upload too large".into())
    } else {
        ApiError::bad_request("invalid_multipart", e.body_text())
    }
}

/// Reads one file field, refusing as soon as it grows past `max` bytes.
async fn read_file_field(mut mp: Multipart, name: &str, max: usize) -> ApiResult<Bytes> {
    while let Some(mut field) = mp.next_field().await.map_err(multipart_error)? {
        if field.name() != Some(name) {
            // Other fields (Chillout's `username`) are ignored: the author comes from the token.
            continue;
        }
        let mut buf = BytesMut::new();
        while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
            if buf.len() + chunk.len() > max {
                return Err(ApiError::PayloadTooLarge(format!(
                    "Upload larger than {max} bytes"
                )));
            }
            buf.extend_from_slice(&chunk);
        }
        return Ok(buf.freeze());
    }
    Err(ApiError::bad_request(
        "missing_file",
        format!("multipart field `{name}` is required"),
    ))
}

struct UploadKind {
    field: &'static str,
    blob: BlobKind,
    message: MessageType,
    sniff: fn(&[u8]) -> Option<&'static str>,
    accepted: &'static str,
}

const VOICE: UploadKind = UploadKind {
    field: "voice",
    blob: BlobKind::Voice,
    message: MessageType::Voice,
    sniff: sniff_audio,
    accepted: "webm, ogg, mp4/m4a, mpeg or wav audio",
};

const IMAGE: UploadKind = UploadKind {
    field: "image",
    blob: BlobKind::Image,
    message: MessageType::Image,
    sniff: sniff_image,
    accepted: "png, jpeg, webp or gif images",
};

async fn upload(
    state: AppState,
    auth: AuthUser,
    room_id: RoomId,
    mp: Result<Multipart, MultipartRejection>,
    kind: &UploadKind,
    max: usize,
) -> ApiResult<(StatusCode, Json<UploadResponse>)> {
    let room = visible_room(state.store.as_ref(), &room_id, &auth.user_id).await?;
    let (user, name) = chat::author(&state, &auth.user_id).await?;
    let mp = mp.map_err(|r| ApiError::bad_request("invalid_multipart", r.body_text()))?;
    let bytes = read_file_field(mp, kind.field, max).await?;
    let content_type = (kind.sniff)(&bytes).ok_or_else(|| {
        ApiError::UnsupportedMediaType(format!("Only {} are accepted", kind.accepted))
    })?;
    // Measured once here: browsers cannot tell a MediaRecorder WebM's length early.
    let text = match kind.message {
        MessageType::Voice => voice_text(audio_duration_ms(&bytes)),
        _ => String::new(),
    };
    let now = state.now();
    let file = FileId::generate();
    state
        .store
        .put_blob(
            BlobMeta {
                id: file.clone(),
                kind: kind.blob,
                content_type: content_type.to_owned(),
                len: bytes.len() as u64,
                room_id: Some(room.id.clone()),
                created_at: now,
            },
            bytes,
        )
        .await?;
    let msg = Message {
        id: MessageId::generate(),
        room_id: room.id,
        author_id: user.id,
        author_name: name,
        kind: kind.message,
        text,
        attachment: Some(file.clone()),
        created_at: now,
    };
    if let Err(e) = chat::store_message(&state, &msg).await {
        // Do not leave orphaned bytes behind.
        let _ = state.store.delete_blob(&file).await;
        return Err(e.into());
    }
    state.live.message_created(&msg);
    Ok((
        StatusCode::CREATED,
        Json(UploadResponse {
            url: attachment_url(kind.message, &file).unwrap_or_default(),
            message: MessageJson::of(&msg),
        }),
    ))
}

/// Uploads a voice note (multipart field `voice`) and posts it as a message.
#[utoipa::path(post, path = "/api/room/{roomId}/voice", tag = "chat",
    params(("roomId" = String, Path)),
    request_body(content_type = "multipart/form-data", description = "field `voice`: the audio file"),
    responses(
        (status = 201, body = UploadResponse),
        (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody, description = "larger than the voice limit (default 10 MB)"),
        (status = 415, body = ErrorBody, description = "not webm/ogg/mp4/mpeg/wav audio"),
    ))]
pub async fn upload_voice(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiPath(room_id): ApiPath<RoomId>,
    mp: Result<Multipart, MultipartRejection>,
) -> ApiResult<(StatusCode, Json<UploadResponse>)> {
    let max = state.config.max_voice_bytes;
    upload(state, auth, room_id, mp, &VOICE, max).await
}

/// Uploads an image (multipart field `image`) and posts it as a message.
#[utoipa::path(post, path = "/api/room/{roomId}/image", tag = "chat",
    params(("roomId" = String, Path)),
    request_body(content_type = "multipart/form-data", description = "field `image`: the image file"),
    responses(
        (status = 201, body = UploadResponse),
        (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody, description = "larger than the image limit (default 5 MB)"),
        (status = 415, body = ErrorBody, description = "not png/jpeg/webp/gif"),
    ))]
pub async fn upload_image(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiPath(room_id): ApiPath<RoomId>,
    mp: Result<Multipart, MultipartRejection>,
) -> ApiResult<(StatusCode, Json<UploadResponse>)> {
    let max = state.config.max_image_bytes;
    upload(state, auth, room_id, mp, &IMAGE, max).await
}

async fn download(
    state: AppState,
    auth: AuthUser,
    file_id: FileId,
    kind: BlobKind,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let meta = state
        .store
        .get_blob_meta(&file_id)
        .await?
        .filter(|m| m.kind == kind)
        .ok_or(ApiError::NotFound("file"))?;
    let room = meta.room_id.as_ref().ok_or(ApiError::NotFound("file"))?;
    visible_room(state.store.as_ref(), room, &auth.user_id)
        .await
        .map_err(|_| ApiError::NotFound("file"))?;
    blob_response(
        &state,
        &meta,
        &headers,
        "private, max-age=31536000, immutable",
    )
    .await
}

/// Streams a voice note; supports single `Range` requests (206) for seeking.
#[utoipa::path(get, path = "/api/voice/{fileId}", tag = "chat",
    params(("fileId" = String, Path)),
    responses(
        (status = 200, description = "the audio bytes"),
        (status = 206, description = "the requested range"),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 416, body = ErrorBody),
    ))]
pub async fn get_voice(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiPath(file_id): ApiPath<FileId>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    download(state, auth, file_id, BlobKind::Voice, headers).await
}

/// Streams an image; supports single `Range` requests.
#[utoipa::path(get, path = "/api/image/{fileId}", tag = "chat",
    params(("fileId" = String, Path)),
    responses(
        (status = 200, description = "the image bytes"),
        (status = 206, description = "the requested range"),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 416, body = ErrorBody),
    ))]
pub async fn get_image(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiPath(file_id): ApiPath<FileId>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    download(state, auth, file_id, BlobKind::Image, headers).await
}
