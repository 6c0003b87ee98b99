//! The node-to-node relay (issue 11) between two real SFUs on loopback, with real WebRTC
//! clients: a speaker on node A is heard by a listener on node B; a node with another
//! secret, replayed datagrams and silent remote sources are refused or removed; only the
//! room's slot holders travel between nodes.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use common::{Client, Events, dominant_tone, join, test_config, wait_until};
use media::relay::{RelayKey, decode};
use media::{ParticipantId, RelayConfig, RelaySecret, RoomKey, Sfu, SfuConfig, SfuEvent};
use tokio::net::UdpSocket;

const CONNECT: Duration = Duration::from_secs(15);
const SECRET: &str = "cluster-secret-0123456789";
const ROOM: RoomKey = RoomKey(11);
const REMOTE_TIMEOUT: Duration = Duration::from_secs(1);

fn node(secret: &str, threads: usize) -> SfuConfig {
    SfuConfig {
        threads,
        relay: RelayConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            secret: Some(RelaySecret::new(secret.as_bytes().to_vec()).expect("secret")),
            remote_timeout: REMOTE_TIMEOUT,
        },
        ..test_config()
    }
}

fn key() -> RelayKey {
    RelayKey::new(&RelaySecret::new(SECRET.as_bytes().to_vec()).expect("secret"))
}

/// The sequence numbers the client received on its busiest stream, and that stream's
/// dominant tone.
fn busiest(c: &Client, tones: &[f64]) -> (Vec<u16>, Option<f64>) {
    c.with_streams(|s| {
        s.values()
            .max_by_key(|r| r.packets)
            .map(|r| (r.seqs.clone(), dominant_tone(&r.pcm, tones)))
            .unwrap_or_default()
    })
}

/// Receives relay datagrams at a plain UDP socket (a "node" the test reads), for `within`
/// or until `enough` have arrived.
/// Two nodes: a speaker (participant 1) on A, heard over the relay by a listener
/// (participant 2) on B, whose events are collected.
struct Relayed {
    a: Sfu,
    /// A's events, kept unread for the test's life as in the other tests.
    _a_rx: media::EventReceiver,
    b: Sfu,
    b_events: Events,
    speaker: Client,
    listener: Client,
}

async fn relayed_speaker() -> Result<Relayed> {
    let (a, a_rx) = Sfu::start(node(SECRET, 1))?;
    let (b, b_rx) = Sfu::start(node(SECRET, 1))?;
    let b_events = Events::spawn(b_rx);
    let mut speaker = join(&a, ROOM, ParticipantId(1), true, true, "speaker").await?;
    let mut listener = join(&b, ROOM, ParticipantId(2), false, false, "listener").await?;
    speaker.wait_connected(CONNECT).await?;
    listener.wait_connected(CONNECT).await?;
    a.relay_add_subscriber(ROOM, b.relay_local_addr(ROOM).context("relay on")?)?;
    speaker.start_tone(440.0, 20).await?;
    wait_until(Duration::from_secs(20), "the remote source on B", || {
        b.stats().remote_sources == 1 && listener.received_total() > 10
    })
    .await?;
    Ok(Relayed {
        a,
        _a_rx: a_rx,
        b,
        b_events,
        speaker,
        listener,
    })
}

