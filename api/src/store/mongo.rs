//! The MongoDB store (used when `MONGO_URI` is set), on the official `mongodb` driver.
//!
//! Owns the collection layout and the indexes; the documents are serde types (`docs`):
//! - `users` `{_id, phone, name, avatar, activated, createdAt}`, unique on `phone`;
//! - `otps` `{_id: handleHash, phone, codeHash, expiresAt, attemptsLeft}` and
//!   `refresh_tokens` `{_id: tokenHash, family, userId, expiresAt, used}`, each with a
//!   TTL index on `expiresAt` as a backstop to the explicit purges (with a grace period,
//!   so a purge still sees what it is asked to remove);
//! - `rooms` `{_id, topic, roomType, ownerId, invited, inviteCode, createdAt,
//!   lastActivity}` with a listing index and a TTL index on `lastActivity` whose
//!   `expireAfterSeconds` is the configured room expiry (as in Chillout);
//! - `messages` `{_id, roomId, authorId, authorName, type, text, attachment, createdAt}`
//!   with the history index `(roomId, createdAt desc, _id desc)`;
//! - GridFS buckets `voices`, `images`, `avatars` (one per [`BlobKind`]) whose files
//!   carry `metadata: {roomId, contentType, kind, createdAt}`.
//!
//! Ids: documents use the trait's 24-hex strings as string `_id`s. GridFS files use
//! ObjectId `_id`s (the same 24 hex digits), the shape GridFS tools and Chillout's
//! existing buckets use; a `FileId` that is not 24 hex digits simply is not found.
//!
//! Atomicity comes from single-document operations (`find_one_and_update` with a
//! guard in the filter, `delete_one` counts). Operations spanning collections (a room
//! and its messages and files) are ordered so that an interruption only ever leaves
//! orphans, which `expire_rooms` sweeps, never a room whose content is half gone.
//!
//! This file holds the connection and the indexes, `docs` the document types; the store
//! traits are implemented in submodules by domain: `auth` (users, login codes, refresh
//! tokens), `rooms`, `messages` and `blobs`.

mod auth;
mod blobs;
mod docs;
mod messages;
mod rooms;

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{AsyncWriteExt, TryStreamExt};
use mongodb::bson::{Bson, Document, doc, oid::ObjectId};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::gridfs::{FilesCollectionDocument, GridFsBucket};
use mongodb::options::{
    ClientOptions, GridFsBucketOptions, IndexOptions, ReturnDocument, WriteConcern,
};
use mongodb::{Client, Collection, Database, IndexModel};
use time::OffsetDateTime;
use tokio::sync::OnceCell;

use self::docs::{
    BlobMetadata, ChunkDoc, MessageDoc, OtpDoc, RoomDoc, TokenDoc, UserDoc, bin,
    bson_millis::to_bson,
};
use super::{
    BlobKind, BlobMeta, BlobStore, ByteStream, ChunkPlan, FamilyId, FileId, Health, Message,
    MessageCursor, MessageId, MessageStore, MessageType, OtpChallenge, OtpStore, RefreshToken,
    Room, RoomCursor, RoomId, RoomStore, RoomType, SessionStore, StoreError, StoreResult, User,
    UserId, UserStore, from_millis, new_id, to_millis,
};

/// The database used when the connection string names none.
pub const DEFAULT_DB_NAME: &str = "chorus";

/// GridFS chunk size for new files (existing files keep the size they were written with).
pub const GRIDFS_CHUNK_SIZE: u32 = 256 * 1024;

/// How long after `expiresAt` the TTL monitor may remove an OTP or refresh token the
/// explicit purges have not. Only a backstop: a purge normally gets there first.
const EXPIRED_GRACE: Duration = Duration::from_secs(3600);

/// How many GridFS chunks a range read asks the server for per round trip: bounds the
/// memory a read holds to a few chunks.
const CHUNK_BATCH: u32 = 2;

const DUPLICATE_KEY: i32 = 11000;

pub use mongodb::options::Acknowledgment;

