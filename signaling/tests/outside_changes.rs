//! Changes made outside a room's sockets (the control plane's HTTP API: messages
//! posted, uploaded or deleted, rooms deleted) reach the room's participants live
//! through `Signaling::{broadcast_message, broadcast_message_deleted, close_room}`,
//! and a join racing a room's deletion does not bring the room back.

#![cfg(feature = "server")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use signaling::protocol::{ChatMessage, ClientMessage, ErrorCode, ServerMessage};
use signaling::{AuthUser, RoomAccess, RoomDirectory, SignalingError};
use tokio::sync::{Notify, Semaphore};

type R = anyhow::Result<()>;

fn posted(id: &str, room: &str, text: &str) -> ChatMessage {
    ChatMessage {
        underscore_id: id.into(),
        id: id.into(),
        room_id: room.into(),
        user_id: "dave".into(),
        username: "Dave".into(),
        message: text.into(),
        kind: "voice".into(),
        url: Some(format!("/api/voice/{id}")),
        file_id: Some(id.into()),
        created_at: "2026-11-21T00:00:00Z".into(),
        duration: None,
    }
}

fn is_chat(m: &ServerMessage) -> bool {
    matches!(
        m,
        ServerMessage::ReceiveMessage { .. } | ServerMessage::MessageDeleted { .. }
    )
}

