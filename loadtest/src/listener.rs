//! A receive-only client that drives the sans-I/O `rtc` core directly, as the server
//! does, for load runs with thousands of listeners.
//!
//! The async [`crate::peer::ClientPeer`] costs tens of microseconds of CPU per received
//! packet (a driver task, channels and track tasks per connection); this one is a single
//! task per listener around one UDP socket: readiness -> read every queued datagram into
//! `handle_read` -> drain `poll_write` (sent at once), `poll_event` and `poll_read`
//! (RTP counted per slot and per speaker by the shared [`Reception`]) -> sleep until
//! `poll_timeout`. No Opus decoding.
//!
//! It answers the server's offers (the first one, role-change renegotiations and ICE
//! restarts alike) with recvonly slots and the microphone m-line inactive: it never
//! publishes. Each listener has its own local port because every server datagram comes
//! from the same server address, so a shared socket could not tell listeners apart.

use crate::peer::{AUDIO_LEVEL_URI, OfferLayout, PeerConfig, audio_media_engine};
use crate::peer::{inactive_section_candidates, media_direction};
use crate::protocol::ParticipantId;
use crate::reception::{Reception, RxSnapshot};
use crate::{Error, Result};
use bytes::BytesMut;
use parking_lot::Mutex;
use rtc::interceptor::Registry;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::interceptor_registry::configure_rtcp_reports;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCIceCandidate, RTCIceCandidateInit,
};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::{RTCRtpReceiverId, RTCRtpTransceiverDirection, RTCRtpTransceiverId};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::{Notify, watch};

pub use rtc::peer_connection::state::RTCPeerConnectionState;

/// Largest datagram read (the server sends Opus well under the usual 1200-byte MTU).
/// Pacing of ICE connectivity checks, as in browsers.
const ICE_CHECK_INTERVAL: Duration = Duration::from_millis(50);
/// Checks per candidate pair before it fails: 28 x 50 ms, rtc's default 1.4 s.
const ICE_MAX_BINDING_REQUESTS: u16 = 28;
const RECV_BUF: usize = 2048;
/// Datagrams read per wake-up before the timers get a look in.
const READ_BURST: usize = 64;
/// Stands in for "no timer" (tokio sleeps need a deadline).
const IDLE: Duration = Duration::from_secs(3600);

/// Transport-level counters of one listener.
#[derive(Debug, Default)]
pub struct ListenerCounters {
    pub datagrams_received: AtomicU64,
    pub datagrams_sent: AtomicU64,
    /// Datagrams rtc refused (bad SRTP, unknown STUN, ...).
    pub read_errors: AtomicU64,
    /// Datagrams that could not be sent (socket buffer full or an error).
    pub send_errors: AtomicU64,
}

/// One received track: which slot it is and how to read its audio level.
struct TrackSlot {
    track_id: String,
    receiver: RTCRtpReceiverId,
    slot: Option<usize>,
    level_id: Option<u8>,
}

/// What the driver task and the signaling side share under one lock.
struct Core {
    pc: RTCPeerConnection,
    layout: Option<OfferLayout>,
    tracks: Vec<TrackSlot>,
    /// Our host candidate was added (once: an ICE restart keeps local candidates).
    candidate_added: bool,
    closed: bool,
}

struct Inner {
    core: Mutex<Core>,
    /// Separate from `core` so that snapshots never wait for packet processing.
    rx: Mutex<Reception>,
    /// Wakes the driver after the signaling side changed `core` (answer, close).
    wake: Notify,
    conn: watch::Sender<RTCPeerConnectionState>,
    first_packet: watch::Sender<Option<Instant>>,
    counters: ListenerCounters,
    local_addr: SocketAddr,
}

