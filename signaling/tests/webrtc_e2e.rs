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
