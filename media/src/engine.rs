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

    fn drain_reads(&mut self, idx: u32, now: Instant) {
        let mut packets = std::mem::take(&mut self.rtp_scratch);
        if let Some(peer) = self.peers.get_mut(idx as usize).and_then(Option::as_mut) {
            while let Some(TaggedRTCMessage { message, .. }) = peer.pc.poll_read() {
                match message {
                    RTCMessage::RtpPacket(_, packet) => packets.push(packet),
                    RTCMessage::RtcpPacket(_, rtcp) => {
                        let nacks = rtcp
                            .iter()
                            .filter(|p| p.as_any().is::<TransportLayerNack>())
                            .count();
                        if nacks > 0 {
                            self.counters
                                .nacks_received
                                .fetch_add(nacks as u64, Relaxed);
                        }
                    }
                    _ => {}
                }
            }
        }
        for packet in packets.drain(..) {
            self.forward(idx, packet, now);
        }
        self.rtp_scratch = packets;
    }

    /// Forwards one publisher packet to every subscriber the router picks.
    fn forward(&mut self, src: u32, packet: rtp::Packet, now: Instant) {
        self.counters.rtp_received.fetch_add(1, Relaxed);
        let payload_len = packet.payload.len() as u64;
        self.counters
            .rtp_bytes_received
            .fetch_add(payload_len, Relaxed);
        let Some(peer) = self.peers.get(src as usize).and_then(Option::as_ref) else {
            return;
        };
        let src_pid = peer.pid;
        let level_ext = peer
            .mic_audio_level_id
            .and_then(|id| packet.header.get_extension(id));
        let level = level_ext.as_deref().and_then(AudioLevel::from_payload);
        if self.relay.as_ref().is_some_and(|r| r.is_sending()) {
            self.relay_out(src_pid, level, &packet, now);
        }
        self.fan_out(src_pid, level, level_ext, &packet, now);
    }

    /// Sends one packet of `src_pid` (a local publisher, or a remote source heard over the
    /// relay) to every local subscriber the router picks. `level_ext` is the audio-level
    /// extension's payload, copied onto the subscribers' legs.
    fn fan_out(
        &mut self,
        src_pid: ParticipantId,
        level: Option<AudioLevel>,
        level_ext: Option<bytes::Bytes>,
        packet: &rtp::Packet,
        now: Instant,
    ) {
        let payload_len = packet.payload.len() as u64;
        let fanout = match self.router.on_packet(src_pid, level, now) {
            Route::Forward(fanout) => fanout,
            Route::Drop(reason) => {
                let counter = match reason {
                    DropReason::Muted => &self.counters.dropped_muted,
                    DropReason::NotPublisher => &self.counters.dropped_not_publisher,
                    DropReason::NotInSlot => &self.counters.dropped_not_in_slot,
                    DropReason::NoSubscribers | DropReason::UnknownParticipant => {
                        &self.counters.dropped_no_subscribers
                    }
                };
                counter.fetch_add(1, Relaxed);
                self.forward_router_events();
                return;
            }
        };
        let mut accepted = 0u64;
        for Delivery { slot, data, .. } in fanout {
            let Some(sub) = self.peers.get_mut(data as usize).and_then(Option::as_mut) else {
                continue;
            };
            let Some(leg) = sub.legs.get_mut(slot) else {
                continue;
            };
            // rtc silently drops writes before DTLS/SRTP is up: only write to ready legs.
            let Some(pt) = leg.payload_type.filter(|_| sub.connected) else {
                self.counters.dropped_not_ready.fetch_add(1, Relaxed);
                continue;
            };
            let out = match leg.rewriter.rewrite(
                RtpIn {
                    source: src_pid,
                    ssrc: packet.header.ssrc,
                    seq: packet.header.sequence_number,
                    ts: packet.header.timestamp,
                    marker: packet.header.marker,
                },
                now,
            ) {
                Ok(out) => out,
                Err(_) => {
                    self.counters.dropped_duplicate.fetch_add(1, Relaxed);
                    continue;
                }
            };
            let header = &mut self.rtp_header;
            header.marker = out.marker;
            header.payload_type = pt;
            header.sequence_number = out.seq;
            header.timestamp = out.ts;
            header.ssrc = out.ssrc;
            header.extension = false;
            header.extension_profile = 0;
            header.extensions.clear();
            if let (Some(id), Some(level)) = (leg.audio_level_id, &level_ext) {
                // Only the audio level survives: the publisher's other extensions (mid,
                // transport-cc, ...) were negotiated on its leg, not this one. Cloning
                // `Bytes` is a refcount bump.
                let _ = header.set_extension(id, level.clone());
            }
            // The lean path: marshal once into a reused buffer and encrypt it straight into the
            // send batch's buffer (`protect_rtp_into`, PATCHES.md), instead of moving the
            // packet through rtc's handler queues and allocating a buffer per copy. Sender
            // reports for the slot are ours (`sender_reports`).
            let plain = &mut self.rtp_out;
            let Ok(n) = header.marshal_to(plain) else {
                self.counters.dropped_write_error.fetch_add(1, Relaxed);
                continue;
            };
            let Some(end) = n
                .checked_add(packet.payload.len())
                .filter(|e| *e <= plain.len())
            else {
                self.counters.dropped_write_error.fetch_add(1, Relaxed);
                continue;
            };
            plain[n..end].copy_from_slice(&packet.payload);
            let pc = &mut sub.pc;
            let plain = &plain[..end];
            match self
                .batch
                .push_with(|buf| pc.protect_rtp_into(now, header, plain, buf))
            {
                Ok(true) => {
                    leg.sent.on_packet(out.ts, packet.payload.len(), now);
                    accepted += 1;
                }
                Ok(false) => {
                    self.counters.dropped_not_ready.fetch_add(1, Relaxed);
                }
                Err(_) => {
                    self.counters.dropped_write_error.fetch_add(1, Relaxed);
                }
            }
        }
        // Everything this packet fans out into leaves together, in as few system calls as
        // possible, when the driver sends the batch; counted then (`on_transmitted`).
        self.unsent_forwarded += accepted;
        self.unsent_forwarded_bytes += accepted * payload_len;
        self.forward_router_events();
    }

    /// Passes the router's queued events on; a refusal only once per participant (it is
    /// usually reported already at the socket, before decryption).
    fn forward_router_events(&mut self) {
        while let Some(event) = self.router.poll_event() {
            if let SfuEvent::MediaRefused { pid } = event {
                let Some(&idx) = self.by_pid.get(&pid) else {
                    continue;
                };
                let Some(peer) = self.peer_mut(idx) else {
                    continue;
                };
                if peer.refused_reported {
                    continue;
                }
                peer.refused_reported = true;
            }
            self.events.send(event);
        }
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
            self.forward_router_events();
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

    /// One request from an [`crate::Sfu`] handle; the reply goes out on its channel.
    pub(crate) fn handle_command(&mut self, now: Instant, cmd: Command) {
        match cmd {
            Command::Join {
                room,
                pid,
                can_publish,
                ticket,
                reply,
            } => {
                let result = self.join(room, pid, can_publish, ticket, now);
                let _ = reply.send(result);
            }
            Command::Answer { pid, sdp, reply } => {
                let result = self.with_peer(pid, |p| p.apply_answer(sdp, now));
                if let Some(&idx) = self.by_pid.get(&pid) {
                    self.after_io(idx, now);
                    self.replay_early_checks(idx, now);
                }
                let _ = reply.send(result);
            }
            Command::SetCanPublish {
                pid,
                can_publish,
                reply,
            } => {
                let result = self.set_can_publish(pid, can_publish, now);
                let _ = reply.send(result);
            }
            Command::RestartIce { pid, reply } => {
                let result = self.restart_ice(pid, now);
                let _ = reply.send(result);
            }
            Command::SetMuted { pid, muted, ticket } => {
                let current = self.with_peer(pid, |p| Ok(p.ticket == ticket));
                if current.unwrap_or(false) {
                    let _ = self.router.set_muted(pid, muted, now);
                    self.forward_router_events();
                }
            }
            Command::SlotMap { room, reply } => {
                let map = self
                    .router
                    .slot_map(room)
                    .map(|(slots, spare)| (slots.to_vec(), spare));
                let _ = reply.send(Ok(map));
            }
            Command::Leave { pid } => {
                if let Some(&idx) = self.by_pid.get(&pid) {
                    self.remove_peer(idx, None, now);
                }
            }
            Command::RelayAddSubscriber { room, node } => self.relay_subscribe(room, node, true),
            Command::RelayRemoveSubscriber { room, node } => {
                self.relay_subscribe(room, node, false);
            }
        }
    }

    fn with_peer<T>(
        &mut self,
        pid: ParticipantId,
        f: impl FnOnce(&mut Peer) -> Result<T, MediaError>,
    ) -> Result<T, MediaError> {
        let idx = *self
            .by_pid
            .get(&pid)
            .ok_or(MediaError::UnknownParticipant(pid))?;
        let peer = self
            .peer_mut(idx)
            .ok_or(MediaError::UnknownParticipant(pid))?;
        f(peer)
    }

    fn join(
        &mut self,
        room: RoomKey,
        pid: ParticipantId,
        can_publish: bool,
        ticket: u64,
        now: Instant,
    ) -> Result<Offer, MediaError> {
        if self.by_pid.contains_key(&pid) {
            return Err(MediaError::AlreadyJoined(pid));
        }
        if self.by_pid.len() >= MAX_PEERS {
            return Err(MediaError::Full);
        }
        // A participant that was heard from another node until now (it moved here) is
        // local from now on.
        self.drop_remote_source(pid, now);
        let params = PeerParams {
            certificate: &self.certificate,
            announce_ips: &self.announce_ips,
            port: self.ice_local_addr.port(),
            slots: self.cfg.slots,
            connect_timeout: self.cfg.connect_timeout,
        };
        // SSRCs only need to be unique within one connection; random ones also keep a
        // client from inferring anything across connections.
        let ssrcs = std::iter::repeat_with(rand::random::<u32>).filter(|s| *s != 0);
        let (mut peer, offer) = Peer::new(pid, can_publish, &params, ssrcs, now)?;
        peer.ticket = ticket;
        if self.by_ufrag.contains_key(&peer.ufrag) {
            return Err(MediaError::Rtc("ICE ufrag collision, retry".into()));
        }
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.peers.push(None);
                (self.peers.len() - 1) as u32
            }
        };
        if self
            .router
            .add_participant(pid, room, can_publish, idx, now)
            .is_err()
        {
            self.free.push(idx);
            return Err(MediaError::AlreadyJoined(pid));
        }
        self.by_ufrag.insert(peer.ufrag.clone(), idx);
        self.by_pid.insert(pid, idx);
        if can_publish {
            self.publishers += 1;
        }
        self.peers[idx as usize] = Some(Box::new(peer));
        self.forward_router_events();
        self.after_io(idx, now);
        self.update_gauges();
        Ok(offer)
    }

    fn set_can_publish(
        &mut self,
        pid: ParticipantId,
        can_publish: bool,
        now: Instant,
    ) -> Result<Offer, MediaError> {
        let was = self.with_peer(pid, |p| Ok(p.can_publish))?;
        let offer = self.with_peer(pid, |p| {
            p.set_can_publish(can_publish);
            p.make_offer(now)
        })?;
        let _ = self.router.set_can_publish(pid, can_publish, now);
        self.forward_router_events();
        if was && !can_publish {
            self.publishers -= 1;
        } else if !was && can_publish {
            self.publishers += 1;
        }
        if let Some(&idx) = self.by_pid.get(&pid) {
            self.after_io(idx, now);
        }
        self.update_gauges();
        Ok(offer)
    }

    fn restart_ice(&mut self, pid: ParticipantId, now: Instant) -> Result<Offer, MediaError> {
        let idx = *self
            .by_pid
            .get(&pid)
            .ok_or(MediaError::UnknownParticipant(pid))?;
        let old = self.with_peer(pid, |p| Ok(p.ufrag.clone()))?;
        let offer = self.with_peer(pid, |p| {
            p.pc.restart_ice();
            let offer = p.make_offer(now)?;
            // Checks with the new credentials can arrive before the client's answer.
            p.remote_ice_known = false;
            Ok(offer)
        })?;
        let new = self.with_peer(pid, |p| Ok(p.ufrag.clone()))?;
        if self.by_ufrag.get(&old) == Some(&idx) {
            self.by_ufrag.remove(&old);
        }
        self.by_ufrag.insert(new, idx);
        self.after_io(idx, now);
        self.update_gauges();
        Ok(offer)
    }

    /// Removes a connection and everything that refers to it.
    fn remove_peer(&mut self, idx: u32, reason: Option<DisconnectReason>, now: Instant) {
        // Say goodbye (DTLS close_notify) while the connection can still send.
        if let Some(peer) = self.peer_mut(idx) {
            let _ = peer.pc.close();
        }
        self.flush(idx);
        let Some(peer) = self.peers.get_mut(idx as usize).and_then(Option::take) else {
            return;
        };
        self.free.push(idx);
        if self.by_pid.get(&peer.pid) == Some(&idx) {
            self.by_pid.remove(&peer.pid);
            self.owners.release(peer.pid, peer.ticket);
        }
        for a in &peer.addrs {
            if self.by_addr.get(a) == Some(&idx) {
                self.by_addr.remove(a);
            }
        }
        if self.by_ufrag.get(&peer.ufrag) == Some(&idx) {
            self.by_ufrag.remove(&peer.ufrag);
        }
        if peer.can_publish {
            self.publishers -= 1;
        }
        if peer.connected {
            self.connected -= 1;
        }
        self.router.remove_participant(peer.pid, now);
        self.forward_router_events();
        if let Some(reason) = reason {
            self.counters.disconnects.fetch_add(1, Relaxed);
            self.events.send(SfuEvent::Disconnected {
                pid: peer.pid,
                reason,
            });
        }
        self.update_gauges();
    }

    fn update_gauges(&self) {
        let c = &self.counters;
        c.participants.store(self.by_pid.len() as u64, Relaxed);
        c.publishers.store(self.publishers, Relaxed);
        c.rooms.store(self.router.room_count() as u64, Relaxed);
        c.remote_addrs.store(self.by_addr.len() as u64, Relaxed);
        c.ufrags.store(self.by_ufrag.len() as u64, Relaxed);
        c.timer_entries.store(self.timers.len() as u64, Relaxed);
        c.connected.store(self.connected, Relaxed);
        c.subscriptions
            .store(self.router.subscription_count() as u64, Relaxed);
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

/// The core on virtual time: no socket, no clock; every `now` is the test's.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{self, EventReceiver};
    use crate::sfu::Owners;

    const CONNECT: Duration = Duration::from_secs(15);
    const PEER: Duration = Duration::from_secs(10);
    const MS: Duration = Duration::from_millis(1);

    struct Harness {
        core: Engine,
        events: EventReceiver,
        counters: Arc<Counters>,
        /// The virtual clock: only moves forward.
        now: Instant,
        /// Datagrams the core asked to send, with their destination.
        sent: Vec<SocketAddr>,
    }

    impl Harness {
        fn new() -> Harness {
            let cfg = SfuConfig {
                connect_timeout: CONNECT,
                peer_timeout: PEER,
                threads: 1,
                ..SfuConfig::default()
            };
            let counters = Arc::new(Counters::default());
            let (events, rx) = events::channel();
            let ctx = ShardContext {
                index: 0,
                cfg,
                announce_ips: vec![IpAddr::from([127, 0, 0, 1])],
                counters: counters.clone(),
                events,
                owners: Arc::new(Owners::default()),
            };
            let now = Instant::now();
            let core =
                Engine::new(SocketAddr::from(([127, 0, 0, 1], 40000)), ctx, now).expect("core");
            Harness {
                core,
                events: rx,
                counters,
                now,
                sent: Vec::new(),
            }
        }

        /// What the driver does after every input: send the queued datagrams (here: note
        /// where they go) and report them all sent.
        fn transmit(&mut self) {
            if let Some(batch) = self.core.poll_transmit() {
                let mut f = Flushed::default();
                for (d, to) in batch.drain() {
                    f.sent += 1;
                    f.bytes += d.len() as u64;
                    self.sent.push(to);
                }
                self.core.on_transmitted(f);
            }
        }

        fn join(&mut self, pid: u64) -> Offer {
            let (reply, mut rx) = oneshot::channel();
            let cmd = Command::Join {
                room: RoomKey(1),
                pid: ParticipantId(pid),
                can_publish: true,
                ticket: 1,
                reply,
            };
            self.core.handle_command(self.now, cmd);
            self.transmit();
            rx.try_recv().expect("replied at once").expect("joined")
        }

        fn datagram(&mut self, from: SocketAddr, data: &[u8]) {
            self.core.handle_datagram(self.now, from, data);
            self.transmit();
        }

        /// Runs every timeout the core asks for up to `until`, as the driver would on a
        /// clock that jumps straight to each deadline.
        fn advance_to(&mut self, until: Instant) {
            let mut stuck = 0;
            loop {
                let at = match self.core.poll_timeout() {
                    Some(at) if at <= until => at.max(self.now),
                    _ => break,
                };
                // A core that keeps asking for the same instant would spin a real driver.
                stuck = if at == self.now { stuck + 1 } else { 0 };
                assert!(stuck < 100, "the core asks for {at:?} again and again");
                self.now = at;
                self.core.handle_timeout(at);
                self.transmit();
            }
            self.now = until;
            self.core.handle_timeout(until);
            self.transmit();
        }

        fn participants(&self) -> u64 {
            self.counters.participants.load(Relaxed)
        }

        fn disconnections(&mut self) -> Vec<(ParticipantId, DisconnectReason)> {
            std::iter::from_fn(|| self.events.try_recv())
                .filter_map(|e| match e {
                    SfuEvent::Disconnected { pid, reason } => Some((pid, reason)),
                    _ => None,
                })
                .collect()
        }

        fn ufrag(&mut self, pid: u64) -> String {
            let idx = self.core.by_pid[&ParticipantId(pid)];
            self.core.peer_mut(idx).expect("peer").ufrag.clone()
        }
    }

    /// A STUN binding request naming `ufrag` as ours (RFC 8445 USERNAME "ours:theirs").
    fn binding_request(ufrag: &str) -> Vec<u8> {
        let username = format!("{ufrag}:client");
        let mut body = Vec::new();
        body.extend_from_slice(&0x0006u16.to_be_bytes());
        body.extend_from_slice(&(username.len() as u16).to_be_bytes());
        body.extend_from_slice(username.as_bytes());
        while body.len() % 4 != 0 {
            body.push(0);
        }
        let mut out = vec![0x00, 0x01];
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
        out.extend_from_slice(&[7u8; 12]);
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn a_peer_that_never_connects_is_removed_exactly_at_the_connect_timeout() {
        let mut h = Harness::new();
        let t0 = h.now;
        let offer = h.join(1);
        assert!(
            offer.sdp.contains("127.0.0.1 40000 typ host"),
            "{}",
            offer.sdp
        );
        assert_eq!(h.participants(), 1);

        h.advance_to(t0 + CONNECT - MS);
        assert_eq!(h.participants(), 1, "still waiting a millisecond before");
        assert_eq!(h.disconnections(), vec![]);

        h.advance_to(t0 + CONNECT);
        assert_eq!(h.participants(), 0);
        assert_eq!(
            h.disconnections(),
            vec![(ParticipantId(1), DisconnectReason::NeverConnected)]
        );
        assert_eq!(h.counters.disconnects.load(Relaxed), 1);
        assert_eq!(h.counters.ufrags.load(Relaxed), 0, "its ufrag is forgotten");
    }

    #[test]
    fn a_connected_peer_is_removed_peer_timeout_after_its_last_datagram_and_not_before() {
        let mut h = Harness::new();
        let t0 = h.now;
        h.join(1);
        let client = SocketAddr::from(([127, 0, 0, 1], 50000));
        // A check before the answer: held for it, and its address learnt.
        h.now = t0 + Duration::from_secs(1);
        let ufrag = h.ufrag(1);
        h.datagram(client, &binding_request(&ufrag));
        assert_eq!(h.counters.early_checks_held.load(Relaxed), 1);
        assert!(
            !h.sent.contains(&client),
            "a held check is not answered yet"
        );
        // ICE and DTLS are out of this test's reach: the connection is marked connected,
        // as the real handshake would.
        let idx = h.core.by_pid[&ParticipantId(1)];
        h.core.peer_mut(idx).expect("peer").ever_connected = true;
        // Traffic from the learnt address (a DTLS record rtc cannot use) is a sign of life.
        let last = t0 + Duration::from_secs(8);
        h.advance_to(last);
        h.datagram(client, &[22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(h.counters.unknown_source.load(Relaxed), 0);

        h.advance_to(t0 + CONNECT + Duration::from_secs(1));
        assert_eq!(
            h.participants(),
            1,
            "a connected peer outlives the connect timeout"
        );
        h.advance_to(last + PEER - MS);
        assert_eq!(h.participants(), 1, "still within the peer timeout");
        assert_eq!(h.disconnections(), vec![]);

        h.advance_to(last + PEER);
        assert_eq!(h.participants(), 0);
        assert_eq!(
            h.disconnections(),
            vec![(ParticipantId(1), DisconnectReason::Timeout)]
        );
        assert_eq!(
            h.counters.remote_addrs.load(Relaxed),
            0,
            "its address is forgotten"
        );
    }

    #[test]
    fn a_stalled_consumer_finds_the_rooms_latest_slots_then_every_disconnect_in_order() {
        let mut h = Harness::new();
        let t0 = h.now;
        for pid in 1..=3 {
            h.advance_to(t0 + (pid as u32) * MS);
            h.join(pid);
        }
        // Nobody connects; nobody reads the events. Two of three time out...
        h.advance_to(t0 + MS * 2 + CONNECT);
        let latest = h
            .core
            .router
            .slot_map(RoomKey(1))
            .map(|(s, p)| (s.to_vec(), p));
        let Some((slots, spare)) = latest else {
            panic!("participant 3 is still in the room");
        };
        // ...then the last, which empties the room (no slot event for an empty room).
        h.advance_to(t0 + MS * 3 + CONNECT);
        assert_eq!(h.participants(), 0);
        assert_eq!(h.events.len(), 4, "the slot changes wait as one entry");
        let events: Vec<SfuEvent> = std::iter::from_fn(|| h.events.try_recv()).collect();
        let gone = |pid| SfuEvent::Disconnected {
            pid: ParticipantId(pid),
            reason: DisconnectReason::NeverConnected,
        };
        assert_eq!(
            events,
            vec![
                SfuEvent::SlotsChanged {
                    room: RoomKey(1),
                    slots,
                    spare
                },
                gone(1),
                gone(2),
                gone(3),
            ],
            "the latest slot map in the first one's place, then the lifecycle in order"
        );
    }

    #[test]
    fn datagrams_from_nobody_and_truncated_ones_are_counted_and_dropped() {
        let mut h = Harness::new();
        h.join(1);
        let stranger = SocketAddr::from(([127, 0, 0, 1], 50001));
        h.datagram(stranger, &[22, 0xfe, 0xfd, 0, 0]);
        h.datagram(stranger, &binding_request("nosuchufrag"));
        assert_eq!(h.counters.unknown_source.load(Relaxed), 2);
        h.datagram(stranger, &vec![0x80; RECV_BUF]);
        assert_eq!(h.counters.malformed.load(Relaxed), 1);
        assert_eq!(h.counters.datagrams_received.load(Relaxed), 3);
        assert!(!h.sent.contains(&stranger), "nothing is sent to a stranger");
        assert_eq!(h.participants(), 1);
    }
}
