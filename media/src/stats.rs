//! Counters for metrics: written by the media thread with relaxed atomics, read by anyone
//! without stopping the loop. Gauges (participants, map sizes) are stored by the loop after
//! each change; counters only grow.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Live atomics shared between the media thread and [`crate::Sfu`] handles.
        #[derive(Default, Debug)]
        pub(crate) struct Counters {
            $(pub(crate) $name: AtomicU64,)*
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
    };
}

counters! {
    /// Gauge: participants (peer connections) alive.
    participants,
    /// Gauge: participants allowed to publish.
    publishers,
    /// Gauge: participants whose ICE+DTLS is up.
    connected,
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
    /// Errors `rtc` returned while handling a datagram (bad DTLS/SRTP, replay, ...).
    rtc_read_errors,
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
