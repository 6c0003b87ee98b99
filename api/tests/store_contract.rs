//! The store contract: one suite of behaviours, written once against `Arc<dyn Store>`,
//! run against every implementation (SQLite in memory, SQLite on disk, MongoDB on a
//! SecantusDB server this test binary starts itself).
//!
//! Each behaviour is an `async fn` in [`cases`]; `contract_suite!` turns the list into
//! one `#[tokio::test]` per behaviour per store so a failure names both.

mod support;

use std::collections::HashSet;
use std::sync::Arc;

use anyhow::{Context, Result, ensure};
use api::store::{
    BlobKind, BlobMeta, FamilyId, FileId, Health, Message, MessageCursor, MessageId, MessageStore,
    MessageType, OtpChallenge, RefreshToken, Room, RoomCursor, RoomId, RoomStore, RoomType, Store,
    StoreError, UserId, UserStore, new_id,
};
use bytes::Bytes;
use futures::TryStreamExt;
use time::{Duration, OffsetDateTime};

/// Now, at the millisecond precision the stores keep, so round trips compare equal.
fn now_ms() -> OffsetDateTime {
    let t = OffsetDateTime::now_utc();
    t.replace_nanosecond(t.nanosecond() / 1_000_000 * 1_000_000)
        .unwrap_or(t)
}

fn room(id: &str, kind: RoomType, owner: &UserId, at: OffsetDateTime) -> Room {
    Room {
        id: RoomId::parse(id.to_owned()).expect("valid id"),
        topic: format!("topic of {id}"),
        room_type: kind,
        owner_id: owner.clone(),
        invited: Vec::new(),
        invite_code: None,
        created_at: at,
        last_activity: at,
    }
}

fn message(room: &RoomId, at: OffsetDateTime, text: &str) -> Message {
    Message {
        id: MessageId::generate(),
        room_id: room.clone(),
        author_id: UserId::generate(),
        author_name: "Ada".into(),
        kind: MessageType::Text,
        text: text.into(),
        attachment: None,
        created_at: at,
    }
}

fn blob_meta(kind: BlobKind, room: Option<&RoomId>, at: OffsetDateTime, len: usize) -> BlobMeta {
    BlobMeta {
        id: FileId::generate(),
        kind,
        content_type: match kind {
            BlobKind::Voice => "audio/webm".into(),
            _ => "image/png".into(),
        },
        len: len as u64,
        room_id: room.cloned(),
        created_at: at,
    }
}

