//! The embedded store: one SQLite database file (or memory, for tests).
//!
//! Owns the schema and its numbered migrations, the mapping between rows and the
//! domain types, and blob storage in fixed-size chunks (GridFS-like) so a range read
//! touches only the chunks it needs. rusqlite is blocking, so every call runs on
//! tokio's blocking pool; one connection behind a mutex serialises access, which also
//! makes every multi-statement operation below trivially atomic (each runs inside one
//! transaction as well, so a crash never leaves half of one behind).
//!
//! Referential clean-up is done by the database: messages, blobs, chunks and invites
//! reference their room with `ON DELETE CASCADE`, so deleting a room (by hand or by
//! expiry) removes everything that belonged to it in the same statement.
//!
//! This file holds the connection, the schema and the row mapping; the store traits are
//! implemented in submodules by domain: `auth` (users, login codes, refresh tokens),
//! `rooms`, `messages` and `blobs`.

mod auth;
mod blobs;
mod messages;
mod rooms;

use std::ops::Range;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};
use time::OffsetDateTime;

use super::{
    BlobKind, BlobMeta, BlobStore, ByteStream, FamilyId, FileId, Health, Message, MessageCursor,
    MessageId, MessageStore, MessageType, OtpChallenge, OtpStore, RefreshToken, Room, RoomCursor,
    RoomId, RoomStore, RoomType, SessionStore, StoreError, StoreResult, User, UserId, UserStore,
    from_millis, new_id, to_millis,
};

/// Ids are stored as text; one read back is checked like any other id entering the
/// control plane (a malformed one is a conversion error, reported as a backend error).
macro_rules! sql_id {
    ($($id:ty),*) => {$(
        impl rusqlite::types::FromSql for $id {
            fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
                let s = v.as_str()?;
                <$id>::parse(s).map_err(|e| rusqlite::types::FromSqlError::Other(Box::new(e)))
            }
        }

        impl rusqlite::types::ToSql for $id {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(rusqlite::types::ToSqlOutput::from(self.as_str()))
            }
        }
    )*};
}
sql_id!(UserId, RoomId, MessageId, FileId, FamilyId);

/// Blob bytes are stored in rows of this size; a range read loads one row at a time.
pub const BLOB_CHUNK_SIZE: usize = 256 * 1024;

/// How long a statement waits for a lock held by another connection (another process
/// on the same file) before failing.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// SQLite's default limit on bound parameters is 32766; stay far below it.
const MAX_IN_PARAMS: usize = 500;

