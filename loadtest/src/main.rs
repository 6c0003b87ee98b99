//! `chorus-loadtest`: runs one scenario against a Chorus server over the wire and
//! prints a table (or JSON) report. A first cut: tokens come from a template or are
//! minted with the server's JWT secret; rooms must exist and their owner's user id be
//! known (`--owner`). Refuses non-loopback targets unless `--allow-remote`.

use anyhow::{Context, Result, bail};
use clap::Parser;
use loadtest::scenario::{RoomPlan, Scenario, run};
use loadtest::session::{DEFAULT_WS_PATH, ws_url};
use loadtest::tokens::{from_template, mint_access_token};
use std::net::{IpAddr, ToSocketAddrs};
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "chorus-loadtest",
    about = "Load test a Chorus server over the wire"
)]
struct Args {
    /// Server base URL (http://host:port).
    #[arg(long, env = "CHORUS_URL", default_value = "http://127.0.0.1:5500")]
    url: String,
    /// WebSocket path on the server.
    #[arg(long, default_value = DEFAULT_WS_PATH)]
    ws_path: String,
    /// Existing room ids, one per room (repeat the flag); the scenario uses all of them.
    #[arg(long = "room", required = true)]
    rooms: Vec<String>,
    /// User id of each room's owner; `{room}` is replaced by the room id. The owner is
    /// the first speaker (a moderator); the others are promoted by it.
    #[arg(long, default_value = "owner-{room}")]
    owner: String,
    /// Speakers per room (owner included).
    #[arg(long, default_value_t = 1)]
    speakers: usize,
    /// Listeners per room.
    #[arg(long, default_value_t = 10)]
    listeners: usize,
    /// Measurement window in seconds, once everyone has joined.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Joins per second.
    #[arg(long, default_value_t = 20.0)]
    join_rate: f64,
    /// 0 = steady tones; otherwise the fraction of time speakers pause (DTX).
    #[arg(long, default_value_t = 0.0)]
    pause_ratio: f64,
    /// Access-token template, `{user}` replaced by the user id (e.g. `tok-{user}`).
    #[arg(long, conflicts_with = "jwt_secret")]
    token_template: Option<String>,
    /// Mint access tokens with the server's JWT access secret.
    #[arg(long, env = "JWT_ACCESS_TOKEN_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// Listeners decode the audio (CPU heavy).
    #[arg(long)]
    decode: bool,
    /// Disable NACK/RTCP interceptors on the simulated clients (cheaper).
    #[arg(long)]
    no_interceptors: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Exit with status 2 when delivery is below this percentage.
    #[arg(long)]
    min_delivered: Option<f64>,
    /// Allow a target that is not a loopback address.
    #[arg(long)]
    allow_remote: bool,
}

fn is_loopback(url: &str) -> Result<bool> {
    let rest = url
        .split_once("://")
        .map(|(_, r)| r)
        .context("URL needs a scheme")?;
    let hostport = rest.split('/').next().unwrap_or(rest);
    let with_port = if hostport.contains(':') && !hostport.ends_with(']') {
        hostport.to_owned()
    } else {
        format!("{hostport}:80")
    };
    let addrs: Vec<IpAddr> = with_port
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {hostport}"))?
        .map(|a| a.ip())
        .collect();
    Ok(!addrs.is_empty() && addrs.iter().all(IpAddr::is_loopback))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("warn,rtc=error,rtc_ice=error")
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    if !args.allow_remote && !is_loopback(&args.url)? {
        bail!(
            "{} is not a loopback address; pass --allow-remote to load it anyway",
            args.url
        );
    }
    if args.speakers == 0 {
        bail!("--speakers must be at least 1 (the room owner)");
    }
    let token = |user: &str| -> Result<String> {
        match (&args.token_template, &args.jwt_secret) {
            (Some(t), _) => Ok(from_template(t, user)),
            (None, Some(secret)) => Ok(mint_access_token(
                secret.as_bytes(),
                user,
                Duration::from_secs(3600),
            )?),
            (None, None) => bail!("give --token-template or --jwt-secret"),
        }
    };
    let mut plans = Vec::new();
    for (r, room) in args.rooms.iter().enumerate() {
        let mut speakers = vec![token(&args.owner.replace("{room}", room))?];
        for i in 1..args.speakers {
            speakers.push(token(&format!("lts{r}x{i}"))?);
        }
        let listeners = (0..args.listeners)
            .map(|i| token(&format!("ltl{r}x{i}")))
            .collect::<Result<Vec<_>>>()?;
        plans.push(RoomPlan {
            room_id: room.clone(),
            speakers,
            listeners,
        });
    }
    let mut sc = Scenario::new(
        ws_url(&args.url, &args.ws_path),
        plans,
        Duration::from_secs_f64(args.duration.clamp(0.1, 24.0 * 3600.0)),
    );
    sc.join_rate = args.join_rate;
    sc.pause_ratio = args.pause_ratio;
    sc.decode = args.decode;
    sc.interceptors = !args.no_interceptors;
    eprintln!(
        "chorus-loadtest: {} room(s) x ({} speakers + {} listeners), {:.0}s window, {} joins/s",
        args.rooms.len(),
        args.speakers,
        args.listeners,
        args.duration,
        args.join_rate
    );
    let report = run(&sc).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", report.table());
    }
    if let Some(min) = args.min_delivered
        && report.delivered_pct < min
    {
        eprintln!("delivery {:.2}% is below {min}%", report.delivered_pct);
        std::process::exit(2);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets_pass_the_guard() {
        assert!(is_loopback("http://127.0.0.1:5500").expect("parse"));
        assert!(is_loopback("http://localhost:5500/x").expect("parse"));
        assert!(is_loopback("http://[::1]:5500").expect("parse"));
        assert!(!is_loopback("http://10.1.2.3:5500").expect("parse"));
        assert!(is_loopback("no-scheme").is_err());
    }
}