/// Deterministic bytes whose value depends on the position, so a misplaced slice shows.
fn pattern(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i % 251) as u8 ^ (i / 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

async fn read_all(store: &dyn Store, id: &FileId, range: std::ops::Range<u64>) -> Result<Vec<u8>> {
    let chunks: Vec<Bytes> = store.read_blob(id, range).await?.try_collect().await?;
    Ok(chunks.concat())
}

/// A room with one text message, one voice note (bytes + message) and one image.
async fn populated_room(store: &dyn Store, id: &str, at: OffsetDateTime) -> Result<Vec<FileId>> {
    let owner = UserId::generate();
    let rid = RoomId::parse(id.to_owned()).expect("valid id");
    store
        .create_room(room(id, RoomType::Open, &owner, at))
        .await?;
    store.insert_message(message(&rid, at, "hello")).await?;
    let mut files = Vec::new();
    for kind in [BlobKind::Voice, BlobKind::Image] {
        let meta = blob_meta(kind, Some(&rid), at, 1000);
        let file = meta.id.clone();
        store.put_blob(meta, pattern(1000)).await?;
        let mut m = message(&rid, at, "");
        m.kind = if kind == BlobKind::Voice {
            MessageType::Voice
        } else {
            MessageType::Image
        };
        m.attachment = Some(file.clone());
        store.insert_message(m).await?;
        files.push(file);
    }
    Ok(files)
}

pub mod cases {
    use super::*;

    pub async fn find_or_create_user_is_idempotent_per_phone(store: Arc<dyn Store>) -> Result<()> {
        let t0 = now_ms();
        let a = store.find_or_create_user("+15550000001", t0).await?;
        assert_eq!(a.phone, "+15550000001");
        assert!(!a.activated, "a new user starts not activated");
        assert_eq!(a.name, None);
        assert_eq!(a.avatar, None);
        assert_eq!(a.created_at, t0);
        assert_eq!(a.id.as_str().len(), 24);

        let again = store
            .find_or_create_user("+15550000001", t0 + Duration::hours(1))
            .await?;
        assert_eq!(again, a, "second login finds the same user, unchanged");

        let b = store.find_or_create_user("+15550000002", t0).await?;
        assert_ne!(b.id, a.id);

        assert_eq!(store.get_user(&a.id).await?, Some(a.clone()));
        assert_eq!(store.get_user(&UserId::generate()).await?, None);
        Ok(())
    }

    pub async fn concurrent_first_logins_create_one_user(store: Arc<dyn Store>) -> Result<()> {
        let t0 = now_ms();
        let tasks: Vec<_> = (0..12)
            .map(|_| {
                let s = store.clone();
                tokio::spawn(async move { s.find_or_create_user("+15550000009", t0).await })
            })
            .collect();
        let mut ids = HashSet::new();
        for t in tasks {
            ids.insert(t.await??.id);
        }
        assert_eq!(ids.len(), 1, "one phone, one user: {ids:?}");
        Ok(())
    }

    pub async fn get_users_returns_known_users_and_skips_unknown(
        store: Arc<dyn Store>,
    ) -> Result<()> {
        let t0 = now_ms();
        let a = store.find_or_create_user("+15550000011", t0).await?;
        let b = store.find_or_create_user("+15550000012", t0).await?;
        let _c = store.find_or_create_user("+15550000013", t0).await?;
        let mut got = store
            .get_users(&[a.id.clone(), UserId::generate(), b.id.clone(), a.id.clone()])
            .await?;
        got.sort_by(|x, y| x.id.cmp(&y.id));
        let mut want = vec![a, b];
        want.sort_by(|x, y| x.id.cmp(&y.id));
        assert_eq!(got, want);
        assert!(store.get_users(&[]).await?.is_empty());
        Ok(())
    }

    pub async fn activate_user_sets_profile_and_deletes_replaced_avatar(
        store: Arc<dyn Store>,
    ) -> Result<()> {
        let t0 = now_ms();
        let u = store.find_or_create_user("+15550000021", t0).await?;
        let first = blob_meta(BlobKind::Avatar, None, t0, 10);
        let first_id = first.id.clone();
        store.put_blob(first, pattern(10)).await?;

        let active = store
            .activate_user(&u.id, "Ada", Some(first_id.clone()))
            .await?;
        assert!(active.activated);
        assert_eq!(active.name.as_deref(), Some("Ada"));
        assert_eq!(active.avatar, Some(first_id.clone()));
        assert_eq!(active.phone, u.phone);
        assert_eq!(store.get_user(&u.id).await?, Some(active));

        let second = blob_meta(BlobKind::Avatar, None, t0, 20);
        let second_id = second.id.clone();
        store.put_blob(second, pattern(20)).await?;
        let updated = store
            .activate_user(&u.id, "Ada L.", Some(second_id.clone()))
            .await?;
        assert_eq!(updated.avatar, Some(second_id.clone()));
        assert_eq!(
            store.get_blob_meta(&first_id).await?,
            None,
            "the replaced avatar's bytes are deleted"
        );
        assert!(store.get_blob_meta(&second_id).await?.is_some());

        let renamed = store.activate_user(&u.id, "Ada Lovelace", None).await?;
        assert_eq!(
            renamed.avatar,
            Some(second_id.clone()),
            "None keeps the avatar"
        );
        assert_eq!(renamed.name.as_deref(), Some("Ada Lovelace"));
        assert!(store.get_blob_meta(&second_id).await?.is_some());

        let same = store
            .activate_user(&u.id, "Ada", Some(second_id.clone()))
            .await?;
        assert_eq!(same.avatar, Some(second_id.clone()));
        assert!(
            store.get_blob_meta(&second_id).await?.is_some(),
            "re-setting the same avatar keeps its bytes"
        );

        let missing = store
            .activate_user(&UserId::generate(), "Nobody", None)
            .await;
        assert!(matches!(missing, Err(StoreError::NotFound)), "{missing:?}");
        Ok(())
    }

    fn otp(handle: &[u8], expires_at: OffsetDateTime, attempts: u32) -> OtpChallenge {
        OtpChallenge {
            handle_hash: handle.to_vec(),
            phone: "+15550000031".into(),
            code_hash: vec![7; 32],
            expires_at,
            attempts_left: attempts,
        }
    }

    pub async fn otp_round_trips_conflicts_and_purges_expired(store: Arc<dyn Store>) -> Result<()> {
        let now = now_ms();
        let live = otp(b"live-handle-hash", now + Duration::minutes(2), 5);
        let dead = otp(b"dead-handle-hash", now - Duration::seconds(1), 5);
        store.put_otp(live.clone()).await?;
        store.put_otp(dead.clone()).await?;
        assert_eq!(
            store.get_otp(b"live-handle-hash").await?,
            Some(live.clone())
        );
        assert_eq!(store.get_otp(b"no-such-handle").await?, None);

        let dup = store.put_otp(live.clone()).await;
        assert!(matches!(dup, Err(StoreError::Conflict)), "{dup:?}");

        assert_eq!(store.purge_expired_otps(now).await?, 1);
        assert_eq!(store.get_otp(b"dead-handle-hash").await?, None);
        assert_eq!(store.get_otp(b"live-handle-hash").await?, Some(live));
        Ok(())
    }

    pub async fn otp_attempts_decrement_atomically_under_concurrency(
        store: Arc<dyn Store>,
    ) -> Result<()> {
        let now = now_ms();
        store
            .put_otp(otp(b"attempts", now + Duration::minutes(2), 5))
            .await?;
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let s = store.clone();
                tokio::spawn(async move { s.spend_otp_attempt(b"attempts").await })
            })
            .collect();
        let mut granted = Vec::new();
        for t in tasks {
            if let Some(left) = t.await?? {
                granted.push(left);
            }
        }
        granted.sort_unstable();
        assert_eq!(granted, vec![0, 1, 2, 3, 4], "exactly five checks granted");
        let after = store
            .get_otp(b"attempts")
            .await?
            .context("challenge kept")?;
        assert_eq!(after.attempts_left, 0);
        assert_eq!(store.spend_otp_attempt(b"attempts").await?, None);
        assert_eq!(store.spend_otp_attempt(b"unknown").await?, None);
        Ok(())
    }

    pub async fn otp_consume_is_single_use_under_concurrency(store: Arc<dyn Store>) -> Result<()> {
        let now = now_ms();
        store
            .put_otp(otp(b"single-use", now + Duration::minutes(2), 5))
            .await?;
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let s = store.clone();
                tokio::spawn(async move { s.consume_otp(b"single-use").await })
            })
            .collect();
        let mut winners = 0;
        for t in tasks {
            if t.await?? {
                winners += 1;
            }
        }
        assert_eq!(winners, 1);
        assert_eq!(store.get_otp(b"single-use").await?, None);
        assert!(!store.consume_otp(b"single-use").await?);
        Ok(())
    }

    fn token(hash: &[u8], family: &FamilyId, expires_at: OffsetDateTime) -> RefreshToken {
        RefreshToken {
            token_hash: hash.to_vec(),
            family: family.clone(),
            user_id: UserId::parse("0123456789abcdef01234567").expect("valid id"),
            expires_at,
            used: false,
        }
    }

    pub async fn refresh_tokens_round_trip_conflict_and_purge(store: Arc<dyn Store>) -> Result<()> {
        let now = now_ms();
        let fam = FamilyId::generate();
        let live = token(b"live-token", &fam, now + Duration::days(30));
        let dead = token(b"dead-token", &fam, now - Duration::seconds(1));
        store.put_refresh_token(live.clone()).await?;
        store.put_refresh_token(dead).await?;
        assert_eq!(
            store.get_refresh_token(b"live-token").await?,
            Some(live.clone())
        );
        assert_eq!(store.get_refresh_token(b"nope").await?, None);
        let dup = store.put_refresh_token(live.clone()).await;
        assert!(matches!(dup, Err(StoreError::Conflict)), "{dup:?}");
        assert_eq!(store.purge_expired_refresh_tokens(now).await?, 1);
        assert_eq!(store.get_refresh_token(b"dead-token").await?, None);
        assert_eq!(store.get_refresh_token(b"live-token").await?, Some(live));
        Ok(())
    }

    pub async fn refresh_token_mark_used_has_exactly_one_winner(
        store: Arc<dyn Store>,
    ) -> Result<()> {
        let fam = FamilyId::generate();
        store
            .put_refresh_token(token(b"race", &fam, now_ms() + Duration::days(1)))
            .await?;
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let s = store.clone();
                tokio::spawn(async move { s.mark_refresh_token_used(b"race").await })
            })
            .collect();
        let mut winners = 0;
        for t in tasks {
            if t.await?? {
                winners += 1;
            }
        }
        assert_eq!(winners, 1, "one rotation wins, the rest are reuse");
        let t = store
            .get_refresh_token(b"race")
            .await?
            .context("token kept")?;
        assert!(t.used);
        assert!(!store.mark_refresh_token_used(b"race").await?);
        assert!(!store.mark_refresh_token_used(b"unknown").await?);
        Ok(())
    }

    pub async fn revoke_family_marks_every_token_of_that_family_only(
        store: Arc<dyn Store>,
    ) -> Result<()> {
        let exp = now_ms() + Duration::days(1);
        let fam = FamilyId::generate();
        let other = FamilyId::generate();
        store.put_refresh_token(token(b"f1", &fam, exp)).await?;
        store.put_refresh_token(token(b"f2", &fam, exp)).await?;
        store.put_refresh_token(token(b"o1", &other, exp)).await?;
        store.revoke_family(&fam).await?;
        for h in [&b"f1"[..], b"f2"] {
            let t = store.get_refresh_token(h).await?.context("kept")?;
            assert!(t.used, "revoked tokens read as used");
            assert!(!store.mark_refresh_token_used(h).await?);
        }
        let o = store.get_refresh_token(b"o1").await?.context("kept")?;
        assert!(!o.used, "another login is untouched");
        store.revoke_family(&FamilyId::generate()).await?;
        Ok(())
    }

    pub async fn create_room_round_trips_and_conflicts_on_taken_id(
        store: Arc<dyn Store>,
    ) -> Result<()> {
        let t0 = now_ms();
        let owner = UserId::generate();
        let mut r = room("general", RoomType::Private, &owner, t0);
        r.invited = vec![UserId::generate(), UserId::generate()];
        r.invited.sort();
        r.invite_code = Some("s3cret".into());
        store.create_room(r.clone()).await?;
        let mut got = store.get_room(&r.id).await?.context("room exists")?;
        got.invited.sort();
        assert_eq!(got, r);

        let dup = store
            .create_room(room("general", RoomType::Open, &owner, t0))
            .await;
        assert!(matches!(dup, Err(StoreError::Conflict)), "{dup:?}");
        assert_eq!(
            store
                .get_room(&RoomId::parse("nope").expect("valid id"))
                .await?,
            None
        );
        Ok(())
    }

    pub async fn open_rooms_list_newest_first_with_cursor_and_hide_others(
        store: Arc<dyn Store>,
    ) -> Result<()> {
        let t0 = now_ms() - Duration::hours(1);
        let owner = UserId::generate();
        let mut expected = Vec::new();
        // Five distinct times, and three rooms sharing one time (ties broken by id).
        for i in 0..5 {
            let r = room(&new_id(), RoomType::Open, &owner, t0 + Duration::seconds(i));
            store.create_room(r.clone()).await?;
            expected.push(r);
        }
        for _ in 0..3 {
            let r = room(&new_id(), RoomType::Open, &owner, t0 + Duration::seconds(2));
            store.create_room(r.clone()).await?;
            expected.push(r);
        }
        store
            .create_room(room(
                "social-1",
                RoomType::Social,
                &owner,
                t0 + Duration::seconds(3),
            ))
            .await?;
        store
            .create_room(room(
                "private-1",
                RoomType::Private,
                &owner,
                t0 + Duration::seconds(4),
            ))
            .await?;
        expected.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));

        let mut seen = Vec::new();
        let mut after: Option<RoomCursor> = None;
        for _ in 0..10 {
            let page = store.list_open_rooms(after.as_ref(), 3).await?;
            assert!(page.len() <= 3);
            if page.is_empty() {
                break;
            }
            after = page.last().map(RoomCursor::after);
            seen.extend(page);
        }
        assert_eq!(
            seen, expected,
            "every open room once, newest first, nothing else"
        );

        let first = store.list_open_rooms(None, 2).await?;
        assert_eq!(first, expected[..2].to_vec());

        // A cursor is a position: the room it came from may be gone, or never have been.
        let cursor = RoomCursor::after(&expected[3]);
        assert!(store.delete_room(&expected[3].id).await?);
        assert_eq!(
            store.list_open_rooms(Some(&cursor), 2).await?,
            expected[4..6].to_vec(),
            "the page after a deleted cursor room"
        );
        let made_up = RoomCursor {
            created_at: expected[6].created_at,
            id: RoomId::parse("zzzzzzzzzzzzzzzzzzzzzzzz").expect("valid id"),
        };
        assert_eq!(
            store.list_open_rooms(Some(&made_up), 100).await?,
            expected[6..].to_vec(),
            "a position between rooms"
        );
        Ok(())
    }

    pub async fn invites_are_idempotent_and_invite_code_can_be_set_and_cleared(
        store: Arc<dyn Store>,
    ) -> Result<()> {
        let t0 = now_ms();
        let owner = UserId::generate();
        let r = room("priv", RoomType::Private, &owner, t0);
        store.create_room(r.clone()).await?;
        let guest = UserId::generate();
        store.add_room_invite(&r.id, &guest).await?;
        store.add_room_invite(&r.id, &guest).await?;
        let got = store.get_room(&r.id).await?.context("room")?;
        assert_eq!(got.invited, vec![guest.clone()]);

        store.set_invite_code(&r.id, Some("code-1")).await?;
        assert_eq!(
            store
                .get_room(&r.id)
                .await?
                .context("room")?
                .invite_code
                .as_deref(),
            Some("code-1")
        );
        store.set_invite_code(&r.id, None).await?;
        assert_eq!(
            store.get_room(&r.id).await?.context("room")?.invite_code,
            None
        );

        let ghost = RoomId::parse("ghost").expect("valid id");
        let e = store.add_room_invite(&ghost, &guest).await;
        assert!(matches!(e, Err(StoreError::NotFound)), "{e:?}");
        let e = store.set_invite_code(&ghost, Some("x")).await;
        assert!(matches!(e, Err(StoreError::NotFound)), "{e:?}");
        Ok(())
    }

    pub async fn update_room_topic_returns_the_updated_room(store: Arc<dyn Store>) -> Result<()> {
        let t0 = now_ms();
        let r = room("topical", RoomType::Open, &UserId::generate(), t0);
        store.create_room(r.clone()).await?;
        let updated = store
            .update_room_topic(&r.id, "new topic")
            .await?
            .context("room exists")?;
        assert_eq!(updated.topic, "new topic");
        assert_eq!(updated.id, r.id);
        assert_eq!(store.get_room(&r.id).await?, Some(updated));
        assert_eq!(
            store
                .update_room_topic(&RoomId::parse("nope").expect("valid id"), "x")
                .await?,
            None
        );
        Ok(())
    }

    pub async fn touch_room_moves_last_activity_forward_only(store: Arc<dyn Store>) -> Result<()> {
        let t0 = now_ms() - Duration::days(3);
        let r = room("touchy", RoomType::Social, &UserId::generate(), t0);
        store.create_room(r.clone()).await?;
        let later = t0 + Duration::days(2);
        store.touch_room(&r.id, later).await?;
        assert_eq!(
            store.get_room(&r.id).await?.context("room")?.last_activity,
            later
        );
        store.touch_room(&r.id, t0 + Duration::days(1)).await?;
        assert_eq!(
            store.get_room(&r.id).await?.context("room")?.last_activity,
            later,
            "an older touch never moves the clock back"
        );
        let e = store
            .touch_room(&RoomId::parse("nope").expect("valid id"), later)
            .await;
        assert!(matches!(e, Err(StoreError::NotFound)), "{e:?}");
        Ok(())
    }

    pub async fn delete_room_removes_its_messages_and_bytes_only(
        store: Arc<dyn Store>,
    ) -> Result<()> {
        let t0 = now_ms();
        let doomed_files = populated_room(store.as_ref(), "doomed", t0).await?;
        let kept_files = populated_room(store.as_ref(), "kept", t0).await?;
        let doomed = RoomId::parse("doomed").expect("valid id");
        let kept = RoomId::parse("kept").expect("valid id");
        let doomed_msgs = store.list_messages(&doomed, None, 100).await?;
        assert_eq!(doomed_msgs.len(), 3);

        assert!(store.delete_room(&doomed).await?);
        assert_eq!(store.get_room(&doomed).await?, None);
        assert!(store.list_messages(&doomed, None, 100).await?.is_empty());
        for m in &doomed_msgs {
            assert_eq!(store.get_message(&m.id).await?, None);
        }
        for f in &doomed_files {
            assert_eq!(store.get_blob_meta(f).await?, None);
            assert!(matches!(
                store.read_blob(f, 0..0).await.err(),
                Some(StoreError::NotFound)
            ));
        }
        assert!(
            !store.delete_room(&doomed).await?,
            "second delete finds nothing"
        );

        assert_eq!(store.list_messages(&kept, None, 100).await?.len(), 3);
        for f in &kept_files {
            assert_eq!(
                read_all(store.as_ref(), f, 0..1000).await?,
                pattern(1000).to_vec()
            );
        }
        Ok(())
    }

    pub async fn message_history_pages_newest_first_across_equal_timestamps(
        store: Arc<dyn Store>,
    ) -> Result<()> {
        let t0 = now_ms() - Duration::hours(2);
        let owner = UserId::generate();
        let rid = RoomId::parse("chat").expect("valid id");
        store
            .create_room(room("chat", RoomType::Open, &owner, t0))
            .await?;
        store
            .create_room(room("elsewhere", RoomType::Open, &owner, t0))
            .await?;
        let mut expected = Vec::new();
        for (i, secs) in [1, 2, 3, 3, 3, 3, 4, 5].into_iter().enumerate() {
            let mut m = message(&rid, t0 + Duration::seconds(secs), &format!("m{i}"));
            if i == 2 {
                m.kind = MessageType::CallNotification;
            }
            if i == 3 {
                m.kind = MessageType::CallEnded;
            }
            store.insert_message(m.clone()).await?;
            expected.push(m);
        }
        store
            .insert_message(message(
                &RoomId::parse("elsewhere").expect("valid id"),
                t0,
                "not here",
            ))
            .await?;
        expected.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));

        let mut seen = Vec::new();
        let mut cursor: Option<MessageCursor> = None;
        for _ in 0..10 {
            let page = store.list_messages(&rid, cursor.as_ref(), 3).await?;
            if page.is_empty() {
                break;
            }
            assert!(page.len() <= 3);
            cursor = page.last().map(|m| MessageCursor {
                created_at: m.created_at,
                id: m.id.clone(),
            });
            seen.extend(page);
        }
        assert_eq!(seen, expected, "every message once, newest first");
        assert_eq!(
            store.get_message(&expected[0].id).await?,
            Some(expected[0].clone())
        );
        assert_eq!(store.get_message(&MessageId::generate()).await?, None);

        let room = store.get_room(&rid).await?.context("room")?;
        assert_eq!(
            room.last_activity,
            t0 + Duration::seconds(5),
            "a message is room activity"
        );

        let dup = store.insert_message(expected[0].clone()).await;
        assert!(matches!(dup, Err(StoreError::Conflict)), "{dup:?}");
        let orphan = store
            .insert_message(message(
                &RoomId::parse("no-room").expect("valid id"),
                t0,
                "x",
            ))
            .await;
        assert!(matches!(orphan, Err(StoreError::NotFound)), "{orphan:?}");
        Ok(())
    }

    pub async fn delete_message_removes_its_attachment_bytes(store: Arc<dyn Store>) -> Result<()> {
        let t0 = now_ms();
        let files = populated_room(store.as_ref(), "uploads", t0).await?;
        let rid = RoomId::parse("uploads").expect("valid id");
        let msgs = store.list_messages(&rid, None, 10).await?;
        let voice = msgs
            .iter()
            .find(|m| m.kind == MessageType::Voice)
            .context("voice message")?
            .clone();
        assert_eq!(voice.attachment.as_ref(), Some(&files[0]));

        let deleted = store.delete_message(&voice.id).await?;
        assert_eq!(deleted, Some(voice.clone()));
        assert_eq!(store.get_message(&voice.id).await?, None);
        assert_eq!(
            store.get_blob_meta(&files[0]).await?,
            None,
            "bytes gone too"
        );
        assert!(
            store.get_blob_meta(&files[1]).await?.is_some(),
            "other upload kept"
        );
        assert_eq!(store.list_messages(&rid, None, 10).await?.len(), 2);
        assert_eq!(store.delete_message(&voice.id).await?, None);
        Ok(())
    }

    pub async fn blob_range_reads_return_exact_bytes_across_chunks(
        store: Arc<dyn Store>,
    ) -> Result<()> {
        const CHUNK: u64 = 256 * 1024;
        let t0 = now_ms();
        store
            .create_room(room("blobs", RoomType::Open, &UserId::generate(), t0))
            .await?;
        let len = (2 * CHUNK + 12_345) as usize;
        let data = pattern(len);
        let mut meta = blob_meta(
            BlobKind::Voice,
            Some(&RoomId::parse("blobs").expect("valid id")),
            t0,
            0,
        );
        meta.content_type = "audio/ogg".into();
        let id = meta.id.clone();
        store.put_blob(meta.clone(), data.clone()).await?;

        let got = store.get_blob_meta(&id).await?.context("meta")?;
        assert_eq!(got.len, len as u64, "length comes from the bytes");
        assert_eq!(got.content_type, "audio/ogg");
        assert_eq!(got.kind, BlobKind::Voice);
        assert_eq!(got.room_id, Some(RoomId::parse("blobs").expect("valid id")));
        assert_eq!(got.created_at, t0);

        let l = len as u64;
        let ranges = [
            0..l,
            0..10,
            100..5000,
            CHUNK - 10..CHUNK + 10,
            CHUNK..2 * CHUNK,
            10..2 * CHUNK + 1,
            l - 10..l,
            l..l,
            500..500,
        ];
        for r in ranges {
            let bytes = read_all(store.as_ref(), &id, r.clone()).await?;
            ensure!(
                bytes == data[r.start as usize..r.end as usize],
                "range {r:?} returned {} wrong bytes",
                bytes.len()
            );
        }
        assert!(
            store.read_blob(&id, 0..l + 1).await.is_err(),
            "past the end"
        );
        let backwards = std::ops::Range { start: 10, end: 5 };
        assert!(store.read_blob(&id, backwards).await.is_err());
        assert!(matches!(
            store.read_blob(&FileId::generate(), 0..0).await.err(),
            Some(StoreError::NotFound)
        ));

        let dup = store.put_blob(meta, Bytes::from_static(b"x")).await;
        assert!(matches!(dup, Err(StoreError::Conflict)), "{dup:?}");

        let empty = blob_meta(BlobKind::Image, None, t0, 0);
        let empty_id = empty.id.clone();
        store.put_blob(empty, Bytes::new()).await?;
        assert_eq!(
            store.get_blob_meta(&empty_id).await?.context("meta")?.len,
            0
        );
        assert!(read_all(store.as_ref(), &empty_id, 0..0).await?.is_empty());

        assert!(store.delete_blob(&id).await?);
        assert_eq!(store.get_blob_meta(&id).await?, None);
        assert!(!store.delete_blob(&id).await?);
        Ok(())
    }

    pub async fn put_blob_for_a_missing_room_is_not_found(store: Arc<dyn Store>) -> Result<()> {
        let meta = blob_meta(
            BlobKind::Image,
            Some(&RoomId::parse("nope").expect("valid id")),
            now_ms(),
            3,
        );
        let id = meta.id.clone();
        let e = store.put_blob(meta, Bytes::from_static(b"abc")).await;
        assert!(matches!(e, Err(StoreError::NotFound)), "{e:?}");
        assert_eq!(store.get_blob_meta(&id).await?, None);
        Ok(())
    }

    pub async fn expire_rooms_removes_idle_rooms_with_messages_and_bytes(
        store: Arc<dyn Store>,
    ) -> Result<()> {
        let now = now_ms();
        let old = now - Duration::days(40);
        let old_files = populated_room(store.as_ref(), "idle", old).await?;
        populated_room(store.as_ref(), "idle-2", old).await?;
        let fresh_files = populated_room(store.as_ref(), "busy", now).await?;
        // An old room that was touched recently stays.
        populated_room(store.as_ref(), "revived", old).await?;
        store
            .touch_room(
                &RoomId::parse("revived").expect("valid id"),
                now - Duration::days(1),
            )
            .await?;
        let avatar = blob_meta(BlobKind::Avatar, None, old, 5);
        let avatar_id = avatar.id.clone();
        store.put_blob(avatar, pattern(5)).await?;
        let idle_msgs = store
            .list_messages(&RoomId::parse("idle").expect("valid id"), None, 10)
            .await?;

        let removed = store.expire_rooms(now - Duration::days(30)).await?;
        assert_eq!(removed, 2);
        for gone in ["idle", "idle-2"] {
            let id = RoomId::parse(gone).expect("valid id");
            assert_eq!(store.get_room(&id).await?, None);
            assert!(store.list_messages(&id, None, 10).await?.is_empty());
        }
        for m in idle_msgs {
            assert_eq!(store.get_message(&m.id).await?, None);
        }
        for f in old_files {
            assert_eq!(store.get_blob_meta(&f).await?, None);
        }
        for kept in ["busy", "revived"] {
            let id = RoomId::parse(kept).expect("valid id");
            assert!(store.get_room(&id).await?.is_some(), "{kept} kept");
            assert_eq!(store.list_messages(&id, None, 10).await?.len(), 3);
        }
        for f in fresh_files {
            assert!(store.get_blob_meta(&f).await?.is_some());
        }
        assert!(
            store.get_blob_meta(&avatar_id).await?.is_some(),
            "avatars belong to users, not rooms"
        );
        assert_eq!(store.expire_rooms(now - Duration::days(30)).await?, 0);
        Ok(())
    }

    pub async fn ping_succeeds(store: Arc<dyn Store>) -> Result<()> {
        store.ping().await?;
        Ok(())
    }
}

