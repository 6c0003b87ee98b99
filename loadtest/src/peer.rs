//! The client's WebRTC peer (async `webrtc` crate): answers the server's offers,
//! publishes Opus on the microphone m-line, and receives the slot tracks with
//! per-slot and per-source statistics.
//!
//! The server always offers; the layout is one microphone m-line (`publishMid`,
//! recvonly on the server when the participant may publish, inactive otherwise)
//! followed by N sendonly slot m-lines (`slotMids`). This peer never offers. It binds
//! one explicit address (127.0.0.1 by default), with mDNS off, so loopback tests work.
//!
//! Pitfalls of the async API handled here (see WEBRTC-NOTES.md): event callbacks run on
//! the connection's driver task, so they only hand work to other tasks; outgoing RTP
//! must carry the negotiated payload type, SSRC and extension id or it is dropped
//! silently after `write_rtp` returns Ok, so those are read back from the sender's
//! parameters after every negotiation.

use crate::audio::{self, OpusEncoder, SignalSource};
use crate::protocol::{IceServer, ParticipantId};
use crate::reception::Reception;
use crate::registry::SendRegistry;
use crate::{Error, Result, within};
use bytes::Bytes;
use parking_lot::Mutex;
use rtc::media_stream::MediaStreamTrack;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RTCRtpHeaderExtensionCapability, RTCRtpParameters, RtpCodecKind,
};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceGatheringState, RTCIceServer, RTCPeerConnectionState,
    RTCSessionDescription, Registry, SettingEngineBuilder, configure_nack, configure_rtcp_reports,
};
use webrtc::rtp_transceiver::{RTCRtpTransceiverDirection, RtpSender, RtpTransceiver};

/// RFC 6464 header extension URI.
pub const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";
/// Opus fmtp the client supports (in-band FEC as browsers advertise it).
pub const OPUS_FMTP: &str = "minptime=10;useinbandfec=1";
const OPUS_PT: u8 = 111;

/// How to build a peer.
#[derive(Clone)]
pub struct PeerConfig {
    /// Local address to bind (one socket, port chosen by the OS). Loopback by default.
    pub bind_ip: IpAddr,
    /// STUN/TURN servers (from the server's `joined` message).
    pub ice_servers: Vec<IceServer>,
    /// NACK and RTCP report interceptors, as a browser would run. Off saves CPU in
    /// large load runs.
    pub interceptors: bool,
    /// Decode received Opus and keep the last `pcm_keep` of PCM per slot and per source.
    pub decode: bool,
    pub pcm_keep: Duration,
    /// Shared send-time registry for latency and exact attribution (see [`crate::registry`]).
    pub registry: Option<Arc<SendRegistry>>,
    /// Bound on waiting for local ICE candidates before an answer goes out.
    pub gather_timeout: Duration,
    /// Misbehave on purpose: when the server offers the microphone m-line inactive
    /// (a listener), answer it `sendonly` anyway (invalid per RFC 3264) and send
    /// microphone RTP, to test that the server refuses a listener's media. (rtc has no
    /// usable sender on a line that is answered inactive, so the answer must lie.)
    pub ignore_publish_refusal: bool,
}

impl Default for PeerConfig {
    fn default() -> Self {
        Self {
            bind_ip: IpAddr::from([127, 0, 0, 1]),
            ice_servers: Vec::new(),
            interceptors: true,
            decode: false,
            pcm_keep: Duration::from_secs(2),
            registry: None,
            gather_timeout: Duration::from_secs(5),
            ignore_publish_refusal: false,
        }
    }
}

/// The m-line layout of a server offer (from the `offer` message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfferLayout {
    pub publish_mid: String,
    pub slot_mids: Vec<String>,
}

/// What outgoing packets must carry, read back after negotiation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendParams {
    pub payload_type: u8,
    pub ssrc: u32,
    /// Negotiated id of the audio-level extension, if the server accepted it.
    pub audio_level_id: Option<u8>,
}

/// Counters of the publishing side.
#[derive(Debug, Default)]
pub struct SendCounters {
    /// RTP packets handed to the connection.
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
    /// Frames not sent because the encoder was in DTX.
    pub dtx_frames: AtomicU64,
    /// Frames not sent because the mic was not negotiated for sending (e.g. demoted).
    pub suppressed: AtomicU64,
    pub write_errors: AtomicU64,
}

