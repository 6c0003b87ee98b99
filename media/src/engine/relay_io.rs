//! The engine's side of the node-to-node relay ([`crate::relay`]): sending the packets of
//! local slot holders to subscribed nodes, receiving other nodes' relayed packets as remote
//! sources of a room, and removing remote sources that fall silent. Sans-I/O like the rest
//! of the engine: relay datagrams come in through [`Engine::handle_relay_datagram`] and go
//! out in their own batch ([`Engine::poll_relay_transmit`]), which the driver sends from
//! the thread's relay socket.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rtc::rtp;
use rtc::shared::marshal::Unmarshal;

use super::Engine;
use crate::batch::{Flushed, SendBatch};
use crate::ids::IdHashBuilder;
use crate::level::AudioLevel;
use crate::relay::{RelayDrop, RelayKey, RelayReceiver, RelaySender, RtpFields};
use crate::router::{Router, RouterError};
use crate::{ParticipantId, RelayConfig, RoomKey};

/// Every value of a one-byte audio-level extension payload, so a relayed packet's level
/// reaches the subscribers' legs as a `Bytes` without an allocation.
static LEVEL_BYTES: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = i as u8;
        i += 1;
    }
    t
};

/// The relay's state on one media thread.
pub(super) struct RelayState {
    sender: RelaySender,
    receiver: RelayReceiver,
    /// Relay datagrams queued for the driver to send from the relay socket.
    batch: SendBatch,
    /// Datagrams in `batch`, counted as sent once the driver reports the send.
    unsent: u64,
    remote_timeout: Duration,
    /// Remote sources present in the router, and when their last packet arrived.
    remotes: HashMap<ParticipantId, Instant, IdHashBuilder>,
    /// Per room with subscribing nodes: its local slot holders (the sources relayed) as
    /// of the last slot change, so one that leaves the slots is ended on the other nodes.
    relayed: HashMap<RoomKey, Vec<ParticipantId>>,
    /// When silent remote sources and idle replay windows are next looked for.
    next_sweep: Instant,
    /// The wall clock at `anchor` (µs since the epoch): send times and freshness are wall
    /// time, which the engine derives from the `now` it is given.
    anchor: Instant,
    anchor_unix_us: u64,
}

impl RelayState {
    /// The relay's state, or `None` when no secret is configured (relay off).
    pub(super) fn new(cfg: &RelayConfig, now: Instant) -> Option<RelayState> {
        let key = RelayKey::new(cfg.secret.as_ref()?);
        let anchor_unix_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        Some(RelayState {
            // Random per media thread and start, so a restarted node never reuses an id
            // whose sequence numbers receivers remember.
            sender: RelaySender::new(key.clone(), rand::random()),
            receiver: RelayReceiver::new(key),
            batch: SendBatch::default(),
            unsent: 0,
            remote_timeout: cfg.remote_timeout,
            remotes: HashMap::default(),
            relayed: HashMap::new(),
            next_sweep: now + sweep_interval(cfg.remote_timeout),
            anchor: now,
            anchor_unix_us,
        })
    }

    pub(super) fn is_sending(&self) -> bool {
        self.sender.is_active()
    }

    pub(super) fn poll_timeout(&self) -> Instant {
        self.next_sweep
    }

    fn unix_us(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.anchor).as_micros();
        self.anchor_unix_us
            .saturating_add(u64::try_from(since).unwrap_or(u64::MAX))
    }
}

/// How often silent remote sources are looked for: a remote source is removed between
/// `remote_timeout` and a quarter of it later.
fn sweep_interval(remote_timeout: Duration) -> Duration {
    (remote_timeout / 4).max(Duration::from_millis(50))
}

/// The local participants among a room's slot holders: what the relay sends.
fn local_holders(router: &Router<u32>, slots: &[Option<ParticipantId>]) -> Vec<ParticipantId> {
    slots
        .iter()
        .flatten()
        .copied()
        .filter(|pid| matches!(router.source_kind(*pid), Some((_, false))))
        .collect()
}

impl Engine {
    /// The relay datagrams queued to send from the relay socket, if any.
    pub(crate) fn poll_relay_transmit(&mut self) -> Option<&mut SendBatch> {
        self.relay
            .as_mut()
            .and_then(|r| (!r.batch.is_empty()).then_some(&mut r.batch))
    }

    /// What the driver's send of the relay batch did.
    pub(crate) fn on_relay_transmitted(&mut self, f: Flushed) {
        let Some(relay) = self.relay.as_mut() else {
            return;
        };
        let queued = std::mem::take(&mut relay.unsent);
        let dropped = f.would_block + f.errors;
        let c = &self.counters;
        c.relay_sent
            .fetch_add(queued.saturating_sub(dropped), Relaxed);
        c.relay_send_dropped.fetch_add(dropped, Relaxed);
    }

