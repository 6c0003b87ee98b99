//! The stored documents, as serde types: each collection is a typed `Collection<T>`, so
//! reads and writes go through these derives rather than field-by-field mapping. The
//! shapes are the ones listed in the parent module's documentation; a document that
//! does not fit (a missing or mistyped required field, a malformed id) fails to
//! deserialize, which the store reports as a backend failure.
//!
//! Readers are as lenient as the stored data may need: flags missing or null read as
//! `false`, lists missing or null as empty, counters of any integral BSON number type.

use mongodb::bson::{Binary, Bson, DateTime, spec::BinarySubtype};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;

use super::{
    BlobKind, FamilyId, FileId, Message, MessageId, MessageType, OtpChallenge, RefreshToken, Room,
    RoomId, RoomType, StoreError, StoreResult, User, UserId, from_millis, to_millis,
};

/// `users`. Only read through this type: users are written by upserts and `$set`s.
#[derive(Debug, Deserialize)]
pub(super) struct UserDoc {
    #[serde(rename = "_id")]
    id: UserId,
    phone: String,
    name: Option<String>,
    avatar: Option<FileId>,
    #[serde(default, deserialize_with = "null_as_default")]
    activated: bool,
    #[serde(rename = "createdAt", with = "bson_millis")]
    created_at: OffsetDateTime,
}

impl From<UserDoc> for User {
    fn from(d: UserDoc) -> Self {
        User {
            id: d.id,
            phone: d.phone,
            name: d.name,
            avatar: d.avatar,
            activated: d.activated,
            created_at: d.created_at,
        }
    }
}

/// `otps`, keyed by the hash of the handle given to the client.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct OtpDoc {
    #[serde(rename = "_id")]
    handle_hash: Binary,
    phone: String,
    #[serde(rename = "codeHash")]
    code_hash: Binary,
    #[serde(rename = "expiresAt", with = "bson_millis")]
    expires_at: OffsetDateTime,
    #[serde(rename = "attemptsLeft", deserialize_with = "integral")]
    attempts_left: i64,
}

impl From<&OtpChallenge> for OtpDoc {
    fn from(c: &OtpChallenge) -> Self {
        OtpDoc {
            handle_hash: bin(&c.handle_hash),
            phone: c.phone.clone(),
            code_hash: bin(&c.code_hash),
            expires_at: c.expires_at,
            attempts_left: i64::from(c.attempts_left),
        }
    }
}

impl TryFrom<OtpDoc> for OtpChallenge {
    type Error = StoreError;
    fn try_from(d: OtpDoc) -> StoreResult<Self> {
        Ok(OtpChallenge {
            handle_hash: generic_bytes(d.handle_hash, "_id")?,
            phone: d.phone,
            code_hash: generic_bytes(d.code_hash, "codeHash")?,
            expires_at: d.expires_at,
            attempts_left: u32::try_from(d.attempts_left.max(0)).unwrap_or(0),
        })
    }
}

/// `refresh_tokens`, keyed by the token's hash.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct TokenDoc {
    #[serde(rename = "_id")]
    token_hash: Binary,
    family: FamilyId,
    #[serde(rename = "userId")]
    user_id: UserId,
    #[serde(rename = "expiresAt", with = "bson_millis")]
    expires_at: OffsetDateTime,
    #[serde(default, deserialize_with = "null_as_default")]
    used: bool,
}

impl From<&RefreshToken> for TokenDoc {
    fn from(t: &RefreshToken) -> Self {
        TokenDoc {
            token_hash: bin(&t.token_hash),
            family: t.family.clone(),
            user_id: t.user_id.clone(),
            expires_at: t.expires_at,
            used: t.used,
        }
    }
}

impl TryFrom<TokenDoc> for RefreshToken {
    type Error = StoreError;
    fn try_from(d: TokenDoc) -> StoreResult<Self> {
        Ok(RefreshToken {
            token_hash: generic_bytes(d.token_hash, "_id")?,
            family: d.family,
            user_id: d.user_id,
            expires_at: d.expires_at,
            used: d.used,
        })
    }
}

/// `rooms`. `inviteCode` is written as null when unset, as it always was.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct RoomDoc {
    #[serde(rename = "_id")]
    id: RoomId,
    topic: String,
    #[serde(rename = "roomType")]
    room_type: RoomType,
    #[serde(rename = "ownerId")]
    owner_id: UserId,
    #[serde(default, deserialize_with = "null_as_default")]
    invited: Vec<UserId>,
    #[serde(rename = "inviteCode")]
    invite_code: Option<String>,
    #[serde(rename = "createdAt", with = "bson_millis")]
    created_at: OffsetDateTime,
    #[serde(rename = "lastActivity", with = "bson_millis")]
    last_activity: OffsetDateTime,
}

impl From<Room> for RoomDoc {
    fn from(r: Room) -> Self {
        RoomDoc {
            id: r.id,
            topic: r.topic,
            room_type: r.room_type,
            owner_id: r.owner_id,
            invited: r.invited,
            invite_code: r.invite_code,
            created_at: r.created_at,
            last_activity: r.last_activity,
        }
    }
}

