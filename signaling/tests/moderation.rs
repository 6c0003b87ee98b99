//! Moderation beyond one call: removed users staying out until let back in,
//! co-hosts named by the owner, moderation passing on when the host leaves, and a
//! speaker stepping back to the audience. (alice owns every fake room.)

#![cfg(feature = "server")]

mod common;

use common::*;
use signaling::protocol::{ClientMessage, ErrorCode, ParticipantId, Role, ServerMessage};

type R = anyhow::Result<()>;

fn removed_ids(m: &ServerMessage) -> Option<Vec<String>> {
    match m {
        ServerMessage::RemovedUsers { users } => {
            Some(users.iter().map(|u| u.user_id.clone()).collect())
        }
        _ => None,
    }
}

async fn expect_removed_list(c: &mut Client, want: &[&str]) -> R {
    let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    c.expect(&format!("removed_users {want:?}"), |m| {
        removed_ids(m).as_ref() == Some(&want)
    })
    .await?;
    Ok(())
}

async fn expect_role(c: &mut Client, pid: ParticipantId, role: Role) -> R {
    c.expect(&format!("{pid:?} becomes {role:?}"), |m| {
        matches!(m, ServerMessage::ParticipantUpdated { participant }
            if participant.participant_id == pid && participant.role == role)
    })
    .await?;
    Ok(())
}

async fn set_role(c: &mut Client, pid: ParticipantId, role: Role) -> R {
    c.send(&ClientMessage::SetRole {
        participant_id: pid,
        role,
    })
    .await
}

#[tokio::test]
async fn a_removed_user_stays_out_after_the_room_empties_until_a_moderator_lets_them_back() -> R {
    let h = start(test_config()).await?;
    let (mut alice, _) = h.join("alice", "open").await?;
    let (mut bob, bob_pid) = h.join("bob", "open").await?;
    alice
        .send(&ClientMessage::RemoveParticipant {
            participant_id: bob_pid,
        })
        .await?;
    bob.expect("removed", |m| matches!(m, ServerMessage::Removed { .. }))
        .await?;
    expect_removed_list(&mut alice, &["bob"]).await?;

    // The room empties (the live room is dropped): the removal outlives it.
    alice.send(&ClientMessage::LeaveRoom).await?;
    alice.sync().await?;
    assert_eq!(
        h.signaling.room_snapshot("open"),
        None,
        "the live room is gone"
    );
    let mut back = h.connect("bob").await?;
    back.send(&ClientMessage::JoinRoom {
        room_id: "open".into(),
        resume_token: None,
    })
    .await?;
    let (text, fatal) = back.expect_error(ErrorCode::Removed).await?;
    assert!(fatal);
    assert!(text.contains("let you back in"), "{text}");
    back.expect_closed().await?;

    // The host comes back and is shown who is out, then lets bob back in.
    let mut alice = h.connect("alice").await?;
    alice.join_room("open").await?;
    expect_removed_list(&mut alice, &["bob"]).await?;
    alice
        .send(&ClientMessage::LetBackIn {
            user_id: "bob".into(),
        })
        .await?;
    expect_removed_list(&mut alice, &[]).await?;
    let mut bob = h.connect("bob").await?;
    bob.join_room("open").await?;
    Ok(())
}

#[tokio::test]
async fn only_a_moderator_may_let_someone_back_and_only_someone_removed() -> R {
    let h = start(test_config()).await?;
    let (mut alice, _) = h.join("alice", "open").await?;
    let (_bob, bob_pid) = h.join("bob", "open").await?;
    let (mut carol, _) = h.join("carol", "open").await?;
    alice
        .send(&ClientMessage::RemoveParticipant {
            participant_id: bob_pid,
        })
        .await?;
    expect_removed_list(&mut alice, &["bob"]).await?;
    carol
        .send(&ClientMessage::LetBackIn {
            user_id: "bob".into(),
        })
        .await?;
    let (_, fatal) = carol.expect_error(ErrorCode::Forbidden).await?;
    assert!(!fatal);
    assert!(
        carol.sync().await?.iter().all(|m| removed_ids(m).is_none()),
        "listeners never see the removed list"
    );
    alice
        .send(&ClientMessage::LetBackIn {
            user_id: "dave".into(),
        })
        .await?;
    alice.expect_error(ErrorCode::NotFound).await?;
    Ok(())
}