/// One `#[tokio::test]` per behaviour in [`cases`], against the store `$make` builds.
macro_rules! contract_suite {
    ($suite:ident, $make:path) => {
        mod $suite {
            contract_suite!(@cases $make;
                find_or_create_user_is_idempotent_per_phone,
                concurrent_first_logins_create_one_user,
                get_users_returns_known_users_and_skips_unknown,
                activate_user_sets_profile_and_deletes_replaced_avatar,
                otp_round_trips_conflicts_and_purges_expired,
                otp_attempts_decrement_atomically_under_concurrency,
                otp_consume_is_single_use_under_concurrency,
                refresh_tokens_round_trip_conflict_and_purge,
                refresh_token_mark_used_has_exactly_one_winner,
                revoke_family_marks_every_token_of_that_family_only,
                create_room_round_trips_and_conflicts_on_taken_id,
                open_rooms_list_newest_first_with_cursor_and_hide_others,
                invites_are_idempotent_and_invite_code_can_be_set_and_cleared,
                update_room_topic_returns_the_updated_room,
                touch_room_moves_last_activity_forward_only,
                delete_room_removes_its_messages_and_bytes_only,
                message_history_pages_newest_first_across_equal_timestamps,
                delete_message_removes_its_attachment_bytes,
                blob_range_reads_return_exact_bytes_across_chunks,
                put_blob_for_a_missing_room_is_not_found,
                expire_rooms_removes_idle_rooms_with_messages_and_bytes,
                ping_succeeds,
            );
        }
    };
    (@cases $make:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() -> anyhow::Result<()> {
                let fixture = $make().await?;
                super::cases::$case(fixture.store.clone()).await
            }
        )*
    };
}

