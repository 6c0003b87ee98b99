//! `Session` end to end against a fake Chorus: a WebSocket server speaking
//! `signaling::protocol` whose media side is the SFU stand-in (tests/common). Checks
//! the join sequence, auth header, slot attribution, publishing, promotion by
//! renegotiation, and refusals surfacing as errors.

mod common;

use common::{StandIn, eventually};
use futures::{SinkExt, StreamExt};
use loadtest::Error;
use loadtest::audio::Tone;
use loadtest::peer::PeerConfig;
use loadtest::protocol::{
    ClientMessage, ErrorCode, Participant, ParticipantId, Role, ServerMessage,
};
use loadtest::session::{Session, SessionConfig};
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(10);
const TOKEN: &str = "good-token";
const ME: ParticipantId = ParticipantId(7);
const OTHER: ParticipantId = ParticipantId(8);

fn participant(id: ParticipantId, role: Role) -> Participant {
    Participant {
        participant_id: id,
        user_id: format!("u{}", id.0),
        name: format!("user {}", id.0),
        avatar: None,
        role,
        muted: false,
        hand_raised: false,
        in_call: true,
    }
}

type Shared = Arc<Mutex<Option<Arc<StandIn>>>>;

/// Serves one client. `speaker`: the role it gets. The stand-in sends `tone_hz` on
/// slot 0 (attributed to OTHER) for 3 s once the answer arrives.
#[allow(clippy::result_large_err)] // the handshake callback signature is tungstenite's
async fn fake_chorus(speaker: bool, tone_hz: f64) -> (String, Shared) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}/ws", listener.local_addr().expect("addr"));
    let shared: Shared = Arc::new(Mutex::new(None));
    let sh = shared.clone();
    tokio::spawn(async move {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        let mut authorized = false;
        let cb = |req: &tokio_tungstenite::tungstenite::handshake::server::Request, resp| {
            authorized = req
                .headers()
                .get("authorization")
                .is_some_and(|v| v.as_bytes() == format!("Bearer {TOKEN}").as_bytes());
            Ok(resp)
        };
        let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, cb).await else {
            return;
        };
        let (mut tx, mut rx) = ws.split();
        let send = |m: ServerMessage| Message::text(serde_json::to_string(&m).expect("json"));
        if !authorized {
            let _ = tx
                .send(send(ServerMessage::Error {
                    code: ErrorCode::Unauthorized,
                    message: "no token".into(),
                    fatal: true,
                }))
                .await;
            let _ = tx.close().await;
            return;
        }
        let mut role = if speaker {
            Role::Speaker
        } else {
            Role::Listener
        };
        while let Some(Ok(msg)) = rx.next().await {
            let Message::Text(t) = msg else { continue };
            let Ok(m) = serde_json::from_str::<ClientMessage>(&t) else {
                continue;
            };
            let standin = sh.lock().clone();
            let out: Vec<ServerMessage> = match m {
                ClientMessage::JoinRoom { room_id, .. } if room_id == "private" => {
                    vec![ServerMessage::Error {
                        code: ErrorCode::Forbidden,
                        message: "private room".into(),
                        fatal: true,
                    }]
                }
                ClientMessage::JoinRoom { room_id, .. } => vec![
                    ServerMessage::Joined {
                        room_id,
                        you: participant(ME, role),
                        resume_token: "resume".into(),
                        resumed: false,
                        ice_servers: vec![],
                        slot_count: 2,
                    },
                    ServerMessage::OnlineUsers {
                        participants: vec![
                            participant(ME, role),
                            participant(OTHER, Role::Speaker),
                        ],
                    },
                ],
                ClientMessage::JoinCall => {
                    let s = Arc::new(StandIn::new(2, speaker).await.expect("stand-in"));
                    let (sdp, layout) = s.offer(false).await.expect("offer");
                    *sh.lock() = Some(s);
                    vec![
                        ServerMessage::Slots {
                            slots: vec![Some(OTHER), None],
                        },
                        ServerMessage::Offer {
                            sdp,
                            publish_mid: layout.publish_mid,
                            slot_mids: layout.slot_mids,
                        },
                    ]
                }
                ClientMessage::Answer { sdp } => {
                    let Some(s) = standin else { continue };
                    s.accept_answer(sdp).await.expect("answer");
                    if s.slots[0].sent.load(std::sync::atomic::Ordering::Relaxed) == 0 {
                        let s2 = s.clone();
                        tokio::spawn(async move {
                            let _ = s2.wait_connected(T).await;
                            let _ = s2.send_tones(&[tone_hz], 150).await;
                        });
                    }
                    vec![ServerMessage::CallState { connected: true }]
                }
                ClientMessage::SetRole {
                    participant_id,
                    role: new_role,
                } if participant_id == ME => {
                    let Some(s) = standin else { continue };
                    role = new_role;
                    s.set_mic_can_publish(role.can_publish())
                        .await
                        .expect("direction");
                    let (sdp, layout) = s.offer(false).await.expect("offer");
                    vec![
                        ServerMessage::ParticipantUpdated {
                            participant: participant(ME, role),
                        },
                        ServerMessage::Offer {
                            sdp,
                            publish_mid: layout.publish_mid,
                            slot_mids: layout.slot_mids,
                        },
                    ]
                }
                // Misbehaviour on demand: an offer that is not SDP, then a pong.
                ClientMessage::Ping => vec![
                    ServerMessage::Offer {
                        sdp: "this is not sdp".into(),
                        publish_mid: "0".into(),
                        slot_mids: vec!["1".into(), "2".into()],
                    },
                    ServerMessage::Pong,
                ],
                ClientMessage::RestartIce => {
                    let Some(s) = standin else { continue };
                    let (sdp, layout) = s.offer(true).await.expect("offer");
                    vec![ServerMessage::Offer {
                        sdp,
                        publish_mid: layout.publish_mid,
                        slot_mids: layout.slot_mids,
                    }]
                }
                _ => vec![ServerMessage::Error {
                    code: ErrorCode::BadMessage,
                    message: "unsupported by the fake".into(),
                    fatal: false,
                }],
            };
            for m in out {
                if tx.send(send(m)).await.is_err() {
                    return;
                }
            }
        }
    });
    (url, shared)
}