    /// Starts or stops relaying `room` to `node`.
    pub(super) fn relay_subscribe(&mut self, room: RoomKey, node: SocketAddr, on: bool) {
        let Some(relay) = self.relay.as_mut() else {
            tracing::debug!(%room, %node, "relay subscription ignored: the relay is off");
            return;
        };
        if on {
            if !relay.sender.add(room, node) {
                tracing::warn!(%room, %node, "relay subscription refused: too many nodes");
            }
            // What is relayed from now on, so the first slot change can end it.
            let router = &self.router;
            relay.relayed.entry(room).or_insert_with(|| {
                router
                    .slot_map(room)
                    .map(|(slots, _)| local_holders(router, slots))
                    .unwrap_or_default()
            });
        } else {
            relay.sender.remove(room, node);
            if relay.sender.nodes(room).is_empty() {
                relay.relayed.remove(&room);
            }
        }
        self.counters
            .relay_subscriptions
            .store(relay.sender.subscriptions() as u64, Relaxed);
    }

    /// Sends a local publisher's packet to the nodes subscribed to its room, if it holds
    /// one of the room's slots (only the top speakers travel between nodes).
    pub(super) fn relay_out(
        &mut self,
        src_pid: ParticipantId,
        level: Option<AudioLevel>,
        packet: &rtp::Packet,
        now: Instant,
    ) {
        let Some(room) = self.router.local_slot_holder_room(src_pid) else {
            return;
        };
        let Some(relay) = self.relay.as_mut() else {
            return;
        };
        let fields = RtpFields {
            marker: packet.header.marker,
            payload_type: packet.header.payload_type,
            seq: packet.header.sequence_number,
            ts: packet.header.timestamp,
            ssrc: packet.header.ssrc,
        };
        let now_us = relay.unix_us(now);
        let RelayState {
            sender,
            batch,
            unsent,
            ..
        } = relay;
        *unsent += sender.send(
            room,
            src_pid,
            level,
            &fields,
            &packet.payload,
            now_us,
            |d, to| batch.push(d, to),
        );
    }

    /// A room's slots changed: local sources that no longer hold a slot stop being relayed,
    /// and the subscribed nodes are told so at once (an `end` datagram), so none of them
    /// keeps such a source in a slot of its own while its packets no longer come.
    pub(super) fn relay_slots_changed(
        &mut self,
        room: RoomKey,
        slots: &[Option<ParticipantId>],
        now: Instant,
    ) {
        let Some(relay) = self.relay.as_mut() else {
            return;
        };
        if relay.sender.nodes(room).is_empty() {
            return;
        }
        let holders = local_holders(&self.router, slots);
        let before = relay.relayed.insert(room, holders.clone());
        let now_us = relay.unix_us(now);
        let RelayState {
            sender,
            batch,
            unsent,
            ..
        } = relay;
        for gone in before.unwrap_or_default() {
            if !holders.contains(&gone) {
                *unsent += sender.send_end(room, gone, now_us, |d, to| batch.push(d, to));
            }
        }
    }

    /// One datagram received on the relay socket from another node.
    pub(crate) fn handle_relay_datagram(&mut self, now: Instant, _from: SocketAddr, data: &[u8]) {
        self.counters.relay_datagrams_received.fetch_add(1, Relaxed);
        match self.accept_relayed(now, data) {
            Ok(()) => {
                self.counters.relay_received.fetch_add(1, Relaxed);
            }
            Err(reason) => {
                let c = &self.counters;
                let counter = match reason {
                    RelayDrop::Malformed => &c.relay_dropped_malformed,
                    RelayDrop::BadTag => &c.relay_dropped_bad_tag,
                    RelayDrop::Stale => &c.relay_dropped_stale,
                    RelayDrop::Replay => &c.relay_dropped_replay,
                    RelayDrop::UnknownRoom => &c.relay_dropped_unknown_room,
                    RelayDrop::IdCollision => &c.relay_dropped_id_collision,
                };
                counter.fetch_add(1, Relaxed);
            }
        }
    }

