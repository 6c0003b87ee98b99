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
    let target = Target {
        server_pid: Some(server.child.id()),
        ..target
    };
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
