//! The media core of one media thread: the peer connections of the rooms placed on it, the
//! timer heap and those rooms. Sans-I/O, str0m-style: it owns no socket and never reads the
//! clock. Its driver ([`crate::driver`]) feeds it datagrams ([`Engine::handle_datagram`]),
//! commands ([`Engine::handle_command`]) and the time ([`Engine::handle_timeout`] when
//! [`Engine::poll_timeout`] is due), each with `now`; what it queues to send comes out of
//! [`Engine::poll_transmit`], and the driver reports back what the kernel took
//! ([`Engine::on_transmitted`]). Events leave through the SFU's event queue
//! ([`crate::events`], one short lock per event). Runs on its thread only; nothing else
//! here is shared or locked (but for the participant-to-shard map, touched once per join
//! and leave).
//!
//! Datagram path: classify -> find the connection (known address, else the STUN USERNAME)
//! -> `handle_read` -> drain its writes, events and reads -> forward RTP to subscribers'
//! connections -> queue their datagrams, which the driver sends together.
//!
//! Files: this one has the state, the datagram path up to a connection's reads, timers
//! and housekeeping; `forward.rs` the routing and fan-out of RTP; `control.rs` the
//! commands (join, answer, role, ICE restart, leave) and removals; `relay_io.rs` the
//! node-to-node relay; `tests.rs` the core on virtual time.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rtc::peer_connection::certificate::RTCCertificate;
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::state::{RTCIceConnectionState, RTCPeerConnectionState};
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::rtp;
use rtc::sansio::Protocol;
use rtc::shared::marshal::Marshal;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use tokio::sync::oneshot;

use crate::batch::{Flushed, SendBatch};
use crate::events::EventSender;
use crate::level::AudioLevel;
use crate::peer::{Peer, PeerParams};
use crate::report::REPORT_INTERVAL;
use crate::rewrite::RtpIn;
use crate::router::{Delivery, DropReason, Route, Router, RouterConfig};
use crate::sfu::{Owners, ShardContext};
use crate::stats::Counters;
use crate::stun::{self, Kind};
use crate::timers::{TimerHeap, TimerKey};
use crate::{DisconnectReason, MediaError, Offer, ParticipantId, RoomKey, SfuConfig, SfuEvent};

mod control;
mod forward;
mod relay_io;
use relay_io::RelayState;

/// Largest datagram accepted; anything that fills the driver's buffer of this size was
/// truncated and is dropped.
pub(crate) const RECV_BUF: usize = 2048;
/// Remote addresses remembered per connection (a client has few candidates).
const MAX_ADDRS_PER_PEER: usize = 8;
/// ICE checks held per connection while its answer is outstanding (a client sends one per
/// candidate pair, and retransmits).
const MAX_EARLY_CHECKS: usize = 8;
/// Hard cap on connections per media server (slab index is u32; memory is the real limit).
const MAX_PEERS: usize = 100_000;

pub(crate) type Reply<T> = oneshot::Sender<Result<T, MediaError>>;

/// Requests from [`crate::Sfu`] handles to the media thread.
pub(crate) enum Command {
    Join {
        room: RoomKey,
        pid: ParticipantId,
        can_publish: bool,
        /// The handle's ticket for this join in the participant-to-shard map.
        ticket: u64,
        reply: Reply<Offer>,
    },
    Answer {
        pid: ParticipantId,
        sdp: String,
        reply: Reply<()>,
    },
    SetCanPublish {
        pid: ParticipantId,
        can_publish: bool,
        reply: Reply<Offer>,
    },
    RestartIce {
        pid: ParticipantId,
        reply: Reply<Offer>,
    },
    SetMuted {
        pid: ParticipantId,
        muted: bool,
        /// The join this mute state was set for: a late one never reaches a later join.
        ticket: u64,
    },
    Leave {
        pid: ParticipantId,
    },
    SlotMap {
        room: RoomKey,
        reply: Reply<Option<SlotMap>>,
    },
    /// Relay `room`'s local top speakers to the node at `node`.
    RelayAddSubscriber {
        room: RoomKey,
        node: SocketAddr,
    },
    RelayRemoveSubscriber {
        room: RoomKey,
        node: SocketAddr,
    },
}

/// A room's slot map and spare, as in `SfuEvent::SlotsChanged`.
pub type SlotMap = (Vec<Option<ParticipantId>>, Option<ParticipantId>);

