//! The numbers a run produces and how they are printed: a table per scenario for
//! people, JSON (`--json`) for machines. The server figures come from `/metrics`
//! deltas over the measured window: CPU microseconds per forwarded packet and memory
//! per participant are the figures that compare across machines.

use super::metrics::ServerSnapshot;
use super::runner::ScenarioReport;
use serde::Serialize;
use std::fmt::Write;

/// Percentiles (nearest rank) of a set of millisecond values.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct Summary {
    pub count: usize,
    pub mean: Option<f64>,
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

pub fn summarize_ms(values: &[f64]) -> Summary {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return Summary::default();
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let pick = |p: f64| {
        let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
        v[rank.saturating_sub(1).min(v.len() - 1)]
    };
    Summary {
        count: v.len(),
        mean: Some(v.iter().sum::<f64>() / v.len() as f64),
        p50: Some(pick(50.0)),
        p95: Some(pick(95.0)),
        p99: Some(pick(99.0)),
        max: v.last().copied(),
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct JoinStats {
    /// Joins that received audio (their token-to-first-packet times are in `ms`).
    pub count: u64,
    pub failures: u64,
    /// Joined but no audio packet within the wait.
    pub no_audio: u64,
    pub ms: Summary,
    /// Where the join time goes (median ms after the join started).
    pub phases_p50_ms: JoinPhases,
    pub errors: Vec<String>,
}

/// Median milestones of a join, ms after it started (token in hand).
#[derive(Clone, Debug, Default, Serialize)]
pub struct JoinPhases {
    pub ws_connected: Option<f64>,
    pub joined_room: Option<f64>,
    pub offer_received: Option<f64>,
    pub media_connected: Option<f64>,
}

/// The server's own figures over the window.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct ServerFigures {
    /// "metrics" (`chorus_process_cpu_seconds_total`, microseconds), "proc"
    /// (/proc/<pid>, 10 ms) or `metrics::COARSE_CPU` (an old server: whole seconds).
    pub cpu_source: &'static str,
    pub cpu_seconds: Option<f64>,
    /// Of one core.
    pub cpu_percent: Option<f64>,
    pub packets_forwarded: Option<f64>,
    pub forwarded_per_sec: Option<f64>,
    pub packets_received: Option<f64>,
    pub packets_dropped: Option<f64>,
    pub cpu_us_per_forwarded_packet: Option<f64>,
    pub rss_bytes: Option<f64>,
    /// (RSS now - RSS before the first join) / participants.
    pub rss_per_participant_bytes: Option<f64>,
    /// Node-to-node relay datagrams sent, accepted from other nodes, and lost (refused
    /// or dropped by the kernel) over the window; `None` from a server without the
    /// relay metrics, 0 from a node that relays nothing.
    pub relay_sent: Option<f64>,
    pub relay_received: Option<f64>,
    pub relay_dropped: Option<f64>,
    /// The same for anonymous memory (`--server-pid` only): what the participants
    /// cost without the code pages their first use touches.
    pub anon_rss_per_participant_bytes: Option<f64>,
}

impl ServerFigures {
    pub fn from_snapshots(
        baseline: Option<ServerSnapshot>,
        before: Option<ServerSnapshot>,
        after: Option<ServerSnapshot>,
        window_secs: f64,
        participants: usize,
    ) -> Self {
        let (Some(b), Some(a)) = (before, after) else {
            return Self::default();
        };
        let d = |x: Option<f64>, y: Option<f64>| Some(y? - x?);
        let cpu = d(b.cpu_seconds, a.cpu_seconds);
        let fwd = d(b.packets_forwarded, a.packets_forwarded);
        let per_packet = match (cpu, fwd) {
            (Some(c), Some(f)) if f > 0.0 => Some(c / f * 1e6),
            _ => None,
        };
        let per_participant = |b0: Option<f64>, r: Option<f64>| match (b0, r) {
            (Some(b0), Some(r)) if participants > 0 => Some((r - b0) / participants as f64),
            _ => None,
        };
        let rss_per = per_participant(baseline.and_then(|s| s.rss_bytes), a.rss_bytes);
        let anon_per = per_participant(baseline.and_then(|s| s.anon_rss_bytes), a.anon_rss_bytes);
        Self {
            cpu_source: a.cpu_source,
            cpu_seconds: cpu,
            cpu_percent: cpu.map(|c| c / window_secs * 100.0),
            packets_forwarded: fwd,
            forwarded_per_sec: fwd.map(|f| f / window_secs),
            packets_received: d(b.packets_received, a.packets_received),
            packets_dropped: d(b.packets_dropped, a.packets_dropped),
            cpu_us_per_forwarded_packet: per_packet,
            rss_bytes: a.rss_bytes,
            rss_per_participant_bytes: rss_per,
            relay_sent: d(b.relay_sent, a.relay_sent),
            relay_received: d(b.relay_received, a.relay_received),
            relay_dropped: d(b.relay_dropped, a.relay_dropped),
            anon_rss_per_participant_bytes: anon_per,
        }
    }
}

/// One node of a cluster over the window: who was on it, what its listeners got, and
/// its own server figures (the step's `server` is their sum).
#[derive(Clone, Debug, Serialize)]
pub struct NodeReport {
    pub url: String,
    /// Speakers (all rooms) whose sessions joined through this node.
    pub speakers: usize,
    /// Listener sessions on this node connected at the end of the window.
    pub listeners_live: usize,
    /// Delivery to this node's listeners (received / expected, as for the step).
    pub expected: u64,
    pub received: u64,
    pub delivered: Option<f64>,
    /// This node alone; `rss_per_participant_bytes` divides by its own participants.
    pub server: ServerFigures,
}

/// One measured window.
#[derive(Clone, Debug, Serialize)]
pub struct StepReport {
    pub listeners_per_room: usize,
    /// Listener sessions connected at the end of the window (all rooms).
    pub listeners_live: usize,
    pub participants: usize,
    pub window_secs: f64,
    /// Packets each speaker sent during the window (rooms in order, owner first).
    pub speaker_packets_sent: Vec<u64>,
    /// Packets the speakers sent while in a listener's slots, summed over listeners.
    pub expected: u64,
    pub received: u64,
    /// received / expected.
    pub delivered: Option<f64>,
    /// Sequence-gap loss of the received streams (lost / expected by sequence).
    pub seq_loss: Option<f64>,
    /// End-to-end latency, speaker send to listener receive (same process clock).
    pub latency_ms: Summary,
    /// RFC 3550 jitter of each received stream at the end of the window.
    pub jitter_ms: Summary,
    pub joins: JoinStats,
    /// The server's figures; with several nodes, summed over them (CPU and RSS added,
    /// so CPU per forwarded packet is the cluster's, relay included).
    pub server: ServerFigures,
    /// Per node, when the target has more than one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeReport>,
    pub harness_cpu_seconds: Option<f64>,
    /// Of one core.
    pub harness_cpu_percent: Option<f64>,
    /// RTP packets all listeners received during the window (slot switches included).
    pub harness_packets_received: u64,
    /// The harness's CPU (speakers included) per packet its listeners received.
    pub harness_cpu_us_per_received_packet: Option<f64>,
    pub harness_rss_bytes: Option<f64>,
    /// Datagrams the kernel dropped for full UDP receive buffers during the window
    /// (machine-wide, `/proc/net/snmp`).
    pub udp_rcvbuf_errors: Option<u64>,
}

/// Everything one invocation ran.
#[derive(Debug, Serialize)]
pub struct RunReport {
    /// The target's URL; the nodes' URLs joined by commas for a cluster.
    pub url: String,
    pub scenarios: Vec<ScenarioReport>,
    /// `--min-delivery`, if given, and whether every scenario met it.
    pub min_delivery: Option<f64>,
    pub passed: bool,
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".to_owned(), |x| format!("{x:.digits$}"))
}

fn pct(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".to_owned(), |x| format!("{:.digits$}%", x * 100.0))
}

fn mib(v: Option<f64>) -> String {
    v.map_or("-".to_owned(), |x| format!("{:.1} MiB", x / 1048576.0))
}

fn kib(v: Option<f64>) -> String {
    v.map_or("-".to_owned(), |x| format!("{:.0} KiB", x / 1024.0))
}

/// The human-readable table of one scenario: one row per step, then the server and
/// harness figures.
pub fn render_table(r: &ScenarioReport) -> String {
    let sc = &r.scenario;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "== {}: {} room(s) x ({} speakers + {} listeners on {}), {:.0} s window, joins {}/s{}{} ==",
        sc.name,
        sc.rooms,
        sc.speakers,
        sc.ramp.map_or(sc.listeners.to_string(), |rp| format!(
            "{}..{} step {}",
            rp.start, rp.max, rp.step
        )),
        sc.listener_engine,
        sc.duration.as_secs_f64(),
        sc.join_rate,
        sc.turns.map_or(String::new(), |t| format!(
            ", turns {} every {:.0} s",
            t.count,
            t.period.as_secs_f64()
        )),
        if sc.churn > 0.0 {
            format!(", churn {:.0}%", sc.churn * 100.0)
        } else {
            String::new()
        },
    );
    let _ = writeln!(
        out,
        "{:>9} {:>6} {:>9} {:>7} {:>24} {:>7} {:>17} {:>6} | {:>8} {:>9} {:>8} {:>11} {:>10} | {:>8} {:>8}",
        "listeners",
        "live",
        "delivered",
        "loss",
        "latency p50/p95/p99 ms",
        "jitter",
        "join p50/p99 ms",
        "fail",
        "srv cpu",
        "fwd pkt/s",
        "us/pkt",
        "srv rss",
        "mem/part",
        "own cpu",
        "us/rxpkt",
    );
    for s in &r.steps {
        let _ = writeln!(
            out,
            "{:>9} {:>6} {:>9} {:>7} {:>24} {:>7} {:>17} {:>6} | {:>8} {:>9} {:>8} {:>11} {:>10} | {:>8} {:>8}",
            s.listeners_per_room * sc.rooms,
            s.listeners_live,
            pct(s.delivered, 2),
            pct(s.seq_loss, 2),
            format!(
                "{}/{}/{}",
                opt(s.latency_ms.p50, 1),
                opt(s.latency_ms.p95, 1),
                opt(s.latency_ms.p99, 1)
            ),
            opt(s.jitter_ms.mean, 2),
            format!("{}/{}", opt(s.joins.ms.p50, 0), opt(s.joins.ms.p99, 0)),
            s.joins.failures + s.joins.no_audio,
            s.server
                .cpu_percent
                .map_or("-".to_owned(), |c| format!("{c:.0}%")),
            opt(s.server.forwarded_per_sec, 0),
            opt(s.server.cpu_us_per_forwarded_packet, 2),
            mib(s.server.rss_bytes),
            kib(s
                .server
                .anon_rss_per_participant_bytes
                .or(s.server.rss_per_participant_bytes)),
            s.harness_cpu_percent
                .map_or("-".to_owned(), |c| format!("{c:.0}%")),
            opt(s.harness_cpu_us_per_received_packet, 2),
        );
    }
    if let Some(c) = r.capacity_listeners {
        let _ = writeln!(
            out,
            "ramp capacity: {c} listeners with delivery and p99 within limits"
        );
    } else if sc.ramp.is_some() {
        let _ = writeln!(out, "ramp capacity: not reached at the first step");
    }
    for s in &r.steps {
        let p = &s.joins.phases_p50_ms;
        let _ = writeln!(
            out,
            "{} listeners: join p50 phases: websocket {} ms, joined {} ms, offer {} ms, \
             media connected {} ms, first audio {} ms",
            s.listeners_per_room * sc.rooms,
            opt(p.ws_connected, 0),
            opt(p.joined_room, 0),
            opt(p.offer_received, 0),
            opt(p.media_connected, 0),
            opt(s.joins.ms.p50, 0),
        );
        if let Some(n) = s.udp_rcvbuf_errors.filter(|n| *n > 0) {
            let _ = writeln!(
                out,
                "{} listeners: the kernel dropped {n} UDP datagrams for full receive buffers",
                s.listeners_per_room * sc.rooms
            );
        }
    }
    for s in r.steps.iter().filter(|s| !s.nodes.is_empty()) {
        let per_sec = |v: Option<f64>| opt(v.map(|x| x / s.window_secs), 0);
        let _ = writeln!(
            out,
            "{} listeners over {} nodes (server columns above are their sum): relay {} \
             datagrams sent, {} accepted, {} lost",
            s.listeners_per_room * sc.rooms,
            s.nodes.len(),
            opt(s.server.relay_sent, 0),
            opt(s.server.relay_received, 0),
            opt(s.server.relay_dropped, 0),
        );
        for (i, n) in s.nodes.iter().enumerate() {
            let f = &n.server;
            let _ = writeln!(
                out,
                "  node {i} {}: {} speakers + {} listeners, delivered {}, cpu {}, \
                 fwd {} pkt/s, {} us/pkt, relay out {} in {} pkt/s, rss {}, mem/part {}",
                n.url,
                n.speakers,
                n.listeners_live,
                pct(n.delivered, 2),
                f.cpu_percent.map_or("-".to_owned(), |c| format!("{c:.0}%")),
                opt(f.forwarded_per_sec, 0),
                opt(f.cpu_us_per_forwarded_packet, 2),
                per_sec(f.relay_sent),
                per_sec(f.relay_received),
                mib(f.rss_bytes),
                kib(f
                    .anon_rss_per_participant_bytes
                    .or(f.rss_per_participant_bytes)),
            );
        }
    }
    if r.steps
        .iter()
        .any(|s| s.server.cpu_source == super::metrics::COARSE_CPU)
    {
        let _ = writeln!(
            out,
            "note: this server reports CPU in whole seconds only: pass --server-pid \
             for 10 ms resolution when it runs on this machine"
        );
    }
    for s in &r.steps {
        for e in &s.joins.errors {
            let _ = writeln!(out, "join error: {e}");
        }
    }
    let _ = writeln!(
        out,
        "(delivered = received / sent while in the listener's slots; loss = sequence gaps; \
         srv cpu and own cpu in % of one core; us/rxpkt = harness CPU per packet its \
         listeners received; mem/part = server RSS growth / participants, anonymous \
         memory only when the server's pid is known: the binary's code pages are not per \
         participant)"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_uses_nearest_rank_and_ignores_non_finite_values() {
        let v: Vec<f64> = (1..=100).map(f64::from).chain([f64::NAN]).collect();
        let s = summarize_ms(&v);
        assert_eq!(s.count, 100);
        assert_eq!(
            (s.p50, s.p95, s.p99, s.max),
            (Some(50.0), Some(95.0), Some(99.0), Some(100.0))
        );
        assert_eq!(s.mean, Some(50.5));
        assert_eq!(summarize_ms(&[]), Summary::default());
    }

    #[test]
    fn server_figures_are_deltas_per_forwarded_packet_and_per_participant() {
        let base = ServerSnapshot {
            rss_bytes: Some(10e6),
            anon_rss_bytes: Some(2e6),
            ..Default::default()
        };
        let before = ServerSnapshot {
            cpu_seconds: Some(1.0),
            packets_forwarded: Some(1000.0),
            rss_bytes: Some(20e6),
            ..Default::default()
        };
        let after = ServerSnapshot {
            cpu_seconds: Some(1.5),
            packets_forwarded: Some(251_000.0),
            rss_bytes: Some(30e6),
            anon_rss_bytes: Some(17e6),
            ..Default::default()
        };
        let f = ServerFigures::from_snapshots(Some(base), Some(before), Some(after), 10.0, 100);
        assert_eq!(f.cpu_us_per_forwarded_packet, Some(2.0));
        assert_eq!(f.forwarded_per_sec, Some(25_000.0));
        assert_eq!(f.cpu_percent, Some(5.0));
        assert_eq!(f.rss_per_participant_bytes, Some(200_000.0));
        assert_eq!(f.anon_rss_per_participant_bytes, Some(150_000.0));
        let none = ServerFigures::from_snapshots(None, None, Some(after), 10.0, 1);
        assert!(none.cpu_us_per_forwarded_packet.is_none());
    }
}
