//! The caller's profile: `activate` (name and avatar), `me`, and public avatar bytes at
//! `/storage/{fileId}`.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;
use utoipa::ToSchema;

use crate::auth::AuthUser;
use crate::avatar::{AvatarError, process_avatar};
use crate::dto::{AuthResponse, UserJson};
use crate::error::{ApiError, ApiJson, ApiPath, ApiResult, ErrorBody};
use crate::handlers::blobs::blob_response;
use crate::state::AppState;
use crate::store::{BlobKind, BlobMeta, FileId};

pub const MAX_NAME_CHARS: usize = 64;

#[derive(Debug, Deserialize, ToSchema)]
pub struct ActivateRequest {
    /// Display name, 1 to 64 characters after trimming; no control or text-direction
    /// characters, not only invisible ones.
    #[schema(required = true, nullable = false, example = "Alice")]
    pub name: Option<String>,
    /// `data:image/(png|jpeg|webp|gif);base64,...`; optional when the user already has one.
    pub avatar: Option<String>,
}

/// Sets the caller's name and avatar and marks the account activated.
#[utoipa::path(post, path = "/api/activate", tag = "profile", request_body = ActivateRequest,
    responses(
        (status = 200, body = AuthResponse),
        (status = 400, body = ErrorBody, description = "bad name or image (too many pixels, not an image)"),
        (status = 401, body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 503, body = ErrorBody, description = "every avatar decoding slot stayed busy; see `Retry-After`",
            headers(("Retry-After" = u64, description = "seconds to wait before retrying"))),
    ))]
pub async fn activate(
    State(state): State<AppState>,
    auth: AuthUser,
    ApiJson(req): ApiJson<ActivateRequest>,
) -> ApiResult<Json<AuthResponse>> {
    let name = crate::text::clean_name(req.name.as_deref().unwrap_or(""), MAX_NAME_CHARS).map_err(
        |e| {
            ApiError::bad_request(
                "invalid_name",
                format!("Name must be 1 to {MAX_NAME_CHARS} characters: {e}"),
            )
        },
    )?;
    let user = state
        .store
        .get_user(&auth.user_id)
        .await?
        .ok_or_else(|| ApiError::unauthorized("invalid_token", "Unknown user"))?;

    let avatar = match req.avatar.filter(|a| !a.trim().is_empty()) {
        None => user.avatar.clone(),
        Some(data_url) => {
            let (max_len, max_dim) = (
                state.config.max_avatar_bytes,
                state.config.max_avatar_dimension,
            );
            // Cheap checks first, so oversized or malformed input never waits for a slot.
            if data_url.len() > max_len {
                return Err(ApiError::PayloadTooLarge(AvatarError::TooLarge.to_string()));
            }
            let slot = state
                .avatar_gate
                .acquire()
                .await
                .map_err(|_| ApiError::Overloaded {
                    retry_after_secs: 2,
                })?;
            let png = tokio::task::spawn_blocking(move || {
                let _slot = slot;
                process_avatar(&data_url, max_len, max_dim)
            })
            .await
            .map_err(ApiError::internal)?
            .map_err(|e| match e {
                AvatarError::TooLarge => ApiError::PayloadTooLarge(e.to_string()),
                AvatarError::Encode(_) => ApiError::internal(e),
                other => ApiError::bad_request("invalid_avatar", other.to_string()),
            })?;
            let id = FileId::generate();
            state
                .store
                .put_blob(
                    BlobMeta {
                        id: id.clone(),
                        kind: BlobKind::Avatar,
                        content_type: "image/png".into(),
                        len: png.len() as u64,
                        room_id: None,
                        created_at: state.now(),
                    },
                    png.into(),
                )
                .await?;
            Some(id)
        }
    };
    let new_avatar = (avatar != user.avatar).then(|| avatar.clone()).flatten();
    let user = match state
        .store
        .activate_user(&auth.user_id, &name, avatar)
        .await
    {
        Ok(u) => u,
        Err(e) => {
            // Do not leave the freshly stored avatar orphaned.
            if let Some(id) = new_avatar {
                let _ = state.store.delete_blob(&id).await;
            }
            return Err(e.into());
        }
    };
    Ok(Json(AuthResponse {
        user: Some(UserJson::own(&user, &state.config.base_url)),
        auth: true,
        access_token: None,
        refresh_token: None,
    }))
}

/// The caller's own record.
#[utoipa::path(get, path = "/api/me", tag = "profile",
    responses((status = 200, body = AuthResponse), (status = 401, body = ErrorBody)))]
pub async fn me(State(state): State<AppState>, auth: AuthUser) -> ApiResult<Json<AuthResponse>> {
    let user = state
        .store
        .get_user(&auth.user_id)
        .await?
        .ok_or_else(|| ApiError::unauthorized("invalid_token", "Unknown user"))?;
    Ok(Json(AuthResponse {
        user: Some(UserJson::own(&user, &state.config.base_url)),
        auth: true,
        access_token: None,
        refresh_token: None,
    }))
}

/// Avatar bytes (public: ids are unguessable and immutable, so cached for a year).
#[utoipa::path(get, path = "/storage/{fileId}", tag = "profile",
    params(("fileId" = String, Path, description = "avatar file id")),
    responses(
        (status = 200, content_type = "image/png", description = "the avatar"),
        (status = 404, body = ErrorBody),
    ))]
pub async fn storage(
    State(state): State<AppState>,
    ApiPath(file_id): ApiPath<FileId>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let meta = state
        .store
        .get_blob_meta(&file_id)
        .await?
        .filter(|m| m.kind == BlobKind::Avatar)
        .ok_or(ApiError::NotFound("file"))?;
    blob_response(
        &state,
        &meta,
        &headers,
        "public, max-age=31536000, immutable",
    )
    .await
}