impl From<RoomDoc> for Room {
    fn from(d: RoomDoc) -> Self {
        Room {
            id: d.id,
            topic: d.topic,
            room_type: d.room_type,
            owner_id: d.owner_id,
            invited: d.invited,
            invite_code: d.invite_code,
            created_at: d.created_at,
            last_activity: d.last_activity,
        }
    }
}

/// `messages`. `attachment` is written as null when there is none.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct MessageDoc {
    #[serde(rename = "_id")]
    id: MessageId,
    #[serde(rename = "roomId")]
    room_id: RoomId,
    #[serde(rename = "authorId")]
    author_id: UserId,
    #[serde(rename = "authorName")]
    author_name: String,
    #[serde(rename = "type")]
    kind: MessageType,
    text: String,
    attachment: Option<FileId>,
    #[serde(rename = "createdAt", with = "bson_millis")]
    created_at: OffsetDateTime,
}

impl From<Message> for MessageDoc {
    fn from(m: Message) -> Self {
        MessageDoc {
            id: m.id,
            room_id: m.room_id,
            author_id: m.author_id,
            author_name: m.author_name,
            kind: m.kind,
            text: m.text,
            attachment: m.attachment,
            created_at: m.created_at,
        }
    }
}

impl From<MessageDoc> for Message {
    fn from(d: MessageDoc) -> Self {
        Message {
            id: d.id,
            room_id: d.room_id,
            author_id: d.author_id,
            author_name: d.author_name,
            kind: d.kind,
            text: d.text,
            attachment: d.attachment,
            created_at: d.created_at,
        }
    }
}

/// The `metadata` of a GridFS file. Files written by other tools may lack any of it:
/// a missing or unreadable `createdAt` falls back to the upload date.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct BlobMetadata {
    #[serde(rename = "roomId")]
    pub room_id: Option<RoomId>,
    #[serde(rename = "contentType")]
    pub content_type: Option<String>,
    /// Written for tools reading the bucket; the store knows the kind from the bucket.
    #[serde(default, skip_deserializing)]
    pub kind: Option<BlobKind>,
    #[serde(
        rename = "createdAt",
        default,
        serialize_with = "bson_millis::serialize_opt",
        deserialize_with = "bson_millis::deserialize_lenient"
    )]
    pub created_at: Option<OffsetDateTime>,
}

/// A GridFS chunk, as far as a range read needs it.
#[derive(Debug, Deserialize)]
pub(super) struct ChunkDoc {
    #[serde(deserialize_with = "integral")]
    pub n: i64,
    pub data: Binary,
}

impl ChunkDoc {
    pub fn into_bytes(self) -> StoreResult<Vec<u8>> {
        generic_bytes(self.data, "data")
    }
}

/// Bytes as a generic BSON binary (hash keys in filters and documents).
pub(super) fn bin(bytes: &[u8]) -> Binary {
    Binary {
        subtype: BinarySubtype::Generic,
        bytes: bytes.to_vec(),
    }
}

/// The bytes of a generic binary; any other subtype is corruption.
fn generic_bytes(b: Binary, field: &str) -> StoreResult<Vec<u8>> {
    if b.subtype == BinarySubtype::Generic {
        Ok(b.bytes)
    } else {
        Err(StoreError::Backend(format!(
            "mongodb: malformed document: {field}"
        )))
    }
}

/// Null (or, with `#[serde(default)]`, a missing field) reads as the default.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// An integer stored as any BSON number type (other tools write doubles).
fn integral<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    match Bson::deserialize(d)? {
        Bson::Int32(n) => Ok(i64::from(n)),
        Bson::Int64(n) => Ok(n),
        Bson::Double(n) if n.fract() == 0.0 => Ok(n as i64),
        other => Err(serde::de::Error::custom(format!(
            "expected an integer, found {other}"
        ))),
    }
}

/// `OffsetDateTime` as a BSON datetime: milliseconds since the epoch, rounded down as
/// [`to_millis`] does (what the store has always written).
pub(super) mod bson_millis {
    use super::*;

    pub fn to_bson(t: OffsetDateTime) -> DateTime {
        DateTime::from_millis(to_millis(t))
    }

    pub fn serialize<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
        to_bson(*t).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
        let t = DateTime::deserialize(d)?;
        from_millis(t.timestamp_millis())
            .ok_or_else(|| serde::de::Error::custom("datetime out of range"))
    }

    pub fn serialize_opt<S: Serializer>(
        t: &Option<OffsetDateTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        t.map(to_bson).serialize(s)
    }

    /// Anything that is not a representable datetime reads as absent.
    pub fn deserialize_lenient<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<OffsetDateTime>, D::Error> {
        Ok(match Bson::deserialize(d)? {
            Bson::DateTime(t) => from_millis(t.timestamp_millis()),
            _ => None,
        })
    }
}
