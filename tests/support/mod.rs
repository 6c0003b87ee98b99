//! Shared harness for the root crate's integration tests: starts the real Chorus server
//! in-process on loopback (HTTP, `/ws`, the SFU's UDP socket, `/metrics`), mints access
//! tokens with the server's own JWT secret through the control plane's `TokenService`,
//! speaks plain HTTP/1.1 to it, and joins participants with the load-test client
//! (a real WebRTC peer on the async `webrtc` crate, real Opus).
//!
//! Every wait here is bounded; nothing sleeps to synchronise.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use api::auth::{JwtSecrets, TokenService};
use api::clock::SystemClock;
use api::store::UserId;
use chorus::{Config, Server};
use clap::Parser;
use loadtest::audio::{FRAME_SAMPLES, SAMPLE_RATE, SignalSource};
use loadtest::peer::PeerConfig;
use loadtest::protocol::ServerMessage;
use loadtest::session::{DEFAULT_WS_PATH, Session, SessionConfig, ws_url};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const ACCESS_SECRET: &str = "integration-test-access-secret-0123456789";
pub const REFRESH_SECRET: &str = "integration-test-refresh-secret-0123456789";

/// Bound on any single step a test waits for.
pub const STEP: Duration = Duration::from_secs(15);

/// Logs go to the test output when `RUST_LOG` is set.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_test_writer()
        .try_init();
}

/// A fresh, unique data directory under the system temp dir (removed on drop).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> anyhow::Result<Self> {
        static N: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "chorus-itest-{}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            rand_suffix()
        ));
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0)
}

/// The real server on loopback plus what tests need to talk to it.
pub struct TestServer {
    pub server: Option<Server>,
    pub base: String,
    pub ws: String,
    tokens: TokenService,
    _dir: TempDir,
}

impl TestServer {
    /// Starts Chorus with loopback sockets on OS-chosen ports, a temp data dir, known
    /// JWT secrets, and `extra` flags (e.g. `--resume-grace-secs 2`).
    pub async fn start(extra: &[&str]) -> anyhow::Result<Self> {
        init_logging();
        let dir = TempDir::new()?;
        let data_dir = dir.0.to_string_lossy().into_owned();
        let mut args = vec![
            "chorus",
            "--port",
            "0",
            "--host",
            "127.0.0.1",
            "--media-host",
            "127.0.0.1",
            "--media-port",
            "0",
            "--data-dir",
            &data_dir,
            "--insecure-cookies",
            "--jwt-access-token-secret",
            ACCESS_SECRET,
            "--jwt-refresh-token-secret",
            REFRESH_SECRET,
        ];
        args.extend_from_slice(extra);
        let cfg = Config::try_parse_from(args).context("test config")?;
        let server = chorus::start(cfg).await?;
        let base = format!("http://{}", server.http_addr);
        let ws = ws_url(&base, DEFAULT_WS_PATH);
        let tokens = TokenService::new(
            &JwtSecrets {
                access: ACCESS_SECRET.as_bytes().to_vec(),
                refresh: REFRESH_SECRET.as_bytes().to_vec(),
            },
            Arc::new(SystemClock),
        );
        Ok(Self {
            server: Some(server),
            base,
            ws,
            tokens,
            _dir: dir,
        })
    }

    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("server running")
    }

    /// An access token for `user` signed with the server's secret, valid for an hour.
    pub fn token(&self, user: &str) -> String {
        self.tokens
            .issue_access(
                &UserId::parse(user.to_owned()).expect("valid id"),
                None,
                time::OffsetDateTime::now_utc(),
                time::Duration::hours(1),
            )
            .expect("minting a token")
    }

    /// Creates a user through the store, as a first phone login does (no name yet);
    /// returns its id. `phone` must be unique per server.
    pub async fn new_user(&self, phone: &str) -> anyhow::Result<String> {
        let user = self
            .server()
            .store
            .find_or_create_user(phone, time::OffsetDateTime::now_utc())
            .await?;
        Ok(user.id.into_string())
    }

    /// A user who logged in and set their name (`POST /api/activate`); returns its id.
    pub async fn activated_user(&self, phone: &str, name: &str) -> anyhow::Result<String> {
        let id = self.new_user(phone).await?;
        self.server()
            .store
            .activate_user(&UserId::parse(id.clone()).expect("valid id"), name, None)
            .await?;
        Ok(id)
    }

    /// Creates a room through `POST /api/rooms` as `owner`; returns its id.
    pub async fn create_room(&self, owner: &str, room_type: &str) -> anyhow::Result<String> {
        let body = serde_json::json!({ "topic": "integration", "roomType": room_type });
        let r = self
            .http(
                "POST",
                "/api/rooms",
                Some(&self.token(owner)),
                Some(&body.to_string()),
            )
            .await?;
        if r.status != 201 {
            bail!("create room: {} {}", r.status, r.body);
        }
        let id = r.json()?["id"]
            .as_str()
            .context("room id in the response")?
            .to_owned();
        Ok(id)
    }

    /// One HTTP/1.1 request (`Connection: close`), bounded by [`STEP`].
    pub async fn http(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        json_body: Option<&str>,
    ) -> anyhow::Result<HttpResponse> {
        http(self.server().http_addr, method, path, bearer, json_body).await
    }

    /// A participant with default options (see [`Joiner`]).
    pub fn joiner(&self, user: &str, room: &str) -> Joiner {
        Joiner::new(self, user, room)
    }

    /// Stops the server (bounded).
    pub async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            let _ = tokio::time::timeout(STEP, s.shutdown()).await;
        }
    }

    /// The current `/metrics` text.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let r = self.http("GET", "/metrics", None, None).await?;
        anyhow::ensure!(r.status == 200, "/metrics: {}", r.status);
        Ok(r.body)
    }
}