pub(crate) struct Engine {
    cfg: SfuConfig,
    /// The address rtc sees as "local" for every datagram: the first announced host candidate
    /// (rtc matches inbound traffic to a local candidate by this address).
    ice_local_addr: SocketAddr,
    announce_ips: Vec<IpAddr>,
    /// Boxed: an `rtc` connection is ~9 KB inline, so slack in a Vec of them would be costly.
    peers: Vec<Option<Box<Peer>>>,
    free: Vec<u32>,
    by_pid: HashMap<ParticipantId, u32>,
    by_addr: HashMap<SocketAddr, u32>,
    by_ufrag: HashMap<String, u32>,
    /// Who receives what: rooms, roles, mute, levels, slots. The `u32` is the slab index.
    router: Router<u32>,
    timers: TimerHeap,
    /// Globally unique timer generations, so an entry of a removed connection can never match
    /// a new connection in the same slab slot.
    next_generation: u64,
    counters: Arc<Counters>,
    events: EventSender,
    /// Reused buffer (no per-datagram allocation for bookkeeping).
    rtp_scratch: Vec<rtp::Packet>,
    /// Reused buffer a forwarded packet is marshalled into before encryption.
    rtp_out: Vec<u8>,
    /// Reused header of a forwarded copy: its extension list keeps its capacity, so setting
    /// the audio level allocates nothing per copy.
    rtp_header: rtp::Header,
    /// Wall clock at the engine's start, for the NTP time of sender reports.
    wall_clock: rtc::shared::time::SystemInstant,
    /// Datagrams queued for the driver to send together (one fan-out, and the
    /// connections' own writes).
    batch: SendBatch,
    /// Forwarded RTP copies in `batch`, and their payload bytes: counted as forwarded once
    /// the driver reports the send, less what the kernel refused.
    unsent_forwarded: u64,
    unsent_forwarded_bytes: u64,
    /// The DTLS certificate every connection presents.
    certificate: RTCCertificate,
    removals: Vec<(u32, DisconnectReason)>,
    publishers: u64,
    connected: u64,
    /// Which shard holds each participant; this engine releases its own when it removes one.
    owners: Arc<Owners>,
    /// The node-to-node relay, when a secret is configured.
    relay: Option<RelayState>,
}

impl Engine {
    /// A core for the socket bound at `local` (its port goes in the candidates).
    pub(crate) fn new(
        local: SocketAddr,
        ctx: ShardContext,
        now: Instant,
    ) -> Result<Engine, MediaError> {
        let ShardContext {
            index: _,
            cfg,
            announce_ips,
            counters,
            events,
            owners,
        } = ctx;
        let port = local.port();
        let first = *announce_ips
            .first()
            .ok_or_else(|| MediaError::Config("no announce IP".into()))?;
        let router = Router::new(RouterConfig::new(cfg.slots, cfg.speaker_interval), now);
        let relay = RelayState::new(&cfg.relay, now);
        Ok(Engine {
            relay,
            router,
            cfg,
            ice_local_addr: SocketAddr::new(first, port),
            announce_ips,
            peers: Vec::new(),
            free: Vec::new(),
            by_pid: HashMap::new(),
            by_addr: HashMap::new(),
            by_ufrag: HashMap::new(),
            timers: TimerHeap::default(),
            next_generation: 1,
            counters,
            events,
            rtp_scratch: Vec::new(),
            rtp_out: vec![0; RECV_BUF],
            rtp_header: rtp::Header {
                version: 2,
                ..Default::default()
            },
            wall_clock: rtc::shared::time::SystemInstant::now(now),
            batch: SendBatch::default(),
            unsent_forwarded: 0,
            unsent_forwarded_bytes: 0,
            certificate: crate::peer::dtls_certificate()?,
            removals: Vec::new(),
            publishers: 0,
            connected: 0,
            owners,
        })
    }