/// Schema migrations, applied in order at open. `PRAGMA user_version` records how many
/// have run. Never edit a released entry: append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: initial schema.
    r#"
    CREATE TABLE users (
        id          TEXT PRIMARY KEY NOT NULL,
        phone       TEXT NOT NULL UNIQUE,
        name        TEXT,
        avatar      TEXT,
        activated   INTEGER NOT NULL DEFAULT 0,
        created_at  INTEGER NOT NULL
    );

    CREATE TABLE otps (
        handle_hash    BLOB PRIMARY KEY NOT NULL,
        phone          TEXT NOT NULL,
        code_hash      BLOB NOT NULL,
        expires_at     INTEGER NOT NULL,
        attempts_left  INTEGER NOT NULL
    );
    CREATE INDEX otps_expires ON otps (expires_at);

    CREATE TABLE refresh_tokens (
        token_hash  BLOB PRIMARY KEY NOT NULL,
        family      TEXT NOT NULL,
        user_id     TEXT NOT NULL,
        expires_at  INTEGER NOT NULL,
        used        INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX refresh_tokens_family ON refresh_tokens (family);
    CREATE INDEX refresh_tokens_expires ON refresh_tokens (expires_at);

    CREATE TABLE rooms (
        id             TEXT PRIMARY KEY NOT NULL,
        topic          TEXT NOT NULL,
        room_type      TEXT NOT NULL,
        owner_id       TEXT NOT NULL,
        invite_code    TEXT,
        created_at     INTEGER NOT NULL,
        last_activity  INTEGER NOT NULL
    );
    -- Open-room listing: newest first with a (created_at, id) keyset cursor.
    CREATE INDEX rooms_listing ON rooms (room_type, created_at DESC, id DESC);
    CREATE INDEX rooms_last_activity ON rooms (last_activity);

    CREATE TABLE room_invites (
        room_id  TEXT NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
        user_id  TEXT NOT NULL,
        PRIMARY KEY (room_id, user_id)
    ) WITHOUT ROWID;

    CREATE TABLE messages (
        id           TEXT PRIMARY KEY NOT NULL,
        room_id      TEXT NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
        author_id    TEXT NOT NULL,
        author_name  TEXT NOT NULL,
        kind         TEXT NOT NULL,
        text         TEXT NOT NULL,
        attachment   TEXT,
        created_at   INTEGER NOT NULL
    );
    -- History: newest first with a (created_at, id) keyset cursor.
    CREATE INDEX messages_history ON messages (room_id, created_at DESC, id DESC);

    CREATE TABLE blobs (
        id            TEXT PRIMARY KEY NOT NULL,
        kind          TEXT NOT NULL,
        content_type  TEXT NOT NULL,
        len           INTEGER NOT NULL,
        -- NULL for avatars; a room's voice notes and images go with the room.
        room_id       TEXT REFERENCES rooms (id) ON DELETE CASCADE,
        created_at    INTEGER NOT NULL
    );
    CREATE INDEX blobs_room ON blobs (room_id);

    CREATE TABLE blob_chunks (
        blob_id  TEXT NOT NULL REFERENCES blobs (id) ON DELETE CASCADE,
        n        INTEGER NOT NULL,
        data     BLOB NOT NULL,
        PRIMARY KEY (blob_id, n)
    ) WITHOUT ROWID;
    "#,
];

/// The embedded SQLite store. Cheap to clone (one shared connection).
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path`, creating its parent
    /// directories, and runs pending migrations.
    pub async fn open(path: impl AsRef<Path>) -> StoreResult<Self> {
        let path = path.as_ref().to_path_buf();
        tokio::task::spawn_blocking(move || {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| StoreError::Backend(format!("creating {}: {e}", dir.display())))?;
            }
            make_private(&path)?;
            let conn = Connection::open(&path).map_err(backend)?;
            // WAL lets readers in other processes (backups, sqlite3 shell) work while
            // we write; NORMAL sync is durable across application crashes in WAL mode.
            conn.pragma_update(None, "journal_mode", "WAL")
                .map_err(backend)?;
            conn.pragma_update(None, "synchronous", "NORMAL")
                .map_err(backend)?;
            Self::prepare(conn)
        })
        .await
        .map_err(join_error)?
    }

    /// A private in-memory database, for tests.
    pub async fn open_in_memory() -> StoreResult<Self> {
        tokio::task::spawn_blocking(|| {
            Self::prepare(Connection::open_in_memory().map_err(backend)?)
        })
        .await
        .map_err(join_error)?
    }

    fn prepare(mut conn: Connection) -> StoreResult<Self> {
        conn.busy_timeout(BUSY_TIMEOUT).map_err(backend)?;
        // Off by default in SQLite; the cascades above depend on it.
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(backend)?;
        migrate(&mut conn)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` with the connection on the blocking pool.
    async fn run<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .map_err(|_| StoreError::Backend("sqlite connection mutex poisoned".into()))?;
            f(&mut guard)
        })
        .await
        .map_err(join_error)?
    }

    /// Runs `f` inside one IMMEDIATE transaction (takes the write lock up front, so a
    /// second process cannot make it fail half-way with SQLITE_BUSY on upgrade).
    async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> StoreResult<T> + Send + 'static,
    {
        self.run(move |conn| {
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(backend)?;
            let out = f(&tx)?;
            tx.commit().map_err(backend)?;
            Ok(out)
        })
        .await
    }
}