pub use crate::reception::{RxSnapshot, SlotSnapshot};

struct Shared {
    rx: Mutex<Reception>,
    layout: Mutex<Option<OfferLayout>>,
    conn: watch::Sender<RTCPeerConnectionState>,
    gathering: watch::Sender<RTCIceGatheringState>,
    tracks: mpsc::UnboundedSender<Arc<dyn TrackRemote>>,
    send_params: Mutex<Option<SendParams>>,
    counters: SendCounters,
    first_packet: watch::Sender<Option<Instant>>,
}

impl Shared {
    fn on_rtp(&self, slot: Option<usize>, level_id: Option<u8>, pkt: &rtp::Packet, now: Instant) {
        let slot_mid = |i: usize| {
            self.layout
                .lock()
                .as_ref()
                .and_then(|l| l.slot_mids.get(i).cloned())
                .unwrap_or_default()
        };
        if self.rx.lock().on_rtp(slot, slot_mid, level_id, pkt, now) {
            self.first_packet.send_replace(Some(now));
        }
    }
}

struct Handler {
    shared: Weak<Shared>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    // Runs on the driver task: only hand the track over, never poll it here.
    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        if let Some(s) = self.shared.upgrade() {
            let _ = s.tracks.send(track);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        if let Some(s) = self.shared.upgrade() {
            s.conn.send_replace(state);
        }
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if let Some(s) = self.shared.upgrade() {
            s.gathering.send_replace(state);
        }
    }
}

struct Mic {
    track: Arc<TrackLocalStaticRTP>,
    ssrc: u32,
    sender: Option<Arc<dyn RtpSender>>,
}

/// A WebRTC peer that answers the server.
pub struct ClientPeer {
    pc: Arc<dyn PeerConnection>,
    shared: Arc<Shared>,
    cfg: PeerConfig,
    mic: tokio::sync::Mutex<Mic>,
    publisher: Mutex<Option<tokio::task::JoinHandle<()>>>,
    track_dispatch: tokio::task::JoinHandle<()>,
}

impl Drop for ClientPeer {
    fn drop(&mut self) {
        self.track_dispatch.abort();
        if let Some(h) = self.publisher.lock().take() {
            h.abort();
        }
    }
}

/// Builds the media engine the client (and the test stand-in) uses: Opus only, with
/// the audio-level extension.
pub fn audio_media_engine() -> Result<MediaEngine> {
    let mut me = MediaEngine::default();
    me.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: opus_codec(),
            payload_type: OPUS_PT,
        },
        RtpCodecKind::Audio,
    )?;
    me.register_header_extension(
        RTCRtpHeaderExtensionCapability {
            uri: AUDIO_LEVEL_URI.to_owned(),
        },
        RtpCodecKind::Audio,
        None,
    )?;
    Ok(me)
}

/// The Opus codec as negotiated in WebRTC (always "2 channels" in SDP).
pub fn opus_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: "audio/opus".to_owned(),
        clock_rate: audio::SAMPLE_RATE,
        channels: 2,
        sdp_fmtp_line: OPUS_FMTP.to_owned(),
        rtcp_feedback: vec![],
    }
}

/// Payload type and audio-level id from negotiated RTP parameters.
pub fn negotiated(params: &RTCRtpParameters) -> (Option<u8>, Option<u8>) {
    let pt = params
        .codecs
        .iter()
        .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case("audio/opus"))
        .map(|c| c.payload_type);
    let level = params
        .header_extensions
        .iter()
        .find(|e| e.uri == AUDIO_LEVEL_URI)
        .and_then(|e| u8::try_from(e.id).ok());
    (pt, level)
}

