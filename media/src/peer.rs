//! One participant's `rtc` peer connection: how it is built (codecs, header extensions,
//! interceptors, ICE-lite, the shared-socket host candidates), the fixed m-line layout the
//! server offers, and what each leg negotiated (payload type, extension ids, SSRC).
//!
//! The server is always the offerer. Layout: m-line 0 is the participant's microphone
//! (recvonly on the server when it may publish, inactive otherwise); m-lines 1..=slots are
//! sendonly audio slots whose SSRCs the server chooses.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rtc::interceptor::{ReceiverReportBuilder, Registry, Slot};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::certificate::{CertificateParams, RTCCertificate};
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_OPUS, MediaEngine};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCIceCandidate, RTCIceCandidateInit,
};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use rtc::rtp_transceiver::{
    RTCRtpReceiverId, RTCRtpSenderId, RTCRtpTransceiverDirection, RTCRtpTransceiverId,
    RTCRtpTransceiverInit,
};

use crate::report::{REPORT_INTERVAL, Sent};
use crate::rewrite::SlotRewriter;
use crate::{MediaError, Offer, ParticipantId};

/// How long the client's ICE consent stays fresh without a new check (RFC 7675 §5.1).
pub(crate) const CONSENT_WINDOW: Duration = Duration::from_secs(30);
/// After the consent window lapses, how long until the connection counts as failed and is
/// removed (the engine stops forwarding to it as soon as consent lapses).
const CONSENT_FAILED_AFTER: Duration = Duration::from_secs(5);

/// RFC 6464 client-to-mixer audio level.
pub(crate) const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";
/// Payload type the server offers for Opus; answers echo the offerer's numbering.
const OPUS_PT: u8 = 111;
/// Opus parameters: in-band FEC recovers single losses without retransmission, DTX saves
/// bandwidth in silence (a large room is mostly silence).
const OPUS_FMTP: &str = "minptime=10;useinbandfec=1;usedtx=1";

fn rtc_err(e: impl std::fmt::Display) -> MediaError {
    MediaError::Rtc(e.to_string())
}

/// One outgoing audio slot on one subscriber's connection.
pub(crate) struct SlotLeg {
    pub(crate) transceiver: RTCRtpTransceiverId,
    pub(crate) sender: RTCRtpSenderId,
    pub(crate) mid: String,
    /// Opus payload type negotiated on this leg; `None` until an answer was applied.
    pub(crate) payload_type: Option<u8>,
    /// Audio-level extension id negotiated on this leg, if the client accepted it.
    pub(crate) audio_level_id: Option<u8>,
    /// Keeps this slot one continuous RTP stream across changes of its source.
    pub(crate) rewriter: SlotRewriter,
    /// What was sent on this slot, for its sender reports.
    pub(crate) sent: Sent,
}

/// Per-connection facts every new connection needs.
pub(crate) struct PeerParams<'a> {
    /// The SFU's one DTLS certificate, shared by every connection (generating a key pair
    /// and certificate per join costs CPU and memory for nothing).
    pub(crate) certificate: &'a RTCCertificate,
    pub(crate) announce_ips: &'a [IpAddr],
    pub(crate) port: u16,
    pub(crate) slots: usize,
    pub(crate) connect_timeout: std::time::Duration,
}

pub(crate) struct Peer {
    pub(crate) pid: ParticipantId,
    pub(crate) pc: RTCPeerConnection,
    /// Mirrors the router's role flag: checked per datagram to refuse media before SRTP.
    pub(crate) can_publish: bool,
    /// MediaRefused already reported since the last role change.
    pub(crate) refused_reported: bool,
    /// ICE+DTLS up: SRTP writes are not silently dropped.
    pub(crate) connected: bool,
    pub(crate) ever_connected: bool,
    pub(crate) mic: RTCRtpTransceiverId,
    pub(crate) mic_mid: String,
    /// Audio-level extension id on the microphone m-line, learnt from the answer.
    pub(crate) mic_audio_level_id: Option<u8>,
    pub(crate) legs: Vec<SlotLeg>,
    /// Our current ICE username fragment (the demultiplexing key for new addresses).
    pub(crate) ufrag: String,
    /// Remote addresses routed to this connection (bounded).
    pub(crate) addrs: Vec<SocketAddr>,
    pub(crate) created: Instant,
    /// Last datagram from the client (consent, RTP or RTCP).
    pub(crate) last_rx: Instant,
    /// An offer was sent and its answer has not been applied yet.
    pub(crate) awaiting_answer: bool,
    /// The client's ICE credentials are known (an answer to our latest ICE offer, first or
    /// restart, has been applied); until then its checks cannot be verified.
    pub(crate) remote_ice_known: bool,
    /// ICE checks that arrived before the answer made the remote credentials known, with
    /// their source address; replayed once it is applied.
    pub(crate) early_checks: Vec<(SocketAddr, bytes::BytesMut)>,
    /// Timer scheduling: generation of the live heap entry and its deadline.
    pub(crate) timer_generation: u64,
    pub(crate) timer_at: Option<Instant>,
    /// Next liveness check (connect or peer timeout); advanced only when it fires.
    pub(crate) housekeeping_at: Instant,
    /// When this connection next sends sender reports for its slots.
    pub(crate) report_at: Instant,
    /// The handle's ticket for this participant in the participant-to-shard map, released
    /// when the connection is removed (a later join of the same id has another ticket).
    pub(crate) ticket: u64,
}

