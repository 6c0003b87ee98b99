//! Voice rooms: create, list (open rooms), get, update topic, delete, and the private-room
//! invitations (owner invites a user id; owner creates an invite code; others redeem it).

use std::collections::HashMap;

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use utoipa::{IntoParams, ToSchema};

use crate::access::visible_room;
use crate::auth::{AuthUser, random_token};
use crate::dto::{PublicUser, RoomJson};
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult, ErrorBody};
use crate::state::AppState;
use crate::store::{Room, RoomCursor, RoomId, RoomType, StoreError, UserId};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

pub const MAX_TOPIC_CHARS: usize = 120;
pub const DEFAULT_PAGE: u32 = 20;
pub const MAX_PAGE: u32 = 100;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateRoomRequest {
    /// 1 to 120 characters after trimming; no control or text-direction characters.
    #[schema(required = true, nullable = false, example = "Rust talk")]
    pub topic: Option<String>,
    /// `open` (listed), `social` (unlisted, anyone with the link), `private` (invited only).
    #[schema(value_type = RoomType, required = true, nullable = false)]
    pub room_type: Option<RoomType>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct UpdateRoomRequest {
    /// 1 to 120 characters after trimming; no control or text-direction characters.
    #[schema(required = true, nullable = false)]
    pub topic: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InviteRequest {
    /// The user to admit to the private room.
    #[schema(required = true, nullable = false)]
    pub user_id: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct RedeemRequest {
    /// The room's invite code.
    #[schema(required = true, nullable = false)]
    pub code: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InviteCodeResponse {
    pub room_id: String,
    /// Secret; whoever redeems it with `POST /api/rooms/{roomId}/redeem` is admitted.
    pub code: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListRoomsQuery {
    /// `X-Next-Cursor` of the previous page (opaque).
    pub cursor: Option<String>,
    /// Page size, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
}

fn validate_topic(raw: Option<&str>) -> ApiResult<String> {
    crate::text::clean_topic(raw.unwrap_or(""), MAX_TOPIC_CHARS).map_err(|e| {
        ApiError::bad_request(
            "invalid_topic",
            format!("Topic must be 1 to {MAX_TOPIC_CHARS} characters: {e}"),
        )
    })
}

/// The listing cursor as clients see it: base64url of `<created_at millis>.<room id>`.
/// Opaque to clients; decoded into a position, never looked up as a room, so the answer
/// is the same whether the room is open, private, deleted or never existed.
pub fn encode_room_cursor(c: &RoomCursor) -> String {
    let millis = c.created_at.unix_timestamp_nanos().div_euclid(1_000_000);
    URL_SAFE_NO_PAD.encode(format!("{millis}.{}", c.id))
}

/// The position in a cursor from [`encode_room_cursor`], or None if it is not one.
pub fn decode_room_cursor(s: &str) -> Option<RoomCursor> {
    if s.len() > 128 {
        return None;
    }
    let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(s).ok()?).ok()?;
    let (millis, id) = raw.split_once('.')?;
    let millis: i64 = millis.parse().ok()?;
    let created_at =
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000).ok()?;
    Some(RoomCursor {
        created_at,
        id: RoomId::parse(id).ok()?,
    })
}

/// Takes one room from the user's creation quota, or refuses with 429 and `Retry-After`.
pub fn check_room_quota(state: &AppState, user: &UserId) -> ApiResult<()> {
    crate::ratelimit::check(&state.limits.create_room_user, user.as_str())
}

/// The room named by the path's `{roomId}`, which the caller may see and owns: the
/// opening of every owner-only room route. In order: 401 without a valid token, 404 for
/// a malformed id, an unknown room or a private room the caller may not see (all
/// alike), 403 `not_owner` for a room the caller sees but does not own. Being a request
/// part, it is checked before the body is read.
pub struct OwnedRoom {
    pub room: Room,
    pub owner: AuthUser,
}

impl FromRequestParts<AppState> for OwnedRoom {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        let owner = AuthUser::from_request_parts(parts, state).await?;
        let ApiPath(room_id) = ApiPath::<RoomId>::from_request_parts(parts, state).await?;
        let room = visible_room(state.store.as_ref(), &room_id, &owner.user_id).await?;
        if room.owner_id != owner.user_id {
            return Err(ApiError::forbidden(
                "not_owner",
                "Only the room owner can do this",
            ));
        }
        Ok(Self { room, owner })
    }
}

/// Builds the JSON of several rooms with one user lookup for owners and speakers.
pub async fn render_rooms(
    state: &AppState,
    rooms: &[Room],
    viewer: &UserId,
) -> ApiResult<Vec<RoomJson>> {
    let snaps: Vec<_> = rooms.iter().map(|r| state.live.snapshot(&r.id)).collect();
    let mut ids: Vec<UserId> = rooms.iter().map(|r| r.owner_id.clone()).collect();
    ids.extend(snaps.iter().flat_map(|s| s.speakers.iter().cloned()));
    ids.sort();
    ids.dedup();
    let users: HashMap<UserId, PublicUser> = state
        .store
        .get_users(&ids)
        .await?
        .iter()
        .map(|u| (u.id.clone(), PublicUser::of(u, &state.config.base_url)))
        .collect();
    Ok(rooms
        .iter()
        .zip(snaps)
        .map(|(room, snap)| {
            let speakers = snap
                .speakers
                .iter()
                .filter_map(|id| users.get(id).cloned())
                .collect();
            RoomJson::build(
                room,
                users.get(&room.owner_id).cloned(),
                speakers,
                snap.total_people,
                room.owner_id == *viewer,
            )
        })
        .collect())
}

async fn render_room(state: &AppState, room: &Room, viewer: &UserId) -> ApiResult<RoomJson> {
    render_rooms(state, std::slice::from_ref(room), viewer)
        .await?
        .pop()
        .ok_or_else(|| ApiError::internal("render_rooms returned nothing"))
}

/// Creates a room owned by the caller.
#[utoipa::path(post, path = "/api/rooms", tag = "rooms", request_body = CreateRoomRequest,
    responses(
        (status = 201, body = RoomJson),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 429, body = ErrorBody, description = "too many rooms created; see `Retry-After`",
            headers(("Retry-After" = u64, description = "seconds until the next room may be created"))),
    ))]
