//! Chorus HTTP control plane: phone login, tokens, profiles, rooms, chat messages, voice
//! notes and images, and the storage behind them.
//!
//! Start reading at [`router`] (every route) and [`state::AppState`] (what handlers share).
//! The signaling side uses [`auth::TokenVerifier`], [`auth::extract_access_token`],
//! [`access::can_join`] and implements [`live::LiveRooms`].

pub mod access;
pub mod audio_duration;
pub mod auth;
pub mod avatar;
pub mod chat;
pub mod clock;
pub mod config;
pub mod dto;
pub mod error;
pub mod handlers;
pub mod ids;
pub mod live;
pub mod media;
pub mod otp;
pub mod ratelimit;
pub mod sms;
pub mod state;
pub mod store;
pub mod sweeper;
pub mod text;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::response::IntoResponse;
use tower_http::cors::{AllowOrigin, CorsLayer};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use access::{AccessError, can_join};
pub use auth::{
    ACCESS_COOKIE, AuthError, AuthUser, JwtSecrets, TokenVerifier, extract_access_token,
};
pub use config::ApiConfig;
pub use error::ApiError;
pub use live::{LiveRoomInfo, LiveRooms};
pub use state::AppState;

use handlers::{auth as h_auth, chat as h_chat, health, profile, rooms};

/// Body limit of plain JSON endpoints.
pub const JSON_BODY_LIMIT: usize = 64 * 1024;
/// Room for multipart boundaries and headers on top of an upload's byte limit.
const MULTIPART_OVERHEAD: usize = 64 * 1024;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Chorus control plane",
        description = "Phone login, profiles, rooms, chat messages, voice notes and images. \
            Authenticated routes take the access token from the `accessToken` cookie or \
            `Authorization: Bearer`. Errors are `{code, message}`."
    ),
    tags(
        (name = "auth"), (name = "profile"), (name = "rooms"), (name = "chat"), (name = "health")
    )
)]
struct ApiDoc;

/// The document served at `/api/openapi.json`.
#[utoipa::path(get, path = "/api/openapi.json", tag = "health",
    responses((status = 200, description = "this OpenAPI 3 document", content_type = "application/json")))]
async fn openapi_json(axum::Extension(doc): axum::Extension<OpenApiJson>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        doc.0.as_ref().clone(),
    )
}

/// The serialised document, handed to [`openapi_json`] as a request extension (it is
/// generated from the same router it is served by).
#[derive(Clone)]
struct OpenApiJson(std::sync::Arc<String>);

fn documented_routes(config: &ApiConfig) -> OpenApiRouter<AppState> {
    let with_limit = |r: utoipa_axum::router::UtoipaMethodRouter<AppState>, limit: usize| {
        let (schemas, paths, method_router) = r;
        (
            schemas,
            paths,
            method_router.layer(DefaultBodyLimit::max(limit)),
        )
    };
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(h_auth::send_otp))
        .routes(routes!(h_auth::verify_otp))
        .routes(routes!(h_auth::refresh_get, h_auth::refresh_post))
        .routes(routes!(h_auth::logout))
        .routes(with_limit(
            routes!(profile::activate),
            config.max_avatar_bytes + JSON_BODY_LIMIT,
        ))
        .routes(routes!(profile::me))
        .routes(routes!(profile::storage))
        .routes(routes!(rooms::create_room, rooms::list_rooms))
        .routes(routes!(
            rooms::get_room,
            rooms::update_room,
            rooms::delete_room
        ))
        .routes(routes!(rooms::invite_user))
        .routes(routes!(
            rooms::create_invite_code,
            rooms::delete_invite_code
        ))
        .routes(routes!(rooms::redeem_invite))
        .routes(routes!(h_chat::get_chat_room))
        .routes(routes!(h_chat::post_message))
        .routes(routes!(h_chat::delete_message))
        .routes(with_limit(
            routes!(h_chat::upload_voice),
            config.max_voice_bytes + MULTIPART_OVERHEAD,
        ))
        .routes(with_limit(
            routes!(h_chat::upload_image),
            config.max_image_bytes + MULTIPART_OVERHEAD,
        ))
        .routes(routes!(h_chat::get_voice))
        .routes(routes!(h_chat::get_image))
        .routes(routes!(health::health))
        .routes(routes!(health::ready))
        .routes(routes!(openapi_json))
}

