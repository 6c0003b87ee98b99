//! WebSocket sessions against the real router on loopback: auth, joins, presence,
//! chat, limits, moderation, calls, resume and media event fan-out.

#![cfg(feature = "server")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use media::SfuEvent;
use signaling::protocol::{ClientMessage, ErrorCode, Role, ServerMessage};

type R = anyhow::Result<()>;

fn is_joined(m: &ServerMessage) -> bool {
    matches!(m, ServerMessage::Joined { .. })
}

#[tokio::test]
async fn token_is_accepted_from_cookie_bearer_header_and_query_parameter() -> R {
    let h = start(test_config()).await?;
    for (path, cred) in [
        ("/ws", Cred::Cookie("tok-alice")),
        ("/ws", Cred::Bearer("tok-bob")),
        ("/ws", Cred::Query("tok-carol")),
        ("/api/ws", Cred::Bearer("tok-dave")),
    ] {
        let mut c = h.connect_with(path, cred).await?;
        c.join_room("open").await?;
    }
    assert_eq!(
        h.signaling.room_snapshot("open").map(|s| s.total_people),
        Some(4)
    );
    Ok(())
}

#[tokio::test]
async fn missing_or_bad_token_gets_fatal_unauthorized_error_then_close() -> R {
    let h = start(test_config()).await?;
    for cred in [Cred::None, Cred::Bearer("garbage"), Cred::Cookie("tok-")] {
        let mut c = h.connect_with("/ws", cred).await?;
        let (_, fatal) = c.expect_error(ErrorCode::Unauthorized).await?;
        assert!(fatal);
        c.expect_closed().await?;
    }
    Ok(())
}

#[tokio::test]
async fn private_room_refuses_the_uninvited_and_unknown_room_is_not_found() -> R {
    let h = start(test_config()).await?;
    let mut bob = h.connect("bob").await?;
    bob.send(&ClientMessage::JoinRoom {
        room_id: "private".into(),
        resume_token: None,
    })
    .await?;
    let (_, fatal) = bob.expect_error(ErrorCode::Forbidden).await?;
    assert!(fatal);
    bob.expect_closed().await?;

    let mut carol = h.connect("carol").await?;
    carol.join_room("private").await?;

    let mut dave = h.connect("dave").await?;
    dave.send(&ClientMessage::JoinRoom {
        room_id: "nope".into(),
        resume_token: None,
    })
    .await?;
    dave.expect_error(ErrorCode::NotFound).await?;
    dave.expect_closed().await?;
    Ok(())
}

#[tokio::test]
async fn join_replies_joined_then_online_users_and_the_owner_is_moderator() -> R {
    let h = start(test_config()).await?;
    let mut alice = h.connect("alice").await?;
    alice
        .send(&ClientMessage::JoinRoom {
            room_id: "open".into(),
            resume_token: None,
        })
        .await?;
    let ServerMessage::Joined {
        room_id,
        you,
        resume_token,
        resumed,
        slot_count,
        ..
    } = alice.recv().await?
    else {
        anyhow::bail!("expected joined first");
    };
    assert_eq!(room_id, "open");
    assert_eq!(you.role, Role::Moderator);
    assert!(!you.muted && !you.in_call && !resumed);
    assert!(resume_token.len() >= 32);
    assert_eq!(slot_count, 3);
    let ServerMessage::OnlineUsers { participants } = alice.recv().await? else {
        anyhow::bail!("expected online_users second");
    };
    assert_eq!(participants, vec![you.clone()]);

    let (mut bob, _) = (h.connect("bob").await?, ());
    bob.send(&ClientMessage::JoinRoom {
        room_id: "open".into(),
        resume_token: None,
    })
    .await?;
    let ServerMessage::Joined { you: bob_you, .. } = bob.recv().await? else {
        anyhow::bail!("expected joined");
    };
    assert_eq!(bob_you.role, Role::Listener);
    assert!(bob_you.muted, "listeners start muted");
    let ServerMessage::OnlineUsers { participants } = bob.recv().await? else {
        anyhow::bail!("expected online_users");
    };
    assert_eq!(participants.len(), 2);
    assert_eq!(h.chat.touched.lock().len(), 2, "each join touches the room");
    Ok(())
}

#[tokio::test]
async fn two_tabs_of_one_user_are_two_participants() -> R {
    let h = start(test_config()).await?;
    let (mut tab1, p1) = h.join("bob", "open").await?;
    let (_tab2, p2) = h.join("bob", "open").await?;
    assert_ne!(p1, p2);
    let joined = tab1
        .expect("second tab joined", |m| {
            matches!(m, ServerMessage::ParticipantJoined { .. })
        })
        .await?;
    let ServerMessage::ParticipantJoined { participant } = joined else {
        unreachable!()
    };
    assert_eq!(participant.participant_id, p2);
    assert_eq!(participant.user_id, "bob");
    let snap = h.signaling.room_snapshot("open").expect("room is live");
    assert_eq!(snap.total_people, 2);
    Ok(())
}

