//! The SFU as an ICE-lite agent (RFC 8445 §6.1.1, §7.3.1.5) and consent freshness
//! (RFC 7675), seen from outside: a hand-made STUN client on a raw UDP socket, and a real
//! `webrtc` client whose consent checks are as far apart as RFC 7675 allows.

mod common;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use common::{Client, join, test_config, wait_until};
use media::{ParticipantId, RoomKey, Sfu};
use rtc::ice::attributes::control::AttrControlling;
use rtc::ice::attributes::priority::PriorityAttr;
use rtc::ice::attributes::use_candidate::UseCandidateAttr;
use rtc::stun::attributes::ATTR_USERNAME;
use rtc::stun::fingerprint::FINGERPRINT;
use rtc::stun::integrity::MessageIntegrity;
use rtc::stun::message::{
    BINDING_REQUEST, CLASS_REQUEST, CLASS_SUCCESS_RESPONSE, METHOD_BINDING, Message, Setter,
    TransactionId,
};
use rtc::stun::textattrs::Username;
use tokio::net::UdpSocket;

const CONNECT: Duration = Duration::from_secs(15);

fn sdp_value<'a>(sdp: &'a str, name: &str) -> Option<&'a str> {
    sdp.lines().find_map(|l| {
        l.trim_end()
            .strip_prefix("a=")?
            .strip_prefix(name)?
            .strip_prefix(':')
    })
}

/// A Binding request as a controlling full agent sends it, nominating with USE-CANDIDATE.
fn nominating_check(server_ufrag: &str, server_pwd: &str, our_ufrag: &str) -> Result<Message> {
    let provider = rtc::crypto::default_provider()?;
    let mut msg = Message::new();
    let setters: Vec<Box<dyn Setter>> = vec![
        Box::new(BINDING_REQUEST),
        Box::new(TransactionId::new()),
        Box::new(Username::new(
            ATTR_USERNAME,
            format!("{server_ufrag}:{our_ufrag}"),
        )),
        Box::new(UseCandidateAttr),
        Box::new(AttrControlling(rand::random())),
        Box::new(PriorityAttr(2_130_706_431)),
        Box::new(MessageIntegrity::new_short_term_integrity_with_provider(
            server_pwd.to_owned(),
            provider.crypto(),
        )),
        Box::new(FINGERPRINT),
    ];
    msg.build(&setters)?;
    Ok(msg)
}

/// The answer a listener would give to `offer`, written by hand: our own ICE credentials,
/// no candidates (the raw socket is the only client address, and a lite server needs none),
/// and `setup:passive` so that the server is the DTLS client and its ClientHello shows the
/// moment ICE has selected the pair. The fingerprint is the offer's: DTLS never completes
/// here, it only has to start.
fn listener_answer(offer: &str, ufrag: &str, pwd: &str) -> String {
    let mut out = String::new();
    for line in offer.lines() {
        let line = line.trim_end();
        let dropped = [
            "a=candidate:",
            "a=end-of-candidates",
            "a=ice-lite",
            "a=ssrc",
            "a=msid",
        ];
        if dropped.iter().any(|d| line.starts_with(d)) {
            continue;
        }
        let line = if line.starts_with("a=ice-ufrag:") {
            format!("a=ice-ufrag:{ufrag}")
        } else if line.starts_with("a=ice-pwd:") {
            format!("a=ice-pwd:{pwd}")
        } else if line.starts_with("a=setup:") {
            "a=setup:passive".to_owned()
        } else if line == "a=sendonly" {
            "a=recvonly".to_owned()
        } else {
            line.to_owned()
        };
        out.push_str(&line);
        out.push_str("\r\n");
    }
    out
}

/// What the server sent to the raw socket.
#[derive(Default, Debug)]
struct Seen {
    binding_requests: usize,
    success_for_our_check: bool,
    dtls: usize,
}

async fn collect(socket: &UdpSocket, ours: TransactionId, for_: Duration, seen: &mut Seen) {
    let deadline = tokio::time::Instant::now() + for_;
    let mut buf = [0u8; 2048];
    while let Ok(Ok((n, _))) = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await {
        let data = &buf[..n];
        match data.first() {
            Some(0..=3) => {
                let mut m = Message::new();
                if m.unmarshal_binary(data).is_err() || m.typ.method != METHOD_BINDING {
                    continue;
                }
                if m.typ.class == CLASS_REQUEST {
                    seen.binding_requests += 1;
                } else if m.typ.class == CLASS_SUCCESS_RESPONSE && m.transaction_id == ours {
                    seen.success_for_our_check = true;
                }
            }
            Some(20..=63) => seen.dtls += 1,
            _ => {}
        }
    }
}