/// Waits until the server has noticed `n` dropped sockets in `room`.
async fn wait_reconnecting(h: &Harness, room: &str, n: usize) -> R {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while h.signaling.room_snapshot(room).map(|s| s.reconnecting) != Some(n) {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "server never noticed the dropped socket"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

#[tokio::test]
async fn a_message_stored_elsewhere_reaches_everyone_in_its_room_and_nobody_else() -> R {
    let h = start(test_config()).await?;
    let (mut alice, _) = h.join("alice", "open").await?;
    let (mut bob, _) = h.join("bob", "open").await?;
    let (mut carol, _) = h.join("carol", "open2").await?;
    alice.sync().await?;

    let message = posted("v1", "open", "");
    h.signaling.broadcast_message("open", message.clone());
    for c in [&mut alice, &mut bob] {
        let got = c
            .expect("receive_message", |m| {
                matches!(m, ServerMessage::ReceiveMessage { .. })
            })
            .await?;
        assert_eq!(
            got,
            ServerMessage::ReceiveMessage {
                message: message.clone()
            }
        );
    }
    let other = carol.sync().await?;
    assert!(
        !other.iter().any(is_chat),
        "leaked to another room: {other:?}"
    );
    // Nothing is stored by signaling: the caller already stored it.
    assert!(h.chat.kinds().is_empty());
    Ok(())
}

#[tokio::test]
async fn a_message_deleted_elsewhere_is_announced_to_its_room_only() -> R {
    let h = start(test_config()).await?;
    let (mut alice, _) = h.join("alice", "open").await?;
    let (mut bob, _) = h.join("bob", "open").await?;
    let (mut carol, _) = h.join("carol", "open2").await?;
    alice.sync().await?;

    h.signaling.broadcast_message_deleted("open", "v1");
    for c in [&mut alice, &mut bob] {
        let got = c
            .expect("message_deleted", |m| {
                matches!(m, ServerMessage::MessageDeleted { .. })
            })
            .await?;
        assert_eq!(
            got,
            ServerMessage::MessageDeleted {
                message_id: "v1".into()
            }
        );
    }
    let other = carol.sync().await?;
    assert!(
        !other.iter().any(is_chat),
        "leaked to another room: {other:?}"
    );
    Ok(())
}

#[tokio::test]
async fn broadcasts_to_a_room_nobody_is_in_do_nothing() -> R {
    let h = start(test_config()).await?;
    let (mut carol, _) = h.join("carol", "open2").await?;
    carol.sync().await?;
    h.signaling
        .broadcast_message("open", posted("v1", "open", "hi"));
    h.signaling.broadcast_message_deleted("open", "v1");
    assert_eq!(h.signaling.close_room("open", "room deleted"), 0);
    let seen = carol.sync().await?;
    assert!(seen.is_empty(), "{seen:?}");
    assert!(h.signaling.room_snapshot("open").is_none());
    Ok(())
}

#[tokio::test]
async fn closing_a_room_removes_everyone_closes_their_sockets_and_leaves_other_rooms_alone() -> R {
    // A grace far longer than the test: only the close can remove the dropped socket.
    let cfg = signaling::SignalingConfig {
        resume_grace: Duration::from_secs(600),
        ..test_config()
    };
    let h = start(cfg).await?;
    let (mut alice, _) = h.join("alice", "open").await?;
    let (mut bob, bob_id) = h.join("bob", "open").await?;
    let (mut carol, _) = h.join("carol", "open2").await?;
    bob.join_call().await?;
    h.media_saw(|c| matches!(c, MediaCall::Join { pid, .. } if *pid == bob_id))
        .await?;

    // Dave's socket dropped; he may still resume, so he is in the room without a socket.
    let mut dave = h.connect("dave").await?;
    dave.send(&ClientMessage::JoinRoom {
        room_id: "open".into(),
        resume_token: None,
    })
    .await?;
    let ServerMessage::Joined {
        resume_token: dave_token,
        you: dave_was,
        ..
    } = dave
        .expect("joined", |m| matches!(m, ServerMessage::Joined { .. }))
        .await?
    else {
        unreachable!()
    };
    dave.drop_connection();
    wait_reconnecting(&h, "open", 1).await?;
    // Everything bob's call produced so far (its call-joined notice) is stored.
    bob.sync().await?;
    carol.sync().await?;
    let kinds_before = h.chat.kinds();

    assert_eq!(h.signaling.close_room("open", "room deleted"), 3);
    assert!(h.signaling.room_snapshot("open").is_none());

    for c in [&mut alice, &mut bob] {
        let removed = c
            .expect("removed", |m| matches!(m, ServerMessage::Removed { .. }))
            .await?;
        assert_eq!(
            removed,
            ServerMessage::Removed {
                reason: "room deleted".into()
            }
        );
        c.expect_closed().await?;
    }
    h.media_saw(|c| *c == MediaCall::Leave { pid: bob_id })
        .await?;
    // The room is gone: no call-left notice is stored or sent for it.
    assert_eq!(h.chat.kinds(), kinds_before);

    // The other room did not notice anything and keeps working.
    let seen = carol.sync().await?;
    assert!(seen.is_empty(), "{seen:?}");
    assert_eq!(
        h.signaling.room_snapshot("open2").map(|s| s.total_people),
        Some(1)
    );

    // Dave's resume token died with the room: coming back is a fresh join.
    let mut dave = h.connect("dave").await?;
    dave.send(&ClientMessage::JoinRoom {
        room_id: "open".into(),
        resume_token: Some(dave_token),
    })
    .await?;
    let ServerMessage::Joined { resumed, you, .. } = dave
        .expect("joined", |m| matches!(m, ServerMessage::Joined { .. }))
        .await?
    else {
        unreachable!()
    };
    assert!(!resumed);
    assert_ne!(you.participant_id, dave_was.participant_id);
    let ServerMessage::OnlineUsers { participants } = dave
        .expect("online_users", |m| {
            matches!(m, ServerMessage::OnlineUsers { .. })
        })
        .await?
    else {
        unreachable!()
    };
    assert_eq!(participants, vec![you], "nobody from before is left");
    Ok(())
}

/// The fake directory, except that rooms can be deleted and each answer, once
/// decided, is held at a gate: it reaches the join only when the test lets it.
struct GatedDirectory {
    gate: Arc<Semaphore>,
    entered: Notify,
    deleted: parking_lot::Mutex<Vec<String>>,
}

impl GatedDirectory {
    fn new() -> Self {
        GatedDirectory {
            gate: Arc::new(Semaphore::new(0)),
            entered: Notify::new(),
            deleted: Default::default(),
        }
    }
}

#[async_trait]
impl RoomDirectory for GatedDirectory {
    async fn check_join(
        &self,
        room_id: &str,
        user: &AuthUser,
    ) -> Result<RoomAccess, SignalingError> {
        let answer = if self.deleted.lock().iter().any(|d| d == room_id) {
            Err(SignalingError::RoomNotFound)
        } else {
            FakeDirectory.check_join(room_id, user).await
        };
        self.entered.notify_one();
        let permit = self
            .gate
            .acquire()
            .await
            .map_err(|e| SignalingError::Backend(e.to_string()))?;
        permit.forget();
        answer
    }
}

#[tokio::test]
async fn a_join_allowed_just_before_its_room_was_deleted_does_not_bring_the_room_back() -> R {
    let directory = Arc::new(GatedDirectory::new());
    let h = start_with(test_config(), directory.clone()).await?;
    let mut bob = h.connect("bob").await?;
    let entered = directory.entered.notified();
    bob.send(&ClientMessage::JoinRoom {
        room_id: "open".into(),
        resume_token: None,
    })
    .await?;
    // The directory has allowed the join (the room still exists), but before its
    // answer arrives the room is deleted and closed.
    tokio::time::timeout(DEADLINE, entered).await?;
    directory.deleted.lock().push("open".into());
    assert_eq!(h.signaling.close_room("open", "room deleted"), 0);
    let entered_again = directory.entered.notified();
    directory.gate.add_permits(1);
    // The join must ask again, and now hears that the room is gone.
    tokio::time::timeout(DEADLINE, entered_again)
        .await
        .map_err(|_| anyhow::anyhow!("the join did not ask the directory again"))?;
    directory.gate.add_permits(1);
    let (_, fatal) = bob.expect_error(ErrorCode::NotFound).await?;
    assert!(fatal);
    assert!(h.signaling.room_snapshot("open").is_none());

    // A room that is not closed meanwhile is joined after a single check.
    directory.gate.add_permits(1);
    let (_carol, _) = h.join("carol", "open2").await?;
    assert_eq!(directory.gate.available_permits(), 0);
    Ok(())
}