/// Builder for a [`Session`] against a [`TestServer`].
pub struct Joiner {
    cfg: SessionConfig,
}

impl Joiner {
    fn new(s: &TestServer, user: &str, room: &str) -> Self {
        let mut cfg = SessionConfig::new(s.ws.clone(), s.token(user), room);
        cfg.step_timeout = STEP;
        cfg.peer = PeerConfig::default();
        Self { cfg }
    }

    pub fn speaking(mut self, source: impl SignalSource + 'static) -> Self {
        self.cfg.publish = Some(Box::new(source));
        self
    }

    pub fn decoding(mut self) -> Self {
        self.cfg.peer.decode = true;
        self
    }

    pub fn no_call(mut self) -> Self {
        self.cfg.join_call = false;
        self
    }

    pub async fn connect(self) -> anyhow::Result<Session> {
        let room = self.cfg.room_id.clone();
        Session::connect(self.cfg)
            .await
            .with_context(|| format!("joining room {room}"))
    }
}

/// A received HTTP response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_str(&self.body).with_context(|| format!("JSON body: {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Minimal HTTP/1.1 client: one request per connection, the whole response read until
/// the server closes (chunked bodies are de-chunked).
pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    json_body: Option<&str>,
) -> anyhow::Result<HttpResponse> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        if let Some(t) = bearer {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        let body = json_body.unwrap_or("");
        if json_body.is_some() {
            req.push_str("Content-Type: application/json\r\n");
        }
        req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        s.write_all(req.as_bytes()).await?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await?;
        parse_response(&raw)
    };
    tokio::time::timeout(STEP, fut)
        .await
        .with_context(|| format!("{method} {path} timed out"))?
}

