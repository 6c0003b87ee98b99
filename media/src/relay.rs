//! The node-to-node media relay (issue 11): one room spread over several Chorus nodes.
//!
//! A node whose local publishers hold slots in a room sends their packets, once each, to
//! every node that subscribed to the room (`Sfu::relay_add_subscriber`); a subscribing
//! node feeds them into its router as *remote sources* of the room, where they take part in
//! speaker selection with the level they carry and are fanned out to its local listeners
//! on the usual slots. Only local slot holders are relayed (never a remote source, so
//! nothing comes back), so a relay stream carries at most the room's slot count of
//! streams. A source that leaves the sender's slots is ended with one datagram whose
//! `end` flag is set, and the receivers drop it at once rather than after the remote
//! timeout.
//!
//! This module owns the wire format and the receiving checks, sans-I/O: the caller passes
//! `now` and the wall-clock time. Wire format, one UDP datagram per RTP packet, integers
//! big-endian:
//!
//! ```text
//!  0  magic "CHR" and version 1                           4 bytes
//!  4  sender: random id of the sending media thread      8
//! 12  seq: per-sender counter, strictly increasing        8
//! 20  sent_at: sender's wall clock, µs since the epoch    8
//! 28  room: the room's RoomKey                            8
//! 36  source: the publisher's ParticipantId               8
//! 44  flags: bit 0 level present, bit 1 RFC 6464 V flag,  1
//!     bit 2 end: the sender stopped relaying this source
//!     (it left the sender's slots); the RTP packet is an
//!     empty placeholder
//! 45  level: -dBov (0..=127)                              1
//! 46  the RTP packet, unencrypted (RFC 3550 fixed header, no extensions, the payload)
//! -32 HMAC-SHA256 over everything before it, keyed with the shared secret
//! ```
//!
//! The payload is not encrypted: relays run between nodes on a private network. The tag
//! authenticates everything; the receiver then refuses packets whose `sent_at` is more
//! than [`FRESHNESS`] from its own clock (so nodes need synchronised clocks, NTP) and
//! packets it has seen (a sliding window of [`REPLAY_WINDOW`] sequence numbers per
//! sender id, which is inside the tag, so a replay from a spoofed address is caught too).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::ids::{IdHashBuilder, ParticipantId, RoomKey};
use crate::level::AudioLevel;

/// Magic and version, the first four bytes of every relay datagram.
pub const MAGIC: [u8; 4] = *b"CHR\x01";
/// Bytes before the RTP packet.
pub const HEADER_LEN: usize = 46;
/// Bytes of the HMAC-SHA256 tag at the end.
pub const TAG_LEN: usize = 32;
/// The smallest RTP packet (a fixed header without payload).
const MIN_RTP: usize = 12;
/// How far a packet's send time may be from the receiver's clock, either way.
pub const FRESHNESS: Duration = Duration::from_secs(10);
/// Sequence numbers per sender the receiver remembers (older ones are refused).
pub const REPLAY_WINDOW: u64 = 128;
/// Senders whose replay windows are kept; beyond it the least recently heard is forgotten.
const MAX_SENDERS: usize = 1024;
/// Nodes one room is relayed to at most (one per node that has listeners of the room).
pub(crate) const MAX_SUBSCRIBERS_PER_ROOM: usize = 64;
/// Rooms with subscribers per media thread at most (the control plane's commands, bounded).
const MAX_RELAYED_ROOMS: usize = 100_000;
/// Shortest secret accepted.
pub const MIN_SECRET_LEN: usize = 16;

type HmacSha256 = Hmac<Sha256>;

/// Why a relay datagram was not used. Bounded set, usable as a metric label.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum RelayDrop {
    /// Too short, too long, wrong magic or version, or an RTP packet that does not parse.
    Malformed,
    /// The HMAC tag does not match (wrong secret, or altered in transit).
    BadTag,
    /// Sent more than [`FRESHNESS`] from the receiver's clock.
    Stale,
    /// This sender's sequence number was seen already, or is older than its window.
    Replay,
    /// The room has no local members on this node (nobody here to hear it).
    UnknownRoom,
    /// The source's id is a local participant's, or a remote source of another room.
    IdCollision,
}

impl RelayDrop {
    /// Stable metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            RelayDrop::Malformed => "malformed",
            RelayDrop::BadTag => "bad_tag",
            RelayDrop::Stale => "stale",
            RelayDrop::Replay => "replay",
            RelayDrop::UnknownRoom => "unknown_room",
            RelayDrop::IdCollision => "id_collision",
        }
    }
}