async fn capture(tap: &UdpSocket, enough: usize, within: Duration) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = vec![0u8; 2048];
    while out.len() < enough {
        match tokio::time::timeout_at(deadline, tap.recv_from(&mut buf)).await {
            Ok(Ok((n, _))) => out.push(buf[..n].to_vec()),
            _ => break,
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_is_off_without_a_secret_and_validates_its_timeout() -> Result<()> {
    let (sfu, _rx) = Sfu::start(test_config())?;
    ensure!(sfu.relay_local_addr(ROOM).is_none());
    let bad = SfuConfig {
        relay: RelayConfig {
            remote_timeout: Duration::from_millis(10),
            ..node(SECRET, 1).relay
        },
        ..node(SECRET, 1)
    };
    ensure!(matches!(Sfu::start(bad), Err(media::MediaError::Config(_))));
    Ok(())
}

/// A speaker on node A, a listener on node B (two media threads: the room's own relay
/// socket is the address B gives out): the listener hears the speaker's tone, as one
/// continuous stream, through one relay copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_speaker_on_one_node_is_heard_by_a_listener_on_another() -> Result<()> {
    let (a, a_rx) = Sfu::start(node(SECRET, 1))?;
    let (b, b_rx) = Sfu::start(node(SECRET, 2))?;
    let _a_events = Events::spawn(a_rx);
    let b_events = Events::spawn(b_rx);
    let b_addr = b.relay_local_addr(ROOM).context("relay on")?;
    ensure!(b.relay_local_addrs().contains(&b_addr));

    let mut speaker = join(&a, ROOM, ParticipantId(1), true, true, "speaker").await?;
    let mut listener = join(&b, ROOM, ParticipantId(2), false, false, "listener").await?;
    speaker.wait_connected(CONNECT).await?;
    listener.wait_connected(CONNECT).await?;
    a.relay_add_subscriber(ROOM, b_addr)?;
    speaker.start_tone(440.0, 20).await?;
    wait_until(Duration::from_secs(20), "150 frames sent", || {
        speaker.tone_sent() >= 150
    })
    .await?;
    // Counted before stopping (stopping drops the tone's counter).
    let sent = speaker.tone_sent();
    speaker.stop_tone().await;
    let result = wait_until(Duration::from_secs(10), "98% heard on node B", || {
        listener.received_total() * 100 >= sent * 98
    })
    .await;
    if result.is_err() {
        eprintln!("A {:?}\nB {:?}", a.stats(), b.stats());
    }
    result?;
    let (seqs, tone) = busiest(&listener, &[440.0, 660.0]);
    ensure!(tone == Some(440.0), "the speaker's tone: {tone:?}");
    let gaps = seqs
        .windows(2)
        .filter(|w| w[1] != w[0].wrapping_add(1))
        .count();
    ensure!(
        gaps <= 2,
        "one continuous stream: {gaps} gaps in {}",
        seqs.len()
    );
    ensure!(listener.with_streams(|s| s.len()) == 1);

    let (sa, sb) = (a.stats(), b.stats());
    ensure!(
        sa.relay_sent >= sent * 98 / 100,
        "one copy per packet: {sa:?}"
    );
    // (A packet or two may have left between counting and stopping.)
    ensure!(
        sa.relay_sent <= sent + 3,
        "never more than one copy: {sa:?}"
    );
    ensure!(sb.relay_received >= sent * 98 / 100, "{sb:?}");
    ensure!(
        sb.relay_dropped_by_reason().iter().all(|(_, n)| *n == 0),
        "{sb:?}"
    );
    ensure!(sb.remote_sources == 1, "{sb:?}");
    ensure!(
        b_events.count(|e| matches!(e, SfuEvent::SlotsChanged { room, slots, .. }
            if *room == ROOM && slots.contains(&Some(ParticipantId(1)))))
            >= 1,
        "the remote speaker holds a slot on B: {:?}",
        b_events.all()
    );
    Ok(())
}

/// A node with another secret: everything it is sent fails the tag, nothing is heard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_secret_is_refused() -> Result<()> {
    let (a, _a_rx) = Sfu::start(node(SECRET, 1))?;
    let (b, _b_rx) = Sfu::start(node("another-secret-9876543210", 1))?;
    let mut speaker = join(&a, ROOM, ParticipantId(1), true, true, "speaker").await?;
    let mut listener = join(&b, ROOM, ParticipantId(2), false, false, "listener").await?;
    speaker.wait_connected(CONNECT).await?;
    listener.wait_connected(CONNECT).await?;
    a.relay_add_subscriber(ROOM, b.relay_local_addr(ROOM).context("relay on")?)?;
    speaker.start_tone(440.0, 20).await?;
    wait_until(Duration::from_secs(20), "50 refused datagrams", || {
        b.stats().relay_dropped_bad_tag >= 50
    })
    .await?;
    let sb = b.stats();
    ensure!(sb.relay_received == 0 && sb.remote_sources == 0, "{sb:?}");
    ensure!(listener.received_total() == 0);
    speaker.close().await?;
    Ok(())
}