fn standin(shared: &Shared) -> Arc<StandIn> {
    shared
        .lock()
        .clone()
        .expect("stand-in exists after join_call")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_session_joins_and_hears_the_slot_attributed_to_its_speaker() -> anyhow::Result<()>
{
    let (url, _shared) = fake_chorus(false, 350.0).await;
    let mut cfg = SessionConfig::new(url, TOKEN, "room1");
    cfg.peer = PeerConfig {
        decode: true,
        ..Default::default()
    };
    let session = Session::connect(cfg).await?;
    assert_eq!(session.participant_id(), Some(ME));
    assert_eq!(session.slot_count(), 2);
    assert_eq!(session.offers_answered(), 1);
    assert_eq!(session.slots(), vec![Some(OTHER), None]);
    assert_eq!(session.participants().len(), 2);

    let join = session.wait_first_audio(T).await?;
    assert!(join < T, "join time {join:?}");
    assert_eq!(session.join_time(), Some(join));
    let t = session.timings();
    assert!(t.ws_connected.is_some() && t.joined_room.is_some() && t.offer_received.is_some());

    let peer = session.peer().expect("in call");
    eventually(T, "a second of audio from the speaker", || {
        peer.packets_from(OTHER) >= 50
    })
    .await?;
    let f = peer.source_frequency(OTHER).expect("audible");
    assert!((f - 350.0).abs() < 4.0, "heard {f} Hz from the speaker");
    session.leave().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speaker_session_publishes_once_connected() -> anyhow::Result<()> {
    let (url, shared) = fake_chorus(true, 300.0).await;
    let cfg = SessionConfig::new(url, TOKEN, "room1").speaking(Tone::new(500.0, 0.5));
    let session = Session::connect(cfg).await?;
    let s = standin(&shared);
    let rx = s.mic_rx.clone();
    eventually(T, "the speaker's audio at the stand-in", || {
        rx.lock().packets >= 40
    })
    .await?;
    {
        let m = rx.lock();
        assert_eq!(m.with_level, m.packets, "audio level on every packet");
        let f = loadtest::audio::dominant_frequency(&m.pcm.to_vec(), 48_000).expect("audible");
        assert!((f - 500.0).abs() < 3.0, "stand-in heard {f} Hz");
    }
    session.leave().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promotion_renegotiates_in_the_background_and_starts_the_held_signal() -> anyhow::Result<()>
{
    let (url, shared) = fake_chorus(false, 300.0).await;
    let cfg = SessionConfig::new(url, TOKEN, "room1").speaking(Tone::new(700.0, 0.5));
    let mut session = Session::connect(cfg).await?;
    assert_eq!(session.peer().and_then(|p| p.send_params()), None);
    let s = standin(&shared);

    session
        .send(&ClientMessage::SetRole {
            participant_id: ME,
            role: Role::Speaker,
        })
        .await?;
    session
        .wait_event(T, |m| {
            matches!(m, ServerMessage::ParticipantUpdated { .. }).then_some(())
        })
        .await?;
    let rx = s.mic_rx.clone();
    eventually(T, "the promoted participant's audio", || {
        rx.lock().packets >= 30
    })
    .await?;
    assert_eq!(session.offers_answered(), 2);
    assert_eq!(session.me().map(|p| p.role), Some(Role::Speaker));
    assert_eq!(session.last_error(), None);
    session.leave().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ice_restart_through_signaling_keeps_audio_flowing() -> anyhow::Result<()> {
    let (url, _shared) = fake_chorus(false, 300.0).await;
    let session = Session::connect(SessionConfig::new(url, TOKEN, "room1")).await?;
    let peer = session.peer().expect("in call");
    eventually(T, "audio before restart", || peer.packets_from(OTHER) >= 10).await?;
    session.restart_ice().await?;
    eventually(T, "restart answered", || session.offers_answered() == 2).await?;
    let before = peer.packets_from(OTHER);
    eventually(T, "audio after restart", || {
        peer.packets_from(OTHER) >= before + 25
    })
    .await?;
    assert_eq!(session.last_error(), None);
    session.leave().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_come_back_as_server_errors() -> anyhow::Result<()> {
    let (url, _shared) = fake_chorus(false, 300.0).await;
    let r = Session::connect(SessionConfig::new(url, "wrong-token", "room1")).await;
    assert!(
        matches!(
            r,
            Err(Error::Server {
                code: ErrorCode::Unauthorized,
                ..
            })
        ),
        "{:?}",
        r.err()
    );

    let (url, _shared) = fake_chorus(false, 300.0).await;
    let r = Session::connect(SessionConfig::new(url, TOKEN, "private")).await;
    assert!(
        matches!(
            r,
            Err(Error::Server {
                code: ErrorCode::Forbidden,
                ..
            })
        ),
        "{:?}",
        r.err()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_renegotiation_offer_is_reported_not_fatal() -> anyhow::Result<()> {
    let (url, _shared) = fake_chorus(false, 300.0).await;
    let mut session = Session::connect(SessionConfig::new(url, TOKEN, "room1")).await?;
    session.send(&ClientMessage::Ping).await?;
    session
        .wait_event(T, |m| (*m == ServerMessage::Pong).then_some(()))
        .await?;
    eventually(T, "the bad offer to be reported", || {
        session.last_error().is_some()
    })
    .await?;
    assert_eq!(session.offers_answered(), 1);
    // Media from the first negotiation keeps flowing.
    let peer = session.peer().expect("in call");
    let before = peer.packets_from(OTHER);
    eventually(T, "audio after the bad offer", || {
        peer.packets_from(OTHER) > before + 10
    })
    .await?;
    session.leave().await;
    Ok(())
}