fn media_engine() -> Result<MediaEngine, MediaError> {
    let mut me = MediaEngine::default();
    me.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: opus_codec(),
            payload_type: OPUS_PT,
        },
        RtpCodecKind::Audio,
    )
    .map_err(rtc_err)?;
    me.register_header_extension(
        RTCRtpHeaderExtensionCapability {
            uri: AUDIO_LEVEL_URI.to_owned(),
        },
        RtpCodecKind::Audio,
        None,
    )
    .map_err(rtc_err)?;
    Ok(me)
}

/// A self-signed ECDSA P-256 certificate for DTLS, the kind `rtc` would generate for
/// each connection.
pub(crate) fn dtls_certificate() -> Result<RTCCertificate, MediaError> {
    let provider = rtc::crypto::default_provider().map_err(rtc_err)?;
    let params = CertificateParams::new(vec!["chorus-sfu".to_owned()]).map_err(rtc_err)?;
    RTCCertificate::generate(
        provider.crypto(),
        rtc::crypto::SignatureScheme::EcdsaP256Sha256,
        params,
    )
    .map_err(rtc_err)
}

fn opus_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48000,
        channels: 2,
        sdp_fmtp_line: OPUS_FMTP.to_owned(),
        // No NACK for audio: a retransmitted Opus frame usually arrives after the jitter
        // buffer gave up on it, and a NACK responder would buffer every outgoing packet per
        // leg (kilobytes per listener). In-band FEC covers single losses instead.
        rtcp_feedback: vec![],
    }
}