/// How the store talks to MongoDB beyond what the connection string says: how long to
/// wait for an unreachable server, and which writes count as done.
#[derive(Clone, Debug)]
pub struct MongoSettings {
    /// How long an operation waits for a reachable server (and a new connection for
    /// its handshake) before it fails with [`StoreError::Unavailable`]. The driver's
    /// default, 30 s, turns an outage into requests that hang.
    pub server_selection_timeout: Duration,
    /// Write concern `w`: `majority` (the default) or a number of members.
    pub write_acknowledgment: Acknowledgment,
    /// Write concern `j`: acknowledge a write only once it is in the on-disk journal,
    /// so a database killed right after the acknowledgment still has it.
    pub journal: bool,
}

impl Default for MongoSettings {
    fn default() -> Self {
        Self {
            server_selection_timeout: Duration::from_secs(2),
            write_acknowledgment: Acknowledgment::Majority,
            journal: true,
        }
    }
}

impl MongoSettings {
    /// Parses a write concern `w`: `majority` or a number of members (at least 1).
    pub fn parse_w(w: &str) -> Result<Acknowledgment, String> {
        match w.trim() {
            "majority" => Ok(Acknowledgment::Majority),
            n => match n.parse::<u32>() {
                Ok(n) if n >= 1 => Ok(Acknowledgment::Nodes(n)),
                _ => Err(format!(
                    "write concern w must be `majority` or a number >= 1, not `{w}`"
                )),
            },
        }
    }

    fn apply(&self, options: &mut ClientOptions) {
        options.server_selection_timeout = Some(self.server_selection_timeout);
        options.connect_timeout = Some(self.server_selection_timeout);
        options.write_concern = Some(
            WriteConcern::builder()
                .w(self.write_acknowledgment.clone())
                .journal(self.journal)
                .build(),
        );
    }
}

/// The MongoDB store. Cheap to clone (the driver's handles are reference-counted).
#[derive(Clone, Debug)]
pub struct MongoStore {
    /// Set once the server answered and the indexes exist; until then every operation
    /// first tries to get there, and fails with `Unavailable` if it cannot.
    ready: Arc<OnceCell<()>>,
    room_expiry: Duration,
    db: Database,
    users: Collection<UserDoc>,
    otps: Collection<OtpDoc>,
    tokens: Collection<TokenDoc>,
    rooms: Collection<RoomDoc>,
    messages: Collection<MessageDoc>,
    voices: GridFsBucket,
    images: GridFsBucket,
    avatars: GridFsBucket,
}

impl MongoStore {
    /// Connects, checks the server answers, and creates the indexes. `room_expiry` is
    /// the idle time after which the TTL index deletes a room; a changed value updates
    /// the existing index.
    pub async fn connect(uri: &str, db_name: &str, room_expiry: Duration) -> StoreResult<Self> {
        let mut options = ClientOptions::parse(uri).await.map_err(backend)?;
        MongoSettings::default().apply(&mut options);
        let store = Self::build(options, db_name, room_expiry)?;
        store.ensure_ready().await?;
        Ok(store)
    }

    /// Like [`connect`](Self::connect), with the database named in the URI's path
    /// (`mongodb://host/chillout` uses `chillout`), or [`DEFAULT_DB_NAME`] if it names none.
    pub async fn connect_uri(uri: &str, room_expiry: Duration) -> StoreResult<Self> {
        let store = Self::open(uri, room_expiry, &MongoSettings::default()).await?;
        store.ensure_ready().await?;
        Ok(store)
    }

