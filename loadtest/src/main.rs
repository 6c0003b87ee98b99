//! `chorus-loadtest`: loads a running Chorus server over the wire (HTTP, WebSocket,
//! WebRTC) and reports delivery, latency, joins and the server's CPU per forwarded
//! packet and memory per participant. See `chorus-loadtest --help` and
//! loadtest/README.md.

use anyhow::Context;
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use loadtest::harness::{
    NoProgress, Progress, RunReport, Scenario, Target, TokenSource, Turns, render_table,
    run_scenario,
};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "chorus-loadtest",
    version,
    about = "Load-test a Chorus server over the wire: real WebSocket signaling and WebRTC audio",
    after_help = "Presets: smoke (1 room, 2 speakers, 10 listeners, 10 s), \
ramp (1 room, 1 speaker, +50 listeners per 10 s step until delivery < 99% or p99 > 100 ms), \
rooms (10 rooms x 2 speakers x 20 listeners, 30 s), big (1 room, 10 speakers, 100 listeners, 30 s). \
Scenario flags override the preset's values.\n\n\
Clusters: --url http://127.0.0.1:5601,http://127.0.0.1:5602 (or --url repeated) loads one \
set of rooms over several nodes sharing a Redis and a store: rooms are created through the \
first node, listeners go round-robin over all nodes, speakers to the first node unless \
--spread-speakers; give --server-pid once per URL, in the same order.\n\n\
Tokens: --jwt-secret (or --jwt-secret-file DATA_DIR/jwt_access_token.secret) mints access \
tokens like the server does; --login --otp-from-log FILE logs in by phone, reading each code \
from the server's development log (raise the server's OTP_* rate limits for more than a few \
participants)."
)]
struct Cli {
    /// Server base URL (plain HTTP). Several (repeated, or comma-separated) for the nodes
    /// of a cluster: rooms are created through the first, listeners are spread over all
    /// of them round-robin, speakers join the first (see --spread-speakers), and the
    /// server figures are summed over the nodes and reported per node.
    #[arg(
        long = "url",
        value_name = "URL",
        env = "CHORUS_URL",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:5500"
    )]
    urls: Vec<String>,
    /// With several --url: speakers too are spread round-robin over the nodes (speaker
    /// s of a room on node s mod n) instead of all joining the first.
    #[arg(long)]
    spread_speakers: bool,
    /// Allow a target that is not a loopback address.
    #[arg(long)]
    allow_remote: bool,
    /// Scenario preset(s) to run, in order: smoke, ramp, rooms, big, custom.
    #[arg(long = "preset", value_name = "NAME")]
    presets: Vec<String>,

    /// Rooms.
    #[arg(long)]
    rooms: Option<usize>,
    /// Speakers per room (the first is the room's owner; the others are promoted).
    #[arg(long)]
    speakers: Option<usize>,
    /// Listeners per room (a ramp's first step).
    #[arg(long)]
    listeners: Option<usize>,
    /// Measured window (per ramp step), seconds.
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// Joins per second (token bucket over the whole run).
    #[arg(long, value_name = "PER_SEC")]
    join_rate: Option<f64>,
    /// Pause after the last join before measuring, seconds.
    #[arg(long, value_name = "SECS")]
    settle: Option<f64>,
    /// Only this many speakers per room talk at a time (others silent: DTX).
    #[arg(long, value_name = "N")]
    speaker_turns: Option<usize>,
    /// How often the talking speakers rotate, seconds (with --speaker-turns).
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    turn_period: f64,
    /// Fraction of listeners that leave and rejoin during the window (0..=1).
    #[arg(long)]
    churn: Option<f64>,
    /// Fraction of time each speaker pauses (0 = talks nonstop, max 0.9).
    #[arg(long)]
    pause_ratio: Option<f64>,
    /// Ramp: listeners added per step.
    #[arg(long)]
    ramp_step: Option<usize>,
    /// Ramp: stop after this many listeners.
    #[arg(long)]
    ramp_max: Option<usize>,
    /// Run NACK and RTCP-report interceptors in every client, as browsers do (more harness CPU).
    #[arg(long)]
    interceptors: bool,
    /// Client the listeners run on: rtc (the sans-I/O core, one task and socket per
    /// listener, a fraction of the CPU per packet) or webrtc (the async API, as the
    /// speakers use). Speakers always run on webrtc.
    #[arg(long, value_name = "ENGINE", default_value = "rtc")]
    listener_engine: loadtest::session::Engine,

    /// The server's JWT_ACCESS_TOKEN_SECRET, to mint access tokens.
    #[arg(long, env = "CHORUS_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// File holding the secret (the server keeps a generated one in DATA_DIR/jwt_access_token.secret).
    #[arg(long, value_name = "PATH")]
    jwt_secret_file: Option<PathBuf>,
    /// Log in by phone (send-otp / verify-otp) instead of minting tokens.
    #[arg(long, requires = "otp_from_log")]
    login: bool,
    /// The server's log file, where the development SMS sender writes the codes.
    #[arg(long, value_name = "FILE")]
    otp_from_log: Option<PathBuf>,
    /// First phone number used by --login (E.164 digits without '+'); one per participant.
    #[arg(long, default_value_t = 15_550_100_000)]
    phone_base: u64,
    /// Access-token lifetime when minting, seconds.
    #[arg(long, default_value_t = 3600)]
    token_ttl: u64,

    /// The server's process id, when it runs on this machine: its CPU and RSS are then
    /// read from /proc/<pid> (10 ms resolution) rather than from /metrics
    /// (`chorus_process_cpu_seconds_total`, microseconds; whole seconds on old servers).
    /// With several --url, one pid per URL in the same order (repeated or
    /// comma-separated).
    #[arg(long = "server-pid", value_name = "PID", value_delimiter = ',')]
    server_pids: Vec<u32>,
    /// Path of the server's Prometheus page.
    #[arg(long, default_value = "/metrics")]
    metrics_path: String,
    /// Write the JSON report to FILE, or to stdout with no FILE (the table goes to stderr then).
    #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "-")]
    json: Option<String>,
    /// Exit with status 2 if any scenario delivers less than this fraction (e.g. 0.99).
    #[arg(long)]
    min_delivery: Option<f64>,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

