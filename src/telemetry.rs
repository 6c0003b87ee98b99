//! Telemetry: logging setup and the Prometheus registry behind `/metrics`.
//!
//! Every metric lives in one registry owned here. Label values are bounded:
//! HTTP routes are labelled with their axum route template (`/api/rooms/{room_id}`),
//! never with a concrete path, room or user id.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use axum::{
    Router,
    extract::{MatchedPath, Request, State},
    http::{StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus::core::{Collector, Desc};
use prometheus::{
    Counter, Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder, proto,
};

/// Copies one source's current values into its metrics, just before a scrape.
type Refresher = Box<dyn FnMut() + Send>;

/// The registry and the metrics the binary itself records (HTTP). Library crates
/// register theirs into the same registry at startup.
#[derive(Clone)]
pub struct Telemetry {
    /// Shared by every crate so one scrape returns everything.
    pub registry: Registry,
    /// Requests by route template, method and status.
    http_requests: IntCounterVec,
    /// Latency by route template and method.
    http_duration: HistogramVec,
    /// Store operation latency and failures.
    store: Arc<StoreMetrics>,
    /// Sources read at scrape time (the SFU keeps plain atomics on its hot path and
    /// knows nothing of Prometheus).
    refreshers: Arc<Mutex<Vec<Refresher>>>,
}

struct StoreMetrics {
    duration: HistogramVec,
    errors: IntCounterVec,
}

impl api::store::StoreObserver for StoreMetrics {
    fn observe(&self, op: &'static str, took: Duration, ok: bool) {
        self.duration
            .with_label_values(&[op])
            .observe(took.as_secs_f64());
        if !ok {
            self.errors.with_label_values(&[op]).inc();
        }
    }
}

/// User + system CPU seconds of this process from `getrusage` (microsecond resolution).
fn process_cpu_seconds() -> Option<f64> {
    let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).ok()?;
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    Some(secs(u.user_time()) + secs(u.system_time()))
}

/// The SFU's join-latency histogram (kept in the media thread's atomics), exposed as a
/// Prometheus histogram at scrape time.
struct JoinLatencyCollector {
    sfu: media::Sfu,
    desc: Desc,
}

impl JoinLatencyCollector {
    const NAME: &str = "chorus_join_duration_seconds";
    const HELP: &str = "Time from the server creating a participant's peer connection \
                        (its offer) to ICE and DTLS connected";

    fn new(sfu: media::Sfu) -> prometheus::Result<Self> {
        let desc = Desc::new(
            Self::NAME.into(),
            Self::HELP.into(),
            Vec::new(),
            Default::default(),
        )?;
        Ok(Self { sfu, desc })
    }
}

impl Collector for JoinLatencyCollector {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<proto::MetricFamily> {
        let snap = self.sfu.join_latency();
        let mut h = proto::Histogram::default();
        h.set_sample_count(snap.count);
        h.set_sample_sum(snap.sum_seconds);
        h.set_bucket(
            snap.buckets
                .iter()
                .map(|&(le, n)| {
                    let mut b = proto::Bucket::default();
                    b.set_upper_bound(le);
                    b.set_cumulative_count(n);
                    b
                })
                .collect(),
        );
        let mut m = proto::Metric::default();
        m.set_histogram(h);
        let mut mf = proto::MetricFamily::default();
        mf.set_name(Self::NAME.into());
        mf.set_help(Self::HELP.into());
        mf.set_field_type(proto::MetricType::HISTOGRAM);
        mf.set_metric(vec![m]);
        vec![mf]
    }
}

