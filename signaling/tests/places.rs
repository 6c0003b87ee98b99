//! Places in a room are a bounded resource: one account cannot fill a room with places
//! it abandons (join, drop the TCP connection, repeat), a reloaded tab gets its place
//! back without a refusal, the owner is never locked out of their own room, and a
//! place that never had audio is given up quickly.

#![cfg(feature = "server")]

mod common;

use std::time::Duration;

use common::*;
use media::SfuEvent;
use signaling::protocol::{ClientMessage, ErrorCode, ParticipantId, Role, ServerMessage};

type R = anyhow::Result<()>;

/// Long enough that no grace runs out during a test: only the per-user cap frees places.
const LONG: Duration = Duration::from_secs(120);

fn config(max_participants: usize) -> signaling::SignalingConfig {
    signaling::SignalingConfig {
        max_participants,
        max_places_per_user: 4,
        resume_grace: LONG,
        unconnected_grace: LONG,
        ..test_config()
    }
}

fn people(h: &Harness, room: &str) -> usize {
    h.signaling
        .room_snapshot(room)
        .map_or(0, |s| s.total_people)
}

/// Joins and returns the refusal (code, fatal), failing if the join succeeds.
async fn refused_join(h: &Harness, user: &str, room: &str) -> anyhow::Result<(ErrorCode, String)> {
    let mut c = h.connect(user).await?;
    c.send(&ClientMessage::JoinRoom {
        room_id: room.into(),
        resume_token: None,
    })
    .await?;
    match c
        .expect("joined or error", |m| {
            matches!(
                m,
                ServerMessage::Joined { .. } | ServerMessage::Error { .. }
            )
        })
        .await?
    {
        ServerMessage::Error {
            code,
            message,
            fatal,
        } => {
            anyhow::ensure!(fatal, "a refused join is fatal");
            c.expect_closed().await?;
            Ok((code, message))
        }
        other => anyhow::bail!("{user} was admitted: {other:?}"),
    }
}

#[tokio::test]
async fn one_account_dropping_joins_cannot_fill_a_room_nor_lock_out_its_owner() -> R {
    let h = start(config(6)).await?;
    // The attack: join, drop the TCP connection without leaving, many times over.
    for i in 0..20 {
        let (c, _) = h.join("mallory", "open").await?;
        c.drop_connection();
        wait_reconnecting(&h, "open", (i + 1).min(4)).await?;
    }
    assert_eq!(people(&h, "open"), 4, "mallory holds at most 4 places");

    // Everyone else still gets in until the room is really full.
    let (_bob, _) = h.join("bob", "open").await?;
    let (_carol, _) = h.join("carol", "open").await?;
    assert_eq!(people(&h, "open"), 6);
    let (code, _) = refused_join(&h, "dave", "open").await?;
    assert_eq!(code, ErrorCode::RoomFull);

    // The owner is admitted to a full room, as its moderator.
    let mut alice = h.connect("alice").await?;
    alice
        .send(&ClientMessage::JoinRoom {
            room_id: "open".into(),
            resume_token: None,
        })
        .await?;
    match alice
        .expect("joined", |m| {
            matches!(
                m,
                ServerMessage::Joined { .. } | ServerMessage::Error { .. }
            )
        })
        .await?
    {
        ServerMessage::Joined { you, .. } => assert_eq!(you.role, Role::Moderator),
        other => anyhow::bail!("owner refused: {other:?}"),
    }
    assert_eq!(people(&h, "open"), 7);
    Ok(())
}

#[tokio::test]
async fn a_reloaded_tab_over_the_cap_takes_the_place_of_the_oldest_resumable_one() -> R {
    let h = start(config(100)).await?;
    let (mut watcher, _) = h.join("carol", "open").await?;
    let mut tabs = Vec::new();
    let mut pids = Vec::new();
    for _ in 0..4 {
        let (c, pid) = h.join("bob", "open").await?;
        tabs.push(c);
        pids.push(pid);
    }
    // Two tabs lose their connection (a reload, a network change) and come back fresh.
    let second = tabs.remove(1);
    let first = tabs.remove(0);
    first.drop_connection();
    wait_reconnecting(&h, "open", 1).await?;
    second.drop_connection();
    wait_reconnecting(&h, "open", 2).await?;

    let (_again, new_pid) = h.join("bob", "open").await?;
    let left = watcher
        .expect("participant_left", |m| {
            matches!(m, ServerMessage::ParticipantLeft { .. })
        })
        .await?;
    assert_eq!(
        left,
        ServerMessage::ParticipantLeft {
            participant_id: pids[0]
        },
        "the oldest resumable place goes"
    );
    assert!(!pids.contains(&new_pid));
    assert_eq!(people(&h, "open"), 5, "carol and bob's four places");
    assert_eq!(
        h.signaling.room_snapshot("open").map(|s| s.reconnecting),
        Some(1),
        "the newer resumable place is kept"
    );
    Ok(())
}