/// A listener on the sans-I/O `rtc` core; see the module docs.
pub struct RtcListener {
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RtcListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RtcListener {
    /// Binds the listener's socket on `cfg.bind_ip` and starts its driver task.
    /// Uses `bind_ip`, `interceptors` (RTCP receiver reports), `registry`, `decode` and
    /// `pcm_keep` of `cfg`; STUN/TURN servers are not used (the server is ICE-lite and
    /// reachable directly).
    pub async fn new(cfg: &PeerConfig) -> Result<Self> {
        let socket = UdpSocket::bind(SocketAddr::new(cfg.bind_ip, 0))
            .await
            .map_err(|e| Error::Invalid(format!("binding a listener socket: {e}")))?;
        let local_addr = socket
            .local_addr()
            .map_err(|e| Error::Invalid(format!("listener socket address: {e}")))?;
        let me = audio_media_engine()?;
        // A listener has nothing to retransmit: of a browser's interceptors only the
        // receiver reports apply.
        let registry = if cfg.interceptors {
            configure_rtcp_reports(Registry::new())
        } else {
            Registry::new()
        };
        let pc = RTCPeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_media_engine(me)
            .with_setting_engine(
                // Browsers pace connectivity checks at 50 ms (RFC 8445's Ta); rtc's default
                // of 200 ms would add up to 200 ms to every join. Same 1.4 s budget per pair.
                SettingEngineBuilder::new()
                    .with_ice_connection_attempts(
                        Some(ICE_CHECK_INTERVAL),
                        Some(ICE_MAX_BINDING_REQUESTS),
                    )
                    .build(),
            )
            .with_interceptor_registry(registry)
            .build(Instant::now())?;
        let inner = Arc::new(Inner {
            core: Mutex::new(Core {
                pc,
                layout: None,
                tracks: Vec::new(),
                candidate_added: false,
                closed: false,
            }),
            rx: Mutex::new(Reception::new(
                cfg.decode,
                cfg.pcm_keep,
                cfg.registry.clone(),
            )),
            wake: Notify::new(),
            conn: watch::channel(RTCPeerConnectionState::New).0,
            first_packet: watch::channel(None).0,
            counters: ListenerCounters::default(),
            local_addr,
        });
        let task = tokio::spawn(drive(inner.clone(), socket));
        Ok(Self { inner, task })
    }

    /// The local UDP address (one per listener).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// Applies a server offer and returns the answer: slots recvonly, the microphone
    /// m-line inactive whatever the server offered (this client never publishes).
    pub fn answer_offer(&self, sdp: &str, layout: &OfferLayout) -> Result<String> {
        check_layout(sdp, layout)?;
        let offer = RTCSessionDescription::offer(sdp.to_owned())?;
        let now = Instant::now();
        let mut core = self.inner.core.lock();
        if core.closed {
            return Err(Error::Closed);
        }
        core.pc.set_remote_description(now, offer)?;
        core.layout = Some(layout.clone());
        self.inner.rx.lock().resize_slot_map(layout.slot_mids.len());
        // rtc skips candidates of inactive m-sections (the listener's microphone line).
        for (mid, index, candidate) in inactive_section_candidates(sdp) {
            let init = RTCIceCandidateInit {
                candidate,
                sdp_mid: mid,
                sdp_mline_index: Some(index),
                ..Default::default()
            };
            if let Err(e) = core.pc.add_remote_candidate(init) {
                tracing::debug!(error = %e, "remote candidate from an inactive m-section refused");
            }
        }
        let transceivers: Vec<RTCRtpTransceiverId> = core.pc.get_transceivers().collect();
        for id in transceivers {
            if let Some(mut t) = core.pc.rtp_transceiver(id)
                && t.mid().as_deref() == Some(layout.publish_mid.as_str())
            {
                t.set_direction(RTCRtpTransceiverDirection::Inactive);
            }
        }
        if !core.candidate_added {
            let addr = self.inner.local_addr;
            let candidate = CandidateHostConfig {
                base_config: CandidateConfig {
                    network: "udp".to_owned(),
                    address: addr.ip().to_string(),
                    port: addr.port(),
                    component: 1,
                    ..Default::default()
                },
                ..Default::default()
            }
            .new_candidate_host()?;
            core.pc
                .add_local_candidate(RTCIceCandidate::from(&candidate).to_json()?)?;
            core.candidate_added = true;
        }
        // End of candidates (again after an ICE restart, which resets gathering).
        core.pc
            .add_local_candidate(RTCIceCandidateInit::default())?;
        let answer = core.pc.create_answer(None)?;
        core.pc.set_local_description(now, answer)?;
        // Start connectivity checks now, as a browser does: `rtc`'s agent otherwise sends
        // its first check from the next `handle_timeout`, up to 200 ms away.
        let _ = core.pc.handle_timeout(now);
        let local = core
            .pc
            .local_description()
            .ok_or_else(|| Error::Protocol("no local description after answering".into()))?
            .sdp;
        // A renegotiation may move mids; re-resolve the tracks already open.
        let core = &mut *core;
        for t in &mut core.tracks {
            t.slot = slot_of(&mut core.pc, core.layout.as_ref(), t.receiver);
        }
        self.inner.wake.notify_one();
        Ok(local)
    }

    /// Who is in which slot (the server's `slots` message).
    pub fn set_slot_map(&self, slots: &[Option<ParticipantId>]) {
        self.inner.rx.lock().set_slot_map(slots);
    }

    /// Waits until ICE+DTLS are connected.
    pub async fn wait_connected(&self, deadline: Duration) -> Result<()> {
        crate::wait_connected(&self.inner.conn, deadline, "listener connection").await
    }

    pub fn connection_state(&self) -> RTCPeerConnectionState {
        *self.inner.conn.borrow()
    }

    pub fn snapshot(&self) -> RxSnapshot {
        self.inner.rx.lock().snapshot()
    }

    pub fn clear_latency(&self) {
        self.inner.rx.lock().clear_latency();
    }

    pub fn packets_from(&self, source: ParticipantId) -> u64 {
        self.inner.rx.lock().packets_from(source)
    }

    /// Decoded PCM (last `pcm_keep`) heard from `source` (needs `decode`).
    pub fn source_pcm(&self, source: ParticipantId) -> Vec<i16> {
        self.inner.rx.lock().source_pcm(source)
    }

    pub fn first_packet_at(&self) -> Option<Instant> {
        *self.inner.first_packet.borrow()
    }

    /// Waits for the first audio packet on any slot.
    pub async fn wait_first_packet(&self, deadline: Duration) -> Result<Instant> {
        crate::wait_first_packet(&self.inner.first_packet, deadline).await
    }

    pub fn counters(&self) -> &ListenerCounters {
        &self.inner.counters
    }

    /// Closes the connection (tells the server at once) and stops the driver.
    pub fn close(&self) {
        let mut core = self.inner.core.lock();
        if !core.closed {
            core.closed = true;
            let _ = core.pc.close();
        }
        drop(core);
        self.inner.wake.notify_one();
    }
}

/// The offer must have the m-lines its layout names.
fn check_layout(sdp: &str, layout: &OfferLayout) -> Result<()> {
    if layout.slot_mids.contains(&layout.publish_mid) {
        return Err(Error::Protocol("publishMid is also a slot mid".into()));
    }
    if media_direction(sdp, &layout.publish_mid).is_none() {
        return Err(Error::Protocol(format!(
            "offer has no m-line with publishMid {:?}",
            layout.publish_mid
        )));
    }
    for mid in &layout.slot_mids {
        if media_direction(sdp, mid).is_none() {
            return Err(Error::Protocol(format!(
                "offer has no m-line with slot mid {mid:?}"
            )));
        }
    }
    Ok(())
}

/// The slot index of the m-line a receiver belongs to.
fn slot_of(
    pc: &mut RTCPeerConnection,
    layout: Option<&OfferLayout>,
    receiver: RTCRtpReceiverId,
) -> Option<usize> {
    let t = pc.rtp_transceiver(RTCRtpTransceiverId::from(receiver))?;
    let mid = t.mid().as_ref()?;
    layout?.slot_mids.iter().position(|m| m == mid)
}

fn level_id_of(pc: &mut RTCPeerConnection, receiver: RTCRtpReceiverId) -> Option<u8> {
    pc.rtp_receiver(receiver)?
        .get_parameters()
        .rtp_parameters
        .header_extensions
        .iter()
        .find(|e| e.uri == AUDIO_LEVEL_URI)
        .and_then(|e| u8::try_from(e.id).ok())
}

/// The listener's event loop: one socket, one connection, until closed.
async fn drive(inner: Arc<Inner>, socket: UdpSocket) {
    let mut buf = vec![0u8; RECV_BUF];
    let sleep = tokio::time::sleep(IDLE);
    tokio::pin!(sleep);
    let mut timer_at: Option<Instant> = None;
    // The sleep has fired (or never been set) and must be re-armed whatever rtc says.
    let mut rearm = true;
    loop {
        let (next, closed) = {
            let mut core = inner.core.lock();
            service(&inner, &mut core, &socket);
            (core.pc.poll_timeout(), core.closed)
        };
        if closed {
            return;
        }
        if rearm || next != timer_at {
            rearm = false;
            timer_at = next;
            let at = next.unwrap_or_else(|| Instant::now() + IDLE);
            sleep.as_mut().reset(tokio::time::Instant::from_std(at));
        }
        tokio::select! {
            biased;
            _ = &mut sleep => {
                let mut core = inner.core.lock();
                let _ = core.pc.handle_timeout(Instant::now());
                rearm = true;
            }
            _ = inner.wake.notified() => {}
            r = socket.readable() => {
                if r.is_err() {
                    return;
                }
                let mut core = inner.core.lock();
                for _ in 0..READ_BURST {
                    match socket.try_recv_from(&mut buf) {
                        Ok((n, from)) => {
                            inner.counters.datagrams_received.fetch_add(1, Relaxed);
                            let r = core.pc.handle_read(TaggedBytesMut {
                                now: Instant::now(),
                                transport: TransportContext {
                                    local_addr: inner.local_addr,
                                    peer_addr: from,
                                    ecn: None,
                                    transport_protocol: TransportProtocol::UDP,
                                },
                                message: BytesMut::from(&buf[..n]),
                            });
                            if r.is_err() {
                                inner.counters.read_errors.fetch_add(1, Relaxed);
                            }
                            // Until connected, let rtc act on the datagram at once: it moves
                            // the ICE and DTLS handshakes on (and reports them done) only
                            // from `handle_timeout`, which may be 200 ms away.
                            if *inner.conn.borrow() != RTCPeerConnectionState::Connected {
                                let _ = core.pc.handle_timeout(Instant::now());
                            }
                            // Keep what rtc queues per datagram small.
                            service(&inner, &mut core, &socket);
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        // ICMP port unreachable and the like: nothing to read now.
                        Err(_) => break,
                    }
                }
            }
        }
    }
}

/// Drains everything the connection produced: datagrams out, events, received RTP.
fn service(inner: &Inner, core: &mut Core, socket: &UdpSocket) {
    flush(inner, core, socket);
    while let Some(event) = core.pc.poll_event() {
        match event {
            RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => {
                inner.conn.send_replace(state);
            }
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => {
                let slot = slot_of(&mut core.pc, core.layout.as_ref(), init.receiver_id);
                let level_id = level_id_of(&mut core.pc, init.receiver_id);
                core.tracks.retain(|t| t.track_id != init.track_id);
                core.tracks.push(TrackSlot {
                    track_id: init.track_id,
                    receiver: init.receiver_id,
                    slot,
                    level_id,
                });
            }
            _ => {}
        }
    }
    let mut rx = None;
    while let Some(TaggedRTCMessage { message, now }) = core.pc.poll_read() {
        let RTCMessage::RtpPacket(track_id, pkt) = message else {
            continue;
        };
        let (slot, level_id) = core
            .tracks
            .iter()
            .find(|t| t.track_id == track_id)
            .map_or((None, None), |t| (t.slot, t.level_id));
        let layout = core.layout.as_ref();
        let slot_mid = |i: usize| {
            layout
                .and_then(|l| l.slot_mids.get(i).cloned())
                .unwrap_or_default()
        };
        let rx = rx.get_or_insert_with(|| inner.rx.lock());
        if rx.on_rtp(slot, slot_mid, level_id, &pkt, now) {
            inner.first_packet.send_replace(Some(now));
        }
    }
    drop(rx);
    // Reading may have produced reports or acknowledgements.
    flush(inner, core, socket);
}

fn flush(inner: &Inner, core: &mut Core, socket: &UdpSocket) {
    while let Some(out) = core.pc.poll_write() {
        match socket.try_send_to(&out.message, out.transport.peer_addr) {
            Ok(_) => inner.counters.datagrams_sent.fetch_add(1, Relaxed),
            Err(_) => inner.counters.send_errors.fetch_add(1, Relaxed),
        };
    }
}
