//! RTCP the SFU sends: forwarded audio takes the lean write path that rtc's interceptors
//! never see, so the sender reports of the slots are the engine's own (their contents are
//! unit-tested in `report.rs`; rtc's client statistics do not surface received reports).

mod common;

use std::time::Duration;

use anyhow::{Result, ensure};
use common::{join, test_config, wait_until};
use media::{ParticipantId, RoomKey, Sfu};

const CONNECT: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_carrying_audio_get_sender_reports_and_idle_ones_do_not() -> Result<()> {
    let (sfu, _rx) = Sfu::start(test_config())?;
    let room = RoomKey(3);
    let mut speaker = join(&sfu, room, ParticipantId(1), true, true, "speaker").await?;
    let mut listener = join(&sfu, room, ParticipantId(2), false, false, "listener").await?;
    speaker.wait_connected(CONNECT).await?;
    listener.wait_connected(CONNECT).await?;
    // Nothing forwarded yet: no active sender, no report (RFC 3550 §6.4).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    ensure!(sfu.stats().sender_reports == 0, "{:?}", sfu.stats());

    speaker.start_tone(440.0, 10).await?;
    // One slot carries the speaker to the listener (the speaker hears nobody): one report
    // per 2 s interval.
    wait_until(Duration::from_secs(10), "two sender reports", || {
        sfu.stats().sender_reports >= 2
    })
    .await?;
    ensure!(listener.received_total() > 0);
    Ok(())
}