impl Peer {
    /// Builds the connection and its first offer.
    pub(crate) fn new(
        pid: ParticipantId,
        can_publish: bool,
        params: &PeerParams<'_>,
        ssrcs: impl Iterator<Item = u32>,
        now: Instant,
    ) -> Result<(Peer, Offer), MediaError> {
        let media_engine = media_engine()?;
        // Receiver reports for the microphone are rtc's; sender reports for the slots are
        // the engine's (`report.rs`), because forwarded audio bypasses the interceptors.
        // NACK, TWCC and simulcast extensions are not registered (audio only, see
        // `opus_codec`).
        let registry =
            Registry::new().with(Slot::ReceiverReport, ReceiverReportBuilder::new().build());
        // ICE credentials are left to rtc's CSPRNG: a fixed `with_ice_credentials` would be
        // reused by every ICE restart, which then would not restart anything. The ufrag is
        // read back from the local description for demultiplexing.
        // Consent (RFC 7675): the client checks every 4-6 s, and consent lapses only after
        // 30 s without a check. rtc's default marks the pair disconnected after 5 s without
        // STUN, which for such clients stops forwarding between two checks. Liveness on a
        // shorter scale is the engine's `peer_timeout`, which counts every datagram.
        let setting_engine = SettingEngineBuilder::new()
            .with_lite(true)
            .with_ice_timeouts(Some(CONSENT_WINDOW), Some(CONSENT_FAILED_AFTER), None)
            .build();
        let mut pc = RTCPeerConnectionBuilder::new()
            .with_configuration(
                RTCConfigurationBuilder::new()
                    .with_certificates(vec![params.certificate.clone()])
                    .build(),
            )
            .with_media_engine(media_engine)
            .with_setting_engine(setting_engine)
            .with_interceptor_registry(registry)
            .build(now)
            .map_err(rtc_err)?;

        let mic = pc
            .add_transceiver_from_kind(
                RtpCodecKind::Audio,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Recvonly,
                    streams: vec![],
                    send_encodings: vec![],
                }),
            )
            .map_err(rtc_err)?;
        if !can_publish && let Some(mut t) = pc.rtp_transceiver(mic) {
            t.set_direction(RTCRtpTransceiverDirection::Inactive);
        }

        let mut legs = Vec::with_capacity(params.slots);
        let mut ssrcs = ssrcs;
        for i in 0..params.slots {
            let ssrc = ssrcs.next().unwrap_or_else(rand::random);
            let track = MediaStreamTrack::new(
                "chorus".to_owned(),
                format!("slot{i}"),
                format!("slot{i}"),
                RtpCodecKind::Audio,
                vec![RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        ssrc: Some(ssrc),
                        ..Default::default()
                    },
                    codec: opus_codec(),
                    active: true,
                    ..Default::default()
                }],
            );
            let t = pc
                .add_transceiver_from_track(
                    track,
                    Some(RTCRtpTransceiverInit {
                        direction: RTCRtpTransceiverDirection::Sendonly,
                        streams: vec![],
                        send_encodings: vec![],
                    }),
                )
                .map_err(rtc_err)?;
            legs.push(SlotLeg {
                transceiver: t,
                sender: RTCRtpSenderId::from(t),
                mid: String::new(),
                payload_type: None,
                audio_level_id: None,
                rewriter: SlotRewriter::new(ssrc),
                sent: Sent::default(),
            });
        }

        // Candidates go in before the offer so the offer is complete (no trickle needed).
        for ip in params.announce_ips {
            let candidate = CandidateHostConfig {
                base_config: CandidateConfig {
                    network: "udp".to_owned(),
                    address: ip.to_string(),
                    port: params.port,
                    component: 1,
                    ..Default::default()
                },
                ..Default::default()
            }
            .new_candidate_host()
            .map_err(rtc_err)?;
            let init = RTCIceCandidate::from(&candidate)
                .to_json()
                .map_err(rtc_err)?;
            pc.add_local_candidate(init).map_err(rtc_err)?;
        }
        pc.add_local_candidate(RTCIceCandidateInit::default())
            .map_err(rtc_err)?;

        let mut peer = Peer {
            pid,
            pc,
            can_publish,
            refused_reported: false,
            connected: false,
            ever_connected: false,
            mic,
            mic_mid: String::new(),
            mic_audio_level_id: None,
            legs,
            ufrag: String::new(),
            addrs: Vec::new(),
            created: now,
            last_rx: now,
            awaiting_answer: false,
            remote_ice_known: false,
            early_checks: Vec::new(),
            timer_generation: 0,
            timer_at: None,
            housekeeping_at: now + params.connect_timeout,
            report_at: now + REPORT_INTERVAL,
            ticket: 0,
        };
        let offer = peer.make_offer(now)?;
        Ok((peer, offer))
    }

    /// Creates and applies a new local offer, returning it with the mids of the layout.
    pub(crate) fn make_offer(&mut self, now: Instant) -> Result<Offer, MediaError> {
        let offer = self.pc.create_offer(None).map_err(rtc_err)?;
        self.pc.set_local_description(now, offer).map_err(rtc_err)?;
        // An ICE restart puts gathering back to "gathering"; our candidates are static and
        // kept, so declare the end of candidates again for a complete offer.
        self.pc
            .add_local_candidate(RTCIceCandidateInit::default())
            .map_err(rtc_err)?;
        let sdp = self
            .pc
            .local_description()
            .map(|d| spread_candidates(&d.sdp))
            .ok_or_else(|| MediaError::Rtc("no local description after offer".into()))?;
        self.ufrag = sdp_attribute(&sdp, "ice-ufrag")
            .ok_or_else(|| MediaError::Rtc("offer without ice-ufrag".into()))?
            .to_owned();
        self.mic_mid = self.mid_of(self.mic)?;
        for i in 0..self.legs.len() {
            let t = self.legs[i].transceiver;
            self.legs[i].mid = self.mid_of(t)?;
        }
        self.awaiting_answer = true;
        Ok(Offer {
            sdp,
            publish_mid: self.mic_mid.clone(),
            slot_mids: self.legs.iter().map(|l| l.mid.clone()).collect(),
        })
    }

    fn mid_of(&mut self, t: RTCRtpTransceiverId) -> Result<String, MediaError> {
        self.pc
            .rtp_transceiver(t)
            .and_then(|t| t.mid().clone())
            .ok_or_else(|| MediaError::Rtc("transceiver without mid after offer".into()))
    }

    /// Applies the client's answer and learns what each leg negotiated.
    pub(crate) fn apply_answer(&mut self, sdp: String, now: Instant) -> Result<(), MediaError> {
        if !self.awaiting_answer {
            return Err(MediaError::NoPendingOffer);
        }
        let answer =
            RTCSessionDescription::answer(sdp).map_err(|e| MediaError::BadAnswer(e.to_string()))?;
        self.pc
            .set_remote_description(now, answer)
            .map_err(|e| MediaError::BadAnswer(e.to_string()))?;
        self.awaiting_answer = false;
        self.remote_ice_known = true;
        for leg in &mut self.legs {
            let Some(mut sender) = self.pc.rtp_sender(leg.sender) else {
                continue;
            };
            let params = sender.get_parameters();
            leg.payload_type = params
                .rtp_parameters
                .codecs
                .iter()
                .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(MIME_TYPE_OPUS))
                .map(|c| c.payload_type);
            leg.audio_level_id = params
                .rtp_parameters
                .header_extensions
                .iter()
                .find(|h| h.uri == AUDIO_LEVEL_URI)
                .and_then(|h| u8::try_from(h.id).ok());
        }
        self.refresh_mic_params();
        Ok(())
    }

    /// Reads the microphone leg's negotiated audio-level id.
    pub(crate) fn refresh_mic_params(&mut self) {
        if let Some(mut receiver) = self.pc.rtp_receiver(RTCRtpReceiverId::from(self.mic)) {
            self.mic_audio_level_id = receiver
                .get_parameters()
                .rtp_parameters
                .header_extensions
                .iter()
                .find(|h| h.uri == AUDIO_LEVEL_URI)
                .and_then(|h| u8::try_from(h.id).ok());
        }
    }

    /// Switches the microphone m-line for a role change; the caller renegotiates.
    pub(crate) fn set_can_publish(&mut self, can_publish: bool) {
        self.can_publish = can_publish;
        self.refused_reported = false;
        let direction = if can_publish {
            RTCRtpTransceiverDirection::Recvonly
        } else {
            RTCRtpTransceiverDirection::Inactive
        };
        if let Some(mut t) = self.pc.rtp_transceiver(self.mic) {
            t.set_direction(direction);
        }
    }
}

