//! The load-test harness against the real `chorus` binary, spawned on loopback:
//! the `smoke` scenario (1 room, 2 speakers, 10 listeners, 10 s) must deliver at least
//! 99% of what the speakers send, and the phone-login token path must work end to end
//! with the code read from the server's log.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use loadtest::harness::{NoProgress, Scenario, Target, TokenSource, run_scenario};

const SECRET: &str = "loadtest-smoke-secret-0123456789abcdef";

/// One load run at a time: on a 2-core machine concurrent runs would measure each other.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A `chorus` process with its log in a file; killed on drop.
struct Spawned {
    child: Child,
    url: String,
    log: PathBuf,
    dir: PathBuf,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn spawn_server(extra_env: &[(&str, &str)]) -> Spawned {
    let dir = std::env::temp_dir().join(format!(
        "chorus-lt-smoke-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("temp dir: {e}"));
    let log = dir.join("server.log");
    let out = std::fs::File::create(&log).unwrap_or_else(|e| panic!("log file: {e}"));
    let err = out.try_clone().unwrap_or_else(|e| panic!("log file: {e}"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chorus"));
    cmd.current_dir(&dir)
        .env_remove("MONGO_URI")
        .env_remove("DB_URL")
        .env_remove("METRICS_PORT")
        .env("RUST_LOG", "info")
        .env("LOG_FORMAT", "json")
        .args(["--host", "127.0.0.1", "--port", "0"])
        .args(["--media-host", "127.0.0.1", "--media-port", "0"])
        .args(["--data-dir", "data", "--jwt-access-token-secret", SECRET])
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn chorus: {e}"));
    let mut s = Spawned {
        child,
        url: String::new(),
        log,
        dir,
    };
    // The HTTP address is in the "chorus listening" log line (port 0 = chosen by the OS).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(&s.log).unwrap_or_default();
        if let Some(addr) = text
            .lines()
            .filter(|l| l.contains("chorus listening"))
            .find_map(|l| {
                let rest = &l[l.find("\"addr\":\"")? + 8..];
                Some(rest[..rest.find('"')?].to_owned())
            })
        {
            s.url = format!("http://{addr}");
            return s;
        }
        if let Ok(Some(status)) = s.child.try_wait() {
            panic!("chorus exited ({status}) before listening:\n{text}");
        }
        assert!(Instant::now() < deadline, "chorus did not start:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_scenario_delivers_at_least_99_percent_through_the_real_server() {
    let _serial = SERIAL.lock().await;
    let server = spawn_server(&[]);
    let target = Target::new(
        &server.url,
        false,
        TokenSource::Mint {
            secret: SECRET.as_bytes().to_vec(),
            ttl: Duration::from_secs(600),
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    // Same machine: the server's CPU is read from /proc with 10 ms resolution.
    let target = target
        .with_server_pids(&[server.child.id()])
        .unwrap_or_else(|e| panic!("{e}"));
    let sc = Scenario::smoke();
    let report = tokio::time::timeout(
        Duration::from_secs(180),
        run_scenario(&target, &sc, &NoProgress),
    )
    .await
    .unwrap_or_else(|_| panic!("smoke run did not finish in 3 minutes"))
    .unwrap_or_else(|e| panic!("smoke run failed: {e}"));
    println!("{}", loadtest::harness::render_table(&report));
    let step = report
        .steps
        .first()
        .unwrap_or_else(|| panic!("no step measured"));
    assert_eq!(
        step.joins.failures, 0,
        "join errors: {:?}",
        step.joins.errors
    );
    assert_eq!(step.listeners_live, 10);
    // 10 listeners x 2 speakers x 50 packets/s x 10 s is 10,000; allow for the sampler's edges.
    assert!(
        step.expected >= 8_000,
        "only {} packets expected",
        step.expected
    );
    let delivered = step.delivered.unwrap_or(0.0);
    assert!(
        delivered >= 0.99,
        "delivered {:.3}% < 99%",
        delivered * 100.0
    );
    assert!(step.latency_ms.p50.is_some(), "no latency measured");
    assert_eq!(step.joins.count, 10, "every listener must have heard audio");
    // The server's own figures were read from /metrics.
    let fwd = step.server.packets_forwarded.unwrap_or(0.0);
    assert!(
        fwd >= step.received as f64 * 0.9,
        "server forwarded {fwd}, listeners got {}",
        step.received
    );
    assert_eq!(step.server.cpu_source, "proc");
    assert!(
        step.server
            .cpu_us_per_forwarded_packet
            .is_some_and(|us| us > 0.0),
        "{:?}",
        step.server
    );
    assert!(step.harness_cpu_seconds.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phone_login_tokens_come_from_the_code_in_the_server_log() {
    let _serial = SERIAL.lock().await;
    let server = spawn_server(&[]);
    let target = Target::new(
        &server.url,
        false,
        TokenSource::Login {
            otp_log: server.log.clone(),
            phone_base: 15_550_123_000,
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let sc = Scenario {
        name: "login".into(),
        speakers: 1,
        listeners: 2,
        duration: Duration::from_secs(2),
        settle: Duration::from_millis(500),
        ..Scenario::smoke()
    };
    let report = tokio::time::timeout(
        Duration::from_secs(120),
        run_scenario(&target, &sc, &NoProgress),
    )
    .await
    .unwrap_or_else(|_| panic!("login run did not finish"))
    .unwrap_or_else(|e| panic!("login run failed: {e}"));
    let step = report.steps.first().unwrap_or_else(|| panic!("no step"));
    assert_eq!(step.joins.failures, 0, "{:?}", step.joins.errors);
    assert_eq!(step.listeners_live, 2);
    assert!(step.received > 0, "logged-in listeners heard nothing");
    // Real users were created by verify-otp: the log shows three codes sent.
    let log = std::fs::read_to_string(&server.log).unwrap_or_default();
    assert_eq!(log.matches("Your Chorus code is").count(), 3, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speaker_turns_and_listener_churn_keep_delivery_with_more_speakers_than_slots() {
    let _serial = SERIAL.lock().await;
    let server = spawn_server(&[]);
    let target = Target::new(
        &server.url,
        false,
        TokenSource::Mint {
            secret: SECRET.as_bytes().to_vec(),
            ttl: Duration::from_secs(600),
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    // 4 speakers, 3 slots: only 2 talk at a time, rotating every 2 s; half the
    // listeners leave and rejoin during the window.
    let sc = Scenario {
        name: "turns-churn".into(),
        speakers: 4,
        listeners: 6,
        duration: Duration::from_secs(8),
        settle: Duration::from_secs(1),
        turns: Some(loadtest::harness::Turns {
            count: 2,
            period: Duration::from_secs(2),
        }),
        churn: 0.5,
        ..Scenario::smoke()
    };
    let report = tokio::time::timeout(
        Duration::from_secs(180),
        run_scenario(&target, &sc, &NoProgress),
    )
    .await
    .unwrap_or_else(|_| panic!("run did not finish"))
    .unwrap_or_else(|e| panic!("run failed: {e}"));
    println!("{}", loadtest::harness::render_table(&report));
    let step = report
        .steps
        .first()
        .unwrap_or_else(|| panic!("no step measured"));
    assert_eq!(step.joins.failures, 0, "{:?}", step.joins.errors);
    // 6 initial joins + 3 rejoins, every one of them heard audio.
    assert_eq!(step.joins.count, 9, "{:?}", step.joins);
    assert_eq!(step.listeners_live, 6);
    let delivered = step.delivered.unwrap_or(0.0);
    assert!(delivered >= 0.99, "delivered {:.3}%", delivered * 100.0);
    assert!(step.expected >= 1_000, "only {} expected", step.expected);
    // Turns: every speaker talked at some point, but together they sent clearly less
    // than four nonstop speakers would have.
    let sent = &step.speaker_packets_sent;
    assert_eq!(sent.len(), 4);
    assert!(sent.iter().all(|n| *n > 0), "{sent:?}");
    let nonstop = 4.0 * 50.0 * step.window_secs;
    assert!(
        (sent.iter().sum::<u64>() as f64) < 0.75 * nonstop,
        "{sent:?} vs {nonstop}"
    );
}

/// Polls `cond` every 20 ms until it holds or `within` passes.
async fn until(within: Duration, what: &str, mut cond: impl FnMut() -> bool) -> anyhow::Result<()> {
    let end = tokio::time::Instant::now() + within;
    while !cond() {
        anyhow::ensure!(
            tokio::time::Instant::now() < end,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// The rtc listener without the send-time registry, so every packet is attributed by the
/// slot map alone: with one audio slot, the slot switches from the first speaker (440 Hz)
/// to the second (660 Hz); each speaker's decoded audio must be its own tone, and the
/// listener must keep hearing after an ICE restart it answers itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtc_listener_follows_a_slot_switch_by_the_slot_map_and_survives_an_ice_restart()
-> anyhow::Result<()> {
    use loadtest::audio::{SAMPLE_RATE, Tone, dominant_frequency};
    use loadtest::peer::PeerConfig;
    use loadtest::protocol::{ClientMessage, Role};
    use loadtest::registry::SendRegistry;
    use loadtest::session::{Engine, Session, SessionConfig};
    use std::sync::Arc;

    const WAIT: Duration = Duration::from_secs(20);
    let _serial = SERIAL.lock().await;
    let server = spawn_server(&[("AUDIO_SLOTS", "1")]);
    let target = Target::new(
        &server.url,
        false,
        TokenSource::Mint {
            secret: SECRET.as_bytes().to_vec(),
            ttl: Duration::from_secs(600),
        },
    )
    .await?;
    let owner_token = target.tokens.token().await?;
    let created = loadtest::harness::http::request(
        target.first().addr,
        &target.first().base.host,
        "POST",
        "/api/rooms",
        Some(&owner_token),
        Some(&serde_json::json!({ "topic": "rtc listener", "roomType": "open" })),
        Duration::from_secs(10),
    )
    .await?;
    anyhow::ensure!(created.status == 201, "create room: {}", created.text());
    let room = created.json::<serde_json::Value>()?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    // Speakers record what they send (for their own counts); the listener does not
    // look at the registry.
    let registry = Arc::new(SendRegistry::default());
    let speaker_peer = PeerConfig {
        registry: Some(registry.clone()),
        ..PeerConfig::default()
    };
    let mut cfg = SessionConfig::new(&target.first().ws_url, owner_token, &room)
        .speaking(Tone::new(440.0, 0.5));
    cfg.peer = speaker_peer.clone();
    let a = Session::connect(cfg).await?;
    let a_id = a.participant_id().ok_or_else(|| anyhow::anyhow!("no id"))?;

    let mut cfg = SessionConfig::new(&target.first().ws_url, target.tokens.token().await?, &room);
    cfg.peer = speaker_peer;
    let b = Session::connect(cfg).await?;
    let b_id = b.participant_id().ok_or_else(|| anyhow::anyhow!("no id"))?;
    a.send(&ClientMessage::SetRole {
        participant_id: b_id,
        role: Role::Speaker,
    })
    .await?;
    until(WAIT, "the promotion", || {
        b.me().is_some_and(|m| m.role == Role::Speaker)
            && b.peer().is_some_and(|p| p.send_params().is_some())
    })
    .await?;
    b.unmute().await?;

    let mut cfg = SessionConfig::new(&target.first().ws_url, target.tokens.token().await?, &room);
    cfg.engine = Engine::Rtc;
    cfg.peer = PeerConfig {
        registry: None,
        decode: true,
        ..PeerConfig::default()
    };
    let l = Session::connect(cfg).await?;
    let media = l
        .media()
        .ok_or_else(|| anyhow::anyhow!("listener not in the call"))?;
    let rx = media
        .rtc()
        .ok_or_else(|| anyhow::anyhow!("not the rtc engine"))?;
    assert!(l.peer().is_none());

    // The first speaker fills the only slot.
    until(WAIT, "a second of the first speaker", || {
        l.slots() == vec![Some(a_id)] && rx.packets_from(a_id) >= 50
    })
    .await?;
    let f = dominant_frequency(&rx.source_pcm(a_id), SAMPLE_RATE);
    assert!(
        f.is_some_and(|f| (f - 440.0).abs() < 15.0),
        "first speaker heard at {f:?}"
    );

    // The first speaker falls silent, the second talks: the slot switches.
    a.stop_publishing();
    b.start_publishing(Box::new(Tone::new(660.0, 0.5))).await?;
    until(WAIT, "the slot to switch to the second speaker", || {
        l.slots() == vec![Some(b_id)] && rx.packets_from(b_id) >= 100
    })
    .await?;
    let f = dominant_frequency(&rx.source_pcm(b_id), SAMPLE_RATE);
    assert!(
        f.is_some_and(|f| (f - 660.0).abs() < 15.0),
        "second speaker heard at {f:?}"
    );
    let snap = rx.snapshot();
    assert_eq!(snap.slots.len(), 1, "{:?}", snap.slots);
    assert_eq!(snap.slots[0].source, Some(b_id));
    assert_eq!(snap.unknown_mid_packets, 0);
    // One slot, one SSRC: the switch is not a sequence gap.
    let slot = &snap.slots[0].stats;
    assert!(slot.lost <= 2, "slot lost {} packets", slot.lost);

    // Delivery of the second speaker over a window, by the slot map alone.
    let (sent0, got0) = (registry.sent_count(b_id), rx.packets_from(b_id));
    until(WAIT, "two more seconds of the second speaker", || {
        registry.sent_count(b_id) >= sent0 + 100
    })
    .await?;
    let sent1 = registry.sent_count(b_id);
    until(Duration::from_secs(2), "packets in flight", || {
        rx.packets_from(b_id) - got0 >= (sent1 - sent0) * 99 / 100
    })
    .await?;

    // ICE restart: the server offers new credentials, the rtc listener answers.
    let answered = l.offers_answered();
    l.restart_ice().await?;
    until(WAIT, "the ICE restart to be answered", || {
        l.offers_answered() > answered
    })
    .await?;
    let got = rx.packets_from(b_id);
    until(WAIT, "audio after the ICE restart", || {
        rx.packets_from(b_id) >= got + 100
    })
    .await?;
    assert_eq!(l.last_error(), None);
    assert_eq!(
        rx.connection_state(),
        loadtest::listener::RTCPeerConnectionState::Connected
    );
    assert_eq!(
        rx.counters()
            .read_errors
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );

    l.leave().await;
    b.leave().await;
    a.leave().await;
    Ok(())
}
