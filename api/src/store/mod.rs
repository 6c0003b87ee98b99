//! Storage: the traits the control plane needs from a database, and their two
//! implementations (embedded SQLite, the default; MongoDB when `MONGO_URI` is set).
//!
//! The traits speak in domain types only. Ids are typed ([`crate::ids`]) and generated
//! by the caller ([`new_id`]) so both stores share one id format (24 lowercase hex characters,
//! the shape of a MongoDB ObjectId, which keeps the reference clients' URLs
//! looking the same). Every implementation must pass the contract suite in
//! `api/tests/store_contract.rs`.
//!
//! Conventions both stores follow (the contract suite checks them):
//! - Timestamps are kept to the millisecond (MongoDB's precision) and come back in UTC.
//! - Operations on a room that does not exist (`add_room_invite`, `set_invite_code`,
//!   `touch_room`, `insert_message`, `put_blob` with a `room_id`) fail with `NotFound`;
//!   `get_*`, `update_room_topic` and `delete_*` report absence with `None`/`false`.
//! - A duplicate id on insert is `Conflict`.

pub mod mongo;
pub mod sqlite;
pub mod timed;

pub use mongo::{MongoSettings, MongoStore};
pub use sqlite::SqliteStore;
pub use timed::{StoreObserver, Timed};

pub use crate::ids::{FamilyId, FileId, MessageId, RoomId, UserId, new_id};

use std::ops::Range;
use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub id: UserId,
    /// E.164. Never serialised to anyone but the user themself.
    pub phone: String,
    pub name: Option<String>,
    pub avatar: Option<FileId>,
    pub activated: bool,
    pub created_at: OffsetDateTime,
}