#[tokio::test]
async fn joins_and_leaves_are_broadcast_as_deltas() -> R {
    let h = start(test_config()).await?;
    let (mut alice, _) = h.join("alice", "open").await?;
    let (mut bob, bob_id) = h.join("bob", "open").await?;
    alice
        .expect("bob joined", |m| {
            matches!(m, ServerMessage::ParticipantJoined { participant } if participant.participant_id == bob_id)
        })
        .await?;
    bob.send(&ClientMessage::LeaveRoom).await?;
    alice
        .expect("bob left", |m| {
            matches!(m, ServerMessage::ParticipantLeft { participant_id } if *participant_id == bob_id)
        })
        .await?;
    // The socket stays usable after leave_room: bob can join again as a new participant.
    let again = bob.join_room("open").await?;
    assert_ne!(again, bob_id);
    Ok(())
}

#[tokio::test]
async fn chat_is_stored_before_it_is_broadcast_to_everyone_in_the_room() -> R {
    let h = start(test_config()).await?;
    let (mut alice, _) = h.join("alice", "open").await?;
    let (mut bob, _) = h.join("bob", "open").await?;
    let (mut other_room, _) = h.join("carol", "open2").await?;
    alice.sync().await?;

    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    *h.chat.gate.lock() = Some(gate.clone());
    let entered = h.chat.store_entered.notified();
    bob.send(&ClientMessage::SendMessage {
        message: "hello room".into(),
    })
    .await?;
    tokio::time::timeout(DEADLINE, entered).await?;
    // The store is blocked: alice must not have been sent anything yet.
    let before = alice.sync().await?;
    assert!(
        !before
            .iter()
            .any(|m| matches!(m, ServerMessage::ReceiveMessage { .. })),
        "broadcast before the store finished: {before:?}"
    );
    gate.add_permits(1);

    for c in [&mut alice, &mut bob] {
        let ServerMessage::ReceiveMessage { message } = c
            .expect("receive_message", |m| {
                matches!(m, ServerMessage::ReceiveMessage { .. })
            })
            .await?
        else {
            unreachable!()
        };
        assert_eq!(message.message, "hello room");
        assert_eq!(message.user_id, "bob");
        assert!(h.chat.messages.lock().iter().any(|m| m.id == message.id));
    }
    let other = other_room.sync().await?;
    assert!(
        !other
            .iter()
            .any(|m| matches!(m, ServerMessage::ReceiveMessage { .. }))
    );
    assert_eq!(h.chat.texts(), vec!["hello room".to_string()]);
    Ok(())
}

#[tokio::test]
async fn deleting_someone_elses_message_is_refused_and_the_author_may_delete() -> R {
    let h = start(test_config()).await?;
    let (mut bob, _) = h.join("bob", "open").await?;
    let (mut carol, _) = h.join("carol", "open").await?;
    bob.send(&ClientMessage::SendMessage {
        message: "mine".into(),
    })
    .await?;
    let ServerMessage::ReceiveMessage { message } = carol
        .expect("message", |m| {
            matches!(m, ServerMessage::ReceiveMessage { .. })
        })
        .await?
    else {
        unreachable!()
    };
    carol
        .send(&ClientMessage::DeleteMessage {
            message_id: message.id.clone(),
        })
        .await?;
    let (_, fatal) = carol.expect_error(ErrorCode::Forbidden).await?;
    assert!(!fatal);
    assert_eq!(h.chat.texts(), vec!["mine".to_string()]);

    bob.send(&ClientMessage::DeleteMessage {
        message_id: message.id.clone(),
    })
    .await?;
    let deleted = carol
        .expect("message_deleted", |m| {
            matches!(m, ServerMessage::MessageDeleted { .. })
        })
        .await?;
    assert_eq!(
        deleted,
        ServerMessage::MessageDeleted {
            message_id: message.id.clone()
        }
    );
    assert!(h.chat.texts().is_empty());
    bob.send(&ClientMessage::DeleteMessage {
        message_id: message.id,
    })
    .await?;
    bob.expect_error(ErrorCode::NotFound).await?;
    Ok(())
}

#[tokio::test]
async fn malformed_json_and_unknown_types_get_bad_message_and_the_socket_stays_usable() -> R {
    let h = start(test_config()).await?;
    let mut c = h.connect("bob").await?;
    for bad in [
        "{not json",
        r#"{"type":"fly_to_the_moon"}"#,
        r#"{"type":"join_room"}"#,
        r#"[1,2,3]"#,
        "",
    ] {
        c.send_raw(bad).await?;
        let (_, fatal) = c.expect_error(ErrorCode::BadMessage).await?;
        assert!(!fatal, "{bad}");
    }
    c.join_room("open").await?;
    c.send(&ClientMessage::JoinCall).await?;
    c.expect("offer", |m| matches!(m, ServerMessage::Offer { .. }))
        .await?;
    Ok(())
}