/// How one SFU metric family reads its series from a stats snapshot.
type SfuSeries = fn(&media::SfuStats) -> Vec<(&'static str, u64)>;

/// One metric family of the SFU: a gauge, or a counter whose value is the SFU's own
/// running total (the atomics only grow, so nothing is kept between scrapes).
struct SfuFamily {
    desc: Desc,
    kind: proto::MetricType,
    /// The family's one label, if it has one.
    label: Option<&'static str>,
    /// `(label value, value)` per series; the label value is ignored without a label.
    series: SfuSeries,
}

/// The SFU's counters and gauges, read from [`media::Sfu::stats`] at scrape time.
struct SfuCollector {
    sfu: media::Sfu,
    families: Vec<SfuFamily>,
}

impl SfuCollector {
    fn new(sfu: media::Sfu) -> prometheus::Result<Self> {
        use proto::MetricType::{COUNTER, GAUGE};
        #[rustfmt::skip]
        let table: [(&str, &str, proto::MetricType, Option<&'static str>, SfuSeries); 21] = [
            ("chorus_media_participants", "Peer connections on the SFU", GAUGE, None,
                |s| vec![("", s.participants)]),
            ("chorus_media_connected", "Peer connections with ICE and DTLS done", GAUGE, None,
                |s| vec![("", s.connected)]),
            ("chorus_media_publishers", "Participants allowed to publish audio (published tracks)",
                GAUGE, None, |s| vec![("", s.publishers)]),
            ("chorus_media_rooms", "Rooms with at least one peer connection", GAUGE, None,
                |s| vec![("", s.rooms)]),
            ("chorus_media_subscriptions",
                "Audio tracks routed to subscribers (each participant's slots carrying someone else)",
                GAUGE, None, |s| vec![("", s.subscriptions)]),
            ("chorus_media_packets_total", "RTP packets by direction", COUNTER, Some("direction"),
                |s| vec![("received", s.rtp_received), ("forwarded", s.rtp_forwarded)]),
            ("chorus_media_bytes_total", "RTP payload bytes by direction", COUNTER,
                Some("direction"),
                |s| vec![("received", s.rtp_bytes_received), ("forwarded", s.rtp_bytes_forwarded)]),
            ("chorus_media_packets_dropped_total", "RTP packets not forwarded, by reason", COUNTER,
                Some("reason"), |s| s.dropped_by_reason().to_vec()),
            ("chorus_media_rtcp_total", "RTCP packets received, by kind", COUNTER, Some("kind"),
                |s| vec![("all", s.rtcp_received), ("nack", s.nacks_received)]),
            ("chorus_media_sender_reports_total",
                "RTCP sender reports the SFU wrote for the audio slots it forwards", COUNTER, None,
                |s| vec![("", s.sender_reports)]),
            ("chorus_media_datagrams_total", "UDP datagrams by direction", COUNTER,
                Some("direction"),
                |s| vec![("received", s.datagrams_received), ("sent", s.datagrams_sent)]),
            ("chorus_media_errors_total", "Media socket and protocol errors, by kind", COUNTER,
                Some("kind"), |s| s.errors_by_kind().to_vec()),
            ("chorus_media_early_checks_held_total",
                "ICE checks that arrived before their connection's answer, held and replayed",
                COUNTER, None, |s| vec![("", s.early_checks_held)]),
            ("chorus_media_disconnects_total",
                "Participants removed by the SFU for ICE failure or timeout", COUNTER, None,
                |s| vec![("", s.disconnects)]),
            ("chorus_media_relay_datagrams_total",
                "Node-to-node relay datagrams: received on the relay sockets, accepted and routed, sent to other nodes, dropped by the kernel on sending",
                COUNTER, Some("direction"),
                |s| vec![("received", s.relay_datagrams_received), ("accepted", s.relay_received),
                    ("sent", s.relay_sent), ("send_dropped", s.relay_send_dropped)]),
            ("chorus_media_relay_dropped_total", "Relay datagrams refused, by reason", COUNTER,
                Some("reason"), |s| s.relay_dropped_by_reason().to_vec()),
            ("chorus_media_relay_remote_sources",
                "Publishers on other nodes heard here over the relay", GAUGE, None,
                |s| vec![("", s.remote_sources)]),
            ("chorus_media_relay_subscriptions",
                "(room, node) pairs this node relays its rooms' top speakers to", GAUGE, None,
                |s| vec![("", s.relay_subscriptions)]),
            ("chorus_media_relay_remote_timeouts_total",
                "Remote sources removed because nothing arrived from them for the remote timeout",
                COUNTER, None, |s| vec![("", s.remote_sources_timed_out)]),
            ("chorus_media_relay_remote_ends_total",
                "Remote sources removed because their node stopped relaying them (they left its slots)",
                COUNTER, None, |s| vec![("", s.remote_sources_ended)]),
            ("chorus_media_busy_refusals_total",
                "SFU requests (joins, renegotiations) refused as busy: event backlog or command queue full",
                COUNTER, None, |s| vec![("", s.busy_refusals)]),
        ];
        let families = table
            .into_iter()
            .map(|(name, help, kind, label, series)| {
                let labels = label.map(|l| vec![l.to_owned()]).unwrap_or_default();
                Ok(SfuFamily {
                    desc: Desc::new(name.into(), help.into(), labels, Default::default())?,
                    kind,
                    label,
                    series,
                })
            })
            .collect::<prometheus::Result<_>>()?;
        Ok(Self { sfu, families })
    }
}

impl Collector for SfuCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.families.iter().map(|f| &f.desc).collect()
    }

    fn collect(&self) -> Vec<proto::MetricFamily> {
        let stats = self.sfu.stats();
        self.families
            .iter()
            .map(|f| {
                let metrics = (f.series)(&stats)
                    .into_iter()
                    .map(|(value_label, v)| {
                        let mut m = proto::Metric::default();
                        if let Some(name) = f.label {
                            let mut l = proto::LabelPair::default();
                            l.set_name(name.into());
                            l.set_value(value_label.into());
                            m.set_label(vec![l]);
                        }
                        let v = v as f64;
                        if f.kind == proto::MetricType::COUNTER {
                            let mut c = proto::Counter::default();
                            c.set_value(v);
                            m.set_counter(c);
                        } else {
                            let mut g = proto::Gauge::default();
                            g.set_value(v);
                            m.set_gauge(g);
                        }
                        m
                    })
                    .collect();
                let mut mf = proto::MetricFamily::default();
                mf.set_name(f.desc.fq_name.clone());
                mf.set_help(f.desc.help.clone());
                mf.set_field_type(f.kind);
                mf.set_metric(metrics);
                mf
            })
            .collect()
    }
}