/// A pending phone-login code. Only hashes are stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtpChallenge {
    /// SHA-256 of the opaque handle given to the client (the `hash` field).
    pub handle_hash: Vec<u8>,
    pub phone: String,
    /// Keyed hash of the code (HMAC with a server secret), compared in constant time.
    pub code_hash: Vec<u8>,
    pub expires_at: OffsetDateTime,
    pub attempts_left: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefreshToken {
    /// SHA-256 of the token; the token itself is never stored.
    pub token_hash: Vec<u8>,
    pub family: FamilyId,
    pub user_id: UserId,
    pub expires_at: OffsetDateTime,
    /// Set when the token was rotated or revoked; presenting it again is reuse.
    pub used: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RoomType {
    /// Listed, anyone may join.
    Open,
    /// Unlisted, anyone with the link may join.
    Social,
    /// Only the owner, invited users, and users who redeemed the invite code.
    Private,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Room {
    pub id: RoomId,
    pub topic: String,
    pub room_type: RoomType,
    pub owner_id: UserId,
    /// Users allowed into a private room besides the owner.
    pub invited: Vec<UserId>,
    /// Secret code that admits whoever redeems it (private rooms).
    pub invite_code: Option<String>,
    pub created_at: OffsetDateTime,
    /// Last message, upload or join; rooms idle past the expiry are deleted.
    pub last_activity: OffsetDateTime,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageType {
    Text,
    Voice,
    Image,
    /// System notice: someone joined the call.
    CallNotification,
    /// System notice: someone left the call.
    CallEnded,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub id: MessageId,
    pub room_id: RoomId,
    pub author_id: UserId,
    pub author_name: String,
    pub kind: MessageType,
    pub text: String,
    pub attachment: Option<FileId>,
    pub created_at: OffsetDateTime,
}

/// Pagination cursor for message history: strictly older than this message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageCursor {
    pub created_at: OffsetDateTime,
    pub id: MessageId,
}

/// Pagination cursor for the open-room listing: a position in (created_at, id) order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomCursor {
    pub created_at: OffsetDateTime,
    pub id: RoomId,
}

impl RoomCursor {
    /// The position just after `room`.
    pub fn after(room: &Room) -> Self {
        Self {
            created_at: room.created_at,
            id: room.id.clone(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobKind {
    Voice,
    Image,
    Avatar,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobMeta {
    pub id: FileId,
    pub kind: BlobKind,
    /// Decided by sniffing the bytes at upload, never taken from the client.
    pub content_type: String,
    pub len: u64,
    /// The room the bytes belong to (voice, image); None for avatars.
    pub room_id: Option<RoomId>,
    pub created_at: OffsetDateTime,
}

pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, StoreError>> + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique constraint would be violated (e.g. a room id already taken).
    #[error("already exists")]
    Conflict,
    #[error("not found")]
    NotFound,
    /// The database cannot be reached right now (down, unreachable, shutting down, or
    /// an operation past its deadline); worth retrying later. Logged, never shown.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// Anything from the database itself; logged, never shown to clients.
    #[error("database error: {0}")]
    Backend(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

#[async_trait]
pub trait UserStore: Send + Sync {
    /// Returns the user with this phone, creating it (not activated) on first login.
    async fn find_or_create_user(&self, phone: &str, now: OffsetDateTime) -> StoreResult<User>;
    async fn get_user(&self, id: &UserId) -> StoreResult<Option<User>>;
    /// The users that exist among `ids`, in no particular order (unknown ids are skipped,
    /// duplicates collapse).
    async fn get_users(&self, ids: &[UserId]) -> StoreResult<Vec<User>>;
    /// Sets name and avatar and marks the user activated. The previous avatar's bytes are
    /// deleted when replaced. `avatar: None` keeps the current avatar. `NotFound` for an
    /// unknown user.
    async fn activate_user(
        &self,
        id: &UserId,
        name: &str,
        avatar: Option<FileId>,
    ) -> StoreResult<User>;
}

#[async_trait]
pub trait OtpStore: Send + Sync {
    async fn put_otp(&self, challenge: OtpChallenge) -> StoreResult<()>;
    async fn get_otp(&self, handle_hash: &[u8]) -> StoreResult<Option<OtpChallenge>>;
    /// Atomically decrements the attempt counter; returns the remaining attempts, or None if
    /// the challenge no longer exists. `Some(n)` means this caller was granted one check of
    /// the code (n tries remain after it); a challenge whose counter is already 0 grants
    /// nothing and also returns None.
    async fn spend_otp_attempt(&self, handle_hash: &[u8]) -> StoreResult<Option<u32>>;
    /// Deletes the challenge; returns whether it existed (single use: only one caller wins).
    async fn consume_otp(&self, handle_hash: &[u8]) -> StoreResult<bool>;
    async fn purge_expired_otps(&self, now: OffsetDateTime) -> StoreResult<u64>;
}

#[async_trait]
pub trait SessionStore: Send + Sync {
    async fn put_refresh_token(&self, token: RefreshToken) -> StoreResult<()>;
    async fn get_refresh_token(&self, token_hash: &[u8]) -> StoreResult<Option<RefreshToken>>;
    /// Atomically marks the token used; returns true if this call did it (false if it was
    /// already used, i.e. reuse, or does not exist).
    async fn mark_refresh_token_used(&self, token_hash: &[u8]) -> StoreResult<bool>;
    /// Revokes every token of a login (logout, or reuse detected): all are marked used.
    async fn revoke_family(&self, family: &FamilyId) -> StoreResult<()>;
    async fn purge_expired_refresh_tokens(&self, now: OffsetDateTime) -> StoreResult<u64>;
}

#[async_trait]
pub trait RoomStore: Send + Sync {
    /// Fails with Conflict if the id is taken.
    async fn create_room(&self, room: Room) -> StoreResult<()>;
    async fn get_room(&self, id: &RoomId) -> StoreResult<Option<Room>>;
    /// Open rooms, newest first (by `created_at`, ties by id descending), strictly after
    /// the position `after` (the last room of the previous page). The position does not
    /// need to be a room that exists: a room deleted since still marks its place, and a
    /// cursor reveals nothing about the room it names.
    async fn list_open_rooms(
        &self,
        after: Option<&RoomCursor>,
        limit: u32,
    ) -> StoreResult<Vec<Room>>;
    async fn update_room_topic(&self, id: &RoomId, topic: &str) -> StoreResult<Option<Room>>;
    /// Idempotent: inviting twice keeps one entry.
    async fn add_room_invite(&self, id: &RoomId, user: &UserId) -> StoreResult<()>;
    async fn set_invite_code(&self, id: &RoomId, code: Option<&str>) -> StoreResult<()>;
    /// Moves `last_activity` forward to `now` (never backwards).
    async fn touch_room(&self, id: &RoomId, now: OffsetDateTime) -> StoreResult<()>;
    /// Deletes the room, its messages and all their stored bytes. Returns whether it existed.
    async fn delete_room(&self, id: &RoomId) -> StoreResult<bool>;
    /// Deletes rooms idle since before `cutoff` (with messages and bytes), and messages/bytes
    /// left behind by rooms that no longer exist (e.g. removed by a MongoDB TTL index).
    /// Returns the number of rooms removed.
    async fn expire_rooms(&self, cutoff: OffsetDateTime) -> StoreResult<u64>;
}

#[async_trait]
pub trait MessageStore: Send + Sync {
    /// Also counts as room activity (`last_activity` moves forward to `created_at`).
    async fn insert_message(&self, msg: Message) -> StoreResult<()>;
    async fn get_message(&self, id: &MessageId) -> StoreResult<Option<Message>>;
    /// Newest first (by `created_at`, ties by id descending), strictly older than `before`
    /// when given.
    async fn list_messages(
        &self,
        room: &RoomId,
        before: Option<&MessageCursor>,
        limit: u32,
    ) -> StoreResult<Vec<Message>>;
    /// Deletes the message and its attachment bytes. Returns the deleted message.
    async fn delete_message(&self, id: &MessageId) -> StoreResult<Option<Message>>;
}

#[async_trait]
pub trait BlobStore: Send + Sync {
    /// Stores the bytes; the stored length is `bytes.len()` (`meta.len` is ignored).
    async fn put_blob(&self, meta: BlobMeta, bytes: Bytes) -> StoreResult<()>;
    async fn get_blob_meta(&self, id: &FileId) -> StoreResult<Option<BlobMeta>>;
    /// Streams the bytes in `range` (already validated against the length by the caller;
    /// an out-of-bounds range is an error, never a panic). `NotFound` for an unknown id.
    async fn read_blob(&self, id: &FileId, range: Range<u64>) -> StoreResult<ByteStream>;
    async fn delete_blob(&self, id: &FileId) -> StoreResult<bool>;
}

/// Readiness: a cheap round trip to the database.
#[async_trait]
pub trait Health: Send + Sync {
    async fn ping(&self) -> StoreResult<()>;
}

/// Everything the control plane needs; both implementations provide all of it.
pub trait Store:
    UserStore + OtpStore + SessionStore + RoomStore + MessageStore + BlobStore + Health
{
}
impl<T> Store for T where
    T: UserStore + OtpStore + SessionStore + RoomStore + MessageStore + BlobStore + Health
{
}

impl RoomType {
    pub fn as_str(self) -> &'static str {
        match self {
            RoomType::Open => "open",
            RoomType::Social => "social",
            RoomType::Private => "private",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "open" => RoomType::Open,
            "social" => RoomType::Social,
            "private" => RoomType::Private,
            _ => return None,
        })
    }
}

impl MessageType {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::Text => "text",
            MessageType::Voice => "voice",
            MessageType::Image => "image",
            MessageType::CallNotification => "call_notification",
            MessageType::CallEnded => "call_ended",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "text" => MessageType::Text,
            "voice" => MessageType::Voice,
            "image" => MessageType::Image,
            "call_notification" => MessageType::CallNotification,
            "call_ended" => MessageType::CallEnded,
            _ => return None,
        })
    }
}

impl BlobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BlobKind::Voice => "voice",
            BlobKind::Image => "image",
            BlobKind::Avatar => "avatar",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "voice" => BlobKind::Voice,
            "image" => BlobKind::Image,
            "avatar" => BlobKind::Avatar,
            _ => return None,
        })
    }
}

