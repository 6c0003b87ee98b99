//! A store decorator that times every operation and reports it to a [`StoreObserver`]
//! (the binary turns that into the `chorus_store_operation_duration_seconds` histogram),
//! and optionally bounds each operation by a deadline (the MongoDB driver has no
//! operation timeout of its own: a database that accepts connections but does not
//! answer would otherwise hold requests forever). It wraps either backend, so both
//! report the same operation names.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use time::OffsetDateTime;

use super::{
    BlobMeta, BlobStore, ByteStream, FamilyId, FileId, Health, Message, MessageCursor, MessageId,
    MessageStore, OtpChallenge, OtpStore, RefreshToken, Room, RoomCursor, RoomId, RoomStore,
    SessionStore, Store, StoreError, StoreResult, User, UserId, UserStore,
};

/// Told about every store operation: its trait method name (a fixed, small set of
/// values), how long it took, and whether it succeeded (`Ok`, even when it found nothing).
pub trait StoreObserver: Send + Sync {
    fn observe(&self, op: &'static str, took: Duration, ok: bool);
}

/// A [`Store`] that times the one it wraps.
pub struct Timed {
    inner: Arc<dyn Store>,
    observer: Arc<dyn StoreObserver>,
    /// Operations still running after this fail with [`StoreError::Unavailable`] (the
    /// operation itself may still complete: its outcome is unknown, as for any
    /// timeout). `None`: unbounded.
    deadline: Option<Duration>,
}

impl Timed {
    pub fn new(inner: Arc<dyn Store>, observer: Arc<dyn StoreObserver>) -> Self {
        Self {
            inner,
            observer,
            deadline: None,
        }
    }

    /// Bounds every operation (the opening of a byte stream, not its reading).
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    async fn bounded<T>(
        &self,
        op: &'static str,
        fut: impl std::future::Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        match self.deadline {
            None => fut.await,
            Some(d) => tokio::time::timeout(d, fut).await.unwrap_or_else(|_| {
                Err(StoreError::Unavailable(format!(
                    "{op} did not finish within {d:?}"
                )))
            }),
        }
    }

    fn report<T>(&self, op: &'static str, start: Instant, r: &StoreResult<T>) {
        self.observer.observe(op, start.elapsed(), r.is_ok());
    }
}

/// Implements a store trait for [`Timed`] by forwarding each method to the inner store
/// and reporting its duration under the method's name.
macro_rules! timed {
    ($tr:ident { $(fn $name:ident(&self $(, $arg:ident : $ty:ty)*) -> $ret:ty;)* }) => {
        #[async_trait]
        impl $tr for Timed {
            $(
                async fn $name(&self $(, $arg: $ty)*) -> StoreResult<$ret> {
                    let start = Instant::now();
                    let r = self
                        .bounded(stringify!($name), self.inner.$name($($arg),*))
                        .await;
                    self.report(stringify!($name), start, &r);
                    r
                }
            )*
        }
    };
}

timed!(UserStore {
    fn find_or_create_user(&self, phone: &str, now: OffsetDateTime) -> User;
    fn get_user(&self, id: &UserId) -> Option<User>;
    fn get_users(&self, ids: &[UserId]) -> Vec<User>;
    fn activate_user(&self, id: &UserId, name: &str, avatar: Option<FileId>) -> User;
});

timed!(OtpStore {
    fn put_otp(&self, challenge: OtpChallenge) -> ();
    fn get_otp(&self, handle_hash: &[u8]) -> Option<OtpChallenge>;
    fn spend_otp_attempt(&self, handle_hash: &[u8]) -> Option<u32>;
    fn consume_otp(&self, handle_hash: &[u8]) -> bool;
    fn purge_expired_otps(&self, now: OffsetDateTime) -> u64;
});

timed!(SessionStore {
    fn put_refresh_token(&self, token: RefreshToken) -> ();
    fn get_refresh_token(&self, token_hash: &[u8]) -> Option<RefreshToken>;
    fn mark_refresh_token_used(&self, token_hash: &[u8]) -> bool;
    fn revoke_family(&self, family: &FamilyId) -> ();
    fn purge_expired_refresh_tokens(&self, now: OffsetDateTime) -> u64;
});

timed!(RoomStore {
    fn create_room(&self, room: Room) -> ();
    fn get_room(&self, id: &RoomId) -> Option<Room>;
    fn list_open_rooms(&self, after: Option<&RoomCursor>, limit: u32) -> Vec<Room>;
    fn update_room_topic(&self, id: &RoomId, topic: &str) -> Option<Room>;
    fn add_room_invite(&self, id: &RoomId, user: &UserId) -> ();
    fn set_invite_code(&self, id: &RoomId, code: Option<&str>) -> ();
    fn touch_room(&self, id: &RoomId, now: OffsetDateTime) -> ();
    fn delete_room(&self, id: &RoomId) -> bool;
    fn expire_rooms(&self, cutoff: OffsetDateTime) -> u64;
});

timed!(MessageStore {
    fn insert_message(&self, msg: Message) -> ();
    fn get_message(&self, id: &MessageId) -> Option<Message>;
    fn list_messages(&self, room: &RoomId, before: Option<&MessageCursor>, limit: u32) -> Vec<Message>;
    fn delete_message(&self, id: &MessageId) -> Option<Message>;
});

timed!(BlobStore {
    fn put_blob(&self, meta: BlobMeta, bytes: Bytes) -> ();
    fn get_blob_meta(&self, id: &FileId) -> Option<BlobMeta>;
    fn read_blob(&self, id: &FileId, range: Range<u64>) -> ByteStream;
    fn delete_blob(&self, id: &FileId) -> bool;
});

timed!(Health {
    fn ping(&self) -> ();
});

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;
    use parking_lot::Mutex;

    #[derive(Default)]
    struct Seen(Mutex<Vec<(&'static str, bool)>>);
    impl StoreObserver for Seen {
        fn observe(&self, op: &'static str, _took: Duration, ok: bool) {
            self.0.lock().push((op, ok));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_operation_past_the_deadline_fails_as_unavailable() -> StoreResult<()> {
        let inner: Arc<dyn Store> = Arc::new(SqliteStore::open_in_memory().await?);
        let store =
            Timed::new(inner, Arc::new(Seen::default())).with_deadline(Duration::from_secs(2));
        store.ping().await?;
        let started = tokio::time::Instant::now();
        let hung = store
            .bounded("ping", std::future::pending::<StoreResult<()>>())
            .await;
        assert!(matches!(hung, Err(StoreError::Unavailable(_))), "{hung:?}");
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        Ok(())
    }

    #[tokio::test]
    async fn every_call_is_forwarded_and_reported_with_its_outcome() -> StoreResult<()> {
        let inner: Arc<dyn Store> = Arc::new(SqliteStore::open_in_memory().await?);
        let seen = Arc::new(Seen::default());
        let store = Timed::new(inner, seen.clone());
        let now = OffsetDateTime::now_utc();
        let user = store.find_or_create_user("+15550001111", now).await?;
        assert_eq!(store.get_user(&user.id).await?, Some(user.clone()));
        let missing = store
            .touch_room(&RoomId::parse("nope").expect("valid id"), now)
            .await;
        assert!(
            matches!(missing, Err(crate::store::StoreError::NotFound)),
            "{missing:?}"
        );
        store.ping().await?;
        assert_eq!(
            *seen.0.lock(),
            [
                ("find_or_create_user", true),
                ("get_user", true),
                ("touch_room", false),
                ("ping", true)
            ]
        );
        Ok(())
    }
}