/// The shared secret between the nodes of a cluster. Its `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct RelaySecret(Vec<u8>);

impl RelaySecret {
    /// A secret of at least [`MIN_SECRET_LEN`] bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<RelaySecret, crate::MediaError> {
        let bytes = bytes.into();
        if bytes.len() < MIN_SECRET_LEN {
            return Err(crate::MediaError::Config(format!(
                "the relay secret must be at least {MIN_SECRET_LEN} bytes"
            )));
        }
        Ok(RelaySecret(bytes))
    }
}

impl std::fmt::Debug for RelaySecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RelaySecret(..)")
    }
}

/// The HMAC keyed once with the secret; each packet clones the keyed state.
#[derive(Clone)]
pub struct RelayKey(HmacSha256);

impl RelayKey {
    pub fn new(secret: &RelaySecret) -> RelayKey {
        // HMAC takes keys of any length; the error case cannot happen, but is not unwrapped.
        let mac = HmacSha256::new_from_slice(&secret.0)
            .unwrap_or_else(|_| HmacSha256::new(&Default::default()));
        RelayKey(mac)
    }
}

/// Everything in a relay datagram but the RTP packet.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct RelayHeader {
    pub sender: u64,
    pub seq: u64,
    /// Sender's wall clock, microseconds since the Unix epoch.
    pub sent_at_us: u64,
    pub room: RoomKey,
    pub source: ParticipantId,
    /// The packet's audio level, which the receiving router's speaker selection uses.
    pub level: Option<AudioLevel>,
    /// The sender stopped relaying `source`: the receiver drops it as a remote source at
    /// once (rather than after its remote timeout), so no node keeps a slot for a speaker
    /// whose packets no longer come. The datagram's RTP packet is an empty placeholder.
    pub end: bool,
}

/// The fields of the RTP fixed header the relay carries.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct RtpFields {
    pub marker: bool,
    pub payload_type: u8,
    pub seq: u16,
    pub ts: u32,
    pub ssrc: u32,
}

/// Appends one relay datagram to `out`: header, RTP packet (fixed header and `payload`),
/// tag.
pub fn encode(key: &RelayKey, h: &RelayHeader, rtp: &RtpFields, payload: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&h.sender.to_be_bytes());
    out.extend_from_slice(&h.seq.to_be_bytes());
    out.extend_from_slice(&h.sent_at_us.to_be_bytes());
    out.extend_from_slice(&h.room.0.to_be_bytes());
    out.extend_from_slice(&h.source.0.to_be_bytes());
    let end = if h.end { 4 } else { 0 };
    match h.level {
        Some(l) => {
            out.push(end | 1 | if l.voice { 2 } else { 0 });
            out.push(l.dbov & 0x7F);
        }
        None => out.extend_from_slice(&[end, 0]),
    }
    out.push(0x80);
    out.push(u8::from(rtp.marker) << 7 | (rtp.payload_type & 0x7F));
    out.extend_from_slice(&rtp.seq.to_be_bytes());
    out.extend_from_slice(&rtp.ts.to_be_bytes());
    out.extend_from_slice(&rtp.ssrc.to_be_bytes());
    out.extend_from_slice(payload);
    let mut mac = key.0.clone();
    mac.update(&out[start..]);
    out.extend_from_slice(&mac.finalize().into_bytes());
}

/// Checks the tag and parses the header; returns it and the RTP packet's bytes. Never
/// panics, whatever the bytes.
pub fn decode<'a>(
    key: &RelayKey,
    datagram: &'a [u8],
) -> Result<(RelayHeader, &'a [u8]), RelayDrop> {
    if datagram.len() < HEADER_LEN + MIN_RTP + TAG_LEN || datagram[..4] != MAGIC {
        return Err(RelayDrop::Malformed);
    }
    let (signed, tag) = datagram.split_at(datagram.len() - TAG_LEN);
    let mut mac = key.0.clone();
    mac.update(signed);
    mac.verify_slice(tag).map_err(|_| RelayDrop::BadTag)?;
    let u64_at = |i: usize| -> Result<u64, RelayDrop> {
        signed
            .get(i..i + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes)
            .ok_or(RelayDrop::Malformed)
    };
    let flags = signed[44];
    let level = (flags & 1 != 0).then(|| AudioLevel {
        dbov: signed[45] & 0x7F,
        voice: flags & 2 != 0,
    });
    let header = RelayHeader {
        sender: u64_at(4)?,
        seq: u64_at(12)?,
        sent_at_us: u64_at(20)?,
        room: RoomKey(u64_at(28)?),
        source: ParticipantId(u64_at(36)?),
        level,
        end: flags & 4 != 0,
    };
    Ok((header, &signed[HEADER_LEN..]))
}