contract_suite!(sqlite_memory, crate::support::sqlite_memory);
contract_suite!(sqlite_file, crate::support::sqlite_file);
contract_suite!(timed_sqlite, crate::support::timed_sqlite);

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_files_are_private_to_their_owner() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = support::TempDir::new("chorus-mode")?;
    let path = dir.path().join("chorus.sqlite3");
    let mode = |p: &std::path::Path| -> Result<u32> {
        Ok(std::fs::metadata(p)?.permissions().mode() & 0o777)
    };
    {
        let store = api::store::SqliteStore::open(&path).await?;
        store.find_or_create_user("+15550000001", now_ms()).await?;
        for file in ["chorus.sqlite3", "chorus.sqlite3-wal", "chorus.sqlite3-shm"] {
            let p = dir.path().join(file);
            assert_eq!(mode(&p)?, 0o600, "{file}");
        }
    }
    // A database left world-readable by an older version is tightened at open.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
    let _store = api::store::SqliteStore::open(&path).await?;
    assert_eq!(mode(&path)?, 0o600);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_file_data_survives_reopen() -> Result<()> {
    let dir = support::TempDir::new("chorus-reopen")?;
    let path = dir.path().join("chorus.db");
    let t0 = now_ms();
    let (user, files) = {
        let store = api::store::SqliteStore::open(&path).await?;
        let user = store.find_or_create_user("+15550000099", t0).await?;
        let files = populated_room(&store, "persistent", t0).await?;
        (user, files)
    };
    let store = api::store::SqliteStore::open(&path).await?;
    assert_eq!(store.get_user(&user.id).await?, Some(user));
    let rid = RoomId::parse("persistent").expect("valid id");
    assert!(store.get_room(&rid).await?.is_some());
    assert_eq!(store.list_messages(&rid, None, 10).await?.len(), 3);
    for f in files {
        assert_eq!(read_all(&store, &f, 0..1000).await?, pattern(1000).to_vec());
    }
    // WAL is a property of the file: a fresh connection sees it.
    let raw = rusqlite::Connection::open(&path)?;
    let mode: String = raw.pragma_query_value(None, "journal_mode", |r| r.get(0))?;
    assert_eq!(mode, "wal");
    drop(raw);
    // Migrations are not re-run on an up-to-date database (they would fail: tables exist).
    drop(store);
    let again = api::store::SqliteStore::open(&path).await?;
    again.ping().await?;
    Ok(())
}