#[tokio::test]
async fn a_user_whose_places_are_all_live_is_refused_one_more_with_a_clear_error() -> R {
    let h = start(config(100)).await?;
    let mut tabs = Vec::new();
    for _ in 0..4 {
        tabs.push(h.join("bob", "open").await?);
    }
    let (code, message) = refused_join(&h, "bob", "open").await?;
    assert_eq!(code, ErrorCode::TooManyTabs);
    assert!(message.contains("4 tabs"), "{message}");
    assert_eq!(people(&h, "open"), 4, "bob's live tabs all stay");
    // Other rooms and other users are not affected.
    h.join("bob", "open2").await?;
    h.join("carol", "open").await?;
    // Every tab still works.
    for (c, _) in &mut tabs {
        c.sync().await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_place_that_never_had_audio_is_given_up_after_the_short_grace() -> R {
    let cfg = signaling::SignalingConfig {
        resume_grace: LONG,
        unconnected_grace: Duration::from_millis(300),
        ..test_config()
    };
    let h = start(cfg).await?;
    let (mut watcher, _) = h.join("alice", "open").await?;

    // Carol's audio connected: her place keeps the full resume grace.
    let (mut carol, carol_pid) = h.join("carol", "open").await?;
    carol.join_call().await?;
    h.emit(SfuEvent::Connected {
        pid: carol_pid.into(),
    })?;
    carol
        .expect("call_state", |m| {
            matches!(m, ServerMessage::CallState { connected: true })
        })
        .await?;
    carol.drop_connection();
    wait_reconnecting(&h, "open", 1).await?;

    // Bob only ever had a socket (so did one who joined the call but never connected).
    let (bob, bob_pid) = h.join("bob", "open").await?;
    bob.drop_connection();
    let (mut dave, dave_pid) = h.join("dave", "open").await?;
    dave.join_call().await?;
    dave.drop_connection();

    let mut gone: Vec<ParticipantId> = Vec::new();
    while gone.len() < 2 {
        match watcher
            .expect("participant_left", |m| {
                matches!(m, ServerMessage::ParticipantLeft { .. })
            })
            .await?
        {
            ServerMessage::ParticipantLeft { participant_id } => gone.push(participant_id),
            _ => unreachable!(),
        }
    }
    gone.sort();
    assert_eq!(gone, vec![bob_pid, dave_pid]);
    // Carol, dropped before them, still waits for her resume.
    let snap = h.signaling.room_snapshot("open");
    assert_eq!(snap.map(|s| (s.total_people, s.reconnecting)), Some((2, 1)));
    h.media_saw(|c| matches!(c, MediaCall::Leave { pid } if *pid == dave_pid))
        .await?;
    Ok(())
}

/// The same with the production graces (15 s, and 5 s without audio), on virtual time
/// once the sockets are gone (the socket exchanges before run on real time: the clock's
/// auto-advance would otherwise fire the client's deadlines while it waits on I/O).
#[tokio::test]
async fn with_the_default_graces_a_place_without_audio_goes_after_5_s_one_with_audio_after_15_s()
-> R {
    let cfg = signaling::SignalingConfig::default();
    assert_eq!(cfg.resume_grace, Duration::from_secs(15));
    assert_eq!(cfg.unconnected_grace, Duration::from_secs(5));
    let h = start(cfg).await?;
    let (_watcher, _) = h.join("alice", "open").await?;
    let (mut carol, carol_pid) = h.join("carol", "open").await?;
    carol.join_call().await?;
    h.emit(SfuEvent::Connected {
        pid: carol_pid.into(),
    })?;
    carol
        .expect("call_state", |m| {
            matches!(m, ServerMessage::CallState { connected: true })
        })
        .await?;
    let (bob, _) = h.join("bob", "open").await?;
    let before = tokio::time::Instant::now();
    carol.drop_connection();
    bob.drop_connection();
    wait_reconnecting(&h, "open", 2).await?;
    let after = tokio::time::Instant::now();
    // Each grace started between `before` and `after`.
    tokio::time::pause();
    let at = |ms: u64| tokio::time::sleep_until(before + Duration::from_millis(ms));
    let at_after = |ms: u64| tokio::time::sleep_until(after + Duration::from_millis(ms));
    at(4900).await;
    assert_eq!(people(&h, "open"), 3, "both places are held before 5 s");
    at_after(5100).await;
    assert_eq!(people(&h, "open"), 2, "the place without audio went at 5 s");
    at(14_900).await;
    assert_eq!(
        people(&h, "open"),
        2,
        "the place with audio is held until 15 s"
    );
    at_after(15_100).await;
    assert_eq!(people(&h, "open"), 1, "and goes at 15 s");
    Ok(())
}