#[tokio::test]
async fn oversized_frame_and_chat_refused_by_the_rules_get_errors_without_closing() -> R {
    let cfg = signaling::SignalingConfig {
        max_frame_bytes: 4096,
        ..test_config()
    };
    let h = start(cfg).await?;
    let (mut c, _) = h.join("bob", "open").await?;
    let (mut other, _) = h.join("carol", "open").await?;
    let big = format!(
        r#"{{"type":"send_message","message":"{}"}}"#,
        "x".repeat(5000)
    );
    c.send_raw(&big).await?;
    c.expect_error(ErrorCode::TooLarge).await?;
    // The store's rules refuse these; its code and message reach the client.
    for refused in ["é".repeat(FAKE_MAX_CHAT_CHARS + 1), "  \t ".into()] {
        c.send(&ClientMessage::SendMessage { message: refused })
            .await?;
        let (message, fatal) = c.expect_error(ErrorCode::BadMessage).await?;
        assert_eq!(message, "Message must be 1 to 100 characters");
        assert!(!fatal);
    }
    c.send(&ClientMessage::SendMessage {
        message: "é".repeat(FAKE_MAX_CHAT_CHARS),
    })
    .await?;
    c.expect("receive_message", |m| {
        matches!(m, ServerMessage::ReceiveMessage { .. })
    })
    .await?;
    // Nothing refused was broadcast: the first message others see is the accepted one.
    let ServerMessage::ReceiveMessage { message } = other
        .expect("receive_message", |m| {
            matches!(m, ServerMessage::ReceiveMessage { .. })
        })
        .await?
    else {
        unreachable!()
    };
    assert_eq!(message.message, "é".repeat(FAKE_MAX_CHAT_CHARS));
    assert_eq!(h.chat.texts(), vec!["é".repeat(FAKE_MAX_CHAT_CHARS)]);
    Ok(())
}

