//! The server's own figures, read from its Prometheus `/metrics` page before and after
//! a measurement window, and the harness's own CPU and memory from `/proc/self`.

use super::HarnessError;
use super::http;
pub use prometheus_parse::Sample;
use prometheus_parse::{Scrape, Value};
use serde::Serialize;
use std::net::SocketAddr;
use std::time::Duration;

/// Parses the Prometheus text exposition format with `prometheus-parse`. Lines it
/// cannot read are skipped: among them the server's `chorus_http_requests_total`, whose
/// route labels contain braces (`/api/rooms/{room_id}`), which the crate's sample
/// pattern does not accept. None of the figures the harness reads has such a label.
pub fn parse(text: &str) -> Vec<Sample> {
    match Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))) {
        Ok(scrape) => scrape.samples,
        // Only a failing line reader errs, and these lines cannot fail.
        Err(_) => Vec::new(),
    }
}

/// Sum of every counter, gauge or untyped sample named `name` whose labels include all
/// of `labels` (histograms and summaries are not summed).
pub fn sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = false;
    let mut total = 0.0;
    for s in samples.iter().filter(|s| s.metric == name) {
        let v = match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            Value::Histogram(_) | Value::Summary(_) => continue,
        };
        if labels
            .iter()
            .all(|(k, want)| s.labels.get(k) == Some(*want))
        {
            found = true;
            total += v;
        }
    }
    found.then_some(total)
}

/// `cpu_source` of a server that only reports whole CPU seconds.
pub const COARSE_CPU: &str = "metrics-whole-seconds";
/// `cpu_source` of a sum over nodes whose CPU came from different sources.
pub const MIXED_CPU: &str = "mixed";

/// The server figures the report needs.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct ServerSnapshot {
    pub cpu_seconds: Option<f64>,
    pub rss_bytes: Option<f64>,
    /// Anonymous resident memory (heap, stacks): `RssAnon` with `--server-pid`, else
    /// unknown. Unlike `rss_bytes` it leaves out the binary's code pages, which the
    /// first joins touch once and which are not memory per participant.
    pub anon_rss_bytes: Option<f64>,
    pub packets_forwarded: Option<f64>,
    pub packets_received: Option<f64>,
    pub packets_dropped: Option<f64>,
    pub participants: Option<f64>,
    /// Node-to-node relay datagrams sent to other nodes
    /// (`chorus_media_relay_datagrams_total{direction="sent"}`); absent on a server
    /// without the relay metrics.
    pub relay_sent: Option<f64>,
    /// Relay datagrams accepted from other nodes (`direction="accepted"`).
    pub relay_received: Option<f64>,
    /// Relay datagrams lost on the way: refused by the receiver
    /// (`chorus_media_relay_dropped_total`) or by the kernel on sending
    /// (`direction="send_dropped"`).
    pub relay_dropped: Option<f64>,
    /// Where `cpu_seconds` and `rss_bytes` came from: "metrics" (microseconds),
    /// [`COARSE_CPU`] (a server with only whole-second CPU) or "proc" (`--server-pid`);
    /// [`MIXED_CPU`] for a sum over nodes that did not all report the same way.
    pub cpu_source: &'static str,
}

impl ServerSnapshot {
    pub fn from_text(text: &str) -> Self {
        let s = parse(text);
        // The server's microsecond counter; servers without it only have the
        // whole-second one from the prometheus crate.
        let fine_cpu = sum(&s, "chorus_process_cpu_seconds_total", &[]);
        let coarse_cpu = sum(&s, "process_cpu_seconds_total", &[]);
        Self {
            cpu_seconds: fine_cpu.or(coarse_cpu),
            rss_bytes: sum(&s, "process_resident_memory_bytes", &[]),
            anon_rss_bytes: None,
            packets_forwarded: sum(
                &s,
                "chorus_media_packets_total",
                &[("direction", "forwarded")],
            ),
            packets_received: sum(
                &s,
                "chorus_media_packets_total",
                &[("direction", "received")],
            ),
            packets_dropped: sum(&s, "chorus_media_packets_dropped_total", &[]),
            participants: sum(&s, "chorus_media_participants", &[]),
            relay_sent: sum(
                &s,
                "chorus_media_relay_datagrams_total",
                &[("direction", "sent")],
            ),
            relay_received: sum(
                &s,
                "chorus_media_relay_datagrams_total",
                &[("direction", "accepted")],
            ),
            relay_dropped: match (
                sum(&s, "chorus_media_relay_dropped_total", &[]),
                sum(
                    &s,
                    "chorus_media_relay_datagrams_total",
                    &[("direction", "send_dropped")],
                ),
            ) {
                (None, None) => None,
                (a, b) => Some(a.unwrap_or(0.0) + b.unwrap_or(0.0)),
            },
            cpu_source: if fine_cpu.is_some() || coarse_cpu.is_none() {
                "metrics"
            } else {
                COARSE_CPU
            },
        }
    }
}

