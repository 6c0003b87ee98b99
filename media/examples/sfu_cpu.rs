//! Rough CPU cost of the SFU's forwarding path: R rooms, each with S speakers and L
//! listeners, on loopback for a fixed time, with T media threads; reads the media threads'
//! own CPU time from /proc (the clients run on other threads of this process, so they are
//! excluded) and divides by the packets forwarded.
//!
//! `cargo run --release -p media --example sfu_cpu -- [speakers] [listeners] [seconds]
//! [rooms] [threads]` (Linux only; defaults 2 20 10 1 1).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::{Client, join, test_config};
use media::{ParticipantId, RoomKey, Sfu};

/// utime+stime of the threads whose name starts with `prefix`, in clock ticks (100 Hz on
/// Linux), each thread's separately in name order.
fn thread_ticks(prefix: &str) -> Result<Vec<(String, u64)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task")? {
        let dir = entry?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim().starts_with(prefix) {
            let stat = std::fs::read_to_string(dir.join("stat"))?;
            // Fields after the ")" of the command: state is field 3; utime 14, stime 15.
            let rest = stat.rsplit_once(')').context("stat format")?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let utime: u64 = f.get(11).context("utime")?.parse()?;
            let stime: u64 = f.get(12).context("stime")?.parse()?;
            out.push((comm.trim().to_owned(), utime + stime));
        }
    }
    if out.is_empty() {
        bail!("no thread named {prefix}*");
    }
    out.sort();
    Ok(out)
}

fn total(ticks: &[(String, u64)]) -> u64 {
    ticks.iter().map(|(_, t)| t).sum()
}

fn rss_kb() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()?)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let speakers_n = *args.first().unwrap_or(&2) as usize;
    let listeners_n = *args.get(1).unwrap_or(&20) as usize;
    let seconds = *args.get(2).unwrap_or(&10);
    let rooms_n = *args.get(3).unwrap_or(&1);
    let threads = *args.get(4).unwrap_or(&1) as usize;
    let (sfu, _events) = Sfu::start(media::SfuConfig {
        threads,
        ..test_config()
    })?;
    // Memory of a peer connection as the server holds it before the client connects.
    let rss0 = rss_kb()?;
    let cpu0 = total(&thread_ticks("chorus-media")?);
    const DUMMIES: u64 = 300;
    for i in 0..DUMMIES {
        let _offer = sfu
            .join(RoomKey(99), ParticipantId(1_000_000 + i), false)
            .await?;
    }
    let rss1 = rss_kb()?;
    let cpu1 = total(&thread_ticks("chorus-media")?);
    println!(
        "memory: {:.0} KB RSS per joined (not yet connected) participant with {} slots; \
         {:.2} ms of media-thread CPU per join (peer connection + offer)",
        (rss1 - rss0) as f64 / DUMMIES as f64,
        test_config().slots,
        (cpu1 - cpu0) as f64 * 10.0 / DUMMIES as f64
    );
    for i in 0..DUMMIES {
        sfu.leave(ParticipantId(1_000_000 + i));
    }
    let mut clients: Vec<Client> = Vec::new();
    let mut speakers: Vec<usize> = Vec::new();
    for r in 0..rooms_n {
        let room = RoomKey(r + 1);
        let base = (r + 1) * 100_000;
        for i in 0..speakers_n {
            speakers.push(clients.len());
            clients.push(
                join(
                    &sfu,
                    room,
                    ParticipantId(base + i as u64 + 1),
                    true,
                    true,
                    &format!("r{r}s{i}"),
                )
                .await?,
            );
        }
        for i in 0..listeners_n {
            clients.push(
                join(
                    &sfu,
                    room,
                    ParticipantId(base + 1000 + i as u64),
                    false,
                    false,
                    &format!("r{r}l{i}"),
                )
                .await?,
            );
        }
    }
    for c in &mut clients {
        c.wait_connected(Duration::from_secs(30)).await?;
        c.skip_decoding();
    }
    for (n, &i) in speakers.iter().enumerate() {
        clients[i]
            .start_tone(300.0 + 100.0 * (n % speakers_n) as f64, 10)
            .await?;
    }
    // Warm up, then measure.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (t0, s0, c0) = (Instant::now(), sfu.stats(), thread_ticks("chorus-media")?);
    let f0: Vec<u64> = sfu.shard_stats().iter().map(|s| s.rtp_forwarded).collect();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (t1, s1, c1) = (Instant::now(), sfu.stats(), thread_ticks("chorus-media")?);
    let f1: Vec<u64> = sfu.shard_stats().iter().map(|s| s.rtp_forwarded).collect();
    let wall = (t1 - t0).as_secs_f64();
    let cpu = (total(&c1) - total(&c0)) as f64 / 100.0;
    let fwd = s1.rtp_forwarded - s0.rtp_forwarded;
    let rx = s1.rtp_received - s0.rtp_received;
    println!(
        "threads {threads} rooms {rooms_n} x (speakers {speakers_n} listeners {listeners_n}) wall {wall:.1}s: received {rx} ({:.0}/s), forwarded {fwd} ({:.0}/s), media threads cpu {cpu:.2}s ({:.0}% of a core) => {:.2} us per forwarded packet",
        rx as f64 / wall,
        fwd as f64 / wall,
        100.0 * cpu / wall,
        cpu * 1e6 / fwd.max(1) as f64
    );
    // Sorted by name, so thread i is shard i.
    for (i, ((name, a), (_, b))) in c0.iter().zip(&c1).enumerate() {
        let cpu = (b - a) as f64 / 100.0;
        let fwd = f1.get(i).zip(f0.get(i)).map_or(0, |(b, a)| b - a);
        println!(
            "  {name}: forwarded {fwd} ({:.0}/s), cpu {cpu:.2}s => {:.2} us per forwarded packet",
            fwd as f64 / wall,
            cpu * 1e6 / fwd.max(1) as f64
        );
    }
    println!(
        "drops: would_block {} not_ready {} write_error {} dup {}",
        s1.send_would_block, s1.dropped_not_ready, s1.dropped_write_error, s1.dropped_duplicate
    );
    Ok(())
}
