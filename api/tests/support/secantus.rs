//! A SecantusDB server (MongoDB wire protocol, from PyPI) for the MongoDB half of the
//! store contract suite: started from `scripts/secantus_server.py` in the venv that
//! `scripts/setup-test-deps` creates. A missing venv is a test failure that says how
//! to fix it, never a skip.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long a cold Python start (numpy, WiredTiger) may take on a busy 2-core machine.
const READY_DEADLINE: Duration = Duration::from_secs(90);

/// The workspace root: this file is compiled into the `api` crate's tests and, by
/// path, into the root crate's.
fn repo_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if manifest.join("scripts/secantus_server.py").exists() {
        return manifest;
    }
    manifest
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// `$CHORUS_SECANTUS_PYTHON`, else `<repo>/.venv/bin/python`.
fn python() -> PathBuf {
    match std::env::var_os("CHORUS_SECANTUS_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => repo_root().join(".venv/bin/python"),
    }
}

/// A running server; stopped (stdin closed, then killed if it lingers) on drop.
pub struct SecantusServer {
    child: Child,
    stdin: Option<ChildStdin>,
    port: u16,
}

impl SecantusServer {
    /// Starts a server on 127.0.0.1 with a free port and a temporary data directory,
    /// and waits until it accepts connections.
    pub fn start(ttl_sweep_seconds: f64) -> anyhow::Result<Self> {
        Self::start_with_python(&python(), ttl_sweep_seconds)
    }

    pub fn start_with_python(python: &Path, ttl_sweep_seconds: f64) -> anyhow::Result<Self> {
        Self::start_opts(python, 0, None, ttl_sweep_seconds)
    }

    /// A server on `port` (0: a free one) keeping its data in `storage` (default: a
    /// temporary directory of its own), so a test can kill it and start it again on
    /// the same port and data.
    pub fn start_at(port: u16, storage: &Path) -> anyhow::Result<Self> {
        Self::start_opts(&python(), port, Some(storage), 1.0)
    }

    fn start_opts(
        python: &Path,
        port: u16,
        storage: Option<&Path>,
        ttl_sweep_seconds: f64,
    ) -> anyhow::Result<Self> {
        if !python.exists() {
            bail!(
                "SecantusDB's Python ({}) does not exist. The MongoDB store tests need it: \
                 run `scripts/setup-test-deps` from the repository root (or point \
                 CHORUS_SECANTUS_PYTHON at a python with SecantusDB==0.7.0b3 installed).",
                python.display()
            );
        }
        let script = repo_root().join("scripts/secantus_server.py");
        let mut child = Command::new(python)
            .arg(&script)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--ttl-sweep-seconds", &ttl_sweep_seconds.to_string()])
            .args(
                storage
                    .map(|p| vec!["--storage-path".into(), p.as_os_str().to_owned()])
                    .unwrap_or_default(),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {} {}", python.display(), script.display()))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("child stdout")?;
        let mut stderr = child.stderr.take().context("child stderr")?;

        let (tx, rx) = mpsc::channel::<u16>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(port) = line
                    .strip_prefix("READY ")
                    .and_then(|p| p.trim().parse().ok())
                {
                    let _ = tx.send(port);
                }
            }
        });
        // Collected continuously so a chatty server never blocks on a full pipe; kept
        // for the error message if it dies before it is ready.
        let (etx, erx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let _ = etx.send(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        });

        let mut server = Self {
            child,
            stdin,
            port: 0,
        };
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(port) => {
                    server.port = port;
                    return Ok(server);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(status) = server.child.try_wait()? {
                        let err: String = erx.try_iter().collect();
                        bail!(
                            "SecantusDB exited ({status}) before it was ready. If the \
                             `secantus` module is missing, run `scripts/setup-test-deps`.\n\
                             stderr:\n{err}"
                        );
                    }
                    if Instant::now() > deadline {
                        let err: String = erx.try_iter().collect();
                        bail!("SecantusDB not ready within {READY_DEADLINE:?}; stderr:\n{err}");
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let _ = server.child.wait();
                    let err: String = erx.try_iter().collect();
                    bail!(
                        "SecantusDB closed its stdout before it was ready. If the `secantus` \
                         module is missing, run `scripts/setup-test-deps`.\nstderr:\n{err}"
                    );
                }
            }
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// SIGKILL, as a crash or the OOM killer would: no shutdown, no final checkpoint.
    pub fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    pub fn uri(&self) -> String {
        // A single server announcing a replica set: talk to it directly rather than
        // discovering members.
        format!("mongodb://127.0.0.1:{}/?directConnection=true", self.port)
    }
}

impl Drop for SecantusServer {
    fn drop(&mut self) {
        // EOF on stdin asks the launcher to stop cleanly (and remove its data dir).
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One server for the whole test binary (starting Python per test would dominate the
/// run time). It lives until the process exits, which closes its stdin and stops it.
/// TTL sweeps run every second so the TTL test finishes quickly.
pub fn shared() -> &'static SecantusServer {
    static SERVER: OnceLock<Result<SecantusServer, String>> = OnceLock::new();
    match SERVER.get_or_init(|| SecantusServer::start(1.0).map_err(|e| format!("{e:#}"))) {
        Ok(server) => server,
        Err(e) => panic!("cannot run the MongoDB store tests: {e}"),
    }
}