impl Telemetry {
    pub fn new() -> anyhow::Result<Self> {
        let registry = Registry::new();
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let http_requests = IntCounterVec::new(
            Opts::new(
                "chorus_http_requests_total",
                "HTTP requests by route template, method and status",
            ),
            &["route", "method", "status"],
        )?;
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "chorus_http_request_duration_seconds",
                "HTTP request latency by route template",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["route", "method"],
        )?;
        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(http_duration.clone()))?;
        let store_duration = HistogramVec::new(
            HistogramOpts::new(
                "chorus_store_operation_duration_seconds",
                "Database operation latency by store operation",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
            &["op"],
        )?;
        let store_errors = IntCounterVec::new(
            Opts::new(
                "chorus_store_errors_total",
                "Database operations that failed (not-found answers included), by operation",
            ),
            &["op"],
        )?;
        registry.register(Box::new(store_duration.clone()))?;
        registry.register(Box::new(store_errors.clone()))?;
        let cpu = Counter::new(
            "chorus_process_cpu_seconds_total",
            "User and system CPU time of the whole process, microsecond resolution \
             (process_cpu_seconds_total counts whole seconds)",
        )?;
        registry.register(Box::new(cpu.clone()))?;
        let telemetry = Self {
            registry,
            http_requests,
            http_duration,
            store: Arc::new(StoreMetrics {
                duration: store_duration,
                errors: store_errors,
            }),
            refreshers: Arc::default(),
        };
        let mut last_cpu = 0.0;
        telemetry.refreshers.lock().push(Box::new(move || {
            if let Some(now) = process_cpu_seconds() {
                cpu.inc_by((now - last_cpu).max(0.0));
                last_cpu = now;
            }
        }));
        Ok(telemetry)
    }

    /// What the store decorator reports to ([`api::store::Timed`]).
    pub fn store_observer(&self) -> Arc<dyn api::store::StoreObserver> {
        self.store.clone()
    }

    /// Exposes the SFU's gauges, counters and join latencies, read from its atomics at
    /// each scrape.
    pub fn register_sfu(&self, sfu: media::Sfu) -> prometheus::Result<()> {
        self.registry
            .register(Box::new(JoinLatencyCollector::new(sfu.clone())?))?;
        self.registry.register(Box::new(SfuCollector::new(sfu)?))
    }

    /// Exposes signaling's live counts (connections, rooms, participants by role).
    pub fn register_signaling(&self, signaling: signaling::Signaling) -> prometheus::Result<()> {
        let gauge = |name: &str, help: &str| -> prometheus::Result<IntGauge> {
            let g = IntGauge::new(name, help)?;
            self.registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let connections = gauge(
            "chorus_ws_connections",
            "Open, authenticated WebSocket connections",
        )?;
        let rooms = gauge("chorus_rooms", "Rooms with at least one participant")?;
        let in_call = gauge(
            "chorus_participants_in_call",
            "Participants with an audio connection",
        )?;
        let reconnecting = gauge(
            "chorus_participants_reconnecting",
            "Participants whose socket dropped and who may still resume",
        )?;
        let by_role = self.gauge_vec(
            "chorus_participants",
            "Participants in rooms, by role",
            &["role"],
        )?;
        let refresh = move || {
            let s = signaling.stats();
            let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            connections.set(as_i64(s.connections));
            rooms.set(as_i64(s.rooms));
            in_call.set(as_i64(s.in_call));
            reconnecting.set(as_i64(s.reconnecting));
            by_role
                .with_label_values(&["moderator"])
                .set(as_i64(s.moderators));
            by_role
                .with_label_values(&["speaker"])
                .set(as_i64(s.speakers));
            by_role
                .with_label_values(&["listener"])
                .set(as_i64(s.listeners));
        };
        self.refreshers.lock().push(Box::new(refresh));
        Ok(())
    }

    /// Exposes the HTTP listener's connection counts.
    pub fn register_connections(
        &self,
        stats: Arc<crate::serve::ConnStats>,
    ) -> prometheus::Result<()> {
        use std::sync::atomic::Ordering::Relaxed;
        let open = IntGauge::new(
            "chorus_http_connections",
            "Open client connections (HTTP and WebSocket), each holding a permit",
        )?;
        let max = IntGauge::new(
            "chorus_http_connections_max",
            "The connection cap in force (MAX_CONNECTIONS, fitted to the open-files limit)",
        )?;
        let closed = IntCounterVec::new(
            Opts::new(
                "chorus_http_connections_shed_total",
                "Connections closed or refused by the server's limits, by reason: evicted \
                 (idle, to make room at the cap), refused (at the cap, none idle), idle \
                 (nothing moved for HTTP_IDLE_TIMEOUT_SECS)",
            ),
            &["reason"],
        )?;
        self.registry.register(Box::new(open.clone()))?;
        self.registry.register(Box::new(max.clone()))?;
        self.registry.register(Box::new(closed.clone()))?;
        let mut last = [0u64; 3];
        self.refreshers.lock().push(Box::new(move || {
            let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            open.set(as_i64(stats.open.load(Relaxed)));
            max.set(as_i64(stats.max.load(Relaxed)));
            let now = [
                stats.evicted.load(Relaxed),
                stats.refused.load(Relaxed),
                stats.idle_closed.load(Relaxed),
            ];
            for (i, reason) in ["evicted", "refused", "idle"].iter().enumerate() {
                closed
                    .with_label_values(&[reason])
                    .inc_by(now[i].saturating_sub(last[i]));
            }
            last = now;
        }));
        Ok(())
    }

    /// A gauge vector in the shared registry (for other crates' live counts).
    pub fn gauge_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> prometheus::Result<IntGaugeVec> {
        let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
        self.registry.register(Box::new(g.clone()))?;
        Ok(g)
    }

    /// Wraps a router so every request is counted and timed by route template.
    pub fn instrument(&self, router: Router) -> Router {
        router.layer(middleware::from_fn_with_state(self.clone(), track_http))
    }

    /// The `/metrics` route, to merge into the main router or serve on its own port.
    pub fn routes(&self) -> Router {
        Router::new()
            .route("/metrics", get(scrape))
            .with_state(self.clone())
    }

    /// The registry in the Prometheus text format.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        for refresh in self.refreshers.lock().iter_mut() {
            refresh();
        }
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }
}