/// Which sequence numbers of one sender were seen: the highest, and a bitmap of the
/// [`REPLAY_WINDOW`] before it (bit i: `top - i` seen). Accepts reordering within the window.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ReplayWindow {
    top: u64,
    seen: u128,
}

impl ReplayWindow {
    /// A window that has seen only `seq`.
    pub fn new(seq: u64) -> ReplayWindow {
        ReplayWindow { top: seq, seen: 1 }
    }

    /// Records `seq`; false if it was seen already or is older than the window.
    pub fn accept(&mut self, seq: u64) -> bool {
        if seq > self.top {
            let shift = seq - self.top;
            self.seen = if shift >= REPLAY_WINDOW {
                0
            } else {
                self.seen << shift
            };
            self.seen |= 1;
            self.top = seq;
            return true;
        }
        let back = self.top - seq;
        if back >= REPLAY_WINDOW {
            return false;
        }
        let bit = 1u128 << back;
        if self.seen & bit != 0 {
            return false;
        }
        self.seen |= bit;
        true
    }
}

/// The receiving side's checks: tag, freshness, replay.
pub struct RelayReceiver {
    key: RelayKey,
    windows: HashMap<u64, (ReplayWindow, Instant), IdHashBuilder>,
}

impl RelayReceiver {
    pub fn new(key: RelayKey) -> RelayReceiver {
        RelayReceiver {
            key,
            windows: HashMap::default(),
        }
    }

    /// Checks one datagram received at `now` (wall clock `now_us`, µs since the epoch).
    /// On success the sequence number is recorded, so the same datagram is refused next
    /// time.
    pub fn accept<'a>(
        &mut self,
        datagram: &'a [u8],
        now: Instant,
        now_us: u64,
    ) -> Result<(RelayHeader, &'a [u8]), RelayDrop> {
        let (h, rtp) = decode(&self.key, datagram)?;
        let freshness = FRESHNESS.as_micros() as u64;
        if h.sent_at_us.abs_diff(now_us) > freshness {
            return Err(RelayDrop::Stale);
        }
        match self.windows.get_mut(&h.sender) {
            Some((window, seen)) => {
                if !window.accept(h.seq) {
                    return Err(RelayDrop::Replay);
                }
                *seen = now;
            }
            None => {
                if self.windows.len() >= MAX_SENDERS {
                    self.forget_oldest();
                }
                self.windows
                    .insert(h.sender, (ReplayWindow::new(h.seq), now));
            }
        }
        Ok((h, rtp))
    }

    /// Forgets senders not heard for longer than twice [`FRESHNESS`]: anything they sent
    /// before is stale by now, so their windows protect nothing.
    pub fn prune(&mut self, now: Instant) {
        self.windows
            .retain(|_, (_, seen)| now.saturating_duration_since(*seen) <= 2 * FRESHNESS);
    }

    /// Senders remembered.
    pub fn senders(&self) -> usize {
        self.windows.len()
    }

    fn forget_oldest(&mut self) {
        let oldest = self
            .windows
            .iter()
            .min_by_key(|(_, (_, seen))| *seen)
            .map(|(id, _)| *id);
        if let Some(id) = oldest {
            self.windows.remove(&id);
        }
    }
}

/// The sending side: this media thread's id and counter, and which nodes each room goes to.
pub struct RelaySender {
    key: RelayKey,
    sender: u64,
    next_seq: u64,
    subscribers: HashMap<RoomKey, Vec<std::net::SocketAddr>, IdHashBuilder>,
    /// Reused buffer one datagram is encoded into before it is copied per node.
    scratch: Vec<u8>,
}

impl RelaySender {
    /// `sender` should be random (a restarted node must not reuse its predecessor's id,
    /// whose sequence numbers receivers still remember).
    pub fn new(key: RelayKey, sender: u64) -> RelaySender {
        RelaySender {
            key,
            sender,
            next_seq: 0,
            subscribers: HashMap::default(),
            scratch: Vec::with_capacity(2048),
        }
    }

