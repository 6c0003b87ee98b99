//! The forwarding half of the engine: draining a connection's decrypted reads, the
//! per-packet routing decision and the fan-out to subscribers' slot legs (rewritten,
//! marshalled once, encrypted straight into the send batch), and the router's events
//! mapped onto `SfuEvent`s.

use super::*;

impl Engine {
    pub(super) fn drain_reads(&mut self, idx: u32, now: Instant) {
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
    pub(super) fn forward(&mut self, src: u32, packet: rtp::Packet, now: Instant) {
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
    pub(super) fn fan_out(
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
                self.forward_router_events(now);
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
        self.forward_router_events(now);
    }

    /// Passes the router's queued events on; a refusal only once per participant (it is
    /// usually reported already at the socket, before decryption).
    pub(super) fn forward_router_events(&mut self, now: Instant) {
        while let Some(event) = self.router.poll_event() {
            if let SfuEvent::SlotsChanged { room, slots, .. } = &event {
                self.relay_slots_changed(*room, slots, now);
            }
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
}