/// Copies the candidate lines (and end-of-candidates) of the first m-section into every
/// m-section that has none.
///
/// rtc writes candidates only into the first m-section (the BUNDLE tag), and that is the
/// microphone line, which is `inactive` for a listener; rtc-based clients (and so the async
/// `webrtc` crate) skip candidates of inactive sections and would never connect. Repeating
/// them is valid SDP; BUNDLE-aware clients deduplicate.
pub(crate) fn spread_candidates(sdp: &str) -> String {
    let sections: Vec<&str> = sdp.split_inclusive("\n").collect();
    let first_m = sections.iter().position(|l| l.starts_with("m="));
    let Some(first_m) = first_m else {
        return sdp.to_owned();
    };
    let section_end = |from: usize| {
        sections[from + 1..]
            .iter()
            .position(|l| l.starts_with("m="))
            .map_or(sections.len(), |p| from + 1 + p)
    };
    let first_end = section_end(first_m);
    let candidate_lines: Vec<&str> = sections[first_m..first_end]
        .iter()
        .copied()
        .filter(|l| l.starts_with("a=candidate:") || l.starts_with("a=end-of-candidates"))
        .collect();
    if candidate_lines.is_empty() {
        return sdp.to_owned();
    }
    let mut out = String::with_capacity(sdp.len() + candidate_lines.len() * 80 * 4);
    let mut i = 0;
    while i < sections.len() {
        if i > first_m && sections[i].starts_with("m=") {
            let end = section_end(i);
            let has = sections[i..end]
                .iter()
                .any(|l| l.starts_with("a=candidate:"));
            for l in &sections[i..end] {
                out.push_str(l);
            }
            if !has {
                for l in &candidate_lines {
                    out.push_str(l);
                }
            }
            i = end;
        } else {
            out.push_str(sections[i]);
            i += 1;
        }
    }
    out
}

/// The value of the first `a=<name>:` attribute in an SDP.
pub(crate) fn sdp_attribute<'a>(sdp: &'a str, name: &str) -> Option<&'a str> {
    sdp.lines().find_map(|line| {
        line.trim_end()
            .strip_prefix("a=")?
            .strip_prefix(name)?
            .strip_prefix(':')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdp_attribute_finds_first_value() {
        let sdp = "v=0\r\na=ice-lite\r\nm=audio 9\r\na=ice-ufrag:abcd\r\na=ice-ufrag:zzz\r\n";
        assert_eq!(sdp_attribute(sdp, "ice-ufrag"), Some("abcd"));
        assert_eq!(sdp_attribute(sdp, "ice-pwd"), None);
    }

    #[test]
    fn candidates_are_repeated_in_every_m_section() {
        let sdp = "v=0\r\nm=audio 9 X 111\r\na=inactive\r\na=candidate:1 1 udp 1 127.0.0.1 5 typ host\r\na=end-of-candidates\r\nm=audio 9 X 111\r\na=sendonly\r\n";
        let out = spread_candidates(sdp);
        assert_eq!(out.matches("a=candidate:").count(), 2);
        assert_eq!(out.matches("a=end-of-candidates").count(), 2);
        assert!(out.ends_with(
            "a=sendonly\r\na=candidate:1 1 udp 1 127.0.0.1 5 typ host\r\na=end-of-candidates\r\n"
        ));
        assert_eq!(spread_candidates("v=0\r\n"), "v=0\r\n");
    }
}