    /// Sends `room` to `node` from now on; false if a limit refused it.
    pub fn add(&mut self, room: RoomKey, node: std::net::SocketAddr) -> bool {
        if !self.subscribers.contains_key(&room) && self.subscribers.len() >= MAX_RELAYED_ROOMS {
            return false;
        }
        let nodes = self.subscribers.entry(room).or_default();
        if nodes.contains(&node) {
            return true;
        }
        if nodes.len() >= MAX_SUBSCRIBERS_PER_ROOM {
            return false;
        }
        nodes.push(node);
        true
    }

    pub fn remove(&mut self, room: RoomKey, node: std::net::SocketAddr) {
        if let Some(nodes) = self.subscribers.get_mut(&room) {
            nodes.retain(|n| *n != node);
            if nodes.is_empty() {
                self.subscribers.remove(&room);
            }
        }
    }

    /// Whether any room is relayed (the per-packet path skips the relay otherwise).
    pub fn is_active(&self) -> bool {
        !self.subscribers.is_empty()
    }

    /// Nodes `room` is relayed to.
    pub fn nodes(&self, room: RoomKey) -> &[std::net::SocketAddr] {
        self.subscribers.get(&room).map_or(&[], Vec::as_slice)
    }

    /// (room, node) pairs.
    pub fn subscriptions(&self) -> usize {
        self.subscribers.values().map(Vec::len).sum()
    }

    /// Encodes one packet of `source` for `room` (one sequence number for all its nodes:
    /// each receiver keeps its own window) and hands the datagram and each node to `emit`.
    /// Returns how many were emitted.
    #[allow(clippy::too_many_arguments)]
    pub fn send(
        &mut self,
        room: RoomKey,
        source: ParticipantId,
        level: Option<AudioLevel>,
        rtp: &RtpFields,
        payload: &[u8],
        now_us: u64,
        mut emit: impl FnMut(&[u8], std::net::SocketAddr),
    ) -> u64 {
        let header = self.header(room, source, level, false, now_us);
        self.emit(&header, rtp, payload, &mut emit)
    }

    /// Tells the nodes subscribed to `room` that `source` is no longer relayed (it left
    /// this node's slots, or the node). Returns how many datagrams were emitted.
    pub fn send_end(
        &mut self,
        room: RoomKey,
        source: ParticipantId,
        now_us: u64,
        mut emit: impl FnMut(&[u8], std::net::SocketAddr),
    ) -> u64 {
        let header = self.header(room, source, None, true, now_us);
        let placeholder = RtpFields {
            marker: false,
            payload_type: 0,
            seq: 0,
            ts: 0,
            ssrc: 0,
        };
        self.emit(&header, &placeholder, &[], &mut emit)
    }

    /// The header of the next datagram (`emit` consumes its sequence number).
    fn header(
        &self,
        room: RoomKey,
        source: ParticipantId,
        level: Option<AudioLevel>,
        end: bool,
        now_us: u64,
    ) -> RelayHeader {
        RelayHeader {
            sender: self.sender,
            seq: self.next_seq,
            sent_at_us: now_us,
            room,
            source,
            level,
            end,
        }
    }

