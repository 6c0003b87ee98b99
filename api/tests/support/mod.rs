//! Test support for the store contract suite: fixtures that build each store, and a
//! temp directory that cleans up after itself.

#![allow(dead_code)]

pub mod secantus;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use api::store::{MongoStore, SqliteStore, Store, new_id};

/// A store under test plus whatever must live as long as it (temp dir, server).
pub struct Fixture {
    pub store: Arc<dyn Store>,
    pub _guard: Box<dyn std::any::Any + Send + Sync>,
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!("{prefix}-{}", new_id()));
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub async fn sqlite_memory() -> anyhow::Result<Fixture> {
    Ok(Fixture {
        store: Arc::new(SqliteStore::open_in_memory().await?),
        _guard: Box::new(()),
    })
}

/// The in-memory SQLite store behind the timing decorator the server uses for metrics:
/// the decorator must forward every operation unchanged.
pub async fn timed_sqlite() -> anyhow::Result<Fixture> {
    struct Discard;
    impl api::store::StoreObserver for Discard {
        fn observe(&self, _op: &'static str, _took: std::time::Duration, _ok: bool) {}
    }
    Ok(Fixture {
        store: Arc::new(api::store::Timed::new(
            Arc::new(SqliteStore::open_in_memory().await?),
            Arc::new(Discard),
        )),
        _guard: Box::new(()),
    })
}

/// An on-disk database in a nested directory that does not exist yet (open creates it).
pub async fn sqlite_file() -> anyhow::Result<Fixture> {
    let dir = TempDir::new("chorus-sqlite")?;
    let store = SqliteStore::open(dir.path().join("data").join("chorus.db")).await?;
    Ok(Fixture {
        store: Arc::new(store),
        _guard: Box::new(dir),
    })
}

/// Room expiry for contract tests: long enough that the TTL monitor never races the
/// explicit expiry test (which uses rooms 40 days idle).
pub const LONG_ROOM_EXPIRY: std::time::Duration = std::time::Duration::from_secs(10 * 365 * 86_400);

/// A MongoDB store on the shared SecantusDB server, in a database of its own.
pub async fn mongo() -> anyhow::Result<Fixture> {
    let server = secantus::shared();
    let store = MongoStore::connect(
        &server.uri(),
        &format!("chorus_{}", new_id()),
        LONG_ROOM_EXPIRY,
    )
    .await?;
    Ok(Fixture {
        store: Arc::new(store),
        _guard: Box::new(()),
    })
}