/// Creates the database file readable by its owner only (0600, like the generated
/// secrets: it holds phone numbers and session hashes), and tightens an existing one and
/// its `-wal`/`-shm` companions. SQLite creates the companions with the main file's mode.
fn make_private(path: &Path) -> StoreResult<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let io = |e: std::io::Error| StoreError::Backend(format!("{}: {e}", path.display()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(e)),
        }
        let mut companions = vec![path.to_path_buf()];
        for suffix in ["-wal", "-shm"] {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            companions.push(p.into());
        }
        for file in companions {
            let Ok(meta) = std::fs::metadata(&file) else {
                continue;
            };
            if meta.permissions().mode() & 0o077 != 0 {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                    .map_err(io)?;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

fn migrate(conn: &mut Connection) -> StoreResult<()> {
    let done: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(backend)?;
    let done = usize::try_from(done).unwrap_or(0);
    if done > MIGRATIONS.len() {
        return Err(StoreError::Backend(format!(
            "database schema version {done} is newer than this build knows ({}); refusing to \
             open it with an older Chorus",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(done) {
        let tx = conn.transaction().map_err(backend)?;
        tx.execute_batch(sql)
            .map_err(|e| StoreError::Backend(format!("migration {}: {e}", i + 1)))?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)
            .map_err(backend)?;
        tx.commit().map_err(backend)?;
    }
    Ok(())
}

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(format!("sqlite: {e}"))
}

fn join_error(e: tokio::task::JoinError) -> StoreError {
    StoreError::Backend(format!("sqlite task failed: {e}"))
}

/// Maps constraint violations to the domain errors: a duplicate key is a Conflict, a
/// missing referenced row (e.g. a message for a room that does not exist) NotFound.
fn map_write(e: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::SqliteFailure(f, _) = &e {
        match f.extended_code {
            rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
            | rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE => {
                return StoreError::Conflict;
            }
            rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY => return StoreError::NotFound,
            _ => {}
        }
    }
    backend(e)
}

/// Reads a column that must hold a known enum spelling; anything else is corruption.
fn parse_col<T>(row: &Row<'_>, idx: usize, parse: fn(&str) -> Option<T>) -> rusqlite::Result<T> {
    let s: String = row.get(idx)?;
    parse(&s).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            idx,
            rusqlite::types::Type::Text,
            format!("unknown value {s:?}").into(),
        )
    })
}

fn time_col(row: &Row<'_>, idx: usize) -> rusqlite::Result<OffsetDateTime> {
    let ms: i64 = row.get(idx)?;
    from_millis(ms).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            idx,
            rusqlite::types::Type::Integer,
            format!("timestamp {ms} out of range").into(),
        )
    })
}

const USER_COLS: &str = "id, phone, name, avatar, activated, created_at";

fn user_row(row: &Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: row.get(0)?,
        phone: row.get(1)?,
        name: row.get(2)?,
        avatar: row.get(3)?,
        activated: row.get(4)?,
        created_at: time_col(row, 5)?,
    })
}

const OTP_COLS: &str = "handle_hash, phone, code_hash, expires_at, attempts_left";

fn otp_row(row: &Row<'_>) -> rusqlite::Result<OtpChallenge> {
    Ok(OtpChallenge {
        handle_hash: row.get(0)?,
        phone: row.get(1)?,
        code_hash: row.get(2)?,
        expires_at: time_col(row, 3)?,
        attempts_left: row.get(4)?,
    })
}

const TOKEN_COLS: &str = "token_hash, family, user_id, expires_at, used";

fn token_row(row: &Row<'_>) -> rusqlite::Result<RefreshToken> {
    Ok(RefreshToken {
        token_hash: row.get(0)?,
        family: row.get(1)?,
        user_id: row.get(2)?,
        expires_at: time_col(row, 3)?,
        used: row.get(4)?,
    })
}

const ROOM_COLS: &str = "id, topic, room_type, owner_id, invite_code, created_at, last_activity";