    /// The store the server runs on: does not wait for the database. Fails only for a
    /// connection string that does not parse. Until the database answers (and the
    /// indexes are made), operations and [`Health::ping`] fail with
    /// [`StoreError::Unavailable`]; a background task keeps trying, so the store becomes
    /// ready on its own once the database is up.
    pub async fn open(
        uri: &str,
        room_expiry: Duration,
        settings: &MongoSettings,
    ) -> StoreResult<Self> {
        let mut options = ClientOptions::parse(uri).await.map_err(backend)?;
        settings.apply(&mut options);
        let db_name = options
            .default_database
            .clone()
            .unwrap_or_else(|| DEFAULT_DB_NAME.to_owned());
        let store = Self::build(options, &db_name, room_expiry)?;
        let background = store.clone();
        tokio::spawn(async move {
            let mut wait = Duration::from_millis(250);
            loop {
                match background.ensure_ready().await {
                    Ok(()) => {
                        tracing::info!("MongoDB reachable; store ready");
                        return;
                    }
                    Err(e) => tracing::warn!(error = %e, "waiting for MongoDB"),
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        });
        Ok(store)
    }

    fn build(options: ClientOptions, db_name: &str, room_expiry: Duration) -> StoreResult<Self> {
        let client = Client::with_options(options).map_err(backend)?;
        let db = client.database(db_name);
        let bucket = |name: &str| {
            db.gridfs_bucket(
                GridFsBucketOptions::builder()
                    .bucket_name(name.to_owned())
                    .chunk_size_bytes(GRIDFS_CHUNK_SIZE)
                    .build(),
            )
        };
        Ok(Self {
            ready: Arc::new(OnceCell::new()),
            room_expiry,
            users: db.collection("users"),
            otps: db.collection("otps"),
            tokens: db.collection("refresh_tokens"),
            rooms: db.collection("rooms"),
            messages: db.collection("messages"),
            voices: bucket("voices"),
            images: bucket("images"),
            avatars: bucket("avatars"),
            db,
        })
    }

    /// The server answered and the indexes exist (made once; concurrent callers wait
    /// for the one making them, and a failure leaves the next caller to try again).
    async fn ensure_ready(&self) -> StoreResult<()> {
        self.ready
            .get_or_try_init(|| async {
                self.db
                    .run_command(doc! { "ping": 1 })
                    .await
                    .map_err(backend)?;
                self.create_indexes(self.room_expiry).await
            })
            .await?;
        Ok(())
    }

    async fn create_indexes(&self, room_expiry: Duration) -> StoreResult<()> {
        let index = |keys: Document, opts: Option<IndexOptions>| {
            IndexModel::builder().keys(keys).options(opts).build()
        };
        let named = |name: &str| IndexOptions::builder().name(name.to_owned());
        self.users
            .create_index(index(
                doc! { "phone": 1 },
                Some(named("phone_unique").unique(true).build()),
            ))
            .await
            .map_err(backend)?;
        for coll in [
            self.otps.clone_with_type::<Document>(),
            self.tokens.clone_with_type::<Document>(),
        ] {
            coll.create_index(index(
                doc! { "expiresAt": 1 },
                Some(named("expires_ttl").expire_after(EXPIRED_GRACE).build()),
            ))
            .await
            .map_err(backend)?;
        }
        self.tokens
            .create_index(index(doc! { "family": 1 }, Some(named("family").build())))
            .await
            .map_err(backend)?;
        self.rooms
            .create_index(index(
                doc! { "roomType": 1, "createdAt": -1, "_id": -1 },
                Some(named("open_listing").build()),
            ))
            .await
            .map_err(backend)?;
        self.ensure_room_ttl(room_expiry).await?;
        self.messages
            .create_index(index(
                doc! { "roomId": 1, "createdAt": -1, "_id": -1 },
                Some(named("history").build()),
            ))
            .await
            .map_err(backend)?;
        for kind in [BlobKind::Voice, BlobKind::Image, BlobKind::Avatar] {
            let name = bucket_name(kind);
            // The indexes GridFS drivers create lazily on first upload, created here so
            // range reads (files_id, n) are indexed from the start.
            self.db
                .collection::<Document>(&format!("{name}.chunks"))
                .create_index(index(
                    doc! { "files_id": 1, "n": 1 },
                    Some(IndexOptions::builder().unique(true).build()),
                ))
                .await
                .map_err(backend)?;
            let files = self.db.collection::<Document>(&format!("{name}.files"));
            files
                .create_index(index(doc! { "filename": 1, "uploadDate": 1 }, None))
                .await
                .map_err(backend)?;
            files
                .create_index(index(
                    doc! { "metadata.roomId": 1 },
                    Some(named("room").build()),
                ))
                .await
                .map_err(backend)?;
        }
        Ok(())
    }

    /// Creates the rooms TTL index, or changes its expiry if it exists with another one
    /// (createIndexes refuses to change options; collMod can).
    async fn ensure_room_ttl(&self, room_expiry: Duration) -> StoreResult<()> {
        let secs = i64::try_from(room_expiry.as_secs()).unwrap_or(i64::MAX);
        let model = IndexModel::builder()
            .keys(doc! { "lastActivity": 1 })
            .options(
                IndexOptions::builder()
                    .name("last_activity_ttl".to_owned())
                    .expire_after(Duration::from_secs(secs as u64))
                    .build(),
            )
            .build();
        match self.rooms.create_index(model).await {
            Ok(_) => Ok(()),
            Err(e) if matches!(error_code(&e), Some(85) | Some(86)) => {
                self.db
                    .run_command(doc! {
                        "collMod": "rooms",
                        "index": { "name": "last_activity_ttl", "expireAfterSeconds": secs },
                    })
                    .await
                    .map_err(backend)?;
                Ok(())
            }
            Err(e) => Err(backend(e)),
        }
    }

    fn bucket(&self, kind: BlobKind) -> &GridFsBucket {
        match kind {
            BlobKind::Voice => &self.voices,
            BlobKind::Image => &self.images,
            BlobKind::Avatar => &self.avatars,
        }
    }

    fn chunks(&self, kind: BlobKind) -> Collection<ChunkDoc> {
        self.db.collection(&format!("{}.chunks", bucket_name(kind)))
    }

    /// Finds a file in whichever bucket holds it (the id alone does not say which).
    async fn find_file(
        &self,
        id: &FileId,
    ) -> StoreResult<Option<(BlobKind, FilesCollectionDocument)>> {
        let Some(oid) = file_oid(id) else {
            return Ok(None);
        };
        let lookups = [BlobKind::Voice, BlobKind::Image, BlobKind::Avatar].map(|kind| async move {
            let found = self
                .bucket(kind)
                .find_one(doc! { "_id": oid })
                .await
                .map_err(backend)?;
            Ok::<_, StoreError>(found.map(|f| (kind, f)))
        });
        let [a, b, c] = lookups;
        let (a, b, c) = futures::try_join!(a, b, c)?;
        Ok(a.or(b).or(c))
    }

    async fn room_exists(&self, id: &str) -> StoreResult<bool> {
        Ok(self
            .rooms
            .clone_with_type::<Document>()
            .find_one(doc! { "_id": id })
            .projection(doc! { "_id": 1 })
            .await
            .map_err(backend)?
            .is_some())
    }

    /// Deletes the messages and GridFS files of the given rooms.
    async fn delete_room_content(&self, rooms: &[String]) -> StoreResult<()> {
        if rooms.is_empty() {
            return Ok(());
        }
        self.messages
            .delete_many(doc! { "roomId": { "$in": rooms } })
            .await
            .map_err(backend)?;
        for kind in [BlobKind::Voice, BlobKind::Image, BlobKind::Avatar] {
            let files: Vec<FilesCollectionDocument> = self
                .bucket(kind)
                .find(doc! { "metadata.roomId": { "$in": rooms } })
                .await
                .map_err(backend)?
                .try_collect()
                .await
                .map_err(backend)?;
            for f in files {
                self.delete_file(kind, f.id).await?;
            }
        }
        Ok(())
    }

    /// GridFS delete that treats "already gone" as done (a concurrent delete won).
    async fn delete_file(&self, kind: BlobKind, id: Bson) -> StoreResult<bool> {
        match self.bucket(kind).delete(id).await {
            Ok(()) => Ok(true),
            Err(e) if matches!(*e.kind, ErrorKind::GridFs(_)) => Ok(false),
            Err(e) => Err(backend(e)),
        }
    }

    /// Room ids referenced by `field` of `coll` whose room document no longer exists.
    async fn orphaned_rooms<T: Send + Sync>(
        &self,
        coll: &Collection<T>,
        field: &str,
    ) -> StoreResult<Vec<String>> {
        let referenced: Vec<String> = coll
            .distinct(field, doc! {})
            .await
            .map_err(backend)?
            .into_iter()
            .filter_map(|b| match b {
                Bson::String(s) => Some(s),
                _ => None,
            })
            .collect();
        let mut orphans = Vec::new();
        for batch in referenced.chunks(1000) {
            let existing: Vec<String> = self
                .rooms
                .distinct("_id", doc! { "_id": { "$in": batch } })
                .await
                .map_err(backend)?
                .into_iter()
                .filter_map(|b| match b {
                    Bson::String(s) => Some(s),
                    _ => None,
                })
                .collect();
            orphans.extend(batch.iter().filter(|id| !existing.contains(id)).cloned());
        }
        Ok(orphans)
    }
}

fn bucket_name(kind: BlobKind) -> &'static str {
    match kind {
        BlobKind::Voice => "voices",
        BlobKind::Image => "images",
        BlobKind::Avatar => "avatars",
    }
}

fn file_oid(id: &FileId) -> Option<ObjectId> {
    // ObjectId::parse_str accepts upper case too; FileIds are lower case, so refuse
    // anything else rather than alias two spellings to one file.
    let id = id.as_str();
    if id.len() == 24 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        ObjectId::parse_str(id).ok()
    } else {
        None
    }
}