    fn accept_relayed(&mut self, now: Instant, data: &[u8]) -> Result<(), RelayDrop> {
        let relay = self.relay.as_mut().ok_or(RelayDrop::Malformed)?;
        if data.len() >= super::RECV_BUF {
            return Err(RelayDrop::Malformed);
        }
        let now_us = relay.unix_us(now);
        let (h, rtp_bytes) = relay.receiver.accept(data, now, now_us)?;
        if h.end {
            // Only a remote source of that room is ended; anything else is ignored.
            if self.router.source_kind(h.source) == Some((h.room, true))
                && relay.remotes.remove(&h.source).is_some()
            {
                self.router.remove_participant(h.source, now);
                self.counters.remote_sources_ended.fetch_add(1, Relaxed);
                self.counters
                    .remote_sources
                    .store(relay.remotes.len() as u64, Relaxed);
                self.forward_router_events(now);
            }
            return Ok(());
        }
        let packet =
            rtp::Packet::unmarshal(&mut &rtp_bytes[..]).map_err(|_| RelayDrop::Malformed)?;
        match self.router.source_kind(h.source) {
            Some((room, true)) if room == h.room => {}
            Some(_) => return Err(RelayDrop::IdCollision),
            None => match self.router.add_remote_source(h.source, h.room, now) {
                Ok(()) => {}
                Err(RouterError::UnknownRoom(_)) => return Err(RelayDrop::UnknownRoom),
                Err(_) => return Err(RelayDrop::IdCollision),
            },
        }
        relay.remotes.insert(h.source, now);
        self.counters
            .remote_sources
            .store(relay.remotes.len() as u64, Relaxed);
        let level_ext = h.level.map(|l| {
            let b = usize::from(l.dbov & 0x7F) | if l.voice { 0x80 } else { 0 };
            Bytes::from_static(&LEVEL_BYTES[b..=b])
        });
        self.fan_out(h.source, h.level, level_ext, &packet, now);
        Ok(())
    }

    /// Removes remote sources that fell silent and forgets idle senders' replay windows.
    pub(super) fn relay_timeout(&mut self, now: Instant) {
        let Some(relay) = self.relay.as_mut() else {
            return;
        };
        if now < relay.next_sweep {
            return;
        }
        relay.next_sweep = now + sweep_interval(relay.remote_timeout);
        relay.receiver.prune(now);
        let timeout = relay.remote_timeout;
        let silent: Vec<ParticipantId> = relay
            .remotes
            .iter()
            .filter(|(_, last)| now.saturating_duration_since(**last) >= timeout)
            .map(|(pid, _)| *pid)
            .collect();
        for pid in silent {
            relay.remotes.remove(&pid);
            // Gone already if its room emptied; or a local participant took the id since.
            if matches!(self.router.source_kind(pid), Some((_, true))) {
                self.router.remove_participant(pid, now);
                self.counters.remote_sources_timed_out.fetch_add(1, Relaxed);
            }
        }
        self.counters
            .remote_sources
            .store(relay.remotes.len() as u64, Relaxed);
        self.forward_router_events(now);
    }

    /// Forgets `pid` as a remote source (it joined here).
    pub(super) fn drop_remote_source(&mut self, pid: ParticipantId, now: Instant) {
        let Some(relay) = self.relay.as_mut() else {
            return;
        };
        if relay.remotes.remove(&pid).is_none() {
            return;
        }
        self.counters
            .remote_sources
            .store(relay.remotes.len() as u64, Relaxed);
        if matches!(self.router.source_kind(pid), Some((_, true))) {
            self.router.remove_participant(pid, now);
            self.forward_router_events(now);
        }
    }
}

/// The engine's relay on virtual time: no socket, no clock.
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test
mod tests {
    use std::net::IpAddr;
    use std::sync::Arc;

    use tokio::sync::oneshot;

    use super::*;
    use crate::engine::Command;
    use crate::events::{self, EventReceiver};
    use crate::relay::RelaySecret;
    use crate::sfu::{Owners, ShardContext};
    use crate::stats::Counters;
    use crate::{SfuConfig, SfuEvent};

    const ROOM: RoomKey = RoomKey(1);
    const TIMEOUT: Duration = Duration::from_secs(2);
    const MS: Duration = Duration::from_millis(1);

    fn secret() -> RelaySecret {
        RelaySecret::new(b"engine-test-secret-0123".to_vec()).unwrap()
    }