#[tokio::test]
async fn a_flood_of_messages_is_rate_limited() -> R {
    let cfg = signaling::SignalingConfig {
        // One token per 10 s: a slow machine cannot refill the bucket mid-test.
        rate_per_sec: 0.1,
        rate_burst: 5,
        ..test_config()
    };
    let h = start(cfg).await?;
    let mut c = h.connect("bob").await?;
    for _ in 0..20 {
        c.send(&ClientMessage::Ping).await?;
    }
    let mut pongs = 0;
    let mut limited = 0;
    while pongs + limited < 20 {
        match c.recv().await? {
            ServerMessage::Pong => pongs += 1,
            ServerMessage::Error {
                code: ErrorCode::RateLimited,
                fatal: false,
                ..
            } => limited += 1,
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }
    assert!((5..=6).contains(&pongs), "pongs {pongs}");
    assert!(limited >= 14, "limited {limited}");
    Ok(())
}

#[tokio::test]
async fn a_full_room_refuses_the_next_participant_with_room_full() -> R {
    let cfg = signaling::SignalingConfig {
        max_participants: 2,
        ..test_config()
    };
    let h = start(cfg).await?;
    let _a = h.join("alice", "open").await?;
    let _b = h.join("bob", "open").await?;
    let mut c = h.connect("carol").await?;
    c.send(&ClientMessage::JoinRoom {
        room_id: "open".into(),
        resume_token: None,
    })
    .await?;
    // Sent before the refusal arrives: must be ignored, not served.
    c.send(&ClientMessage::JoinRoom {
        room_id: "open2".into(),
        resume_token: None,
    })
    .await?;
    let (_, fatal) = c.expect_error(ErrorCode::RoomFull).await?;
    assert!(fatal);
    c.expect_closed().await?;
    assert!(
        !c.seen.iter().any(is_joined),
        "input after a fatal error was handled: {:?}",
        c.seen
    );
    assert_eq!(h.signaling.room_snapshot("open2"), None);
    // Another room is unaffected.
    h.join("carol", "open2").await?;
    Ok(())
}

#[tokio::test]
async fn promotion_renegotiates_the_target_and_everyone_sees_the_new_role() -> R {
    let h = start(test_config()).await?;
    let (mut alice, _) = h.join("alice", "open").await?;
    let (mut bob, bob_id) = h.join("bob", "open").await?;
    let (mut carol, _) = h.join("carol", "open").await?;
    let first = bob.join_call().await?;
    h.media_saw(|c| {
        *c == MediaCall::Join {
            room: h.media.room_of(bob_id).unwrap_or(media::RoomKey(0)),
            pid: bob_id,
            can_publish: false,
        }
    })
    .await?;

    alice
        .send(&ClientMessage::SetRole {
            participant_id: bob_id,
            role: Role::Speaker,
        })
        .await?;
    let ServerMessage::Offer { sdp, .. } = bob
        .expect("renegotiation offer", |m| {
            matches!(m, ServerMessage::Offer { .. })
        })
        .await?
    else {
        unreachable!()
    };
    assert_ne!(sdp, first);
    assert!(sdp.contains("renegotiation"));
    h.media_saw(|c| {
        *c == MediaCall::SetCanPublish {
            pid: bob_id,
            can_publish: true,
        }
    })
    .await?;
    for c in [&mut alice, &mut carol, &mut bob] {
        c.expect("bob promoted", |m| {
            matches!(m, ServerMessage::ParticipantUpdated { participant }
                if participant.participant_id == bob_id && participant.role == Role::Speaker)
        })
        .await?;
    }
    // A promoted speaker may unmute.
    bob.send(&ClientMessage::Unmute).await?;
    h.media_saw(|c| {
        *c == MediaCall::SetMuted {
            pid: bob_id,
            muted: false,
        }
    })
    .await?;
    assert_eq!(
        h.signaling.room_snapshot("open").map(|s| s.speakers),
        Some(vec!["alice".to_string(), "bob".to_string()])
    );

    // Demotion renegotiates again and mutes.
    alice
        .send(&ClientMessage::SetRole {
            participant_id: bob_id,
            role: Role::Listener,
        })
        .await?;
    bob.expect("demotion offer", |m| {
        matches!(m, ServerMessage::Offer { .. })
    })
    .await?;
    h.media_saw(|c| {
        *c == MediaCall::SetCanPublish {
            pid: bob_id,
            can_publish: false,
        }
    })
    .await?;
    carol
        .expect("bob demoted and muted", |m| {
            matches!(m, ServerMessage::ParticipantUpdated { participant }
                if participant.participant_id == bob_id && participant.role == Role::Listener && participant.muted)
        })
        .await?;
    Ok(())
}

#[tokio::test]
async fn set_role_by_a_non_moderator_is_forbidden() -> R {
    let h = start(test_config()).await?;
    let (_alice, _) = h.join("alice", "open").await?;
    let (mut bob, _) = h.join("bob", "open").await?;
    let (_carol, carol_id) = h.join("carol", "open").await?;
    bob.send(&ClientMessage::SetRole {
        participant_id: carol_id,
        role: Role::Speaker,
    })
    .await?;
    bob.expect_error(ErrorCode::Forbidden).await?;
    bob.send(&ClientMessage::MuteParticipant {
        participant_id: carol_id,
    })
    .await?;
    bob.expect_error(ErrorCode::Forbidden).await?;
    bob.send(&ClientMessage::RemoveParticipant {
        participant_id: carol_id,
    })
    .await?;
    bob.expect_error(ErrorCode::Forbidden).await?;
    assert_eq!(
        h.signaling.room_snapshot("open").map(|s| s.total_people),
        Some(3)
    );
    Ok(())
}

#[tokio::test]
async fn moderator_mute_is_enforced_by_media_and_broadcast() -> R {
    let h = start(test_config()).await?;
    let (mut alice, _) = h.join("alice", "open").await?;
    let (mut bob, bob_id) = h.join("bob", "open").await?;
    alice
        .send(&ClientMessage::SetRole {
            participant_id: bob_id,
            role: Role::Speaker,
        })
        .await?;
    bob.expect("promoted", |m| {
        matches!(m, ServerMessage::ParticipantUpdated { participant } if participant.role == Role::Speaker)
    })
    .await?;
    bob.join_call().await?;
    bob.send(&ClientMessage::Unmute).await?;
    h.media_saw(|c| {
        *c == MediaCall::SetMuted {
            pid: bob_id,
            muted: false,
        }
    })
    .await?;
    alice
        .send(&ClientMessage::MuteParticipant {
            participant_id: bob_id,
        })
        .await?;
    h.media_saw(|c| {
        *c == MediaCall::SetMuted {
            pid: bob_id,
            muted: true,
        }
    })
    .await?;
    alice
        .expect("bob muted", |m| {
            matches!(m, ServerMessage::ParticipantUpdated { participant }
                if participant.participant_id == bob_id && participant.muted)
        })
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_removed_participant_is_told_disconnected_and_gone_for_everyone() -> R {
    let h = start(test_config()).await?;
    let (mut alice, _) = h.join("alice", "open").await?;
    let (mut bob, bob_id) = h.join("bob", "open").await?;
    let (mut carol, _) = h.join("carol", "open").await?;
    bob.join_call().await?;
    alice
        .send(&ClientMessage::RemoveParticipant {
            participant_id: bob_id,
        })
        .await?;
    bob.expect("removed", |m| matches!(m, ServerMessage::Removed { .. }))
        .await?;
    bob.expect_closed().await?;
    for c in [&mut alice, &mut carol] {
        c.expect("bob left", |m| {
            matches!(m, ServerMessage::ParticipantLeft { participant_id } if *participant_id == bob_id)
        })
        .await?;
    }
    h.media_saw(|c| *c == MediaCall::Leave { pid: bob_id })
        .await?;
    carol
        .expect("call left notice", |m| {
            matches!(m, ServerMessage::CallNotification { message } if message.kind == "call_ended")
        })
        .await?;
    assert_eq!(
        h.signaling.room_snapshot("open").map(|s| s.total_people),
        Some(2)
    );
    Ok(())
}

#[tokio::test]
async fn a_listener_cannot_unmute() -> R {
    let h = start(test_config()).await?;
    let (mut bob, bob_id) = h.join("bob", "open").await?;
    bob.join_call().await?;
    bob.send(&ClientMessage::Unmute).await?;
    let (_, fatal) = bob.expect_error(ErrorCode::Forbidden).await?;
    assert!(!fatal);
    assert!(
        !h.media.calls().contains(&MediaCall::SetMuted {
            pid: bob_id,
            muted: false
        }),
        "a listener was unmuted on the media side"
    );
    // Hand raise is how a listener asks.
    bob.send(&ClientMessage::RaiseHand).await?;
    bob.expect("hand raised", |m| {
        matches!(m, ServerMessage::ParticipantUpdated { participant } if participant.hand_raised)
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn call_join_and_leave_are_stored_as_system_messages_and_notified() -> R {
    let h = start(test_config()).await?;
    let (mut alice, alice_id) = h.join("alice", "open").await?;
    let (mut bob, _) = h.join("bob", "open").await?;
    alice.join_call().await?;
    h.media_saw(|c| {
        *c == MediaCall::Answer {
            pid: alice_id,
            sdp: "v=0 answer".into(),
        }
    })
    .await?;
    // Moderators join able to publish.
    assert!(h.media.calls().iter().any(|c| matches!(c,
        MediaCall::Join { pid, can_publish: true, .. } if *pid == alice_id)));
    bob.expect("alice in call", |m| {
        matches!(m, ServerMessage::ParticipantUpdated { participant }
            if participant.participant_id == alice_id && participant.in_call)
    })
    .await?;
    bob.expect("join notice", |m| {
        matches!(m, ServerMessage::CallNotification { message } if message.kind == "call_notification")
    })
    .await?;
    // A bad answer is refused, the socket stays.
    alice
        .send(&ClientMessage::Answer {
            sdp: "garbage".into(),
        })
        .await?;
    alice.expect_error(ErrorCode::BadMessage).await?;

    h.emit(SfuEvent::Connected {
        pid: alice_id.into(),
    })?;
    alice
        .expect("call_state connected", |m| {
            *m == ServerMessage::CallState { connected: true }
        })
        .await?;

    alice.send(&ClientMessage::RestartIce).await?;
    let ServerMessage::Offer { sdp, .. } = alice
        .expect("restart offer", |m| {
            matches!(m, ServerMessage::Offer { .. })
        })
        .await?
    else {
        unreachable!()
    };
    assert!(sdp.contains("restart"));

    alice.send(&ClientMessage::LeaveCall).await?;
    bob.expect("leave notice", |m| {
        matches!(m, ServerMessage::CallNotification { message } if message.kind == "call_ended")
    })
    .await?;
    h.media_saw(|c| *c == MediaCall::Leave { pid: alice_id })
        .await?;
    assert_eq!(
        h.chat.kinds(),
        vec!["call_notification".to_string(), "call_ended".to_string()]
    );
    // Out of the call, call-only requests are refused.
    alice.send(&ClientMessage::RestartIce).await?;
    alice.expect_error(ErrorCode::InvalidState).await?;
    Ok(())
}

#[tokio::test]
async fn media_disconnect_takes_the_participant_out_of_the_call() -> R {
    let h = start(test_config()).await?;
    let (mut alice, alice_id) = h.join("alice", "open").await?;
    let (mut bob, _) = h.join("bob", "open").await?;
    alice.join_call().await?;
    h.emit(SfuEvent::Disconnected {
        pid: alice_id.into(),
        reason: media::DisconnectReason::IceFailed,
    })?;
    alice
        .expect("call_state lost", |m| {
            *m == ServerMessage::CallState { connected: false }
        })
        .await?;
    bob.expect("alice out of call", |m| {
        matches!(m, ServerMessage::ParticipantUpdated { participant }
            if participant.participant_id == alice_id && !participant.in_call)
    })
    .await?;
    // Still in the room, and may join the call again.
    alice.join_call().await?;
    Ok(())
}

#[tokio::test]
async fn resume_within_grace_keeps_the_participant_id_and_nobody_sees_a_leave() -> R {
    let h = start(test_config()).await?;
    let (mut alice, _) = h.join("alice", "open").await?;
    let mut bob = h.connect("bob").await?;
    bob.send(&ClientMessage::JoinRoom {
        room_id: "open".into(),
        resume_token: None,
    })
    .await?;
    let ServerMessage::Joined {
        you, resume_token, ..
    } = bob.expect("joined", is_joined).await?
    else {
        unreachable!()
    };
    bob.join_call().await?;
    alice.sync().await?;
    bob.drop_connection();
    let dropped_at = tokio::time::Instant::now();

    let mut bob2 = h.connect("bob").await?;
    bob2.send(&ClientMessage::JoinRoom {
        room_id: "open".into(),
        resume_token: Some(resume_token.clone()),
    })
    .await?;
    let ServerMessage::Joined {
        you: you2,
        resumed,
        resume_token: token2,
        ..
    } = bob2.expect("joined again", is_joined).await?
    else {
        unreachable!()
    };
    assert!(resumed);
    assert_eq!(you2.participant_id, you.participant_id);
    assert!(you2.in_call, "the call survives the reconnect");
    assert_ne!(token2, resume_token, "resume tokens rotate");
    bob2.expect("call_state after resume", |m| {
        matches!(m, ServerMessage::CallState { .. })
    })
    .await?;
    bob2.send(&ClientMessage::RestartIce).await?;
    bob2.expect("restart offer", |m| {
        matches!(m, ServerMessage::Offer { .. })
    })
    .await?;

    // Well past the grace period, on virtual time (the grace timer is the server's own;
    // no socket is read meanwhile, so the clock's auto-advance cannot fire a client
    // deadline), then everything alice was sent: no leave, no rejoin.
    let grace = h.signaling.config().resume_grace;
    tokio::time::pause();
    let late = tokio::time::Instant::now().max(dropped_at) + grace + Duration::from_millis(700);
    tokio::time::sleep_until(late).await;
    tokio::time::resume();
    assert_eq!(
        h.signaling.room_snapshot("open").map(|s| s.total_people),
        Some(2),
        "bob's place was given up"
    );
    let seen = alice.sync().await?;
    assert!(
        !seen.iter().any(|m| matches!(
            m,
            ServerMessage::ParticipantLeft { .. } | ServerMessage::ParticipantJoined { .. }
        )),
        "others saw the reconnect: {seen:?}"
    );
    assert!(
        !h.media.calls().contains(&MediaCall::Leave {
            pid: you.participant_id
        }),
        "media was torn down"
    );
    // The old token is spent.
    let mut bob3 = h.connect("bob").await?;
    bob3.send(&ClientMessage::JoinRoom {
        room_id: "open".into(),
        resume_token: Some(resume_token),
    })
    .await?;
    let ServerMessage::Joined { resumed, you, .. } = bob3.expect("joined", is_joined).await? else {
        unreachable!()
    };
    assert!(!resumed);
    assert_ne!(you.participant_id, you2.participant_id);
    Ok(())
}

/// The place is held for the grace and given up after it, on virtual time once the socket
/// is gone (the exchanges before and after run on real time: the clock's auto-advance
/// would otherwise fire the client's deadlines while it waits on I/O).
#[tokio::test]
async fn after_the_grace_period_the_participant_leaves_for_real() -> R {
    let cfg = test_config();
    // Bob's audio never connects, so his place has the shorter of the two graces.
    let grace = cfg.resume_grace.min(cfg.unconnected_grace);
    let h = start(cfg).await?;
    let (mut alice, _) = h.join("alice", "open").await?;
    let (mut bob, bob_id) = h.join("bob", "open").await?;
    bob.join_call().await?;
    alice
        .expect("bob joined", |m| {
            matches!(m, ServerMessage::ParticipantJoined { .. })
        })
        .await?;
    let before = tokio::time::Instant::now();
    bob.drop_connection();
    wait_reconnecting(&h, "open", 1).await?;
    let after = tokio::time::Instant::now();
    // The grace started between `before` and `after`.
    let people = || h.signaling.room_snapshot("open").map(|s| s.total_people);
    tokio::time::pause();
    tokio::time::sleep_until(before + grace - Duration::from_millis(100)).await;
    assert_eq!(people(), Some(2), "bob's place is held during the grace");
    tokio::time::sleep_until(after + grace + Duration::from_millis(100)).await;
    assert_eq!(people(), Some(1), "and given up after it");
    tokio::time::resume();
    alice
        .expect("bob left after grace", |m| {
            matches!(m, ServerMessage::ParticipantLeft { participant_id } if *participant_id == bob_id)
        })
        .await?;
    h.media_saw(|c| *c == MediaCall::Leave { pid: bob_id })
        .await?;
    alice
        .expect("call ended notice", |m| {
            matches!(m, ServerMessage::CallNotification { message } if message.kind == "call_ended")
        })
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_silent_client_is_dropped_after_the_ping_timeout() -> R {
    let cfg = signaling::SignalingConfig {
        ping_interval: Duration::from_millis(100),
        ping_timeout: Duration::from_millis(400),
        resume_grace: Duration::ZERO,
        ..test_config()
    };
    let h = start(cfg).await?;
    let (mut alice, _) = h.join("alice", "open").await?;
    // Bob stops reading, so his client never answers the server's pings.
    let (_bob, bob_id) = h.join("bob", "open").await?;
    alice
        .expect("bob dropped", |m| {
            matches!(m, ServerMessage::ParticipantLeft { participant_id } if *participant_id == bob_id)
        })
        .await?;
    Ok(())
}

#[tokio::test]
async fn slots_are_personalised_so_nobody_hears_themself() -> R {
    let h = start(test_config()).await?;
    let (mut alice, alice_id) = h.join("alice", "open").await?;
    let (mut bob, bob_id) = h.join("bob", "open").await?;
    let (mut carol, carol_id) = h.join("carol", "open").await?;
    let (mut dave, _) = h.join("dave", "open").await?; // not in the call
    for c in [&mut alice, &mut bob, &mut carol] {
        c.join_call().await?;
    }
    let room = h.media.room_of(alice_id).expect("alice joined media");
    h.emit(SfuEvent::SlotsChanged {
        room,
        slots: vec![Some(alice_id.into()), Some(bob_id.into()), None],
        spare: Some(carol_id.into()),
    })?;
    alice
        .expect("alice's slots", |m| {
            *m == ServerMessage::Slots {
                slots: vec![Some(carol_id), Some(bob_id), None],
            }
        })
        .await?;
    bob.expect("bob's slots", |m| {
        *m == ServerMessage::Slots {
            slots: vec![Some(alice_id), Some(carol_id), None],
        }
    })
    .await?;
    carol
        .expect("carol's slots", |m| {
            *m == ServerMessage::Slots {
                slots: vec![Some(alice_id), Some(bob_id), None],
            }
        })
        .await?;
    let dave_saw = dave.sync().await?;
    assert!(
        !dave_saw
            .iter()
            .any(|m| matches!(m, ServerMessage::Slots { .. })),
        "slots go only to participants in the call"
    );
    Ok(())
}

#[tokio::test]
async fn active_speakers_from_media_are_relayed_to_the_room() -> R {
    let h = start(test_config()).await?;
    let (mut alice, alice_id) = h.join("alice", "open").await?;
    let (mut bob, _) = h.join("bob", "open").await?;
    alice.join_call().await?;
    let room = h.media.room_of(alice_id).expect("alice joined media");
    h.emit(SfuEvent::ActiveSpeakers {
        room,
        speakers: vec![(alice_id.into(), 0.75)],
    })?;
    let expected = ServerMessage::ActiveSpeakers {
        speakers: vec![signaling::protocol::SpeakerLevel {
            participant_id: alice_id,
            level: 0.75,
        }],
    };
    bob.expect("active speakers", |m| *m == expected).await?;
    alice.expect("active speakers", |m| *m == expected).await?;
    // A late joiner gets the current speakers right away.
    let mut carol = h.connect("carol").await?;
    carol.join_room("open").await?;
    carol.expect("speakers on join", |m| *m == expected).await?;
    Ok(())
}

#[tokio::test]
async fn media_refusing_a_listeners_audio_is_reported_to_that_listener() -> R {
    let h = start(test_config()).await?;
    let (mut bob, bob_id) = h.join("bob", "open").await?;
    bob.join_call().await?;
    h.emit(SfuEvent::MediaRefused { pid: bob_id.into() })?;
    let (_, fatal) = bob.expect_error(ErrorCode::Forbidden).await?;
    assert!(!fatal);
    Ok(())
}

#[tokio::test]
async fn a_busy_sfu_answers_join_call_with_busy_and_the_retry_succeeds() -> R {
    let h = start(test_config()).await?;
    let (mut bob, _) = h.join("bob", "open").await?;
    h.media
        .busy
        .store(true, std::sync::atomic::Ordering::Relaxed);
    bob.send(&ClientMessage::JoinCall).await?;
    let (message, fatal) = bob.expect_error(ErrorCode::Busy).await?;
    assert!(!fatal, "busy is not fatal");
    assert!(message.contains("try again"), "{message}");
    h.media
        .busy
        .store(false, std::sync::atomic::Ordering::Relaxed);
    bob.join_call().await?;
    Ok(())
}

#[tokio::test]
async fn requests_before_joining_a_room_get_invalid_state() -> R {
    let h = start(test_config()).await?;
    let mut c = h.connect("bob").await?;
    for m in [
        ClientMessage::JoinCall,
        ClientMessage::SendMessage {
            message: "hi".into(),
        },
        ClientMessage::RaiseHand,
    ] {
        c.send(&m).await?;
        c.expect_error(ErrorCode::InvalidState).await?;
    }
    c.join_room("open").await?;
    c.send(&ClientMessage::JoinRoom {
        room_id: "open2".into(),
        resume_token: None,
    })
    .await?;
    c.expect_error(ErrorCode::InvalidState).await?;
    Ok(())
}

#[tokio::test]
async fn media_disconnect_of_a_participant_whose_socket_is_gone_removes_it_at_once() -> R {
    // A grace far longer than the test: only the media event can remove bob in time.
    let cfg = signaling::SignalingConfig {
        resume_grace: Duration::from_secs(600),
        ..test_config()
    };
    let h = start(cfg).await?;
    let (mut alice, _) = h.join("alice", "open").await?;
    let (mut bob, bob_id) = h.join("bob", "open").await?;
    bob.join_call().await?;
    bob.drop_connection();
    wait_reconnecting(&h, "open", 1).await?;
    h.emit(SfuEvent::Disconnected {
        pid: bob_id.into(),
        reason: media::DisconnectReason::Timeout,
    })?;
    alice
        .expect("bob removed", |m| {
            matches!(m, ServerMessage::ParticipantLeft { participant_id } if *participant_id == bob_id)
        })
        .await?;
    h.media_saw(|c| *c == MediaCall::Leave { pid: bob_id })
        .await?;
    assert_eq!(
        h.signaling.room_snapshot("open").map(|s| s.total_people),
        Some(1)
    );
    Ok(())
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
async fn a_client_that_does_not_read_is_disconnected_instead_of_stalling_the_room() -> R {
    let cfg = signaling::SignalingConfig {
        outgoing_queue: 8,
        resume_grace: Duration::ZERO,
        ..test_config()
    };
    let h = start(cfg).await?;
    let (mut alice, alice_id) = h.join("alice", "open").await?;
    // Bob never reads again: the kernel buffers fill, then his queue.
    let (_bob, bob_id) = h.join("bob", "open").await?;
    alice.sync().await?;
    let room = {
        alice.join_call().await?;
        h.media.room_of(alice_id).expect("alice joined media")
    };
    // ~5 KB per broadcast, far more in total than loopback socket buffers hold.
    let speakers: Vec<_> = (0..200)
        .map(|i| (media::ParticipantId(1000 + i), 0.5))
        .collect();
    let reader = tokio::spawn(async move {
        alice
            .expect("bob dropped", |m| {
                matches!(m, ServerMessage::ParticipantLeft { participant_id } if *participant_id == bob_id)
            })
            .await
            .map(|_| ())
    });
    for _ in 0..8000 {
        if reader.is_finished() {
            break;
        }
        h.emit(SfuEvent::ActiveSpeakers {
            room,
            speakers: speakers.clone(),
        })?;
        tokio::task::yield_now().await;
    }
    tokio::time::timeout(DEADLINE * 3, reader).await???;
    Ok(())
}

#[tokio::test]
async fn stats_count_connections_rooms_roles_and_calls() -> R {
    let h = start(test_config()).await?;
    let (mut alice, _) = h.join("alice", "open").await?;
    let (_bob, _) = h.join("bob", "open").await?;
    let (_carol, _) = h.join("carol", "open2").await?;
    let _idle = h.connect("dave").await?;
    alice.join_call().await?;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let expected = signaling::SignalingStats {
        connections: 4,
        rooms: 2,
        moderators: 1,
        speakers: 0,
        listeners: 2,
        in_call: 1,
        reconnecting: 0,
    };
    // The idle connection is counted once its upgrade completed on the server.
    while h.signaling.stats() != expected {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "stats {:?}",
            h.signaling.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

#[tokio::test]
async fn a_frame_far_over_the_limit_closes_the_connection() -> R {
    let cfg = signaling::SignalingConfig {
        max_frame_bytes: 4096,
        ..test_config()
    };
    let h = start(cfg).await?;
    let (mut alice, _) = h.join("alice", "open").await?;
    let (mut bob, bob_id) = h.join("bob", "open").await?;
    // Over 4x the limit: the WebSocket layer refuses to buffer it at all.
    bob.send_raw(&"x".repeat(4096 * 4 + 1)).await?;
    bob.expect_closed().await?;
    // Bob's place is kept for the resume grace, then he leaves.
    alice
        .expect("bob left", |m| {
            matches!(m, ServerMessage::ParticipantLeft { participant_id } if *participant_id == bob_id)
        })
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_removed_user_loses_every_tab_and_cannot_rejoin() -> R {
    let h = start(test_config()).await?;
    let (mut alice, _) = h.join("alice", "open").await?;
    let (mut tab1, p1) = h.join("bob", "open").await?;
    let (mut tab2, p2) = h.join("bob", "open").await?;
    alice
        .send(&ClientMessage::RemoveParticipant { participant_id: p1 })
        .await?;
    for tab in [&mut tab1, &mut tab2] {
        tab.expect("removed", |m| matches!(m, ServerMessage::Removed { .. }))
            .await?;
        tab.expect_closed().await?;
    }
    for pid in [p1, p2] {
        alice
            .expect("tab left", |m| {
                matches!(m, ServerMessage::ParticipantLeft { participant_id } if *participant_id == pid)
            })
            .await?;
    }
    let mut back = h.connect("bob").await?;
    back.send(&ClientMessage::JoinRoom {
        room_id: "open".into(),
        resume_token: None,
    })
    .await?;
    let (_, fatal) = back.expect_error(ErrorCode::Removed).await?;
    assert!(fatal);
    back.expect_closed().await?;
    // Other rooms are not affected.
    h.join("bob", "open2").await?;
    Ok(())
}

#[tokio::test]
async fn a_moderator_cannot_be_removed() -> R {
    let h = start(test_config()).await?;
    let (mut alice, _) = h.join("alice", "open").await?;
    let (_alice_tab2, tab2_id) = h.join("alice", "open").await?;
    alice
        .send(&ClientMessage::RemoveParticipant {
            participant_id: tab2_id,
        })
        .await?;
    alice.expect_error(ErrorCode::Forbidden).await?;
    assert_eq!(
        h.signaling.room_snapshot("open").map(|s| s.total_people),
        Some(2)
    );
    Ok(())
}
