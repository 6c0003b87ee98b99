//! A real SFU whose event consumer is stalled: slot changes coalesce into one pending
//! event per room, no disconnect is lost, and once the backlog reaches `event_backlog`
//! new joins are refused with `Busy` until the consumer catches up.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Result, ensure};
use common::{test_config, wait_until};
use media::{DisconnectReason, MediaError, ParticipantId, RoomKey, Sfu, SfuConfig, SfuEvent};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_event_consumer_gets_coalesced_slots_every_disconnect_and_busy_joins()
-> Result<()> {
    let cfg = SfuConfig {
        threads: 1,
        event_backlog: 8,
        // Nobody here connects: each participant times out and yields a Disconnected
        // (long enough for the six joins to finish first, even on a busy machine).
        connect_timeout: Duration::from_secs(3),
        ..test_config()
    };
    let (sfu, mut rx) = Sfu::start(cfg)?;
    let first = RoomKey(1);
    for n in 1..=6 {
        sfu.join(first, ParticipantId(n), true).await?;
    }
    ensure!(
        rx.len() == 1,
        "six publishers' slot changes wait as one event, not {}",
        rx.len()
    );
    wait_until(Duration::from_secs(20), "all six timed out", || {
        sfu.stats().participants == 0
    })
    .await?;
    ensure!(
        rx.len() == 7,
        "one slot event and six disconnects, not {}",
        rx.len()
    );

    let second = RoomKey(2);
    sfu.join(second, ParticipantId(10), true).await?;
    // At least: its own disconnect may already follow.
    ensure!(rx.len() >= 8, "the second room's slot event waits too");
    for (room, pid) in [(RoomKey(3), 11), (second, 12)] {
        let refused = sfu.join(room, ParticipantId(pid), true).await;
        ensure!(
            matches!(refused, Err(MediaError::Busy(_))),
            "a join with the backlog full is refused as busy: {refused:?}"
        );
    }
    ensure!(
        sfu.stats().busy_refusals == 2,
        "busy refusals are counted: {:?}",
        sfu.stats()
    );

    let events: Vec<SfuEvent> = std::iter::from_fn(|| rx.try_recv()).collect();
    let slots_of = |room| {
        events
            .iter()
            .filter(|e| matches!(e, SfuEvent::SlotsChanged { room: r, .. } if *r == room))
            .count()
    };
    ensure!(slots_of(first) == 1 && slots_of(second) == 1, "{events:?}");
    ensure!(
        matches!(events.first(), Some(SfuEvent::SlotsChanged { room, .. }) if *room == first),
        "the first room's latest slots keep the place of its first change: {events:?}"
    );
    let gone: Vec<ParticipantId> = events
        .iter()
        .filter_map(|e| match e {
            SfuEvent::Disconnected {
                pid,
                reason: DisconnectReason::NeverConnected,
            } => Some(*pid),
            _ => None,
        })
        .collect();
    let first_six: BTreeSet<u64> = gone.iter().take(6).map(|p| p.0).collect();
    ensure!(
        first_six == (1..=6).collect::<BTreeSet<u64>>() && gone.len() <= 7,
        "every disconnect arrives once, before the later join's: {gone:?}"
    );
    ensure!(
        events.len() == 2 + gone.len(),
        "nothing but slots and disconnects: {events:?}"
    );

    // Caught up: joins are admitted again, and the refused ones left nothing behind.
    sfu.join(RoomKey(3), ParticipantId(11), true).await?;
    sfu.join(second, ParticipantId(12), true).await?;
    Ok(())
}