    fn engine(now: Instant) -> (Engine, Arc<Counters>, EventReceiver) {
        let cfg = SfuConfig {
            threads: 1,
            relay: RelayConfig {
                secret: Some(secret()),
                remote_timeout: TIMEOUT,
                ..RelayConfig::default()
            },
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
        let e = Engine::new(SocketAddr::from(([127, 0, 0, 1], 40000)), ctx, now).unwrap();
        (e, counters, rx)
    }

    fn join_listener(e: &mut Engine, pid: u64, now: Instant) {
        let (reply, mut rx) = oneshot::channel();
        e.handle_command(
            now,
            Command::Join {
                room: ROOM,
                pid: ParticipantId(pid),
                can_publish: false,
                ticket: 1,
                reply,
            },
        );
        rx.try_recv().unwrap().unwrap();
    }

    /// A datagram from another node's sender, stamped with the engine's own wall clock.
    fn relayed(
        sender: &mut RelaySender,
        e: &Engine,
        room: RoomKey,
        src: u64,
        now: Instant,
    ) -> Vec<u8> {
        let now_us = e.relay.as_ref().unwrap().unix_us(now);
        let rtp = RtpFields {
            marker: false,
            payload_type: 111,
            seq: 1,
            ts: 960,
            ssrc: 5,
        };
        let level = Some(AudioLevel {
            dbov: 20,
            voice: true,
        });
        let mut out = Vec::new();
        sender.send(
            room,
            ParticipantId(src),
            level,
            &rtp,
            b"opus",
            now_us,
            |d, _| out = d.to_vec(),
        );
        out
    }

    fn other_node() -> RelaySender {
        let mut s = RelaySender::new(RelayKey::new(&secret()), 99);
        s.add(ROOM, SocketAddr::from(([127, 0, 0, 1], 1)));
        s.add(RoomKey(2), SocketAddr::from(([127, 0, 0, 1], 1)));
        s
    }

    #[test]
    fn a_remote_source_takes_a_slot_and_is_removed_after_the_remote_timeout() {
        let t0 = Instant::now();
        let (mut e, c, mut events) = engine(t0);
        let from = SocketAddr::from(([10, 0, 0, 1], 7782));
        join_listener(&mut e, 2, t0);
        let mut node = other_node();
        let d = relayed(&mut node, &e, ROOM, 7, t0);
        e.handle_relay_datagram(t0, from, &d);
        assert_eq!(c.relay_received.load(Relaxed), 1);
        assert_eq!(c.remote_sources.load(Relaxed), 1);
        assert_eq!(
            e.router.slot_map(ROOM).unwrap().0[0],
            Some(ParticipantId(7)),
            "the remote source fills a free slot at once"
        );
        let got: Vec<SfuEvent> = std::iter::from_fn(|| events.try_recv()).collect();
        assert!(
            got.iter()
                .any(|ev| matches!(ev, SfuEvent::SlotsChanged { slots, .. }
            if slots[0] == Some(ParticipantId(7)))),
            "{got:?}"
        );
        e.handle_relay_datagram(t0, from, &d);
        assert_eq!(c.relay_dropped_replay.load(Relaxed), 1);
        // Kept until the timeout, removed within a quarter of it after.
        let mut now = t0;
        while now < t0 + TIMEOUT - MS {
            now = e.poll_timeout().unwrap().min(t0 + TIMEOUT - MS);
            e.handle_timeout(now);
        }
        assert_eq!(c.remote_sources.load(Relaxed), 1);
        while now < t0 + TIMEOUT + TIMEOUT / 4 {
            now = e.poll_timeout().unwrap();
            e.handle_timeout(now);
        }
        assert_eq!(c.remote_sources.load(Relaxed), 0);
        assert_eq!(c.remote_sources_timed_out.load(Relaxed), 1);
        assert_eq!(
            e.router.slot_map(ROOM).unwrap().0[0],
            None,
            "its slot is freed"
        );
        assert_eq!(e.router.source_kind(ParticipantId(7)), None);
    }

    #[test]
    fn relayed_media_for_an_unknown_room_or_a_taken_id_is_refused() {
        let t0 = Instant::now();
        let (mut e, c, _events) = engine(t0);
        let from = SocketAddr::from(([10, 0, 0, 1], 7782));
        join_listener(&mut e, 2, t0);
        let mut node = other_node();
        let d = relayed(&mut node, &e, RoomKey(2), 7, t0);
        e.handle_relay_datagram(t0, from, &d);
        assert_eq!(c.relay_dropped_unknown_room.load(Relaxed), 1);
        let d = relayed(&mut node, &e, ROOM, 2, t0);
        e.handle_relay_datagram(t0, from, &d);
        assert_eq!(c.relay_dropped_id_collision.load(Relaxed), 1, "2 is local");
        let late = relayed(&mut node, &e, ROOM, 7, t0);
        e.handle_relay_datagram(t0 + Duration::from_secs(11), from, &late);
        assert_eq!(c.relay_dropped_stale.load(Relaxed), 1);
        e.handle_relay_datagram(t0, from, b"CHR\x01 too short");
        assert_eq!(c.relay_dropped_malformed.load(Relaxed), 1);
        assert_eq!(c.relay_received.load(Relaxed), 0);
        assert_eq!(c.relay_datagrams_received.load(Relaxed), 4);
        // A participant that joins here under a remote source's id replaces it.
        let d = relayed(&mut node, &e, ROOM, 9, t0);
        e.handle_relay_datagram(t0, from, &d);
        assert_eq!(e.router.source_kind(ParticipantId(9)), Some((ROOM, true)));
        join_listener(&mut e, 9, t0);
        assert_eq!(e.router.source_kind(ParticipantId(9)), Some((ROOM, false)));
        assert_eq!(c.remote_sources.load(Relaxed), 0);
    }
}