/// A room without its invite list (filled in by [`load_invites`]).
fn room_row(row: &Row<'_>) -> rusqlite::Result<Room> {
    Ok(Room {
        id: row.get(0)?,
        topic: row.get(1)?,
        room_type: parse_col(row, 2, RoomType::parse)?,
        owner_id: row.get(3)?,
        invited: Vec::new(),
        invite_code: row.get(4)?,
        created_at: time_col(row, 5)?,
        last_activity: time_col(row, 6)?,
    })
}

const MESSAGE_COLS: &str =
    "id, room_id, author_id, author_name, kind, text, attachment, created_at";

fn message_row(row: &Row<'_>) -> rusqlite::Result<Message> {
    Ok(Message {
        id: row.get(0)?,
        room_id: row.get(1)?,
        author_id: row.get(2)?,
        author_name: row.get(3)?,
        kind: parse_col(row, 4, MessageType::parse)?,
        text: row.get(5)?,
        attachment: row.get(6)?,
        created_at: time_col(row, 7)?,
    })
}

const BLOB_COLS: &str = "id, kind, content_type, len, room_id, created_at";

fn blob_row(row: &Row<'_>) -> rusqlite::Result<BlobMeta> {
    Ok(BlobMeta {
        id: row.get(0)?,
        kind: parse_col(row, 1, BlobKind::parse)?,
        content_type: row.get(2)?,
        len: row.get::<_, i64>(3)?.max(0) as u64,
        room_id: row.get(4)?,
        created_at: time_col(row, 5)?,
    })
}

fn placeholders(n: usize) -> String {
    let mut s = String::with_capacity(n * 2);
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        s.push('?');
    }
    s
}

/// Fills in `invited` for all `rooms` with one query per [`MAX_IN_PARAMS`] rooms
/// (never one per room).
fn load_invites(conn: &Connection, rooms: &mut [Room]) -> StoreResult<()> {
    for batch in rooms.chunks_mut(MAX_IN_PARAMS) {
        let sql = format!(
            "SELECT room_id, user_id FROM room_invites WHERE room_id IN ({}) ORDER BY room_id, user_id",
            placeholders(batch.len())
        );
        let mut stmt = conn.prepare(&sql).map_err(backend)?;
        let ids: Vec<&str> = batch.iter().map(|r| r.id.as_str()).collect();
        let pairs = stmt
            .query_map(rusqlite::params_from_iter(ids), |r| {
                Ok((r.get::<_, RoomId>(0)?, r.get::<_, UserId>(1)?))
            })
            .map_err(backend)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(backend)?;
        for (room_id, user_id) in pairs {
            if let Some(room) = batch.iter_mut().find(|r| r.id == room_id) {
                room.invited.push(user_id);
            }
        }
    }
    Ok(())
}

fn get_room_conn(conn: &Connection, id: &str) -> StoreResult<Option<Room>> {
    let room = conn
        .query_row(
            &format!("SELECT {ROOM_COLS} FROM rooms WHERE id = ?1"),
            [id],
            room_row,
        )
        .optional()
        .map_err(backend)?;
    match room {
        Some(room) => {
            let mut rooms = [room];
            load_invites(conn, &mut rooms)?;
            let [room] = rooms;
            Ok(Some(room))
        }
        None => Ok(None),
    }
}

fn delete_blob_conn(conn: &Connection, id: &str) -> StoreResult<bool> {
    // Chunks go with it (ON DELETE CASCADE).
    let n = conn
        .execute("DELETE FROM blobs WHERE id = ?1", [id])
        .map_err(backend)?;
    Ok(n > 0)
}

fn require_room(conn: &Connection, id: &str) -> StoreResult<()> {
    let exists: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM rooms WHERE id = ?1)",
            [id],
            |r| r.get(0),
        )
        .map_err(backend)?;
    if exists {
        Ok(())
    } else {
        Err(StoreError::NotFound)
    }
}

#[async_trait]
impl Health for SqliteStore {
    async fn ping(&self) -> StoreResult<()> {
        self.run(|conn| {
            conn.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
                .map_err(backend)?;
            Ok(())
        })
        .await
    }
}