/// MongoDB errors that mean "cannot reach a usable server right now" (no server to
/// select, connections lost or refused, a server shutting down or stepping down):
/// [`StoreError::Unavailable`]. Everything else is a backend failure.
fn backend(e: mongodb::error::Error) -> StoreError {
    /// ShutdownInProgress, InterruptedAtShutdown, InterruptedDueToReplStateChange,
    /// NotWritablePrimary, NotPrimaryNoSecondaryOk, NotPrimaryOrSecondary,
    /// PrimarySteppedDown.
    const UNAVAILABLE_CODES: [i32; 7] = [91, 11600, 11602, 10107, 13435, 13436, 189];
    let unavailable = match e.kind.as_ref() {
        ErrorKind::ServerSelection { .. }
        | ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. } => true,
        _ => error_code(&e).is_some_and(|c| UNAVAILABLE_CODES.contains(&c)),
    };
    if unavailable {
        StoreError::Unavailable(format!("mongodb: {e}"))
    } else {
        StoreError::Backend(format!("mongodb: {e}"))
    }
}

fn error_code(e: &mongodb::error::Error) -> Option<i32> {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        ErrorKind::InsertMany(m) => m
            .write_errors
            .as_ref()
            .and_then(|errs| errs.first())
            .map(|w| w.code),
        _ => None,
    }
}

