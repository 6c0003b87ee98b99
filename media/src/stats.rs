//! Counters for metrics: written by the media thread with relaxed atomics, read by anyone
//! without stopping the loop. Gauges (participants, map sizes) are stored by the loop after
//! each change; counters only grow.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::router::DropReason;

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Live atomics shared between the media thread and [`crate::Sfu`] handles.
        #[derive(Default, Debug)]
        pub(crate) struct Counters {
            $(pub(crate) $name: AtomicU64,)*
            /// Time from a participant's peer connection being created to its first
            /// ICE+DTLS connection.
            pub(crate) join: JoinHistogram,
        }

        /// A snapshot of the media plane's counters and gauges.
        #[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
        pub struct SfuStats {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl Counters {
            pub(crate) fn snapshot(&self) -> SfuStats {
                SfuStats { $($name: self.$name.load(Relaxed),)* }
            }
        }

        impl SfuStats {
            /// Adds another media thread's figures (gauges and counters both add up).
            pub fn add(&mut self, other: &SfuStats) {
                $(self.$name += other.$name;)*
            }
        }
    };
}

counters! {
    /// Gauge: participants (peer connections) alive.
    participants,
    /// Gauge: participants allowed to publish.
    publishers,
    /// Gauge: participants whose ICE+DTLS is up.
    connected,
    /// Gauge: audio tracks routed to subscribers: for every participant, each audio slot
    /// that carries someone else's voice.
    subscriptions,
    /// Gauge: rooms with at least one participant.
    rooms,
    /// Gauge: remote addresses known to the demultiplexer.
    remote_addrs,
    /// Gauge: ICE usernames known to the demultiplexer.
    ufrags,
    /// Gauge: entries in the timer heap (live and stale).
    timer_entries,
    /// Datagrams received on the media socket.
    datagrams_received,
    /// Bytes received on the media socket.
    bytes_received,
    /// Datagrams sent on the media socket.
    datagrams_sent,
    /// Bytes sent on the media socket.
    bytes_sent,
    /// Datagrams dropped because the socket would block (send buffer full).
    send_would_block,
    /// Datagrams the kernel refused for another reason.
    send_errors,
    /// Datagrams from unknown addresses that named no known ICE username, or that were not STUN.
    unknown_source,
    /// Datagrams too short or malformed to classify (including bad STUN).
    malformed,
    /// ICE checks that arrived before their connection's answer and were held for it.
    early_checks_held,
    /// RTP packets received from publishers (after SRTP).
    rtp_received,
    /// RTP payload bytes received from publishers.
    rtp_bytes_received,
    /// RTP packets handed to subscribers' connections and put on the wire.
    rtp_forwarded,
    /// RTP payload bytes forwarded.
    rtp_bytes_forwarded,
    /// RTP dropped: the publisher is muted.
    dropped_muted,
    /// RTP dropped: the participant may not publish.
    dropped_not_publisher,
    /// RTP dropped: nobody else in the room.
    dropped_no_subscribers,
    /// RTP dropped: the publisher holds no slot and is not the spare (too quiet to be heard).
    dropped_not_in_slot,
    /// Forwarded copies dropped by the slot rewriter: duplicate or older than a switch.
    dropped_duplicate,
    /// Forwarded copies dropped: subscriber leg not connected/negotiated yet.
    dropped_not_ready,
    /// Forwarded copies dropped: `rtc` refused the write.
    dropped_write_error,
    /// RTCP datagrams received (compound packets, counted before decryption).
    rtcp_received,
    /// NACKs received from subscribers.
    nacks_received,
    /// Participants removed by timeouts or ICE failure.
    disconnects,
    /// RTCP sender reports written for the audio slots (forwarded audio bypasses rtc's
    /// interceptors, so these are the engine's own).
    sender_reports,
    /// Gauge: remote sources (publishers on other nodes heard over the relay) in rooms here.
    remote_sources,
    /// Gauge: (room, node) pairs this node relays its rooms' top speakers to.
    relay_subscriptions,
    /// Datagrams received on the relay sockets.
    relay_datagrams_received,
    /// Relayed packets accepted (authentic, fresh, new) and routed to local listeners.
    relay_received,
    /// Relay datagrams sent to other nodes.
    relay_sent,
    /// Relay datagrams the kernel did not take (full send buffer or an error).
    relay_send_dropped,
    /// Relay datagrams dropped: malformed (length, magic, RTP).
    relay_dropped_malformed,
    /// Relay datagrams dropped: wrong HMAC tag (another secret, or altered).
    relay_dropped_bad_tag,
    /// Relay datagrams dropped: sent too long ago or in the future (clock skew, delay).
    relay_dropped_stale,
    /// Relay datagrams dropped: sequence number seen already or out of the window.
    relay_dropped_replay,
    /// Relay datagrams dropped: the room has no local members here.
    relay_dropped_unknown_room,
    /// Relay datagrams dropped: the source's id is taken here by someone else.
    relay_dropped_id_collision,
    /// Remote sources removed because nothing arrived from them for the remote timeout.
    remote_sources_timed_out,
    /// Remote sources removed because their node stopped relaying them (they left its
    /// slots) and said so.
    remote_sources_ended,
    /// Requests refused with `MediaError::Busy`: the event backlog (signaling not keeping
    /// up) or this media thread's command queue was full.
    busy_refusals,
}