/// The OpenAPI 3 document of every route, generated from the handlers' annotations.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = documented_routes(&ApiConfig::default()).into_openapi();
    apply_conventions(&mut doc);
    doc
}

/// Routes that take no access token (login, refresh and logout read their own
/// credentials; the rest are public).
const PUBLIC_ROUTES: &[&str] = &[
    "/api/send-otp",
    "/api/verify-otp",
    "/api/refresh",
    "/api/logout",
    "/storage/{fileId}",
    "/api/health",
    "/api/ready",
    "/api/openapi.json",
];

/// What holds for every operation and is therefore not repeated in each annotation:
/// the two ways to present the access token (security schemes `bearer` and `cookie`)
/// and the 401 of every authenticated route, and the 400/413/415 of every JSON body
/// (malformed JSON, over the body limit, wrong content type).
fn apply_conventions(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::security::{
        ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
    };
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT")
                .description(Some("Access token from verify-otp or refresh"))
                .build(),
        ),
    );
    components.add_security_scheme(
        "cookie",
        SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
            "accessToken",
            "The access token cookie set by verify-otp and refresh (browsers)",
        ))),
    );
    for (path, item) in doc.paths.paths.iter_mut() {
        let public = PUBLIC_ROUTES.contains(&path.as_str());
        for op in [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.patch,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
        {
            if !public {
                op.security = Some(vec![
                    SecurityRequirement::new("bearer", Vec::<String>::new()),
                    SecurityRequirement::new("cookie", Vec::<String>::new()),
                ]);
                add_error(op, "401", "missing, invalid or expired access token");
            }
            let json_body = op.request_body.as_ref().is_some_and(|b| match b {
                utoipa::openapi::RefOr::T(b) => b.content.contains_key("application/json"),
                utoipa::openapi::RefOr::Ref(_) => false,
            });
            if json_body {
                add_error(op, "400", "malformed JSON or invalid fields");
                add_error(op, "413", "request body too large");
                add_error(op, "415", "Content-Type is not application/json");
            }
        }
    }
}

/// Adds an `ErrorBody` response for `status` unless the operation documents it already.
fn add_error(op: &mut utoipa::openapi::path::Operation, status: &str, description: &str) {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    op.responses
        .responses
        .entry(status.to_owned())
        .or_insert_with(|| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
                .into()
        });
}

async fn route_not_found() -> ApiError {
    ApiError::NotFound("route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Every control-plane route, with CORS, body limits and JSON errors. The binary merges
/// it with the signaling and static routes and serves it with
/// `into_make_service_with_connect_info::<SocketAddr>()` (rate limits key on the peer IP).
pub fn router(state: AppState) -> Router {
    let (routes, mut doc) = documented_routes(&state.config).split_for_parts();
    apply_conventions(&mut doc);
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    let doc_json = serde_json::to_string(&doc).unwrap_or_else(|_| "{}".to_owned());
    let cors = cors_layer(&state.config.cors_origins);
    let router = routes
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::Extension(OpenApiJson(std::sync::Arc::new(doc_json))))
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state);
    match cors {
        Some(c) => router.layer(c),
        None => router,
    }
}

fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    let origins: Vec<HeaderValue> = origins
        .iter()
        .map(|o| o.trim().trim_end_matches('/'))
        .filter(|o| !o.is_empty() && *o != "*")
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    if origins.is_empty() {
        return None;
    }
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_credentials(true)
            .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
            .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION, header::RANGE])
            .expose_headers([
                HeaderName::from_static("x-next-cursor"),
                header::LINK,
                header::RETRY_AFTER,
                header::CONTENT_RANGE,
            ]),
    )
}