/// Duplicate keys are Conflicts; everything else is a backend failure.
fn map_write(e: mongodb::error::Error) -> StoreError {
    if error_code(&e) == Some(DUPLICATE_KEY) {
        StoreError::Conflict
    } else {
        backend(e)
    }
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Backend(format!("mongodb: malformed document: {what}"))
}

fn blob_from(kind: BlobKind, f: &FilesCollectionDocument) -> StoreResult<BlobMeta> {
    let id = match &f.id {
        Bson::ObjectId(oid) => FileId::parse(oid.to_hex()).map_err(|_| corrupt("files._id"))?,
        Bson::String(s) => FileId::parse(s.as_str()).map_err(|_| corrupt("files._id"))?,
        _ => return Err(corrupt("files._id")),
    };
    let meta: BlobMetadata = match &f.metadata {
        Some(m) => mongodb::bson::from_document(m.clone())
            .map_err(|e| corrupt(&format!("files.metadata: {e}")))?,
        None => BlobMetadata::default(),
    };
    let created_at = meta
        .created_at
        .or_else(|| from_millis(f.upload_date.timestamp_millis()))
        .ok_or_else(|| corrupt("files.uploadDate"))?;
    Ok(BlobMeta {
        id,
        kind,
        // Files written by other tools may lack it; never guess a type to serve.
        content_type: meta
            .content_type
            .unwrap_or_else(|| "application/octet-stream".to_owned()),
        len: f.length,
        room_id: meta.room_id,
        created_at,
    })
}

/// Every document a cursor yields, converted to its domain type.
async fn collect_docs<D, T>(cursor: mongodb::Cursor<D>) -> StoreResult<Vec<T>>
where
    D: serde::de::DeserializeOwned + Send + Sync + Unpin,
    T: From<D>,
{
    let docs: Vec<D> = cursor.try_collect().await.map_err(backend)?;
    Ok(docs.into_iter().map(T::from).collect())
}

#[async_trait]
impl Health for MongoStore {
    async fn ping(&self) -> StoreResult<()> {
        self.ensure_ready().await?;
        self.db
            .run_command(doc! { "ping": 1 })
            .await
            .map_err(backend)?;
        Ok(())
    }
}