pub async fn create_room(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiJson(req): ApiJson<CreateRoomRequest>,
) -> ApiResult<(StatusCode, Json<RoomJson>)> {
    let topic = validate_topic(req.topic.as_deref())?;
    let room_type = req.room_type.ok_or_else(|| {
        ApiError::bad_request(
            "invalid_room_type",
            "roomType must be open, social or private",
        )
    })?;
    check_room_quota(&state, &auth.user_id)?;
    let now = state.now();
    let room = Room {
        id: RoomId::generate(),
        topic,
        room_type,
        owner_id: auth.user_id.clone(),
        invited: Vec::new(),
        invite_code: None,
        created_at: now,
        last_activity: now,
    };
    state.store.create_room(room.clone()).await?;
    Ok((
        StatusCode::CREATED,
        Json(render_room(&state, &room, &auth.user_id).await?),
    ))
}

/// Lists open rooms, newest first. The body is the array (as the Talkspace client reads
/// it); when more rooms exist, `X-Next-Cursor` holds the cursor of the next page and
/// `Link` its URL (`rel="next"`).
#[utoipa::path(get, path = "/api/rooms", tag = "rooms", params(ListRoomsQuery),
    responses(
        (status = 200, body = Vec<RoomJson>, headers(
            ("X-Next-Cursor" = String, description = "cursor of the next page, absent on the last"),
            ("Link" = String, description = "`</api/rooms?cursor=..&limit=..>; rel=\"next\"`"))),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
    ))]
pub async fn list_rooms(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiQuery(q): ApiQuery<ListRoomsQuery>,
) -> ApiResult<Response> {
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit must be 1 to {MAX_PAGE}"),
        ));
    }
    let cursor = match q.cursor.as_deref().filter(|c| !c.is_empty()) {
        Some(c) => Some(
            decode_room_cursor(c)
                .ok_or_else(|| ApiError::bad_request("invalid_cursor", "Invalid cursor"))?,
        ),
        None => None,
    };
    let mut rooms = state
        .store
        .list_open_rooms(cursor.as_ref(), limit + 1)
        .await?;
    let more = rooms.len() > limit as usize;
    rooms.truncate(limit as usize);
    let body = render_rooms(&state, &rooms, &auth.user_id).await?;
    let mut resp = Json(body).into_response();
    if more && let Some(last) = rooms.last() {
        let next = encode_room_cursor(&RoomCursor::after(last));
        let h = resp.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&next) {
            h.insert("x-next-cursor", v);
        }
        if let Ok(v) = HeaderValue::from_str(&format!(
            "</api/rooms?cursor={next}&limit={limit}>; rel=\"next\""
        )) {
            h.insert(axum::http::header::LINK, v);
        }
    }
    Ok(resp)
}

