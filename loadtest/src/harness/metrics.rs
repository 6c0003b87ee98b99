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
    /// Where `cpu_seconds` and `rss_bytes` came from: "metrics" (microseconds),
    /// [`COARSE_CPU`] (a server with only whole-second CPU) or "proc" (`--server-pid`).
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
            cpu_source: if fine_cpu.is_some() || coarse_cpu.is_none() {
                "metrics"
            } else {
                COARSE_CPU
            },
        }
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
