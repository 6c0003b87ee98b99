//! RTCP sender reports for the audio slots. Forwarded packets take the lean write path
//! (`RTCPeerConnection::protect_rtp`), which rtc's interceptors never see, so the counts a
//! sender report carries (RFC 3550 §6.4.1: packets, octets, and the RTP time that matches
//! an NTP time) are kept here, per slot leg, and reported on the engine's timer.

use std::time::{Duration, Instant};

use rtc::rtcp::sender_report::SenderReport;
use rtc::shared::time::SystemInstant;

/// How often each connection reports on the slots it was sent audio on.
pub(crate) const REPORT_INTERVAL: Duration = Duration::from_secs(2);
/// Opus's RTP clock.
const CLOCK_RATE: f64 = 48_000.0;

/// What was sent on one outgoing stream.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sent {
    /// Wrapping counts (RFC 3550: 32-bit, modulo).
    packets: u32,
    octets: u32,
    /// RTP timestamp of the latest frame and when it was sent.
    last_ts: u32,
    last_at: Option<Instant>,
}

impl Sent {
    /// Counts one packet (`payload` bytes, RTP header excluded, as RFC 3550 counts octets).
    pub(crate) fn on_packet(&mut self, ts: u32, payload: usize, now: Instant) {
        self.packets = self.packets.wrapping_add(1);
        self.octets = self.octets.wrapping_add(payload as u32);
        if self.last_at.is_none() || ts != self.last_ts {
            self.last_ts = ts;
            self.last_at = Some(now);
        }
    }

    /// The report for stream `ssrc` at `now`, if anything was sent within the last two
    /// intervals (RFC 3550 §6.4: only active senders send sender reports).
    pub(crate) fn report(
        &self,
        ssrc: u32,
        now: Instant,
        wall: &SystemInstant,
    ) -> Option<SenderReport> {
        let last_at = self.last_at?;
        let since = now.saturating_duration_since(last_at);
        if since > 2 * REPORT_INTERVAL {
            return None;
        }
        Some(SenderReport {
            ssrc,
            ntp_time: wall.ntp(now),
            rtp_time: self
                .last_ts
                .wrapping_add((since.as_secs_f64() * CLOCK_RATE) as u32),
            packet_count: self.packets,
            octet_count: self.octets,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_wrap_and_rtp_time_advances_with_the_clock() {
        let t0 = Instant::now();
        let wall = SystemInstant::now(t0);
        let mut sent = Sent::default();
        assert_eq!(sent.report(1, t0, &wall), None, "nothing sent, no report");
        sent.packets = u32::MAX;
        sent.on_packet(1000, 40, t0);
        sent.on_packet(1960, 60, t0 + Duration::from_millis(20));
        let sr = sent
            .report(7, t0 + Duration::from_millis(520), &wall)
            .expect("active sender reports");
        assert_eq!(sr.ssrc, 7);
        assert_eq!(sr.packet_count, 1, "wrapped past u32::MAX");
        assert_eq!(sr.octet_count, 100);
        // 500 ms after the frame stamped 1960: 24,000 ticks of the 48 kHz clock.
        assert!(
            (sr.rtp_time as i64 - (1960 + 24_000)).abs() <= 1,
            "{}",
            sr.rtp_time
        );
        assert!(sr.ntp_time > wall.ntp(t0));
        assert_eq!(
            sent.report(7, t0 + Duration::from_secs(5), &wall),
            None,
            "idle for two intervals: no longer an active sender"
        );
    }
}