    fn emit(
        &mut self,
        header: &RelayHeader,
        rtp: &RtpFields,
        payload: &[u8],
        emit: &mut impl FnMut(&[u8], std::net::SocketAddr),
    ) -> u64 {
        let Some(nodes) = self.subscribers.get(&header.room) else {
            return 0;
        };
        self.next_seq += 1;
        self.scratch.clear();
        encode(&self.key, header, rtp, payload, &mut self.scratch);
        for node in nodes {
            emit(&self.scratch, *node);
        }
        nodes.len() as u64
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn key(s: &str) -> RelayKey {
        RelayKey::new(&RelaySecret::new(s.as_bytes().to_vec()).unwrap())
    }

    fn header(seq: u64, sent_at_us: u64) -> RelayHeader {
        RelayHeader {
            sender: 0xDEAD_BEEF,
            seq,
            sent_at_us,
            room: RoomKey(7),
            source: ParticipantId(42),
            level: Some(AudioLevel {
                dbov: 30,
                voice: true,
            }),
            end: false,
        }
    }

    const RTP: RtpFields = RtpFields {
        marker: true,
        payload_type: 111,
        seq: 65535,
        ts: 0xFFFF_FFF0,
        ssrc: 0x1234_5678,
    };

    fn datagram(k: &RelayKey, h: &RelayHeader, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(k, h, &RTP, payload, &mut out);
        out
    }

    #[test]
    fn a_datagram_round_trips_with_its_header_and_plain_rtp() {
        let k = key("0123456789abcdef-secret");
        let h = header(5, 1_700_000_000_000_000);
        let d = datagram(&k, &h, b"opus!");
        assert_eq!(d.len(), HEADER_LEN + 12 + 5 + TAG_LEN);
        let (got, rtp) = decode(&k, &d).unwrap();
        assert_eq!(got, h);
        let packet = {
            use rtc::shared::marshal::Unmarshal;
            rtc::rtp::Packet::unmarshal(&mut &rtp[..]).unwrap()
        };
        assert_eq!(packet.header.ssrc, RTP.ssrc);
        assert_eq!(packet.header.sequence_number, RTP.seq);
        assert_eq!(packet.header.timestamp, RTP.ts);
        assert!(packet.header.marker);
        assert_eq!(packet.header.payload_type, 111);
        assert_eq!(&packet.payload[..], b"opus!");
        let silent = RelayHeader { level: None, ..h };
        assert_eq!(decode(&k, &datagram(&k, &silent, b"")).unwrap().0, silent);
        for level in [None, h.level] {
            let end = RelayHeader {
                end: true,
                level,
                ..h
            };
            assert_eq!(decode(&k, &datagram(&k, &end, b"")).unwrap().0, end);
        }
    }

    #[test]
    fn an_end_datagram_names_the_source_and_goes_to_every_node() {
        let k = key("0123456789abcdef-secret");
        let mut s = RelaySender::new(k.clone(), 9);
        let a: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: std::net::SocketAddr = "127.0.0.1:2".parse().unwrap();
        assert_eq!(s.send_end(RoomKey(7), ParticipantId(42), 5, |_, _| {}), 0);
        s.add(RoomKey(7), a);
        s.add(RoomKey(7), b);
        let mut out = Vec::new();
        let n = s.send_end(RoomKey(7), ParticipantId(42), 5, |d, to| {
            out.push((decode(&k, d).unwrap().0, to));
        });
        assert_eq!(n, 2);
        assert_eq!(out.len(), 2);
        for (h, _) in &out {
            assert!(h.end && h.level.is_none());
            assert_eq!((h.room, h.source), (RoomKey(7), ParticipantId(42)));
        }
    }

    #[test]
    fn a_wrong_secret_or_any_flipped_bit_fails_the_tag() {
        let k = key("0123456789abcdef-secret");
        let d = datagram(&k, &header(1, 10), b"payload");
        assert_eq!(
            decode(&key("0123456789abcdef-other!"), &d).unwrap_err(),
            RelayDrop::BadTag
        );
        for i in 4..d.len() {
            let mut bad = d.clone();
            bad[i] ^= 0x01;
            assert_eq!(decode(&k, &bad).unwrap_err(), RelayDrop::BadTag, "byte {i}");
        }
        let mut bad = d.clone();
        bad[0] = b'X';
        assert_eq!(decode(&k, &bad).unwrap_err(), RelayDrop::Malformed);
        assert_eq!(
            decode(&k, &d[..HEADER_LEN + 11 + TAG_LEN]).unwrap_err(),
            RelayDrop::Malformed
        );
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(RelaySecret::new(b"short".to_vec()).is_err());
        assert_eq!(
            format!("{:?}", RelaySecret::new(vec![b'x'; 32]).unwrap()),
            "RelaySecret(..)"
        );
    }

    #[test]
    fn the_replay_window_accepts_reordering_and_refuses_repeats_and_the_too_old() {
        let mut w = ReplayWindow::new(1000);
        assert!(!w.accept(1000));
        assert!(w.accept(1002));
        assert!(w.accept(1001), "late but inside the window");
        assert!(!w.accept(1001));
        assert!(w.accept(1002 - 127), "the window's oldest");
        assert!(!w.accept(1002 - 128), "just outside it");
        assert!(w.accept(10_000), "a jump forward");
        assert!(!w.accept(1002), "now far behind");
        assert!(w.accept(9_999));
        assert!(!w.accept(10_000));
    }

    #[test]
    fn the_receiver_refuses_replays_and_stale_packets() {
        let k = key("0123456789abcdef-secret");
        let mut r = RelayReceiver::new(k.clone());
        let t = Instant::now();
        let wall = 1_700_000_000_000_000u64;
        let d1 = datagram(&k, &header(1, wall), b"a");
        assert!(r.accept(&d1, t, wall).is_ok());
        assert_eq!(r.accept(&d1, t, wall).unwrap_err(), RelayDrop::Replay);
        let d0 = datagram(&k, &header(0, wall), b"a");
        assert!(r.accept(&d0, t, wall).is_ok(), "reordered, not replayed");
        let ten = FRESHNESS.as_micros() as u64;
        let late = datagram(&k, &header(2, wall - ten - 1), b"a");
        assert_eq!(r.accept(&late, t, wall).unwrap_err(), RelayDrop::Stale);
        let future = datagram(&k, &header(3, wall + ten + 1), b"a");
        assert_eq!(r.accept(&future, t, wall).unwrap_err(), RelayDrop::Stale);
        let edge = datagram(&k, &header(4, wall - ten), b"a");
        assert!(r.accept(&edge, t, wall).is_ok());
        // A stale packet does not open or move a window.
        assert_eq!(r.senders(), 1);
        r.prune(t + 2 * FRESHNESS);
        assert_eq!(r.senders(), 1);
        r.prune(t + 2 * FRESHNESS + Duration::from_millis(1));
        assert_eq!(r.senders(), 0);
    }

    #[test]
    fn the_receiver_keeps_a_bounded_number_of_senders() {
        let k = key("0123456789abcdef-secret");
        let mut r = RelayReceiver::new(k.clone());
        let t = Instant::now();
        for s in 0..(MAX_SENDERS as u64 + 10) {
            let h = RelayHeader {
                sender: s,
                ..header(0, 0)
            };
            assert!(r.accept(&datagram(&k, &h, b""), t, 0).is_ok());
        }
        assert_eq!(r.senders(), MAX_SENDERS);
    }

    #[test]
    fn the_sender_sends_one_copy_per_node_and_numbers_packets() {
        let k = key("0123456789abcdef-secret");
        let mut s = RelaySender::new(k.clone(), 9);
        let a: std::net::SocketAddr = "10.0.0.1:7782".parse().unwrap();
        let b: std::net::SocketAddr = "10.0.0.2:7782".parse().unwrap();
        assert!(!s.is_active());
        assert!(s.add(RoomKey(1), a));
        assert!(s.add(RoomKey(1), a), "idempotent");
        assert!(s.add(RoomKey(1), b));
        assert_eq!(s.subscriptions(), 2);
        let mut out = Vec::new();
        let n = s.send(
            RoomKey(1),
            ParticipantId(3),
            None,
            &RTP,
            b"x",
            5,
            |d, to| out.push((d.to_vec(), to)),
        );
        assert_eq!(n, 2);
        assert_eq!(out[0].0, out[1].0);
        assert_eq!((out[0].1, out[1].1), (a, b));
        assert_eq!(
            s.send(RoomKey(2), ParticipantId(3), None, &RTP, b"x", 5, |_, _| {}),
            0
        );
        s.send(RoomKey(1), ParticipantId(3), None, &RTP, b"x", 5, |d, _| {
            assert_eq!(decode(&k, d).unwrap().0.seq, 1);
        });
        s.remove(RoomKey(1), a);
        s.remove(RoomKey(1), b);
        assert!(!s.is_active());
        for i in 0..MAX_SUBSCRIBERS_PER_ROOM as u16 {
            assert!(s.add(RoomKey(1), std::net::SocketAddr::from(([10, 0, 0, 1], i))));
        }
        assert!(!s.add(RoomKey(1), std::net::SocketAddr::from(([10, 0, 0, 2], 1))));
    }

    proptest::proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let k = key("0123456789abcdef-secret");
            let _ = decode(&k, &bytes);
            let mut with_magic = MAGIC.to_vec();
            with_magic.extend_from_slice(&bytes);
            let _ = decode(&k, &with_magic);
            let mut r = RelayReceiver::new(k);
            let _ = r.accept(&with_magic, Instant::now(), 0);
        }

        #[test]
        fn a_valid_tag_over_arbitrary_contents_decodes_without_panicking(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..120)
        ) {
            // Signed garbage (as from a node with the secret but a bug): parses or is
            // refused, never panics, and the RTP part is what followed the header.
            let k = key("0123456789abcdef-secret");
            let mut d = MAGIC.to_vec();
            d.extend_from_slice(&body);
            let mut mac = k.0.clone();
            mac.update(&d);
            d.extend_from_slice(&mac.finalize().into_bytes());
            if let Ok((_, rtp)) = decode(&k, &d) {
                proptest::prop_assert_eq!(rtp.len(), d.len() - HEADER_LEN - TAG_LEN);
            }
        }
    }
}
