//! Several media threads: rooms are spread over them, each thread with its own socket, and
//! audio flows in rooms on different threads at once.

mod common;

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use common::{dominant_tone, join, test_config, wait_until};
use media::{ParticipantId, RoomKey, Sfu, SfuConfig};

const CONNECT: Duration = Duration::from_secs(15);

fn candidate_port(sdp: &str) -> Result<u16> {
    let line = sdp
        .lines()
        .find(|l| l.starts_with("a=candidate:"))
        .context("no candidate")?;
    Ok(line.split_whitespace().nth(5).context("no port")?.parse()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_spread_over_media_threads_and_each_carries_audio() -> Result<()> {
    let (sfu, _rx) = Sfu::start(SfuConfig {
        threads: 2,
        ..test_config()
    })?;
    let ports: Vec<u16> = sfu.local_addrs().iter().map(|a| a.port()).collect();
    ensure!(ports.len() == 2 && ports[0] != ports[1], "{ports:?}");

    // Which thread holds a room shows in the port its offers carry.
    let mut port_of_room = std::collections::HashMap::new();
    for r in 0..8u64 {
        let pid = ParticipantId(100 + r);
        let offer = sfu.join(RoomKey(r), pid, false).await?;
        let port = candidate_port(&offer.sdp)?;
        ensure!(
            ports.contains(&port),
            "{port} is no media socket of {ports:?}"
        );
        port_of_room.insert(r, port);
        // The same room always lands on the same thread.
        let again = sfu.join(RoomKey(r), ParticipantId(200 + r), false).await?;
        ensure!(candidate_port(&again.sdp)? == port);
    }
    let per_thread: Vec<u64> = sfu.shard_stats().iter().map(|s| s.participants).collect();
    ensure!(
        per_thread.iter().all(|n| *n > 0),
        "8 rooms all on one thread: {per_thread:?}"
    );
    ensure!(sfu.stats().participants == 16);
    for r in 0..8u64 {
        sfu.leave(ParticipantId(100 + r));
        sfu.leave(ParticipantId(200 + r));
    }
    wait_until(CONNECT, "every participant gone", || {
        sfu.stats().participants == 0
    })
    .await?;
    // Left participants are forgotten: the same ids join again.
    ensure!(
        sfu.join(RoomKey(0), ParticipantId(100), false)
            .await
            .is_ok()
    );
    sfu.leave(ParticipantId(100));

    // Two rooms on different threads, a speaker and a listener in each, at once.
    let (a, b) = {
        let a = 0u64;
        let b = (1..8u64)
            .find(|r| port_of_room[r] != port_of_room[&a])
            .context("no room on the other thread")?;
        (a, b)
    };
    let mut clients = Vec::new();
    for (i, (room, tone)) in [(a, 440.0), (b, 660.0)].into_iter().enumerate() {
        let base = 10 * (i as u64 + 1);
        let speaker = join(&sfu, RoomKey(room), ParticipantId(base), true, true, "s").await?;
        let listener = join(
            &sfu,
            RoomKey(room),
            ParticipantId(base + 1),
            false,
            false,
            "l",
        )
        .await?;
        clients.push((speaker, listener, tone));
    }
    for (speaker, listener, tone) in &mut clients {
        speaker.wait_connected(CONNECT).await?;
        listener.wait_connected(CONNECT).await?;
        speaker.start_tone(*tone, 10).await?;
    }
    for (_, listener, _) in &clients {
        wait_until(CONNECT, "audio in both rooms", || {
            listener.received_total() >= 100
        })
        .await?;
    }
    for (_, listener, tone) in &clients {
        let heard = listener.with_streams(|streams| {
            streams
                .values()
                .find(|s| s.packets > 50)
                .and_then(|s| dominant_tone(&s.pcm, &[440.0, 660.0]))
        });
        ensure!(heard == Some(*tone), "heard {heard:?}, expected {tone}");
    }
    let forwarded: Vec<u64> = sfu.shard_stats().iter().map(|s| s.rtp_forwarded).collect();
    ensure!(
        forwarded.iter().all(|n| *n > 0),
        "both threads forward: {forwarded:?}"
    );
    Ok(())
}

/// A page reload: signaling leaves and joins again with the same participant id at once.
/// The new join must not be refused, nor undone when the old connection is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_can_leave_and_join_again_at_once_with_the_same_id() -> Result<()> {
    let (sfu, _rx) = Sfu::start(SfuConfig {
        threads: 2,
        ..test_config()
    })?;
    for round in 0..5 {
        let offer = sfu.join(RoomKey(4), ParticipantId(1), false).await;
        ensure!(offer.is_ok(), "round {round}: {offer:?}");
        sfu.leave(ParticipantId(1));
    }
    let _offer = sfu.join(RoomKey(4), ParticipantId(1), false).await?;
    // The earlier connections are gone; the last one still answers to its id.
    wait_until(CONNECT, "one participant left", || {
        sfu.stats().participants == 1
    })
    .await?;
    ensure!(matches!(
        sfu.join(RoomKey(4), ParticipantId(1), false).await,
        Err(media::MediaError::AlreadyJoined(_))
    ));
    ensure!(sfu.restart_ice(ParticipantId(1)).await.is_ok());
    Ok(())
}