/// The `method` label: the standard methods by name, anything else a client invents
/// (`FOO`, random bytes) as `other`, so clients cannot grow the label set.
fn method_label(m: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

async fn track_http(State(t): State<Telemetry>, req: Request, next: Next) -> Response {
    // Unmatched paths (404s from scanners) share one label value.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = method_label(req.method());
    let start = Instant::now();
    let resp = next.run(req).await;
    t.http_duration
        .with_label_values(&[route.as_str(), method])
        .observe(start.elapsed().as_secs_f64());
    t.http_requests
        .with_label_values(&[route.as_str(), method, resp.status().as_str()])
        .inc();
    resp
}

async fn scrape(State(t): State<Telemetry>) -> Response {
    match t.render() {
        Ok(body) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "metrics encoding failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Method;
    use tower::ServiceExt;

    #[tokio::test]
    async fn invented_methods_share_the_other_label() {
        let t = Telemetry::new().expect("telemetry");
        let app = t.instrument(Router::new().route("/x", get(|| async { "ok" })));
        for m in ["GET", "FOO", "BAR", "X-RANDOM-1", "X-RANDOM-2"] {
            let req = Request::builder()
                .method(Method::from_bytes(m.as_bytes()).expect("method token"))
                .uri("/x")
                .body(Body::empty())
                .expect("request");
            app.clone().oneshot(req).await.expect("infallible");
        }
        let text = t.render().expect("render");
        let methods: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("chorus_http_requests_total{"))
            .filter_map(|l| l.split("method=\"").nth(1)?.split('"').next())
            .collect();
        assert!(methods.contains(&"GET"), "{text}");
        assert!(methods.contains(&"other"), "{text}");
        for m in methods {
            assert!(["GET", "other"].contains(&m), "unexpected method label {m}");
        }
        assert!(
            text.lines()
                .any(|l| l.starts_with("chorus_http_requests_total{")
                    && l.contains(r#"method="other""#)
                    && l.ends_with(" 4")),
            "the four invented methods are counted together: {text}"
        );
    }

    /// The value of one exposed series (`name{labels}`), or None.
    fn series(text: &str, name: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    #[tokio::test]
    async fn sfu_counters_are_the_sfus_totals_at_every_scrape() {
        let cfg = media::SfuConfig {
            bind: "127.0.0.1:0".parse().expect("addr"),
            threads: 1,
            ..media::SfuConfig::default()
        };
        let (sfu, _events) = media::Sfu::start(cfg).expect("sfu");
        let t = Telemetry::new().expect("telemetry");
        t.register_sfu(sfu.clone()).expect("register");
        // A datagram from nobody the SFU knows: received, and counted as an error.
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("socket");
        socket
            .send_to(b"not stun, not rtp", sfu.local_addr())
            .expect("send");
        let deadline = Instant::now() + Duration::from_secs(10);
        while sfu.stats().datagrams_received == 0 {
            assert!(Instant::now() < deadline, "the SFU never read the datagram");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for scrape in 0..2 {
            let text = t.render().expect("render");
            let received = r#"chorus_media_datagrams_total{direction="received"}"#;
            assert_eq!(
                series(&text, received),
                Some(1.0),
                "scrape {scrape}: {text}"
            );
            let errors: f64 = ["malformed", "unknown_source"]
                .iter()
                .filter_map(|k| {
                    series(
                        &text,
                        &format!(r#"chorus_media_errors_total{{kind="{k}"}}"#),
                    )
                })
                .sum();
            assert_eq!(errors, 1.0, "scrape {scrape}: {text}");
            for reason in [
                "muted",
                "not_publisher",
                "no_subscribers",
                "not_in_slot",
                "congestion",
            ] {
                let s = format!(r#"chorus_media_packets_dropped_total{{reason="{reason}"}}"#);
                assert_eq!(series(&text, &s), Some(0.0), "{s} missing: {text}");
            }
            assert_eq!(series(&text, "chorus_media_participants"), Some(0.0));
            assert_eq!(
                series(&text, "chorus_media_sender_reports_total"),
                Some(0.0)
            );
            assert_eq!(
                series(&text, "chorus_media_early_checks_held_total"),
                Some(0.0)
            );
            assert_eq!(series(&text, "chorus_media_busy_refusals_total"), Some(0.0));
            assert!(!text.contains("rtc_read"), "{text}");
        }
    }
}