impl Cli {
    fn scenarios(&self) -> anyhow::Result<Vec<Scenario>> {
        let names = if self.presets.is_empty() {
            vec!["custom".to_owned()]
        } else {
            self.presets.clone()
        };
        let secs = |v: f64, what: &str| -> anyhow::Result<Duration> {
            Duration::try_from_secs_f64(v).map_err(|_| anyhow::anyhow!("{what}: bad duration {v}"))
        };
        names
            .iter()
            .map(|n| {
                let mut s = Scenario::preset(n)?;
                if let Some(v) = self.rooms {
                    s.rooms = v;
                }
                if let Some(v) = self.speakers {
                    s.speakers = v;
                }
                if let Some(v) = self.listeners {
                    s.listeners = v;
                    if let Some(r) = s.ramp.as_mut() {
                        r.start = v;
                    }
                }
                if let Some(v) = self.duration {
                    s.duration = secs(v, "--duration")?;
                }
                if let Some(v) = self.join_rate {
                    s.join_rate = v;
                }
                if let Some(v) = self.settle {
                    s.settle = secs(v, "--settle")?;
                }
                if let Some(n) = self.speaker_turns {
                    s.turns = Some(Turns {
                        count: n,
                        period: secs(self.turn_period, "--turn-period")?,
                    });
                }
                if let Some(v) = self.churn {
                    s.churn = v;
                }
                if let Some(v) = self.pause_ratio {
                    s.pause_ratio = v;
                }
                if let Some(r) = s.ramp.as_mut() {
                    if let Some(v) = self.ramp_step {
                        r.step = v;
                    }
                    if let Some(v) = self.ramp_max {
                        r.max = v;
                    }
                }
                s.interceptors |= self.interceptors;
                s.listener_engine = self.listener_engine;
                s.validate()?;
                Ok(s)
            })
            .collect()
    }

    fn token_source(&self) -> anyhow::Result<TokenSource> {
        if self.login {
            let log = self
                .otp_from_log
                .clone()
                .context("--login needs --otp-from-log FILE")?;
            return Ok(TokenSource::Login {
                otp_log: log,
                phone_base: self.phone_base,
            });
        }
        let secret = match (&self.jwt_secret, &self.jwt_secret_file) {
            (Some(s), _) => s.trim().to_owned(),
            (None, Some(p)) => std::fs::read_to_string(p)
                .with_context(|| format!("reading {}", p.display()))?
                .trim()
                .to_owned(),
            (None, None) => anyhow::bail!(
                "no way to get tokens: pass --jwt-secret (the server's JWT_ACCESS_TOKEN_SECRET), \
                 --jwt-secret-file, or --login --otp-from-log FILE"
            ),
        };
        anyhow::ensure!(!secret.is_empty(), "the JWT secret is empty");
        Ok(TokenSource::Mint {
            secret: secret.into_bytes(),
            ttl: Duration::from_secs(self.token_ttl.max(60)),
        })
    }
}