/// Datagrams captured on their way and sent again are refused as replays; the originals
/// were accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_datagrams_are_refused() -> Result<()> {
    let (a, _a_rx) = Sfu::start(node(SECRET, 1))?;
    let (b, _b_rx) = Sfu::start(node(SECRET, 1))?;
    let mut speaker = join(&a, ROOM, ParticipantId(1), true, true, "speaker").await?;
    let mut listener = join(&b, ROOM, ParticipantId(2), false, false, "listener").await?;
    speaker.wait_connected(CONNECT).await?;
    listener.wait_connected(CONNECT).await?;
    let tap = UdpSocket::bind("127.0.0.1:0").await?;
    a.relay_add_subscriber(ROOM, tap.local_addr()?)?;
    speaker.start_tone(440.0, 20).await?;
    let captured = capture(&tap, 50, Duration::from_secs(20)).await;
    speaker.stop_tone().await;
    ensure!(captured.len() == 50, "captured {}", captured.len());
    let to = b.relay_local_addr(ROOM).context("relay on")?;
    let out = UdpSocket::bind("127.0.0.1:0").await?;
    for d in &captured {
        out.send_to(d, to).await?;
    }
    wait_until(Duration::from_secs(10), "50 accepted", || {
        b.stats().relay_received == 50
    })
    .await?;
    for d in &captured {
        out.send_to(d, to).await?;
    }
    wait_until(Duration::from_secs(10), "50 refused as replays", || {
        b.stats().relay_dropped_replay == 50
    })
    .await?;
    ensure!(b.stats().relay_received == 50, "{:?}", b.stats());
    wait_until(Duration::from_secs(10), "the originals heard", || {
        listener.received_total() >= 45
    })
    .await?;
    Ok(())
}

/// Five loud speakers on A, three slots: the relay carries the three slot holders only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_rooms_slot_holders_are_relayed() -> Result<()> {
    let (a, _a_rx) = Sfu::start(SfuConfig {
        slots: 3,
        ..node(SECRET, 1)
    })?;
    let mut speakers = Vec::new();
    for i in 0..5u64 {
        speakers.push(join(&a, ROOM, ParticipantId(i + 1), true, true, &format!("s{i}")).await?);
    }
    for s in &mut speakers {
        s.wait_connected(CONNECT).await?;
    }
    let tap = UdpSocket::bind("127.0.0.1:0").await?;
    a.relay_add_subscriber(ROOM, tap.local_addr()?)?;
    for (i, s) in speakers.iter_mut().enumerate() {
        s.start_tone(400.0 + 100.0 * i as f64, 10).await?;
    }
    // Two seconds of five speakers talking: 500 packets sent.
    let captured = capture(&tap, 400, Duration::from_secs(20)).await;
    for s in &mut speakers {
        s.stop_tone().await;
    }
    let k = key();
    let mut per_source: HashMap<ParticipantId, u64> = HashMap::new();
    for d in &captured {
        let (h, _) = decode(&k, d).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        ensure!(h.room == ROOM);
        ensure!(h.level.is_some(), "the level travels with the packet");
        *per_source.entry(h.source).or_default() += 1;
    }
    let (slots, _) = a.slot_map(ROOM).await?.context("room")?;
    let holders: HashSet<ParticipantId> = slots.iter().flatten().copied().collect();
    ensure!(holders.len() == 3);
    ensure!(
        per_source.keys().all(|p| holders.contains(p)),
        "only slot holders {holders:?}: {per_source:?}"
    );
    ensure!(per_source.len() == 3, "{per_source:?}");
    ensure!(a.stats().relay_subscriptions == 1);
    a.relay_remove_subscriber(ROOM, tap.local_addr()?)?;
    wait_until(Duration::from_secs(5), "unsubscribed", || {
        a.stats().relay_subscriptions == 0
    })
    .await?;
    Ok(())
}