impl ServerSnapshot {
    /// The figures of several nodes added up (CPU, memory, packets, participants): what
    /// the cluster as a whole spent. `None` when a node could not be read, since a sum
    /// missing a node would pass for the whole; a figure is `None` when a node lacks it.
    pub fn total(nodes: &[Option<ServerSnapshot>]) -> Option<ServerSnapshot> {
        let nodes: Vec<&ServerSnapshot> =
            nodes.iter().map(Option::as_ref).collect::<Option<_>>()?;
        let first = nodes.first()?;
        let add = |f: fn(&ServerSnapshot) -> Option<f64>| -> Option<f64> {
            nodes.iter().map(|n| f(n)).sum::<Option<f64>>()
        };
        Some(ServerSnapshot {
            cpu_seconds: add(|n| n.cpu_seconds),
            rss_bytes: add(|n| n.rss_bytes),
            anon_rss_bytes: add(|n| n.anon_rss_bytes),
            packets_forwarded: add(|n| n.packets_forwarded),
            packets_received: add(|n| n.packets_received),
            packets_dropped: add(|n| n.packets_dropped),
            participants: add(|n| n.participants),
            relay_sent: add(|n| n.relay_sent),
            relay_received: add(|n| n.relay_received),
            relay_dropped: add(|n| n.relay_dropped),
            cpu_source: if nodes.iter().all(|n| n.cpu_source == first.cpu_source) {
                first.cpu_source
            } else {
                MIXED_CPU
            },
        })
    }
}

/// Scrapes `path` (normally `/metrics`) at `addr`.
pub async fn scrape(
    addr: SocketAddr,
    host: &str,
    path: &str,
) -> Result<ServerSnapshot, HarnessError> {
    let r = http::request(addr, host, "GET", path, None, None, Duration::from_secs(10)).await?;
    if r.status != 200 {
        return Err(HarnessError::Http(format!("GET {path}: HTTP {}", r.status)));
    }
    Ok(ServerSnapshot::from_text(&r.text()))
}

/// CPU seconds (user + system) this process has used, from `/proc/self/stat`.
pub fn own_cpu_seconds() -> Option<f64> {
    proc_cpu_seconds("self")
}

/// CPU seconds of process `pid` ("self" or a number), from `/proc/<pid>/stat`
/// (10 ms resolution).
pub fn proc_cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which is in parentheses and may contain spaces).
    let after = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux ABI the harness runs on.
    Some((utime + stime) / 100.0)
}

/// Resident memory of this process, bytes, from `/proc/self/status`.
pub fn own_rss_bytes() -> Option<f64> {
    proc_rss_bytes("self")
}

/// Resident memory of process `pid` ("self" or a number), bytes.
pub fn proc_rss_bytes(pid: &str) -> Option<f64> {
    proc_status_bytes(pid, "VmRSS:")
}

/// Anonymous resident memory of process `pid` (heap, stacks; no file-backed pages such
/// as the binary's code), bytes.
pub fn proc_anon_rss_bytes(pid: &str) -> Option<f64> {
    proc_status_bytes(pid, "RssAnon:")
}

/// A "kB" field of `/proc/<pid>/status`, in bytes.
fn proc_status_bytes(pid: &str, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024.0)
}

/// The kernel's UDP receive-buffer overflow count (`RcvbufErrors` in
/// `/proc/net/snmp`): machine-wide, so on loopback it counts datagrams dropped because
/// a socket (the server's or a client's) was not read fast enough.
pub fn udp_rcvbuf_errors() -> Option<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let names: Vec<&str> = udp.next()?.split_whitespace().collect();
    let values: Vec<&str> = udp.next()?.split_whitespace().collect();
    let i = names.iter().position(|n| *n == "RcvbufErrors")?;
    values.get(i)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 12.5