    /// When [`Engine::handle_timeout`] is next due (a connection's timer or the router's
    /// tick).
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let mut tick = self.router.poll_timeout();
        if let Some(relay) = &self.relay {
            tick = tick.min(relay.poll_timeout());
        }
        Some(self.timers.next_deadline().map_or(tick, |t| t.min(tick)))
    }

    /// The datagrams queued to send, if any: the driver sends them together and reports
    /// the outcome to [`Engine::on_transmitted`].
    pub(crate) fn poll_transmit(&mut self) -> Option<&mut SendBatch> {
        (!self.batch.is_empty()).then_some(&mut self.batch)
    }

    /// What the driver's send of the queued batch did. A datagram the kernel did not take
    /// is charged to the forwarded RTP copies (the batch may hold a few RTCP datagrams too).
    pub(crate) fn on_transmitted(&mut self, f: Flushed) {
        let c = &self.counters;
        c.datagrams_sent.fetch_add(f.sent, Relaxed);
        c.bytes_sent.fetch_add(f.bytes, Relaxed);
        c.send_would_block.fetch_add(f.would_block, Relaxed);
        c.send_errors.fetch_add(f.errors, Relaxed);
        let accepted = std::mem::take(&mut self.unsent_forwarded);
        let bytes = std::mem::take(&mut self.unsent_forwarded_bytes);
        let delivered = accepted.saturating_sub(f.would_block + f.errors);
        if delivered > 0 {
            c.rtp_forwarded.fetch_add(delivered, Relaxed);
            let bytes = if delivered == accepted {
                bytes
            } else {
                bytes / accepted * delivered
            };
            c.rtp_bytes_forwarded.fetch_add(bytes, Relaxed);
        }
    }

    /// Closes every connection (the SFU is stopping); the goodbyes are queued to send.
    pub(crate) fn close(&mut self, now: Instant) {
        let live: Vec<u32> = self.by_pid.values().copied().collect();
        for idx in live {
            self.remove_peer(idx, None, now);
        }
    }

    /// One datagram received from `from`.
    pub(crate) fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        self.counters.datagrams_received.fetch_add(1, Relaxed);
        self.counters
            .bytes_received
            .fetch_add(data.len() as u64, Relaxed);
        if data.len() >= RECV_BUF {
            // It filled the receive buffer: truncated.
            self.counters.malformed.fetch_add(1, Relaxed);
            return;
        }
        let idx = match stun::classify(data) {
            Kind::Stun => match stun::local_ufrag(data) {
                Ok(Some(ufrag)) => match self.by_ufrag.get(ufrag).copied() {
                    Some(idx) => {
                        self.remember_addr(idx, from);
                        Some(idx)
                    }
                    None => self.by_addr.get(&from).copied(),
                },
                Ok(None) => self.by_addr.get(&from).copied(),
                Err(_) => {
                    self.counters.malformed.fetch_add(1, Relaxed);
                    return;
                }
            },
            Kind::Dtls | Kind::Rtp => self.by_addr.get(&from).copied(),
            Kind::Other => {
                self.counters.malformed.fetch_add(1, Relaxed);
                return;
            }
        };
        let Some(idx) = idx else {
            self.counters.unknown_source.fetch_add(1, Relaxed);
            return;
        };
        let ice_local_addr = self.ice_local_addr;
        let Some(peer) = self.peers.get_mut(idx as usize).and_then(Option::as_mut) else {
            return;
        };
        if matches!(data, [0x80..=0xBF, 192..=223, ..]) {
            // Counted here because rtc's pipeline consumes most reports (the interceptors
            // read them) and only surfaces feedback addressed to a known SSRC.
            self.counters.rtcp_received.fetch_add(1, Relaxed);
        }
        // Media from a participant that may not publish is dropped before any decryption
        // work: whatever the client negotiated, the server does not forward it.
        if !peer.can_publish && is_rtp_media(data) {
            self.counters.dropped_not_publisher.fetch_add(1, Relaxed);
            if !peer.refused_reported {
                peer.refused_reported = true;
                self.events.send(SfuEvent::MediaRefused { pid: peer.pid });
            }
            return;
        }
        // A check that arrives before the client's answer (or ICE-restart answer) has been
        // applied cannot be verified yet: rtc does not know the remote credentials and
        // fails it ("password is empty"). Clients start checking as soon as they have our
        // offer, so on a fast network this is the common case, and a failed check costs
        // the client a retransmission (~500 ms). Held (bounded) and replayed once the
        // answer is applied.
        if !peer.remote_ice_known && stun::is_binding_request(data) {
            if peer.early_checks.len() < MAX_EARLY_CHECKS {
                peer.early_checks.push((from, BytesMut::from(data)));
                self.counters.early_checks_held.fetch_add(1, Relaxed);
            }
            return;
        }
        // rtc logs and swallows what its handlers refuse, so the result says little; any
        // datagram routed to the connection counts as a sign of life.
        let _ = peer.pc.handle_read(TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: ice_local_addr,
                peer_addr: from,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: BytesMut::from(data),
        });
        peer.last_rx = now;
        self.after_io(idx, now);
    }

    fn remember_addr(&mut self, idx: u32, from: SocketAddr) {
        match self.by_addr.get(&from).copied() {
            Some(owner) if owner == idx => return,
            Some(owner) => {
                // An address moves to another connection only once its owner is no longer
                // connected (a client restarted and reused the port): a spoofed STUN request
                // naming another ufrag must not hijack a live participant's address.
                match self.peer_mut(owner) {
                    Some(p) if p.connected => return,
                    Some(p) => p.addrs.retain(|a| *a != from),
                    None => {}
                }
            }
            None => {}
        }
        let Some(peer) = self.peers.get_mut(idx as usize).and_then(Option::as_mut) else {
            return;
        };
        if peer.addrs.len() >= MAX_ADDRS_PER_PEER {
            let oldest = peer.addrs.remove(0);
            self.by_addr.remove(&oldest);
        }
        peer.addrs.push(from);
        self.by_addr.insert(from, idx);
        self.update_gauges();
    }

    fn peer_mut(&mut self, idx: u32) -> Option<&mut Peer> {
        self.peers
            .get_mut(idx as usize)
            .and_then(Option::as_deref_mut)
    }

    /// Feeds the checks held while the answer was outstanding (see `handle_datagram`) to the
    /// connection, now that it knows the remote credentials.
    fn replay_early_checks(&mut self, idx: u32, now: Instant) {
        let ice_local_addr = self.ice_local_addr;
        let Some(peer) = self
            .peers
            .get_mut(idx as usize)
            .and_then(Option::as_deref_mut)
        else {
            return;
        };
        if !peer.remote_ice_known || peer.early_checks.is_empty() {
            return;
        }
        let held = std::mem::take(&mut peer.early_checks);
        for (from, message) in held {
            let _ = peer.pc.handle_read(TaggedBytesMut {
                now,
                transport: TransportContext {
                    local_addr: ice_local_addr,
                    peer_addr: from,
                    ecn: None,
                    transport_protocol: TransportProtocol::UDP,
                },
                message,
            });
            peer.last_rx = now;
        }
        self.after_io(idx, now);
    }

    /// Drains everything a connection produced after an input, then reschedules its timer.
    fn after_io(&mut self, idx: u32, now: Instant) {
        self.flush(idx);
        if self.drain_events(idx, now) {
            // ICE just connected. `rtc` queues the DTLS ClientHello when the candidate pair
            // is selected but only sends it from `handle_timeout`, whose next deadline is up
            // to 200 ms away: run it now, so the handshake starts at once.
            if let Some(peer) = self.peer_mut(idx) {
                let _ = peer.pc.handle_timeout(now);
            }
            self.flush(idx);
            self.drain_events(idx, now);
        }
        self.drain_reads(idx, now);
        self.flush(idx);
        self.reschedule(idx, now);
        self.process_removals(now);
    }

    /// Queues a connection's datagrams for the driver to send.
    fn flush(&mut self, idx: u32) {
        if let Some(peer) = self.peers.get_mut(idx as usize).and_then(Option::as_mut) {
            while let Some(out) = peer.pc.poll_write() {
                self.batch.push(&out.message, out.transport.peer_addr);
            }
        }
    }

    /// Handles a connection's events; returns whether its ICE transport just connected.
    fn drain_events(&mut self, idx: u32, now: Instant) -> bool {
        let Some(peer) = self.peers.get_mut(idx as usize).and_then(Option::as_mut) else {
            return false;
        };
        let mut ice_connected = false;
        while let Some(event) = peer.pc.poll_event() {
            match event {
                RTCPeerConnectionEvent::OnIceConnectionStateChangeEvent(
                    RTCIceConnectionState::Connected,
                ) => ice_connected = true,
                RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => match state {
                    RTCPeerConnectionState::Connected => {
                        if !peer.connected {
                            self.connected += 1;
                        }
                        peer.connected = true;
                        peer.refresh_mic_params();
                        if !peer.ever_connected {
                            peer.ever_connected = true;
                            self.counters
                                .join
                                .observe(now.saturating_duration_since(peer.created));
                            self.events.send(SfuEvent::Connected { pid: peer.pid });
                        }
                    }
                    RTCPeerConnectionState::Disconnected => {
                        if peer.connected {
                            self.connected -= 1;
                        }
                        peer.connected = false;
                    }
                    RTCPeerConnectionState::Failed => {
                        if peer.connected {
                            self.connected -= 1;
                        }
                        peer.connected = false;
                        self.removals.push((idx, DisconnectReason::IceFailed));
                    }
                    _ => {}
                },
                RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(_)) => {
                    peer.refresh_mic_params();
                }
                _ => {}
            }
        }
        ice_connected
    }

    /// Keeps exactly one live heap entry per connection at min(rtc's deadline, housekeeping).
    fn reschedule(&mut self, idx: u32, _now: Instant) {
        let Some(peer) = self.peers.get_mut(idx as usize).and_then(Option::as_mut) else {
            return;
        };
        // The stored housekeeping deadline only moves when it fires (see `run_timers`), so a
        // stream of packets does not push a heap entry per packet.
        let housekeeping = peer.housekeeping_at.min(peer.report_at);
        let at = peer
            .pc
            .poll_timeout()
            .map_or(housekeeping, |t| t.min(housekeeping));
        if peer.timer_at == Some(at) {
            return;
        }
        let generation = self.next_generation;
        self.next_generation += 1;
        peer.timer_generation = generation;
        peer.timer_at = Some(at);
        self.timers.push(
            at,
            TimerKey {
                slot: idx,
                generation,
            },
        );
    }

    /// Runs what is due at `now`: connections' timers (rtc's retransmissions and
    /// keepalives, sender reports, the connect and peer timeouts) and the router's tick.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        let (peer_timeout, connect_timeout) = (self.cfg.peer_timeout, self.cfg.connect_timeout);
        while let Some(key) = self.timers.pop_due(now) {
            let Some(peer) = self
                .peers
                .get_mut(key.slot as usize)
                .and_then(Option::as_mut)
            else {
                continue;
            };
            if peer.timer_generation != key.generation {
                continue;
            }
            peer.timer_at = None;
            let due = housekeeping_due(peer, peer_timeout, connect_timeout);
            peer.housekeeping_at = due;
            if now >= due {
                let reason = if peer.ever_connected {
                    DisconnectReason::Timeout
                } else {
                    DisconnectReason::NeverConnected
                };
                self.removals.push((key.slot, reason));
                self.process_removals(now);
                continue;
            }
            let _ = peer.pc.handle_timeout(now);
            let housekeeping = now >= peer.report_at;
            if housekeeping {
                peer.report_at = now + REPORT_INTERVAL;
                let sent = send_sender_reports(peer, now, &self.wall_clock);
                self.counters.sender_reports.fetch_add(sent, Relaxed);
            }
            self.after_io(key.slot, now);
            if housekeeping {
                // Once per report interval, after everything queued has been drained:
                // give back the queue storage `rtc` grew during the handshake or a burst.
                if let Some(peer) = self.peer_mut(key.slot) {
                    peer.pc.release_idle_buffers();
                }
            }
        }
        self.update_gauges();
        let live = self.by_pid.len();
        if self.timers.len() > 4 * live + 64 {
            let peers = &self.peers;
            self.timers.compact(|k| {
                peers
                    .get(k.slot as usize)
                    .and_then(Option::as_ref)
                    .is_some_and(|p| p.timer_generation == k.generation)
            });
        }
        self.counters
            .timer_entries
            .store(self.timers.len() as u64, Relaxed);
        self.relay_timeout(now);
        if now >= self.router.poll_timeout() {
            self.router.tick(now);
            self.forward_router_events(now);
            self.counters
                .subscriptions
                .store(self.router.subscription_count() as u64, Relaxed);
        }
    }

    fn process_removals(&mut self, now: Instant) {
        while let Some((idx, reason)) = self.removals.pop() {
            self.remove_peer(idx, Some(reason), now);
        }
    }
}