/// A source that leaves its node's slots (muted here) is ended on the other nodes at
/// once, not after the remote timeout, so no node keeps a slot for a speaker whose
/// packets stopped coming; unmuted, it is relayed and heard again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_leaves_the_slots_is_ended_on_the_other_node_at_once() -> Result<()> {
    // Every part bound: a node or client dropped here would stop with it.
    let Relayed {
        a,
        _a_rx,
        b,
        b_events: _b_events,
        mut speaker,
        listener,
    } = relayed_speaker().await?;
    ensure!(
        b.slot_map(ROOM)
            .await?
            .context("room")?
            .0
            .contains(&Some(ParticipantId(1)))
    );

    // Muted on A: it leaves A's slots while it keeps sending, so only the end tells B.
    a.set_muted(ParticipantId(1), true);
    let muted_at = Instant::now();
    wait_until(
        Duration::from_secs(10),
        "the remote source ended on B",
        || b.stats().remote_sources == 0,
    )
    .await?;
    let took = muted_at.elapsed();
    let st = b.stats();
    ensure!(
        st.remote_sources_ended == 1 && st.remote_sources_timed_out == 0,
        "ended by the end datagram, not the timeout ({took:?}): {st:?}"
    );
    ensure!(
        b.slot_map(ROOM)
            .await?
            .context("room")?
            .0
            .iter()
            .all(Option::is_none),
        "B's slot is freed"
    );

    // Unmuted: relayed again and heard on B.
    let before = listener.received_total();
    a.set_muted(ParticipantId(1), false);
    wait_until(Duration::from_secs(20), "heard again on B", || {
        b.stats().remote_sources == 1 && listener.received_total() > before + 10
    })
    .await?;
    speaker.stop_tone().await;
    Ok(())
}

/// A remote source that stops arriving is removed from the room on B after the remote
/// timeout (not before), and its slot is freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_source_that_falls_silent_is_removed_after_the_timeout() -> Result<()> {
    let Relayed {
        a: _a,
        _a_rx,
        b,
        b_events,
        mut speaker,
        listener: _listener,
    } = relayed_speaker().await?;
    speaker.stop_tone().await;
    // The last relayed packet may still be in flight: wait until the count stands still.
    let mut stopped = Instant::now();
    let mut seen = b.stats().relay_received;
    wait_until(Duration::from_secs(5), "relay traffic stops", || {
        let now = b.stats().relay_received;
        if now != seen {
            seen = now;
            stopped = Instant::now();
        }
        stopped.elapsed() > Duration::from_millis(200)
    })
    .await?;
    wait_until(Duration::from_secs(10), "the remote source removed", || {
        b.stats().remote_sources == 0
    })
    .await?;
    // `stopped` was noticed up to one 20 ms poll after the last packet arrived.
    let took = stopped.elapsed() + Duration::from_millis(50);
    ensure!(
        took >= REMOTE_TIMEOUT,
        "removed after {took:?}, before the timeout"
    );
    ensure!(b.stats().remote_sources_timed_out == 1);
    ensure!(
        b.slot_map(ROOM)
            .await?
            .context("room")?
            .0
            .iter()
            .all(Option::is_none)
    );
    // Events reach the collector task asynchronously: wait for the emptied map.
    wait_until(
        Duration::from_secs(5),
        "the last slot map on B is empty",
        || {
            b_events.all().iter().rev().find_map(|e| match e {
                SfuEvent::SlotsChanged { slots, .. } => Some(slots.iter().all(Option::is_none)),
                _ => None,
            }) == Some(true)
        },
    )
    .await?;
    Ok(())
}