process_resident_memory_bytes 5.24288e7
chorus_media_packets_total{direction="forwarded"} 1000
chorus_media_packets_total{direction="received"} 250
chorus_media_packets_dropped_total{reason="muted"} 3
chorus_media_packets_dropped_total{reason="congestion"} 4
chorus_http_requests_total{route="/api/rooms/{room_id}",method="GET",status="200"} 7
chorus_media_participants 12
broken{line
"#;

    #[test]
    fn metrics_page_yields_the_server_figures() {
        // The route-labelled line (skipped by the parser) and the broken one disturb
        // nothing.
        let s = ServerSnapshot::from_text(PAGE);
        assert_eq!(s.cpu_seconds, Some(12.5));
        assert_eq!(s.cpu_source, COARSE_CPU);
        assert_eq!(s.rss_bytes, Some(52_428_800.0));
        assert_eq!(s.packets_forwarded, Some(1000.0));
        assert_eq!(s.packets_received, Some(250.0));
        assert_eq!(s.packets_dropped, Some(7.0));
        assert_eq!(s.participants, Some(12.0));
        let samples = parse(PAGE);
        assert_eq!(sum(&samples, "absent", &[]), None);
        assert_eq!(
            sum(
                &samples,
                "chorus_media_packets_total",
                &[("direction", "sideways")]
            ),
            None
        );
        assert_eq!(ServerSnapshot::from_text("").cpu_seconds, None);
        // The server's fine-grained counter wins over the whole-second one.
        let fine = format!("{PAGE}chorus_process_cpu_seconds_total 12.734561\n");
        let fine = ServerSnapshot::from_text(&fine);
        assert_eq!(
            (fine.cpu_seconds, fine.cpu_source),
            (Some(12.734561), "metrics")
        );
    }

    #[test]
    fn relay_figures_are_read_and_nodes_add_up() {
        let page = |cpu: f64, sent: u32, accepted: u32| {
            format!(
                "chorus_process_cpu_seconds_total {cpu}\n\
                 process_resident_memory_bytes 1000\n\
                 chorus_media_packets_total{{direction=\"forwarded\"}} 100\n\
                 chorus_media_relay_datagrams_total{{direction=\"received\"}} {accepted}\n\
                 chorus_media_relay_datagrams_total{{direction=\"accepted\"}} {accepted}\n\
                 chorus_media_relay_datagrams_total{{direction=\"sent\"}} {sent}\n\
                 chorus_media_relay_datagrams_total{{direction=\"send_dropped\"}} 1\n\
                 chorus_media_relay_dropped_total{{reason=\"bad_tag\"}} 2\n\
                 chorus_media_relay_dropped_total{{reason=\"replay\"}} 3\n"
            )
        };
        let a = ServerSnapshot::from_text(&page(1.5, 300, 0));
        assert_eq!(
            (a.relay_sent, a.relay_received, a.relay_dropped),
            (Some(300.0), Some(0.0), Some(6.0))
        );
        let b = ServerSnapshot::from_text(&page(0.5, 0, 290));
        let t = ServerSnapshot::total(&[Some(a), Some(b)]).unwrap_or_default();
        assert_eq!(t.cpu_seconds, Some(2.0));
        assert_eq!(t.rss_bytes, Some(2000.0));
        assert_eq!(t.packets_forwarded, Some(200.0));
        assert_eq!((t.relay_sent, t.relay_received), (Some(300.0), Some(290.0)));
        assert_eq!(t.cpu_source, "metrics");
        // A node that could not be read makes the total unknown, not smaller.
        assert_eq!(ServerSnapshot::total(&[Some(a), None]), None);
        assert_eq!(ServerSnapshot::total(&[]), None);
        // A server without relay metrics: no relay figures, and none in a total.
        let old = ServerSnapshot::from_text(PAGE);
        assert_eq!((old.relay_sent, old.relay_dropped), (None, None));
        let mixed = ServerSnapshot::total(&[Some(a), Some(old)]).unwrap_or_default();
        assert_eq!(mixed.relay_sent, None);
        assert_eq!(mixed.cpu_source, MIXED_CPU);
    }

    #[test]
    fn own_cpu_and_memory_are_readable_and_cpu_grows_with_work() {
        let before = own_cpu_seconds().unwrap_or_else(|| panic!("no /proc/self/stat"));
        // Spin until the counter moves (bounded): on a busy machine wall time says little.
        let t = std::time::Instant::now();
        let mut x = 0u64;
        let mut after = before;
        while after - before < 0.05 && t.elapsed() < Duration::from_secs(20) {
            for _ in 0..1_000_000 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            }
            after = own_cpu_seconds().unwrap_or(before);
        }
        std::hint::black_box(x);
        assert!(after - before >= 0.05, "{before} -> {after}");
        assert!(own_rss_bytes().is_some_and(|r| r > 1e6));
        let anon = proc_anon_rss_bytes("self");
        assert!(anon.is_some_and(|a| a > 0.0 && Some(a) <= own_rss_bytes()));
        let me = std::process::id().to_string();
        assert!(proc_cpu_seconds(&me).is_some_and(|c| c >= after - 0.01));
        assert!(proc_cpu_seconds("999999999").is_none());
        assert!(udp_rcvbuf_errors().is_some());
    }
}