fn parse_response(raw: &[u8]) -> anyhow::Result<HttpResponse> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers")?;
    let head = std::str::from_utf8(&raw[..split])?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().context("no status line")?;
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .context("no status code")?
        .parse()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        body = dechunk(&body)?;
    }
    Ok(HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut b: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("chunk size line")?;
        let size_str = std::str::from_utf8(&b[..eol])?;
        let size = usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16)?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        anyhow::ensure!(b.len() >= size + 2, "truncated chunk");
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// Polls `cond` every 20 ms until it returns `Some`, or fails after `deadline` with
/// `what` (and the last value `describe` gives, for the failure message).
pub async fn eventually<T>(
    deadline: Duration,
    what: &str,
    mut cond: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(t) = cond() {
            return Ok(t);
        }
        if tokio::time::Instant::now() >= end {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Like [`eventually`] with an async condition.
pub async fn eventually_async<T, F: Future<Output = Option<T>>>(
    deadline: Duration,
    what: &str,
    mut cond: impl FnMut() -> F,
) -> anyhow::Result<T> {
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(t) = cond().await {
            return Ok(t);
        }
        if tokio::time::Instant::now() >= end {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for the next server message `pick` accepts on `s` (others skipped).
pub async fn expect_event<T>(
    s: &mut Session,
    what: &str,
    pick: impl FnMut(&ServerMessage) -> Option<T>,
) -> anyhow::Result<T> {
    s.wait_event(STEP, pick)
        .await
        .with_context(|| format!("waiting for {what}"))
}

/// A sine tone whose amplitude can be changed while it plays (the speaker "gets louder").
pub struct AdjustableTone {
    freq: f64,
    phase: f64,
    amplitude: Arc<AtomicU64>,
}

impl AdjustableTone {
    /// The tone and a handle that sets its amplitude (0..=1).
    pub fn new(freq: f64, amplitude: f64) -> (Self, Volume) {
        let a = Arc::new(AtomicU64::new(amplitude.to_bits()));
        (
            Self {
                freq,
                phase: 0.0,
                amplitude: a.clone(),
            },
            Volume(a),
        )
    }
}

#[derive(Clone)]
pub struct Volume(Arc<AtomicU64>);

impl Volume {
    pub fn set(&self, amplitude: f64) {
        self.0.store(amplitude.to_bits(), Ordering::Relaxed);
    }
}

impl SignalSource for AdjustableTone {
    fn fill(&mut self, out: &mut [i16]) {
        debug_assert_eq!(out.len(), FRAME_SAMPLES);
        let amp = f64::from_bits(self.amplitude.load(Ordering::Relaxed)).clamp(0.0, 1.0);
        for s in out {
            let v = (self.phase * std::f64::consts::TAU).sin() * amp;
            self.phase = (self.phase + self.freq / f64::from(SAMPLE_RATE)).fract();
            *s = (v * f64::from(i16::MAX)) as i16;
        }
    }
}

/// Reads one sample's value from Prometheus text (`name{labels}` exactly as written,
/// or a bare name); 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            (k == series).then(|| v.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// The `chorus` binary as a child process (for what an in-process server cannot show:
/// its own file-descriptor limit, its log), on loopback ports chosen by the OS. Killed
/// on drop.
pub struct ChildServer {
    child: std::process::Child,
    pub addr: std::net::SocketAddr,
    /// Every line it logged so far (text format, no colours).
    pub log: Arc<parking_lot::Mutex<Vec<String>>>,
}

impl ChildServer {
    /// Starts it with `extra` flags, at most `open_files` file descriptors (soft and
    /// hard) if given, and `dir` as data dir; returns once it logs that it listens.
    pub fn start(open_files: Option<u32>, extra: &[&str], dir: &TempDir) -> anyhow::Result<Self> {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let limit = open_files.map_or(String::new(), |n| format!("ulimit -n {n} && "));
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("{limit}exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_chorus"))
            .args(["--port", "0", "--host", "127.0.0.1"])
            .args(["--media-port", "0", "--media-host", "127.0.0.1"])
            .arg("--data-dir")
            .arg(&dir.0)
            .args(extra)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("LOG_FORMAT")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().context("piped stdout")?;
        let log = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        // Reads until the child exits (EOF), so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if line.contains("chorus listening") {
                    let _ = tx.send(line.clone());
                }
                sink.lock().push(line);
            }
        });
        let mut server = Self {
            child,
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
        };
        let line = rx
            .recv_timeout(STEP)
            .context("the server did not log `chorus listening`")?;
        server.addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .context("addr= in the listening line")?
            .parse()?;
        Ok(server)
    }

    /// The server's process id (the shell started it with `exec`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Logs in `phone` with the code the development SMS sender logged; returns the
    /// access token.
    pub async fn login(&self, phone: &str) -> anyhow::Result<String> {
        let sent = http(
            self.addr,
            "POST",
            "/api/send-otp",
            None,
            Some(&serde_json::json!({ "phone": phone }).to_string()),
        )
        .await?;
        anyhow::ensure!(
            sent.status == 200,
            "send-otp: {} {}",
            sent.status,
            sent.body
        );
        let hash = sent.json()?["hash"].as_str().context("hash")?.to_owned();
        let code = eventually(STEP, "the login code in the log", || {
            self.log.lock().iter().rev().find_map(|l| {
                if !l.contains("DEVELOPMENT SMS") || !l.contains(phone) {
                    return None;
                }
                // After `body=`: the timestamp's fraction can have six digits too.
                let (_, body) = l.split_once("body=")?;
                body.split(|c: char| !c.is_ascii_digit())
                    .find(|w| w.len() == 6)
                    .map(str::to_owned)
            })
        })
        .await?;
        let body =
            serde_json::json!({ "phone": phone, "hash": hash, "otp": code, "tokenInBody": true });
        let r = http(
            self.addr,
            "POST",
            "/api/verify-otp",
            None,
            Some(&body.to_string()),
        )
        .await?;
        anyhow::ensure!(r.status == 200, "verify-otp: {} {}", r.status, r.body);
        Ok(r.json()?["accessToken"]
            .as_str()
            .context("accessToken")?
            .to_owned())
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