impl ClientPeer {
    /// Creates the peer connection (no negotiation yet).
    pub async fn new(cfg: PeerConfig) -> Result<Self> {
        let mut me = audio_media_engine()?;
        let mut registry = Registry::new();
        if cfg.interceptors {
            registry = configure_nack(registry, &mut me);
            registry = configure_rtcp_reports(registry);
        }
        let settings = SettingEngineBuilder::default()
            .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
            .with_include_loopback_candidate(true)
            .build();
        let ice_servers = cfg
            .ice_servers
            .iter()
            .map(|s| RTCIceServer {
                urls: s.urls.clone(),
                username: s.username.clone().unwrap_or_default(),
                credential: s.credential.clone().unwrap_or_default(),
            })
            .collect();
        let config = RTCConfigurationBuilder::new()
            .with_ice_servers(ice_servers)
            .build();

        let (tracks_tx, mut tracks_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            rx: Mutex::new(Reception::new(
                cfg.decode,
                cfg.pcm_keep,
                cfg.registry.clone(),
            )),
            layout: Mutex::new(None),
            conn: watch::channel(RTCPeerConnectionState::New).0,
            gathering: watch::channel(RTCIceGatheringState::New).0,
            tracks: tracks_tx,
            send_params: Mutex::new(None),
            counters: SendCounters::default(),
            first_packet: watch::channel(None).0,
        });
        let handler = Arc::new(Handler {
            shared: Arc::downgrade(&shared),
        });
        let pc = PeerConnectionBuilder::new()
            .with_configuration(config)
            .with_media_engine(me)
            .with_interceptor_registry(registry)
            .with_setting_engine(settings)
            .with_handler(handler)
            .with_udp_addrs(vec![std::net::SocketAddr::new(cfg.bind_ip, 0)])
            .build()
            .await?;
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);

        let ssrc = rand::random::<u32>().max(1);
        let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
            format!("chorus-client-{ssrc:08x}"),
            format!("mic-{ssrc:08x}"),
            "microphone".to_owned(),
            RtpCodecKind::Audio,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: opus_codec(),
                ..Default::default()
            }],
        )));

        let weak_pc = Arc::downgrade(&pc);
        let sh = shared.clone();
        let track_dispatch = tokio::spawn(async move {
            while let Some(track) = tracks_rx.recv().await {
                tokio::spawn(read_track(weak_pc.clone(), sh.clone(), track));
            }
        });

        Ok(Self {
            pc,
            shared,
            cfg,
            mic: tokio::sync::Mutex::new(Mic {
                track,
                ssrc,
                sender: None,
            }),
            publisher: Mutex::new(None),
            track_dispatch,
        })
    }

    /// Applies a server offer and returns the SDP answer to send back.
    /// `publish`: attach the microphone so the answer accepts sending on `publishMid`
    /// (only has an effect when the server offers that m-line as recvonly).
    /// Works the same for the first offer and for renegotiations (role change, ICE restart).
    pub async fn answer_offer(
        &self,
        sdp: &str,
        layout: &OfferLayout,
        publish: bool,
    ) -> Result<String> {
        if layout.slot_mids.contains(&layout.publish_mid) {
            return Err(Error::Protocol("publishMid is also a slot mid".into()));
        }
        let offer = RTCSessionDescription::offer(sdp.to_owned())?;
        let offered = media_direction(sdp, &layout.publish_mid).ok_or_else(|| {
            Error::Protocol(format!(
                "offer has no m-line with publishMid {:?}",
                layout.publish_mid
            ))
        })?;
        for mid in &layout.slot_mids {
            if media_direction(sdp, mid).is_none() {
                return Err(Error::Protocol(format!(
                    "offer has no m-line with slot mid {mid:?}"
                )));
            }
        }
        // The server lets this participant publish only on a recvonly (or sendrecv) mic line.
        let may_send = matches!(offered, "recvonly" | "sendrecv");
        let mut mic = self.mic.lock().await;
        // Tracks may open as soon as the offer is applied, so the layout goes first;
        // it is restored if the stack refuses the offer.
        let previous = self.shared.layout.lock().replace(layout.clone());
        if let Err(e) = self.pc.set_remote_description(offer).await {
            *self.shared.layout.lock() = previous;
            return Err(e.into());
        }
        self.shared
            .rx
            .lock()
            .resize_slot_map(layout.slot_mids.len());
        add_inactive_section_candidates(self.pc.as_ref(), sdp).await;
        let attach = may_send || self.cfg.ignore_publish_refusal;
        if publish && attach && mic.sender.is_none() {
            let track: Arc<dyn TrackLocal> = mic.track.clone();
            let sender = self.pc.add_track(track).await?;
            let tid: usize = sender.id().into();
            let mid = self.mid_of(tid).await;
            if mid.as_deref() != Some(layout.publish_mid.as_str()) {
                return Err(Error::Protocol(format!(
                    "microphone attached to m-line {mid:?}, expected publishMid {:?} \
                     (the server must put the microphone m-line first)",
                    layout.publish_mid
                )));
            }
            mic.sender = Some(sender);
        }
        // rtc answers an inactive m-line with whatever the local transceiver wants
        // (even sendrecv); pin the microphone line to what RFC 3264 allows.
        let mic_dir = if attach && mic.sender.is_some() {
            RTCRtpTransceiverDirection::Sendonly
        } else {
            RTCRtpTransceiverDirection::Inactive
        };
        if let Some(t) = self.transceiver_by_mid(&layout.publish_mid).await {
            t.set_direction(mic_dir).await?;
        }
        let answer = self.pc.create_answer(None).await?;
        self.pc.set_local_description(answer).await?;

        // Read back what was negotiated for sending.
        let params = match &mic.sender {
            Some(sender)
                if self.cfg.ignore_publish_refusal
                    || self.mic_can_send(&layout.publish_mid).await =>
            {
                let p = sender.get_parameters().await?;
                let (pt, level) = negotiated(&p.rtp_parameters);
                pt.map(|payload_type| SendParams {
                    payload_type,
                    ssrc: mic.ssrc,
                    audio_level_id: level,
                })
            }
            _ => None,
        };
        *self.shared.send_params.lock() = params;
        drop(mic);
        self.gathered_local_sdp().await
    }

    async fn transceiver_by_mid(&self, mid: &str) -> Option<Arc<dyn RtpTransceiver>> {
        for t in self.pc.get_transceivers().await {
            if t.mid().await.ok().flatten().as_deref() == Some(mid) {
                return Some(t);
            }
        }
        None
    }

    async fn mid_of(&self, transceiver_id: usize) -> Option<String> {
        for t in self.pc.get_transceivers().await {
            if t.id() == transceiver_id {
                return t.mid().await.ok().flatten();
            }
        }
        None
    }

    /// True when the local description lets the mic m-line send.
    async fn mic_can_send(&self, publish_mid: &str) -> bool {
        let Some(local) = self.pc.local_description().await else {
            return false;
        };
        media_direction(&local.sdp, publish_mid).is_some_and(|d| d == "sendonly" || d == "sendrecv")
    }

    /// The local description once candidates are in it (bounded by `gather_timeout`;
    /// after that the answer goes out as is: the server is ICE-lite and learns the
    /// client's address from its connectivity checks anyway).
    async fn gathered_local_sdp(&self) -> Result<String> {
        let mut gathering = self.shared.gathering.subscribe();
        let deadline = tokio::time::Instant::now() + self.cfg.gather_timeout;
        loop {
            let local =
                self.pc.local_description().await.ok_or_else(|| {
                    Error::Protocol("no local description after answering".into())
                })?;
            let complete = *gathering.borrow_and_update() == RTCIceGatheringState::Complete;
            if (complete && local.sdp.contains("a=candidate:"))
                || tokio::time::Instant::now() >= deadline
            {
                return Ok(local.sdp);
            }
            // Wake on a gathering change, or re-check shortly (candidates land in the
            // description without a state change).
            let _ = tokio::time::timeout_at(
                deadline.min(tokio::time::Instant::now() + Duration::from_millis(20)),
                gathering.changed(),
            )
            .await;
        }
    }

    /// Waits until ICE+DTLS are connected.
    pub async fn wait_connected(&self, deadline: Duration) -> Result<()> {
        crate::wait_connected(&self.shared.conn, deadline, "peer connection").await
    }

    /// Current connection state.
    pub fn connection_state(&self) -> RTCPeerConnectionState {
        *self.shared.conn.borrow()
    }

    /// Updates who is in which slot (from the server's `slots` message).
    pub fn set_slot_map(&self, slots: &[Option<ParticipantId>]) {
        self.shared.rx.lock().set_slot_map(slots);
    }

    /// What outgoing packets carry now; `None` when the mic is not negotiated to send.
    pub fn send_params(&self) -> Option<SendParams> {
        *self.shared.send_params.lock()
    }

    pub fn send_counters(&self) -> &SendCounters {
        &self.shared.counters
    }

    /// Starts sending `source` as Opus, one 20 ms frame per 20 ms, until stopped or
    /// the connection closes. `me` is this participant's id for the send-time registry.
    /// Frames are sent only while the mic m-line is negotiated for sending.
    pub async fn start_publishing(
        &self,
        source: Box<dyn SignalSource>,
        me: Option<ParticipantId>,
    ) -> Result<()> {
        let track = self.mic.lock().await.track.clone();
        let mut encoder = OpusEncoder::new()?;
        let shared = self.shared.clone();
        let registry = self.cfg.registry.clone();
        let handle = tokio::spawn(async move {
            let mut source = source;
            let mut pcm = vec![0i16; audio::FRAME_SAMPLES];
            let mut seq: u16 = rand::random();
            let mut ts: u32 = rand::random();
            let mut was_silent = true;
            let mut tick = tokio::time::interval(Duration::from_millis(u64::from(audio::FRAME_MS)));
            loop {
                tick.tick().await;
                source.fill(&mut pcm);
                let frame = match encoder.encode(&pcm) {
                    Ok(f) => f,
                    Err(_) => {
                        shared.counters.write_errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                };
                let frame_ts = ts;
                ts = ts.wrapping_add(audio::FRAME_SAMPLES as u32);
                if frame.dtx {
                    shared.counters.dtx_frames.fetch_add(1, Ordering::Relaxed);
                    was_silent = true;
                    continue;
                }
                let Some(params) = *shared.send_params.lock() else {
                    shared.counters.suppressed.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let mut header = rtp::header::Header {
                    version: 2,
                    // RFC 3551: marker on the first packet of a talk spurt.
                    marker: was_silent,
                    payload_type: params.payload_type,
                    sequence_number: seq,
                    timestamp: frame_ts,
                    ssrc: params.ssrc,
                    ..Default::default()
                };
                was_silent = false;
                if let Some(id) = params.audio_level_id {
                    let level = audio::encode_audio_level(frame.level, frame.level < 127);
                    header.extension = true;
                    header.extension_profile = rtp::header::EXTENSION_PROFILE_ONE_BYTE;
                    if header
                        .set_extension(id, Bytes::copy_from_slice(&[level]))
                        .is_err()
                    {
                        shared.counters.write_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                seq = seq.wrapping_add(1);
                let len = frame.payload.len();
                if let (Some(r), Some(me)) = (&registry, me) {
                    r.record(me, &frame.payload, Instant::now());
                }
                let pkt = rtp::Packet {
                    header,
                    payload: frame.payload,
                };
                match tokio::time::timeout(Duration::from_secs(1), track.write_rtp(pkt)).await {
                    Ok(Ok(())) => {
                        shared.counters.packets.fetch_add(1, Ordering::Relaxed);
                        shared
                            .counters
                            .bytes
                            .fetch_add(len as u64, Ordering::Relaxed);
                    }
                    Ok(Err(_)) | Err(_) => {
                        shared.counters.write_errors.fetch_add(1, Ordering::Relaxed);
                        if matches!(
                            *shared.conn.borrow(),
                            RTCPeerConnectionState::Closed | RTCPeerConnectionState::Failed
                        ) {
                            break;
                        }
                    }
                }
            }
        });
        if let Some(old) = self.publisher.lock().replace(handle) {
            old.abort();
        }
        Ok(())
    }

    /// Stops the sending task (the m-line stays negotiated; DTX-like silence follows).
    pub fn stop_publishing(&self) {
        if let Some(h) = self.publisher.lock().take() {
            h.abort();
        }
    }

    /// Statistics of everything received so far.
    pub fn snapshot(&self) -> RxSnapshot {
        self.shared.rx.lock().snapshot()
    }

    /// Forgets the latency samples kept so far (slots and sources), so that a
    /// measurement window excludes the join phase.
    pub fn clear_latency(&self) {
        self.shared.rx.lock().clear_latency();
    }

    /// Packets received from `source` so far.
    pub fn packets_from(&self, source: ParticipantId) -> u64 {
        self.shared.rx.lock().packets_from(source)
    }

    /// Decoded PCM (last `pcm_keep`) heard from `source` (needs `decode`).
    pub fn source_pcm(&self, source: ParticipantId) -> Vec<i16> {
        self.shared.rx.lock().source_pcm(source)
    }

    /// Decoded PCM (last `pcm_keep`) of slot `i` (needs `decode`).
    pub fn slot_pcm(&self, i: usize) -> Vec<i16> {
        self.shared.rx.lock().slot_pcm(i)
    }

    /// Dominant frequency of what `source` sounded like recently (needs `decode`).
    pub fn source_frequency(&self, source: ParticipantId) -> Option<f64> {
        audio::dominant_frequency(&self.source_pcm(source), audio::SAMPLE_RATE)
    }

    /// Dominant frequency of slot `i` recently (needs `decode`).
    pub fn slot_frequency(&self, i: usize) -> Option<f64> {
        audio::dominant_frequency(&self.slot_pcm(i), audio::SAMPLE_RATE)
    }

    /// When the first audio packet arrived (any slot).
    pub fn first_packet_at(&self) -> Option<Instant> {
        *self.shared.first_packet.borrow()
    }

    /// Waits for the first audio packet on any slot.
    pub async fn wait_first_packet(&self, deadline: Duration) -> Result<Instant> {
        crate::wait_first_packet(&self.shared.first_packet, deadline).await
    }

    /// Waits until `cond` holds on the receive snapshot, checking every 20 ms.
    pub async fn wait_until(
        &self,
        deadline: Duration,
        what: &str,
        mut cond: impl FnMut(&RxSnapshot) -> bool,
    ) -> Result<RxSnapshot> {
        within(deadline, what, async {
            loop {
                let s = self.snapshot();
                if cond(&s) {
                    return Ok(s);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }

    /// Closes the connection (bounded).
    pub async fn close(&self) {
        self.stop_publishing();
        let _ = tokio::time::timeout(Duration::from_secs(3), self.pc.close()).await;
    }

    /// RTP packets the WebRTC stack reports as sent (its outbound-rtp `packetsSent`),
    /// as opposed to [`SendCounters`] (packets handed to the stack).
    pub async fn outbound_packets_sent(&self) -> u64 {
        let report = self
            .pc
            .get_stats(Instant::now(), webrtc::peer_connection::StatsSelector::None)
            .await;
        report
            .iter()
            .map(|e| match e {
                webrtc::peer_connection::RTCStatsReportEntry::OutboundRtp(o) => {
                    o.sent_rtp_stream_stats.packets_sent
                }
                _ => 0,
            })
            .sum()
    }

    /// The underlying connection, for tests that need more.
    pub fn connection(&self) -> &Arc<dyn PeerConnection> {
        &self.pc
    }
}

/// `a=candidate` lines that sit in an `inactive` m-section, as `(mid, m-line index,
/// candidate)`. rtc 0.21.1 skips those when applying a description
/// (`extract_ice_details`), so with bundling and an inactive first m-line (a
/// listener's microphone) it would see no remote candidates at all.
pub fn inactive_section_candidates(sdp: &str) -> Vec<(Option<String>, u16, String)> {
    let mut out = Vec::new();
    let mut index: Option<u16> = None;
    let mut mid = None;
    let mut inactive = false;
    let mut pending = Vec::new();
    let mut flush =
        |mid: &Option<String>, idx: Option<u16>, inactive: bool, pending: &mut Vec<String>| {
            if let (true, Some(i)) = (inactive, idx) {
                for c in pending.drain(..) {
                    out.push((mid.clone(), i, c));
                }
            }
            pending.clear();
        };
    for line in sdp.lines() {
        let line = line.trim_end();
        if line.starts_with("m=") {
            flush(&mid, index, inactive, &mut pending);
            index = Some(index.map_or(0, |i| i.saturating_add(1)));
            mid = None;
            inactive = false;
        } else if index.is_some() {
            if let Some(m) = line.strip_prefix("a=mid:") {
                mid = Some(m.to_owned());
            } else if line == "a=inactive" {
                inactive = true;
            } else if let Some(c) = line.strip_prefix("a=")
                && c.starts_with("candidate:")
            {
                pending.push(c.to_owned());
            }
        }
    }
    flush(&mid, index, inactive, &mut pending);
    out
}

/// Adds the candidates rtc ignored (see [`inactive_section_candidates`]). Failures
/// are logged, not fatal: the other side may still reach us.
pub async fn add_inactive_section_candidates(pc: &dyn PeerConnection, sdp: &str) {
    for (mid, index, candidate) in inactive_section_candidates(sdp) {
        let init = webrtc::peer_connection::RTCIceCandidateInit {
            candidate,
            sdp_mid: mid,
            sdp_mline_index: Some(index),
            ..Default::default()
        };
        if let Err(e) = pc.add_ice_candidate(init).await {
            tracing::debug!(error = %e, "remote candidate from an inactive m-section refused");
        }
    }
}

/// Direction attribute (`sendonly`, ...) of the m-line with `mid` in `sdp`.
pub fn media_direction(sdp: &str, mid: &str) -> Option<&'static str> {
    let mut in_section = false;
    let mut dir = None;
    let mut found = false;
    for line in sdp.lines() {
        let line = line.trim_end();
        if line.starts_with("m=") {
            if found {
                break;
            }
            in_section = true;
            dir = None;
            continue;
        }
        if !in_section {
            continue;
        }
        if let Some(m) = line.strip_prefix("a=mid:") {
            found = m == mid;
        }
        for d in ["sendrecv", "sendonly", "recvonly", "inactive"] {
            if line == format!("a={d}") {
                dir = Some(d);
            }
        }
    }
    if found {
        Some(dir.unwrap_or("sendrecv"))
    } else {
        None
    }
}

async fn read_track(
    pc: Weak<dyn PeerConnection>,
    shared: Arc<Shared>,
    track: Arc<dyn TrackRemote>,
) {
    let mut slot: Option<usize> = None;
    let mut mid: Option<String> = None;
    let mut level_id: Option<u8> = None;
    while let Some(evt) = track.poll().await {
        match evt {
            TrackRemoteEvent::OnOpen(init) => {
                let tid: usize = init.receiver_id.into();
                let Some(pc) = pc.upgrade() else { return };
                for t in pc.get_transceivers().await {
                    if t.id() != tid {
                        continue;
                    }
                    mid = t.mid().await.ok().flatten();
                    if let Ok(Some(r)) = t.receiver().await
                        && let Ok(p) = r.get_parameters().await
                    {
                        level_id = negotiated(&p.rtp_parameters).1;
                    }
                }
            }
            TrackRemoteEvent::OnRtpPacket(pkt) => {
                if slot.is_none()
                    && let Some(m) = &mid
                {
                    slot = shared
                        .layout
                        .lock()
                        .as_ref()
                        .and_then(|l| l.slot_mids.iter().position(|s| s == m));
                }
                shared.on_rtp(slot, level_id, &pkt, Instant::now());
            }
            TrackRemoteEvent::OnEnded => break,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_in_inactive_sections_are_found() {
        let sdp = "v=0\r\nm=audio 9 X 111\r\na=mid:0\r\na=inactive\r\na=candidate:1 1 udp 1 127.0.0.1 5000 typ host\r\na=end-of-candidates\r\nm=audio 9 X 111\r\na=mid:1\r\na=sendonly\r\na=candidate:2 1 udp 1 127.0.0.1 6000 typ host\r\n";
        let c = inactive_section_candidates(sdp);
        assert_eq!(
            c,
            vec![(
                Some("0".to_owned()),
                0,
                "candidate:1 1 udp 1 127.0.0.1 5000 typ host".to_owned()
            )]
        );
        assert!(inactive_section_candidates("garbage").is_empty());
    }

    #[test]
    fn media_direction_reads_the_section_of_the_mid() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendonly\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\na=recvonly\r\n";
        assert_eq!(media_direction(sdp, "0"), Some("sendonly"));
        assert_eq!(media_direction(sdp, "1"), Some("recvonly"));
        assert_eq!(media_direction(sdp, "2"), None);
    }
}