/// Queues one compound RTCP packet with a sender report for every slot of `peer` that was
/// sent audio lately (flushed with the connection's other writes).
/// Returns how many reports were written.
fn send_sender_reports(
    peer: &mut Peer,
    now: Instant,
    wall: &rtc::shared::time::SystemInstant,
) -> u64 {
    if !peer.connected {
        return 0;
    }
    let reports: Vec<Box<dyn rtc::rtcp::packet::Packet>> = peer
        .legs
        .iter()
        .filter_map(|leg| leg.sent.report(leg.rewriter.out_ssrc(), now, wall))
        .map(|sr| Box::new(sr) as Box<dyn rtc::rtcp::packet::Packet>)
        .collect();
    let n = reports.len() as u64;
    if n == 0 {
        return 0;
    }
    match peer.pc.handle_write(TaggedRTCMessage {
        now,
        message: RTCMessage::RtcpPacket(String::new(), reports),
    }) {
        Ok(()) => n,
        Err(_) => 0,
    }
}

/// RTP rather than RTCP (RFC 5761 §4: RTCP packet types 192..=223 in the second byte).
fn is_rtp_media(data: &[u8]) -> bool {
    matches!(data, [0x80..=0xBF, second, ..] if !(192..=223).contains(second)) && data.len() >= 12
}

fn housekeeping_due(peer: &Peer, peer_timeout: Duration, connect_timeout: Duration) -> Instant {
    if peer.ever_connected {
        peer.last_rx + peer_timeout
    } else {
        peer.created + connect_timeout
    }
}

#[cfg(test)]
mod tests;
