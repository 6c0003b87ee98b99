//! Real WebRTC over loopback: async `webrtc` clients answer the SFU's offers, speakers send
//! Opus sine tones, listeners decode what arrives per slot.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use common::{Client, dominant_tone, wait_until};
use media::{ParticipantId, RoomKey, Sfu, SfuConfig, SfuEvent};

const CONNECT: Duration = Duration::from_secs(10);

fn config() -> SfuConfig {
    SfuConfig {
        bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
        announce_ips: vec![],
        ..SfuConfig::default()
    }
}

/// Collects every SfuEvent so tests can wait on conditions over them.
#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<SfuEvent>>>);

impl Events {
    fn spawn(mut rx: tokio::sync::mpsc::UnboundedReceiver<SfuEvent>) -> Events {
        let events = Events::default();
        let sink = events.clone();
        tokio::spawn(async move {
            while let Some(e) = rx.recv().await {
                sink.0.lock().unwrap_or_else(|e| e.into_inner()).push(e);
            }
        });
        events
    }

    fn any(&self, f: impl Fn(&SfuEvent) -> bool) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).iter().any(f)
    }

    fn count(&self, f: impl Fn(&SfuEvent) -> bool) -> usize {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|e| f(e))
            .count()
    }
}

async fn join(
    sfu: &Sfu,
    room: RoomKey,
    pid: ParticipantId,
    publish: bool,
    name: &str,
) -> Result<Client> {
    let mut client = Client::new(name).await?;
    let offer = sfu.join(room, pid, publish).await?;
    ensure!(offer.slot_mids.len() == 3, "three slot m-lines");
    ensure!(offer.sdp.contains("a=ice-lite"), "server is ICE-lite");
    ensure!(offer.sdp.contains("useinbandfec=1") && offer.sdp.contains("usedtx=1"));
    ensure!(offer.sdp.contains("urn:ietf:params:rtp-hdrext:ssrc-audio-level"));
    let answer = client.answer(&offer.sdp, publish).await?;
    if std::env::var("SDP_DEBUG").is_ok() {
        eprintln!("==== offer {name}\n{}\n==== answer {name}\n{answer}", offer.sdp);
    }
    sfu.accept_answer(pid, answer).await?;
    Ok(client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speaker_reaches_listener_through_the_sfu() -> Result<()> {
    let (sfu, rx) = Sfu::start(config())?;
    let events = Events::spawn(rx);
    let room = RoomKey(1);
    let mut listener = join(&sfu, room, ParticipantId(2), false, "listener").await?;
    let mut speaker = join(&sfu, room, ParticipantId(1), true, "speaker").await?;
    speaker.wait_connected(CONNECT).await?;
    if let Err(e) = listener.wait_connected(CONNECT).await {
        eprintln!("stats {:?}", sfu.stats());
        return Err(e);
    }
    wait_until(CONNECT, "both Connected events", || {
        events.count(|e| matches!(e, SfuEvent::Connected { .. })) == 2
    })
    .await?;

    speaker.start_tone(440.0, 10).await?;
    wait_until(Duration::from_secs(10), "50 packets at the listener", || {
        listener.received_total() >= 50
    })
    .await?;
    speaker.stop_tone().await;
    let tone = listener.with_streams(|s| {
        s.values()
            .map(|r| (r.packets, r.decode_errors, dominant_tone(&r.pcm, &[440.0, 660.0, 880.0])))
            .collect::<Vec<_>>()
    });
    assert_eq!(tone.len(), 1, "one slot carries the one speaker: {tone:?}");
    assert_eq!(tone[0].1, 0, "every packet decodes");
    assert_eq!(tone[0].2, Some(440.0), "the listener hears 440 Hz");
    let stats = sfu.stats();
    assert!(stats.rtp_forwarded >= 50, "{stats:?}");
    assert_eq!(stats.participants, 2);
    drop((speaker, listener));
    let _ = Instant::now();
    Ok(())
}