#[tokio::test]
async fn when_the_host_leaves_the_earliest_speaker_becomes_moderator() -> R {
    let h = start(test_config()).await?;
    let (mut alice, _) = h.join("alice", "open").await?;
    let (mut bob, bob_pid) = h.join("bob", "open").await?;
    let (mut carol, carol_pid) = h.join("carol", "open").await?;
    let (_dave, _) = h.join("dave", "open").await?;
    // Promoted in the other order: join order decides, not promotion order.
    set_role(&mut alice, carol_pid, Role::Speaker).await?;
    set_role(&mut alice, bob_pid, Role::Speaker).await?;
    expect_role(&mut carol, bob_pid, Role::Speaker).await?;
    alice.send(&ClientMessage::LeaveRoom).await?;
    expect_role(&mut carol, bob_pid, Role::Moderator).await?;
    expect_role(&mut bob, bob_pid, Role::Moderator).await?;
    // The new moderator moderates.
    set_role(&mut bob, carol_pid, Role::Listener).await?;
    expect_role(&mut carol, carol_pid, Role::Listener).await?;
    Ok(())
}

#[tokio::test]
async fn a_host_who_only_reconnects_keeps_the_moderation() -> R {
    let h = start(test_config()).await?;
    let (mut alice, _) = h.join("alice", "open").await?;
    let (_bob, bob_pid) = h.join("bob", "open").await?;
    let (mut carol, _) = h.join("carol", "open").await?;
    set_role(&mut alice, bob_pid, Role::Speaker).await?;
    expect_role(&mut carol, bob_pid, Role::Speaker).await?;
    // The host's socket drops; within the resume grace nobody takes over.
    alice.drop_connection();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while h
        .signaling
        .room_snapshot("open")
        .is_none_or(|s| s.reconnecting == 0)
    {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "drop not noticed");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let seen = carol.sync().await?;
    assert!(
        !seen.iter().any(|m| matches!(m, ServerMessage::ParticipantUpdated { participant } if participant.role == Role::Moderator)),
        "{seen:?}"
    );
    Ok(())
}

#[tokio::test]
async fn the_owner_names_a_co_host_who_moderates_but_cannot_name_others_or_demote_the_owner() -> R {
    let h = start(test_config()).await?;
    let (mut alice, alice_pid) = h.join("alice", "open").await?;
    let (mut bob, bob_pid) = h.join("bob", "open").await?;
    let (mut carol, carol_pid) = h.join("carol", "open").await?;
    set_role(&mut alice, bob_pid, Role::Moderator).await?;
    expect_role(&mut carol, bob_pid, Role::Moderator).await?;
    expect_role(&mut bob, bob_pid, Role::Moderator).await?;

    set_role(&mut bob, carol_pid, Role::Speaker).await?;
    expect_role(&mut carol, carol_pid, Role::Speaker).await?;
    set_role(&mut bob, carol_pid, Role::Moderator).await?;
    bob.expect_error(ErrorCode::Forbidden).await?;
    set_role(&mut bob, alice_pid, Role::Listener).await?;
    bob.expect_error(ErrorCode::Forbidden).await?;

    // The owner takes the role back.
    set_role(&mut alice, bob_pid, Role::Speaker).await?;
    expect_role(&mut carol, bob_pid, Role::Speaker).await?;
    // And the owner's own role is not for changing.
    set_role(&mut alice, alice_pid, Role::Listener).await?;
    alice.expect_error(ErrorCode::Forbidden).await?;
    Ok(())
}

#[tokio::test]
async fn a_speaker_steps_back_to_the_audience_themself_and_a_listener_cannot_move_others() -> R {
    let h = start(test_config()).await?;
    let (mut alice, _) = h.join("alice", "open").await?;
    let (mut bob, bob_pid) = h.join("bob", "open").await?;
    let (mut carol, carol_pid) = h.join("carol", "open").await?;
    set_role(&mut alice, bob_pid, Role::Speaker).await?;
    expect_role(&mut bob, bob_pid, Role::Speaker).await?;
    bob.send(&ClientMessage::Unmute).await?;
    set_role(&mut bob, bob_pid, Role::Listener).await?;
    let m = carol
        .expect("bob back in the audience", |m| {
            matches!(m, ServerMessage::ParticipantUpdated { participant }
                if participant.participant_id == bob_pid && participant.role == Role::Listener)
        })
        .await?;
    let ServerMessage::ParticipantUpdated { participant } = m else {
        unreachable!()
    };
    assert!(participant.muted, "stepping back mutes");
    // Stepping up is not self-service, nor moving someone else.
    set_role(&mut carol, carol_pid, Role::Speaker).await?;
    carol.expect_error(ErrorCode::Forbidden).await?;
    set_role(&mut carol, bob_pid, Role::Listener).await?;
    carol.expect_error(ErrorCode::Forbidden).await?;
    Ok(())
}