contract_suite!(mongo, crate::support::mongo);

/// MongoDB-only behaviours: the TTL index, index maintenance, and the documented layout.
mod mongo_specific {
    use super::*;
    use api::store::{BlobStore, MongoStore};
    use mongodb::bson::{Bson, Document, doc};
    use std::time::Duration as StdDuration;

    async fn connect(db: &str, expiry: StdDuration) -> Result<MongoStore> {
        Ok(MongoStore::connect(&support::secantus::shared().uri(), db, expiry).await?)
    }

    async fn raw_db(db: &str) -> Result<mongodb::Database> {
        let client = mongodb::Client::with_uri_str(support::secantus::shared().uri()).await?;
        Ok(client.database(db))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ttl_index_deletes_idle_rooms_and_expire_rooms_sweeps_what_it_leaves() -> Result<()> {
        let db = format!("chorus_ttl_{}", new_id());
        let store = connect(&db, StdDuration::from_secs(3600)).await?;
        let now = now_ms();
        let stale = RoomId::parse("stale").expect("valid id");
        let fresh = RoomId::parse("fresh").expect("valid id");
        let stale_files = populated_room(&store, "stale", now - Duration::hours(2)).await?;
        let fresh_files = populated_room(&store, "fresh", now).await?;
        let stale_msgs = store.list_messages(&stale, None, 10).await?;
        assert_eq!(stale_msgs.len(), 3);

        // The server sweeps TTL indexes every second; nothing in Chorus deletes here.
        tokio::time::timeout(StdDuration::from_secs(60), async {
            loop {
                if store.get_room(&stale).await?.is_none() {
                    return Ok::<_, anyhow::Error>(());
                }
                tokio::time::sleep(StdDuration::from_millis(100)).await;
            }
        })
        .await
        .context("the TTL index did not remove the idle room within 60 s")??;

        assert!(store.get_room(&fresh).await?.is_some(), "active room kept");
        assert_eq!(
            store.list_messages(&stale, None, 10).await?.len(),
            3,
            "the TTL index removes only the room document"
        );
        assert!(store.get_blob_meta(&stale_files[0]).await?.is_some());

        let removed = store.expire_rooms(now - Duration::hours(1)).await?;
        assert_eq!(removed, 0, "the room itself was already gone");
        assert!(store.list_messages(&stale, None, 10).await?.is_empty());
        for m in &stale_msgs {
            assert_eq!(store.get_message(&m.id).await?, None);
        }
        for f in &stale_files {
            assert_eq!(store.get_blob_meta(f).await?, None, "orphaned file swept");
        }
        assert_eq!(store.list_messages(&fresh, None, 10).await?.len(), 3);
        for f in &fresh_files {
            assert!(store.get_blob_meta(f).await?.is_some());
        }
        Ok(())
    }

    async fn index_named(db: &mongodb::Database, coll: &str, name: &str) -> Result<Document> {
        let indexes: Vec<mongodb::IndexModel> = db
            .collection::<Document>(coll)
            .list_indexes()
            .await?
            .try_collect()
            .await?;
        for ix in indexes {
            let opts = ix.options.clone().unwrap_or_default();
            if opts.name.as_deref() == Some(name) {
                let mut d = doc! { "key": ix.keys.clone() };
                if let Some(ttl) = opts.expire_after {
                    d.insert("expireAfterSeconds", ttl.as_secs() as i64);
                }
                if let Some(u) = opts.unique {
                    d.insert("unique", u);
                }
                return Ok(d);
            }
        }
        anyhow::bail!("no index {name} on {coll}")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connect_creates_indexes_and_a_changed_room_expiry_updates_the_ttl() -> Result<()> {
        let name = format!("chorus_ix_{}", new_id());
        let _first = connect(&name, StdDuration::from_secs(3600)).await?;
        let db = raw_db(&name).await?;
        let ttl = index_named(&db, "rooms", "last_activity_ttl").await?;
        assert_eq!(ttl.get_i64("expireAfterSeconds")?, 3600);

        let _second = connect(&name, StdDuration::from_secs(7200)).await?;
        let ttl = index_named(&db, "rooms", "last_activity_ttl").await?;
        assert_eq!(
            ttl.get_i64("expireAfterSeconds")?,
            7200,
            "reconnect applies the new expiry"
        );

        let phone = index_named(&db, "users", "phone_unique").await?;
        assert!(phone.get_bool("unique")?);
        let history = index_named(&db, "messages", "history").await?;
        assert_eq!(
            history.get_document("key")?,
            &doc! { "roomId": 1, "createdAt": -1, "_id": -1 }
        );
        index_named(&db, "rooms", "open_listing").await?;
        index_named(&db, "refresh_tokens", "family").await?;
        index_named(&db, "otps", "expires_ttl").await?;
        index_named(&db, "voices.files", "room").await?;
        Ok(())
    }

    async fn raw_doc(db: &mongodb::Database, coll: &str, id: impl Into<Bson>) -> Result<Document> {
        db.collection::<Document>(coll)
            .find_one(doc! { "_id": id.into() })
            .await?
            .with_context(|| format!("no document in {coll}"))
    }

    /// Field names in order, then the whole document (types included).
    fn assert_shape(actual: &Document, expected: &Document) {
        let keys = |d: &Document| d.keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(actual), keys(expected), "field order");
        assert_eq!(actual, expected);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn documents_are_written_in_the_established_shape() -> Result<()> {
        use api::store::{OtpStore, SessionStore};
        use mongodb::bson::{Binary, DateTime, spec::BinarySubtype};
        let name = format!("chorus_shape_{}", new_id());
        let store = connect(&name, support::LONG_ROOM_EXPIRY).await?;
        let db = raw_db(&name).await?;
        let t = now_ms();
        let at = DateTime::from_millis((t.unix_timestamp_nanos() / 1_000_000) as i64);
        let bin = |b: &[u8]| Binary {
            subtype: BinarySubtype::Generic,
            bytes: b.to_vec(),
        };

        let owner = UserId::generate();
        let guest = UserId::generate();
        let mut r = room("shape", RoomType::Private, &owner, t);
        r.invited = vec![guest.clone()];
        r.invite_code = Some("code-1".into());
        store.create_room(r).await?;
        assert_shape(
            &raw_doc(&db, "rooms", "shape").await?,
            &doc! {
                "_id": "shape", "topic": "topic of shape", "roomType": "private",
                "ownerId": owner.as_str(), "invited": [guest.as_str()],
                "inviteCode": "code-1", "createdAt": at, "lastActivity": at,
            },
        );
        let open = room("shape-open", RoomType::Open, &owner, t);
        store.create_room(open).await?;
        assert_shape(
            &raw_doc(&db, "rooms", "shape-open").await?,
            &doc! {
                "_id": "shape-open", "topic": "topic of shape-open", "roomType": "open",
                "ownerId": owner.as_str(), "invited": [], "inviteCode": Bson::Null,
                "createdAt": at, "lastActivity": at,
            },
        );

        let rid = RoomId::parse("shape").expect("valid id");
        let mut m = message(&rid, t, "hi");
        m.kind = MessageType::CallNotification;
        let mid = m.id.clone();
        store.insert_message(m.clone()).await?;
        assert_shape(
            &raw_doc(&db, "messages", mid.as_str()).await?,
            &doc! {
                "_id": mid.as_str(), "roomId": "shape", "authorId": m.author_id.as_str(),
                "authorName": "Ada", "type": "call_notification", "text": "hi",
                "attachment": Bson::Null, "createdAt": at,
            },
        );

        store
            .put_otp(OtpChallenge {
                handle_hash: vec![1, 2, 3],
                phone: "+15550000088".into(),
                code_hash: vec![4, 5],
                expires_at: t,
                attempts_left: 3,
            })
            .await?;
        assert_shape(
            &raw_doc(&db, "otps", bin(&[1, 2, 3])).await?,
            &doc! {
                "_id": bin(&[1, 2, 3]), "phone": "+15550000088", "codeHash": bin(&[4, 5]),
                "expiresAt": at, "attemptsLeft": 3_i64,
            },
        );

        let family = FamilyId::generate();
        store
            .put_refresh_token(RefreshToken {
                token_hash: vec![9; 4],
                family: family.clone(),
                user_id: owner.clone(),
                expires_at: t,
                used: false,
            })
            .await?;
        assert_shape(
            &raw_doc(&db, "refresh_tokens", bin(&[9; 4])).await?,
            &doc! {
                "_id": bin(&[9; 4]), "family": family.as_str(), "userId": owner.as_str(),
                "expiresAt": at, "used": false,
            },
        );

        let file = blob_meta(BlobKind::Voice, Some(&rid), t, 10);
        let fid = file.id.clone();
        store.put_blob(file, pattern(10)).await?;
        let oid = mongodb::bson::oid::ObjectId::parse_str(fid.as_str())?;
        let voice = raw_doc(&db, "voices.files", oid).await?;
        assert_shape(
            voice.get_document("metadata")?,
            &doc! {
                "roomId": "shape", "contentType": "audio/webm", "kind": "voice",
                "createdAt": at,
            },
        );
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn documents_from_older_writers_still_read_and_malformed_ones_are_errors() -> Result<()> {
        use api::store::OtpStore;
        use mongodb::bson::{Binary, DateTime, spec::BinarySubtype};
        let name = format!("chorus_legacy_{}", new_id());
        let store = connect(&name, support::LONG_ROOM_EXPIRY).await?;
        let db = raw_db(&name).await?;
        let t = now_ms();
        let at = DateTime::from_millis((t.unix_timestamp_nanos() / 1_000_000) as i64);
        let owner = UserId::generate();

        // No `invited`, no `inviteCode`: an empty list and no code.
        db.collection::<Document>("rooms")
            .insert_one(doc! {
                "_id": "bare", "topic": "t", "roomType": "social", "ownerId": owner.as_str(),
                "createdAt": at, "lastActivity": at,
            })
            .await?;
        let bare = store
            .get_room(&RoomId::parse("bare").expect("valid id"))
            .await?
            .context("bare room")?;
        assert!(bare.invited.is_empty());
        assert_eq!(bare.invite_code, None);
        assert_eq!(bare.created_at, t);

        // `activated: null` and no name: not activated.
        let uid = UserId::generate();
        db.collection::<Document>("users")
            .insert_one(doc! {
                "_id": uid.as_str(), "phone": "+15550000099", "activated": Bson::Null,
                "createdAt": at,
            })
            .await?;
        let user = store.get_user(&uid).await?.context("user")?;
        assert!(!user.activated);
        assert_eq!(user.name, None);

        // Counters written as int32 or as an integral double.
        for (i, attempts) in [Bson::Int32(2), Bson::Double(2.0)].into_iter().enumerate() {
            let key = Binary {
                subtype: BinarySubtype::Generic,
                bytes: vec![7, i as u8],
            };
            db.collection::<Document>("otps")
                .insert_one(doc! {
                    "_id": key.clone(), "phone": "+1555", "codeHash": key,
                    "expiresAt": at, "attemptsLeft": attempts,
                })
                .await?;
            let otp = store.get_otp(&[7, i as u8]).await?.context("otp")?;
            assert_eq!(otp.attempts_left, 2);
        }

        // A malformed id or an unknown room type is a backend error, never a panic.
        for (id, owner_id, kind) in [("badowner", "no way", "open"), ("badtype", "u1", "vip")] {
            db.collection::<Document>("rooms")
                .insert_one(doc! {
                    "_id": id, "topic": "t", "roomType": kind, "ownerId": owner_id,
                    "createdAt": at, "lastActivity": at,
                })
                .await?;
            let res = store.get_room(&RoomId::parse(id).expect("valid id")).await;
            assert!(matches!(res, Err(StoreError::Backend(_))), "{id}: {res:?}");
        }
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connect_uri_uses_the_database_named_in_the_uri() -> Result<()> {
        let name = format!("chorus_uri_{}", new_id());
        let port_uri = support::secantus::shared().uri();
        let uri = port_uri.replacen("/?", &format!("/{name}?"), 1);
        let store = MongoStore::connect_uri(&uri, support::LONG_ROOM_EXPIRY).await?;
        store.find_or_create_user("+15550000077", now_ms()).await?;
        let users = raw_db(&name)
            .await?
            .collection::<Document>("users")
            .count_documents(doc! { "phone": "+15550000077" })
            .await?;
        assert_eq!(users, 1, "the user landed in the database the URI names");
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn blobs_live_in_the_gridfs_bucket_of_their_kind_with_metadata() -> Result<()> {
        let name = format!("chorus_layout_{}", new_id());
        let store = connect(&name, support::LONG_ROOM_EXPIRY).await?;
        let t0 = now_ms();
        let files = populated_room(&store, "layout", t0).await?;
        let db = raw_db(&name).await?;

        let voice = db
            .collection::<Document>("voices.files")
            .find_one(doc! {})
            .await?
            .context("voice file in the voices bucket")?;
        match voice.get("_id") {
            Some(Bson::ObjectId(oid)) => assert_eq!(oid.to_hex(), files[0].as_str()),
            other => anyhow::bail!("GridFS _id should be an ObjectId, got {other:?}"),
        }
        let meta = voice.get_document("metadata")?;
        assert_eq!(meta.get_str("roomId")?, "layout");
        assert_eq!(meta.get_str("contentType")?, "audio/webm");
        assert_eq!(meta.get_str("kind")?, "voice");
        let image = db
            .collection::<Document>("images.files")
            .find_one(doc! {})
            .await?
            .context("image file in the images bucket")?;
        assert_eq!(image.get_document("metadata")?.get_str("kind")?, "image");
        let chunks = db
            .collection::<Document>("voices.chunks")
            .count_documents(doc! {})
            .await?;
        assert_eq!(chunks, 1, "1000 bytes is one chunk");

        let msg = db
            .collection::<Document>("messages")
            .find_one(doc! { "type": "voice" })
            .await?
            .context("voice message document")?;
        assert_eq!(msg.get_str("roomId")?, "layout");
        assert_eq!(msg.get_str("attachment")?, files[0].as_str());

        // A file id that is not an ObjectId's hex is simply unknown, never an error.
        assert_eq!(
            store
                .get_blob_meta(&FileId::parse("not-hex").expect("valid id"))
                .await?,
            None
        );
        assert!(
            !store
                .delete_blob(&FileId::parse("ABCDEF0123456789ABCDEF01").expect("valid id"))
                .await?
        );
        Ok(())
    }
}

#[test]
fn a_missing_secantus_python_fails_with_setup_instructions() {
    let err = match support::secantus::SecantusServer::start_with_python(
        std::path::Path::new("/nonexistent/chorus/.venv/bin/python"),
        1.0,
    ) {
        Ok(_) => panic!("a server started from a python that does not exist"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("scripts/setup-test-deps"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_refuses_a_database_from_a_newer_schema() -> Result<()> {
    let dir = support::TempDir::new("chorus-newer")?;
    let path = dir.path().join("chorus.db");
    drop(api::store::SqliteStore::open(&path).await?);
    {
        let conn = rusqlite::Connection::open(&path)?;
        conn.pragma_update(None, "user_version", 999)?;
    }
    let err = api::store::SqliteStore::open(&path)
        .await
        .err()
        .context("opened a database written by a newer build")?;
    assert!(err.to_string().contains("newer"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_open_under_a_file_is_an_error_not_a_panic() -> Result<()> {
    let dir = support::TempDir::new("chorus-badpath")?;
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x")?;
    let res = api::store::SqliteStore::open(file.join("chorus.db")).await;
    assert!(matches!(res, Err(StoreError::Backend(_))), "{res:?}");
    Ok(())
}