/// The progress bar (stderr; hidden when stderr is not a terminal).
struct Bar(ProgressBar);

impl Progress for Bar {
    fn phase(&self, what: &str, total: u64) {
        self.0.set_length(total);
        self.0.set_position(0);
        self.0.set_prefix(what.to_owned());
    }
    fn set(&self, done: u64, message: &str) {
        self.0.set_position(done);
        self.0.set_message(message.to_owned());
    }
}

fn main() -> std::process::ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("warn,rtc=error,rtc_ice=error,webrtc=off")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(2),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

/// Runs every scenario; Ok(false) when `--min-delivery` was missed.
async fn run(cli: Cli) -> anyhow::Result<bool> {
    if let Some(m) = cli.min_delivery {
        anyhow::ensure!(
            (0.0..=1.0).contains(&m),
            "--min-delivery must be within 0..=1"
        );
    }
    let scenarios = cli.scenarios()?;
    let urls: Vec<&str> = cli.urls.iter().map(String::as_str).collect();
    let target = Target::cluster(&urls, cli.allow_remote, cli.token_source()?)
        .await?
        .with_server_pids(&cli.server_pids)?;
    let target = Target {
        metrics_path: cli.metrics_path.clone(),
        spread_speakers: cli.spread_speakers,
        ..target
    };
    let json_to_stdout = cli.json.as_deref() == Some("-");
    let mut reports = Vec::new();
    let mut passed = true;
    for sc in scenarios {
        let bar = if cli.quiet {
            None
        } else {
            let b = ProgressBar::new(0);
            b.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {prefix:>18} {wide_bar} {pos}/{len} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            b.enable_steady_tick(Duration::from_millis(200));
            Some(Bar(b))
        };
        let progress: &dyn Progress = match &bar {
            Some(b) => b,
            None => &NoProgress,
        };
        let report = run_scenario(&target, &sc, progress)
            .await
            .with_context(|| format!("scenario {}", sc.name))?;
        if let Some(b) = &bar {
            b.0.finish_and_clear();
        }
        let table = render_table(&report);
        if json_to_stdout {
            eprint!("{table}");
        } else {
            print!("{table}");
        }
        if let Some(min) = cli.min_delivery {
            // A ramp is meant to find its limit: judge its first step only.
            let judged = if sc.ramp.is_some() {
                report.steps.first().into_iter().collect::<Vec<_>>()
            } else {
                report.steps.iter().collect()
            };
            let ok =
                !judged.is_empty() && judged.iter().all(|s| s.delivered.is_some_and(|d| d >= min));
            if !ok {
                eprintln!(
                    "FAIL: scenario {} delivered below {:.2}%",
                    sc.name,
                    min * 100.0
                );
                passed = false;
            }
        }
        reports.push(report);
    }
    let full = RunReport {
        url: cli.urls.join(","),
        scenarios: reports,
        min_delivery: cli.min_delivery,
        passed,
    };
    if let Some(dest) = &cli.json {
        let json = serde_json::to_string_pretty(&full)?;
        if dest == "-" {
            println!("{json}");
        } else {
            std::fs::write(dest, json).with_context(|| format!("writing {dest}"))?;
        }
    }
    Ok(passed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_url_stays_the_default_and_several_are_read_repeated_or_comma_separated() {
        let one = Cli::try_parse_from(["chorus-loadtest", "--url", "http://127.0.0.1:5603"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(one.urls, ["http://127.0.0.1:5603"]);
        assert!(one.server_pids.is_empty() && !one.spread_speakers);
        let three = Cli::try_parse_from([
            "chorus-loadtest",
            "--url",
            "http://127.0.0.1:1,http://127.0.0.1:2",
            "--url",
            "http://127.0.0.1:3",
            "--server-pid",
            "10,11",
            "--server-pid",
            "12",
            "--spread-speakers",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            three.urls,
            [
                "http://127.0.0.1:1",
                "http://127.0.0.1:2",
                "http://127.0.0.1:3"
            ]
        );
        assert_eq!(three.server_pids, [10, 11, 12]);
        assert!(three.spread_speakers);
    }
}