/// A full agent starts checking as soon as it has the offer, so its first check usually
/// reaches the server before the answer does. As an ICE-lite agent the server answers that
/// very check once the answer is applied (no "password is empty" failure and no
/// retransmission needed), selects the pair on it because it carries USE-CANDIDATE, starts
/// DTLS at once, and never sends a connectivity check of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_nominating_check_sent_before_the_answer_selects_the_pair() -> Result<()> {
    let (sfu, _rx) = Sfu::start(test_config())?;
    let offer = sfu.join(RoomKey(1), ParticipantId(1), false).await?;
    let server_ufrag = sdp_value(&offer.sdp, "ice-ufrag").context("offer ufrag")?;
    let server_pwd = sdp_value(&offer.sdp, "ice-pwd").context("offer pwd")?;

    let (our_ufrag, our_pwd) = ("rawclient", "rawclientpassword0123456789");
    let answer = listener_answer(&offer.sdp, our_ufrag, our_pwd);

    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let check = nominating_check(server_ufrag, server_pwd, our_ufrag)?;
    // The candidate names the media thread (socket) that holds this participant's room.
    let candidate = offer
        .sdp
        .lines()
        .find(|l| l.starts_with("a=candidate:"))
        .context("offer without candidate")?;
    let port: u16 = candidate
        .split_whitespace()
        .nth(5)
        .context("candidate port")?
        .parse()?;
    let server: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    socket.send_to(&check.raw, server).await?;
    let held = Instant::now() + CONNECT;
    while sfu.stats().early_checks_held == 0 {
        if Instant::now() > held {
            bail!(
                "the early check was neither held nor answered: {:?}",
                sfu.stats()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut seen = Seen::default();
    collect(
        &socket,
        check.transaction_id,
        Duration::from_millis(50),
        &mut seen,
    )
    .await;
    ensure!(
        !seen.success_for_our_check,
        "answered before the remote credentials were known: {seen:?}"
    );

    sfu.accept_answer(ParticipantId(1), answer).await?;
    // Long enough for a full agent's triggered check and a retransmission (500 ms).
    let deadline = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < deadline && !(seen.success_for_our_check && seen.dtls > 0) {
        collect(
            &socket,
            check.transaction_id,
            Duration::from_millis(100),
            &mut seen,
        )
        .await;
    }
    collect(
        &socket,
        check.transaction_id,
        Duration::from_millis(600),
        &mut seen,
    )
    .await;
    ensure!(
        seen.success_for_our_check,
        "no success response to our one check: {seen:?}"
    );
    ensure!(
        seen.dtls > 0,
        "the pair was not selected on the nominating check (no DTLS): {seen:?}"
    );
    ensure!(
        seen.binding_requests == 0,
        "an ICE-lite agent sends no checks: {seen:?}"
    );
    let stats = sfu.stats();
    ensure!(stats.early_checks_held == 1, "{stats:?}");
    Ok(())
}

/// RFC 7675 clients check consent every 4-6 s. Forwarding to such a listener must not
/// pause between two checks: every packet of a continuous tone arrives, with no jump in
/// the RTP timestamps (the slot rewriter keeps sequence numbers continuous across a pause,
/// so a pause shows as a timestamp jump) and no long silence at the socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_checking_consent_every_6s_hears_without_gaps() -> Result<()> {
    let (sfu, _rx) = Sfu::start(test_config())?;
    let room = RoomKey(7);
    let mut speaker = join(&sfu, room, ParticipantId(1), true, true, "speaker").await?;
    let mut listener =
        Client::with_consent_interval("listener", Some(Duration::from_secs(6))).await?;
    let offer = sfu.join(room, ParticipantId(2), false).await?;
    let answer = listener.answer(&offer.sdp, false).await?;
    sfu.accept_answer(ParticipantId(2), answer).await?;
    speaker.wait_connected(CONNECT).await?;
    listener.wait_connected(CONNECT).await?;
    speaker.start_tone(440.0, 10).await?;
    wait_until(CONNECT, "first audio at the listener", || {
        listener.received_total() > 0
    })
    .await?;

    // Two full consent intervals and more: with a 5 s disconnect timer on the server, the
    // forwarding paused from ~5 s to ~6 s after each check.
    let listen_for = Duration::from_secs(14);
    tokio::time::sleep(listen_for).await;
    speaker.stop_tone().await;

    let (packets, worst_ts_jump, worst_arrival_gap) = listener.with_streams(|streams| {
        let mut packets = 0;
        let mut worst_ts = 0u32;
        let mut worst_arrival = Duration::ZERO;
        for s in streams.values() {
            packets += s.packets;
            for w in s.timestamps.windows(2) {
                worst_ts = worst_ts.max(w[1].wrapping_sub(w[0]));
            }
            for w in s.arrivals.windows(2) {
                worst_arrival = worst_arrival.max(w[1].saturating_duration_since(w[0]));
            }
        }
        (packets, worst_ts, worst_arrival)
    });
    let expected = listen_for.as_millis() as u64 / 20;
    ensure!(
        packets >= expected * 9 / 10,
        "{packets} packets in {listen_for:?}, expected ~{expected}"
    );
    // 100 ms of audio at 48 kHz.
    ensure!(
        worst_ts_jump <= 4_800,
        "audio paused: RTP timestamp jumped {worst_ts_jump} ({} ms); {:?}",
        worst_ts_jump / 48,
        sfu.stats()
    );
    // At the socket a pause of a second stands out even on a busy machine.
    ensure!(
        worst_arrival_gap < Duration::from_millis(500),
        "no packet for {worst_arrival_gap:?}"
    );
    let stats = sfu.stats();
    ensure!(stats.disconnects == 0, "{stats:?}");
    Ok(())
}
