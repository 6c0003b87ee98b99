//! Signaling and the real SFU end to end, with real WebRTC clients (media's test
//! client: `webrtc` peer connections sending Opus tones): everything a participant
//! does goes over the WebSocket, the audio over WebRTC.

#![cfg(feature = "server")]

mod common;
#[path = "../../media/tests/common/mod.rs"]
mod rtc_client;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use common::{Client as WsClient, FakeAuth, FakeChat, FakeDirectory, Harness};
use rtc_client::{Client as RtcClient, dominant_tone, wait_until};
use signaling::protocol::{ClientMessage, ErrorCode, Role, ServerMessage};
use signaling::{Signaling, SignalingPorts, sfu_events};

const CONNECT: Duration = Duration::from_secs(15);

async fn start_real() -> Result<(Harness, media::Sfu)> {
    let (sfu, events) = media::Sfu::start(rtc_client::test_config())?;
    let signaling = Signaling::new(
        common::test_config(),
        SignalingPorts {
            auth: Arc::new(FakeAuth),
            directory: Arc::new(FakeDirectory),
            chat: Arc::new(FakeChat::default()),
            media: Arc::new(sfu.clone()),
        },
        sfu_events(events),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = signaling.routes();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((Harness::for_addr(addr, signaling), sfu))
}

async fn next_offer(ws: &mut WsClient) -> Result<String> {
    match ws
        .expect("offer", |m| matches!(m, ServerMessage::Offer { .. }))
        .await?
    {
        ServerMessage::Offer { sdp, .. } => Ok(sdp),
        _ => unreachable!(),
    }
}

/// join_call over the socket, answered by a real peer connection.
async fn join_call(ws: &mut WsClient, name: &str, attach_mic: bool) -> Result<RtcClient> {
    let mut rtc = RtcClient::new(name).await?;
    ws.send(&ClientMessage::JoinCall).await?;
    let offer = next_offer(ws).await?;
    let answer = rtc.answer(&offer, attach_mic).await?;
    ws.send(&ClientMessage::Answer { sdp: answer }).await?;
    rtc.wait_connected(CONNECT).await?;
    ws.expect("call_state connected", |m| {
        *m == ServerMessage::CallState { connected: true }
    })
    .await?;
    Ok(rtc)
}

fn hears(rtc: &RtcClient, freq: f64) -> bool {
    rtc.with_streams(|s| {
        s.values()
            .any(|r| r.packets >= 25 && dominant_tone(&r.pcm, &[440.0, 660.0]) == Some(freq))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_webrtc_a_listener_is_refused_until_promoted_then_heard_until_muted() -> Result<()> {
    let (h, sfu) = start_real().await?;
    let (mut alice_ws, alice_id) = h.join("alice", "open").await?;
    let (mut bob_ws, bob_id) = h.join("bob", "open").await?;

    let mut alice = join_call(&mut alice_ws, "alice", true).await?;
    // Bob is a listener but attaches a microphone anyway.
    let mut bob = join_call(&mut bob_ws, "bob", true).await?;
    alice.start_tone(440.0, 5).await?;
    bob.start_tone(660.0, 5).await?;

    wait_until(CONNECT, "bob hears alice's 440 Hz", || hears(&bob, 440.0)).await?;
    let (_, fatal) = bob_ws.expect_error(ErrorCode::Forbidden).await?;
    ensure!(!fatal, "a refused publish does not end the session");
    bob_ws
        .expect(
            "bob's slots show alice",
            |m| matches!(m, ServerMessage::Slots { slots } if slots.contains(&Some(alice_id))),
        )
        .await?;
    bob_ws
        .expect("alice is an active speaker", |m| {
            matches!(m, ServerMessage::ActiveSpeakers { speakers }
                if speakers.first().map(|s| s.participant_id) == Some(alice_id))
        })
        .await?;
    wait_until(Duration::from_secs(10), "bob's packets are dropped", || {
        sfu.stats().dropped_not_publisher >= 10
    })
    .await?;
    ensure!(
        alice.received_total() == 0,
        "nothing of the listener reached alice"
    );

    // Promotion: bob gets a renegotiation offer over the socket, answers, unmutes.
    alice_ws
        .send(&ClientMessage::SetRole {
            participant_id: bob_id,
            role: Role::Speaker,
        })
        .await?;
    let offer = next_offer(&mut bob_ws).await?;
    let answer = bob.answer(&offer, true).await?;
    bob_ws.send(&ClientMessage::Answer { sdp: answer }).await?;
    bob_ws.send(&ClientMessage::Unmute).await?;
    wait_until(CONNECT, "alice hears bob's 660 Hz", || hears(&alice, 660.0)).await?;

    // Moderator mute: the SFU stops forwarding bob.
    alice_ws
        .send(&ClientMessage::MuteParticipant {
            participant_id: bob_id,
        })
        .await?;
    alice_ws
        .expect("bob muted", |m| {
            matches!(m, ServerMessage::ParticipantUpdated { participant }
                if participant.participant_id == bob_id && participant.muted)
        })
        .await?;
    let muted_at = Instant::now();
    let dropped = sfu.stats().dropped_muted;
    wait_until(
        Duration::from_secs(10),
        "bob's packets dropped as muted",
        || sfu.stats().dropped_muted >= dropped + 25,
    )
    .await?;
    let leaked: u64 = alice.with_streams(|s| {
        s.values()
            .map(|r| r.packets_since(muted_at + Duration::from_millis(200)))
            .sum()
    });
    ensure!(
        leaked == 0,
        "{leaked} packets of a muted speaker were forwarded"
    );

    // Removal: bob is gone for everyone and media forgets him.
    alice_ws
        .send(&ClientMessage::RemoveParticipant {
            participant_id: bob_id,
        })
        .await?;
    bob_ws
        .expect("removed", |m| matches!(m, ServerMessage::Removed { .. }))
        .await?;
    alice_ws
        .expect("bob left", |m| {
            matches!(m, ServerMessage::ParticipantLeft { participant_id } if *participant_id == bob_id)
        })
        .await?;
    wait_until(Duration::from_secs(10), "media removed bob", || {
        sfu.stats().publishers == 1
    })
    .await?;
    alice.close().await?;
    bob.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_webrtc_a_resumed_participant_keeps_its_audio_and_can_restart_ice_or_rejoin()
-> Result<()> {
    let (h, _sfu) = start_real().await?;
    let (mut alice_ws, _) = h.join("alice", "open").await?;
    let mut alice = join_call(&mut alice_ws, "alice", true).await?;
    alice.start_tone(440.0, 5).await?;

    let mut bob_ws = h.connect("bob").await?;
    bob_ws
        .send(&ClientMessage::JoinRoom {
            room_id: "open".into(),
            resume_token: None,
        })
        .await?;
    let ServerMessage::Joined {
        you, resume_token, ..
    } = bob_ws
        .expect("joined", |m| matches!(m, ServerMessage::Joined { .. }))
        .await?
    else {
        unreachable!()
    };
    let mut bob = join_call(&mut bob_ws, "bob", false).await?;
    wait_until(CONNECT, "bob hears alice", || hears(&bob, 440.0)).await?;

    // Everything about bob's first arrival has reached alice.
    alice_ws.sync().await?;

    // The WebSocket drops; the peer connection does not.
    bob_ws.drop_connection();
    let mut bob_ws = h.connect("bob").await?;
    bob_ws
        .send(&ClientMessage::JoinRoom {
            room_id: "open".into(),
            resume_token: Some(resume_token),
        })
        .await?;
    let ServerMessage::Joined {
        you: again,
        resumed,
        ..
    } = bob_ws
        .expect("joined", |m| matches!(m, ServerMessage::Joined { .. }))
        .await?
    else {
        unreachable!()
    };
    ensure!(resumed && again.participant_id == you.participant_id && again.in_call);
    let before = bob.received_total();
    wait_until(CONNECT, "audio kept flowing across the resume", || {
        bob.received_total() >= before + 25
    })
    .await?;

    // Network change: an ICE restart over the new socket.
    bob_ws.send(&ClientMessage::RestartIce).await?;
    let offer = next_offer(&mut bob_ws).await?;
    let answer = bob.answer(&offer, false).await?;
    bob_ws.send(&ClientMessage::Answer { sdp: answer }).await?;
    let before = bob.received_total();
    wait_until(CONNECT, "audio after the ICE restart", || {
        bob.received_total() >= before + 25
    })
    .await?;

    // Page reload: a brand-new peer connection; join_call replaces the old one.
    bob.close().await?;
    let fresh = join_call(&mut bob_ws, "bob-reloaded", false).await?;
    wait_until(CONNECT, "the reloaded page hears alice", || {
        hears(&fresh, 440.0)
    })
    .await?;
    let alice_saw = alice_ws.sync().await?;
    ensure!(
        !alice_saw.iter().any(|m| matches!(
            m,
            ServerMessage::ParticipantLeft { .. }
                | ServerMessage::ParticipantJoined { .. }
                | ServerMessage::CallNotification { .. }
        )),
        "alice saw bob leave or join: {alice_saw:?}"
    );
    alice.close().await?;
    fresh.close().await?;
    Ok(())
}