/// One room; 404 for unknown or malformed ids and for private rooms the caller may not see.
#[utoipa::path(get, path = "/api/rooms/{roomId}", tag = "rooms",
    params(("roomId" = String, Path)),
    responses(
        (status = 200, body = RoomJson),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
pub async fn get_room(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiPath(room_id): ApiPath<RoomId>,
) -> ApiResult<Json<RoomJson>> {
    let room = visible_room(state.store.as_ref(), &room_id, &auth.user_id).await?;
    Ok(Json(render_room(&state, &room, &auth.user_id).await?))
}

/// Changes the topic (owner only).
#[utoipa::path(patch, path = "/api/rooms/{roomId}", tag = "rooms",
    params(("roomId" = String, Path)), request_body = UpdateRoomRequest,
    responses(
        (status = 200, body = RoomJson),
        (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
pub async fn update_room(
    State(state): State<AppState>,
    OwnedRoom { room, owner }: OwnedRoom,
    ApiJson(req): ApiJson<UpdateRoomRequest>,
) -> ApiResult<Json<RoomJson>> {
    let topic = validate_topic(req.topic.as_deref())?;
    let room = state
        .store
        .update_room_topic(&room.id, &topic)
        .await?
        .ok_or(ApiError::NotFound("room"))?;
    Ok(Json(render_room(&state, &room, &owner.user_id).await?))
}

/// Deletes the room with its messages and stored bytes (owner only).
#[utoipa::path(delete, path = "/api/rooms/{roomId}", tag = "rooms",
    params(("roomId" = String, Path)),
    responses(
        (status = 204),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
pub async fn delete_room(
    State(state): State<AppState>,
    OwnedRoom { room, .. }: OwnedRoom,
) -> ApiResult<StatusCode> {
    state.store.delete_room(&room.id).await?;
    state.live.room_deleted(&room.id);
    Ok(StatusCode::NO_CONTENT)
}

/// Admits a user to the room (owner only; meaningful for private rooms).
#[utoipa::path(post, path = "/api/rooms/{roomId}/invites", tag = "rooms",
    params(("roomId" = String, Path)), request_body = InviteRequest,
    responses(
        (status = 204),
        (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "room or user not found"),
    ))]
pub async fn invite_user(
    State(state): State<AppState>,
    OwnedRoom { room, .. }: OwnedRoom,
    ApiJson(req): ApiJson<InviteRequest>,
) -> ApiResult<StatusCode> {
    let user_id = req
        .user_id
        .and_then(|u| UserId::parse(u).ok())
        .ok_or_else(|| ApiError::bad_request("invalid_user_id", "userId is required"))?;
    if state.store.get_user(&user_id).await?.is_none() {
        return Err(ApiError::NotFound("user"));
    }
    state.store.add_room_invite(&room.id, &user_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Creates (or replaces) the room's invite code (owner only).
#[utoipa::path(post, path = "/api/rooms/{roomId}/invite-code", tag = "rooms",
    params(("roomId" = String, Path)),
    responses(
        (status = 200, body = InviteCodeResponse),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
pub async fn create_invite_code(
    State(state): State<AppState>,
    OwnedRoom { room, .. }: OwnedRoom,
) -> ApiResult<Json<InviteCodeResponse>> {
    let code = random_token();
    state.store.set_invite_code(&room.id, Some(&code)).await?;
    Ok(Json(InviteCodeResponse {
        room_id: room.id.into_string(),
        code,
    }))
}

/// Revokes the room's invite code (owner only); users already admitted stay admitted.
#[utoipa::path(delete, path = "/api/rooms/{roomId}/invite-code", tag = "rooms",
    params(("roomId" = String, Path)),
    responses(
        (status = 204),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
pub async fn delete_invite_code(
    State(state): State<AppState>,
    OwnedRoom { room, .. }: OwnedRoom,
) -> ApiResult<StatusCode> {
    state.store.set_invite_code(&room.id, None).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Redeems an invite code: the caller is admitted to the room. A wrong code is reported
/// like an unknown room (404), so codes and private rooms cannot be probed.
#[utoipa::path(post, path = "/api/rooms/{roomId}/redeem", tag = "rooms",
    params(("roomId" = String, Path)), request_body = RedeemRequest,
    responses(
        (status = 200, body = RoomJson),
        (status = 404, body = ErrorBody),
    ))]
pub async fn redeem_invite(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiPath(room_id): ApiPath<RoomId>,
    ApiJson(req): ApiJson<RedeemRequest>,
) -> ApiResult<Json<RoomJson>> {
    let room = state
        .store
        .get_room(&room_id)
        .await?
        .ok_or(ApiError::NotFound("room"))?;
    let presented = req.code.unwrap_or_default();
    let valid = match &room.invite_code {
        Some(code) => bool::from(code.as_bytes().ct_eq(presented.as_bytes())),
        None => false,
    };
    if !valid {
        return Err(ApiError::NotFound("room"));
    }
    if room.owner_id != auth.user_id && !room.invited.contains(&auth.user_id) {
        match state.store.add_room_invite(&room.id, &auth.user_id).await {
            Ok(()) | Err(StoreError::Conflict) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let room = visible_room(state.store.as_ref(), &room.id, &auth.user_id).await?;
    Ok(Json(render_room(&state, &room, &auth.user_id).await?))
}