impl SfuStats {
    /// RTP packets not forwarded, by reason, each with its stable metric label: the
    /// router's reasons labelled by [`DropReason::as_str`], then the forwarding leg's.
    pub fn dropped_by_reason(&self) -> [(&'static str, u64); 8] {
        [
            (DropReason::Muted.as_str(), self.dropped_muted),
            (
                DropReason::NotPublisher.as_str(),
                self.dropped_not_publisher,
            ),
            (
                DropReason::NoSubscribers.as_str(),
                self.dropped_no_subscribers,
            ),
            (DropReason::NotInSlot.as_str(), self.dropped_not_in_slot),
            ("duplicate", self.dropped_duplicate),
            ("not_ready", self.dropped_not_ready),
            // The socket's send buffer was full.
            ("congestion", self.send_would_block),
            ("write_error", self.dropped_write_error),
        ]
    }

    /// Relay datagrams not used, by reason, with their metric labels
    /// ([`crate::relay::RelayDrop::as_str`]).
    pub fn relay_dropped_by_reason(&self) -> [(&'static str, u64); 6] {
        use crate::relay::RelayDrop as R;
        [
            (R::Malformed.as_str(), self.relay_dropped_malformed),
            (R::BadTag.as_str(), self.relay_dropped_bad_tag),
            (R::Stale.as_str(), self.relay_dropped_stale),
            (R::Replay.as_str(), self.relay_dropped_replay),
            (R::UnknownRoom.as_str(), self.relay_dropped_unknown_room),
            (R::IdCollision.as_str(), self.relay_dropped_id_collision),
        ]
    }

    /// Media socket and protocol errors, by kind, with their metric labels.
    pub fn errors_by_kind(&self) -> [(&'static str, u64); 3] {
        [
            ("malformed", self.malformed),
            ("unknown_source", self.unknown_source),
            ("send", self.send_errors),
        ]
    }
}

/// Upper bounds (seconds) of the join-latency histogram's buckets; a last, unbounded
/// bucket catches the rest. Loopback joins take ~0.4 s; a join over 2 s is one a user
/// notices.
pub const JOIN_BUCKETS: [f64; 12] = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0];

/// A fixed-bucket histogram on relaxed atomics: the media thread records, a scraper reads.
#[derive(Default, Debug)]
pub(crate) struct JoinHistogram {
    /// Per-bucket (not cumulative) counts; the last entry is the +Inf bucket.
    buckets: [AtomicU64; JOIN_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl JoinHistogram {
    pub(crate) fn observe(&self, took: std::time::Duration) {
        let secs = took.as_secs_f64();
        let i = JOIN_BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(JOIN_BUCKETS.len());
        self.buckets[i].fetch_add(1, Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> JoinLatency {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(JOIN_BUCKETS.len());
        for (le, b) in JOIN_BUCKETS.iter().zip(&self.buckets) {
            cumulative += b.load(Relaxed);
            buckets.push((*le, cumulative));
        }
        let count = cumulative + self.buckets[JOIN_BUCKETS.len()].load(Relaxed);
        JoinLatency {
            buckets,
            count,
            sum_seconds: self.sum_micros.load(Relaxed) as f64 / 1e6,
        }
    }
}

/// A snapshot of the join-latency histogram, in the Prometheus histogram's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct JoinLatency {
    /// `(upper bound in seconds, cumulative count)` for each bound of [`JOIN_BUCKETS`].
    pub buckets: Vec<(f64, u64)>,
    /// All observations (the +Inf bucket).
    pub count: u64,
    pub sum_seconds: f64,
}

impl JoinLatency {
    /// Adds another media thread's histogram (same buckets).
    pub fn merge(&mut self, other: &JoinLatency) {
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            mine.1 += theirs.1;
        }
        self.count += other.count;
        self.sum_seconds += other.sum_seconds;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn join_histogram_is_cumulative_with_an_unbounded_last_bucket() {
        let h = JoinHistogram::default();
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_millis(350));
        h.observe(Duration::from_millis(400));
        h.observe(Duration::from_secs(60));
        let s = h.snapshot();
        assert_eq!(s.count, 4);
        assert!((s.sum_seconds - 60.78).abs() < 1e-6, "{}", s.sum_seconds);
        let at = |le: f64| s.buckets.iter().find(|b| b.0 == le).map(|b| b.1);
        assert_eq!(at(0.05), Some(1));
        assert_eq!(at(0.3), Some(1));
        assert_eq!(at(0.4), Some(3), "bounds are inclusive");
        assert_eq!(at(5.0), Some(3), "60 s only in +Inf");
        assert!(s.buckets.windows(2).all(|w| w[0].1 <= w[1].1));
    }

    #[test]
    fn snapshot_reads_current_values() {
        let c = Counters::default();
        c.rtp_forwarded.fetch_add(3, Relaxed);
        c.participants.store(2, Relaxed);
        let s = c.snapshot();
        assert_eq!(s.rtp_forwarded, 3);
        assert_eq!(s.participants, 2);
        assert_eq!(s.malformed, 0);
    }

    #[test]
    fn drop_reasons_use_the_routers_labels_and_read_their_own_counters() {
        let c = Counters::default();
        c.dropped_muted.fetch_add(1, Relaxed);
        c.dropped_not_in_slot.fetch_add(2, Relaxed);
        c.send_would_block.fetch_add(5, Relaxed);
        let drops = c.snapshot().dropped_by_reason();
        let get = |label| drops.iter().find(|d| d.0 == label).map(|d| d.1);
        assert_eq!(get("muted"), Some(1));
        assert_eq!(get(DropReason::NotInSlot.as_str()), Some(2));
        assert_eq!(get("congestion"), Some(5));
        assert_eq!(get("not_publisher"), Some(0));
        let mut labels: Vec<_> = drops.iter().map(|d| d.0).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), drops.len(), "labels are distinct");
    }
}