/// Milliseconds since the Unix epoch: the precision both stores keep.
pub(crate) fn to_millis(t: OffsetDateTime) -> i64 {
    // i128 nanoseconds / 1e6 fits i64 for every year OffsetDateTime can represent.
    (t.unix_timestamp_nanos().div_euclid(1_000_000)) as i64
}

pub(crate) fn from_millis(ms: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
}

/// Which stored chunks a byte range touches, and which part of each: shared by both
/// stores' `read_blob`, which keep blobs in fixed-size chunks.
#[derive(Clone, Debug)]
pub(crate) struct ChunkPlan {
    pos: u64,
    end: u64,
    chunk: u64,
}

impl ChunkPlan {
    pub(crate) fn new(range: Range<u64>, len: u64, chunk: u64) -> StoreResult<Self> {
        if range.start > range.end || range.end > len || chunk == 0 {
            return Err(StoreError::Backend(format!(
                "range {}..{} outside blob of {len} bytes",
                range.start, range.end
            )));
        }
        Ok(Self {
            pos: range.start,
            end: range.end,
            chunk,
        })
    }

    /// The next chunk index and the byte range wanted within that chunk.
    pub(crate) fn next_chunk(&mut self) -> Option<(u64, Range<u64>)> {
        if self.pos >= self.end {
            return None;
        }
        let n = self.pos / self.chunk;
        let chunk_start = n * self.chunk;
        let from = self.pos - chunk_start;
        let to = (self.end - chunk_start).min(self.chunk);
        self.pos = chunk_start + to;
        Some((n, from..to))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_plan_splits_a_range_at_chunk_boundaries() {
        let mut p = ChunkPlan::new(5..25, 30, 10).expect("valid range");
        assert_eq!(p.next_chunk(), Some((0, 5..10)));
        assert_eq!(p.next_chunk(), Some((1, 0..10)));
        assert_eq!(p.next_chunk(), Some((2, 0..5)));
        assert_eq!(p.next_chunk(), None);
    }

    #[test]
    fn chunk_plan_of_an_empty_range_yields_nothing() {
        let mut p = ChunkPlan::new(7..7, 30, 10).expect("valid range");
        assert_eq!(p.next_chunk(), None);
    }

    #[test]
    fn chunk_plan_refuses_ranges_outside_the_blob() {
        assert!(ChunkPlan::new(0..31, 30, 10).is_err());
        let backwards = std::ops::Range { start: 9, end: 8 };
        assert!(ChunkPlan::new(backwards, 30, 10).is_err());
    }

    #[test]
    fn millis_round_trip_truncates_below_a_millisecond() {
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789)
            .expect("valid time");
        let back = from_millis(to_millis(t)).expect("in range");
        assert_eq!(back.unix_timestamp_nanos(), 1_700_000_000_123_000_000);
        let before_epoch = OffsetDateTime::from_unix_timestamp_nanos(-1_500_000).expect("valid");
        assert_eq!(to_millis(before_epoch), -2);
    }

    #[test]
    fn enum_spellings_round_trip() {
        for t in [RoomType::Open, RoomType::Social, RoomType::Private] {
            assert_eq!(RoomType::parse(t.as_str()), Some(t));
        }
        for t in [
            MessageType::Text,
            MessageType::Voice,
            MessageType::Image,
            MessageType::CallNotification,
            MessageType::CallEnded,
        ] {
            assert_eq!(MessageType::parse(t.as_str()), Some(t));
        }
        for k in [BlobKind::Voice, BlobKind::Image, BlobKind::Avatar] {
            assert_eq!(BlobKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(RoomType::parse("Open"), None);
    }
}
