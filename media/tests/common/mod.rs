//! Test-only WebRTC client for the SFU tests: an async `webrtc` peer connection on loopback
//! that answers the server's offer, sends a real Opus sine tone with the RFC 6464 audio-level
//! extension, and records and decodes what it receives per incoming slot.
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::MIME_TYPE_OPUS;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use tokio::sync::watch;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCPeerConnectionState, RTCSessionDescription, Registry, SettingEngineBuilder,
    register_default_interceptors,
};
use webrtc::rtp_transceiver::RtpSender;

pub const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";
pub const SAMPLE_RATE: u32 = 48_000;
pub const FRAME: usize = 960; // 20 ms at 48 kHz
/// Decoded audio kept per stream for the tone check (1 s).
const PCM_KEEP: usize = SAMPLE_RATE as usize;

/// Everything a client observed on one incoming stream (one server slot).
pub struct StreamRecord {
    pub track_id: String,
    pub ssrc: u32,
    pub packets: u64,
    pub seqs: Vec<u16>,
    pub timestamps: Vec<u32>,
    pub arrivals: Vec<Instant>,
    pub audio_levels: u64,
    pub decode_errors: u64,
    pub pcm: Vec<i16>,
    decoder: opus::Decoder,
}

impl StreamRecord {
    fn new(track_id: String, ssrc: u32) -> Result<Self> {
        Ok(StreamRecord {
            track_id,
            ssrc,
            packets: 0,
            seqs: Vec::new(),
            timestamps: Vec::new(),
            arrivals: Vec::new(),
            audio_levels: 0,
            decode_errors: 0,
            pcm: Vec::new(),
            decoder: opus::Decoder::new(SAMPLE_RATE, opus::Channels::Mono)?,
        })
    }

    fn record(&mut self, packet: &rtp::Packet, level_id: Option<u8>, decode: bool) {
        self.packets += 1;
        self.seqs.push(packet.header.sequence_number);
        self.timestamps.push(packet.header.timestamp);
        self.arrivals.push(Instant::now());
        if level_id.is_some_and(|id| packet.header.get_extension(id).is_some()) {
            self.audio_levels += 1;
        }
        if !decode {
            return;
        }
        let mut out = [0i16; FRAME * 6];
        match self.decoder.decode(&packet.payload, &mut out, false) {
            Ok(n) => {
                self.pcm.extend_from_slice(&out[..n]);
                if self.pcm.len() > PCM_KEEP {
                    let excess = self.pcm.len() - PCM_KEEP;
                    self.pcm.drain(..excess);
                }
            }
            Err(_) => self.decode_errors += 1,
        }
    }

    /// Packets that arrived at or after `since`.
    pub fn packets_since(&self, since: Instant) -> u64 {
        self.arrivals.iter().filter(|t| **t >= since).count() as u64
    }
}

#[derive(Default)]
struct Shared {
    /// Skip Opus decoding (load measurements only count packets).
    no_decode: AtomicBool,
    streams: Mutex<HashMap<String, StreamRecord>>,
    /// Audio-level extension id negotiated for incoming streams (same offer for all slots).
    incoming_level_id: Mutex<Option<u8>>,
}

struct Handler {
    state: watch::Sender<RTCPeerConnectionState>,
    shared: Arc<Shared>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self.state.send(state);
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        // Never poll the track inside the callback (it runs on the driver task): spawn.
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let track_id = track.track_id().await;
            while let Some(event) = track.poll().await {
                match event {
                    TrackRemoteEvent::OnRtpPacket(packet) => {
                        let level_id = *lock(&shared.incoming_level_id);
                        let decode = !shared.no_decode.load(Ordering::Relaxed);
                        let mut streams = lock(&shared.streams);
                        let record = match streams.get_mut(&track_id) {
                            Some(r) => r,
                            None => {
                                let Ok(r) = StreamRecord::new(track_id.clone(), packet.header.ssrc)
                                else {
                                    return;
                                };
                                streams.entry(track_id.clone()).or_insert(r)
                            }
                        };
                        record.record(&packet, level_id, decode);
                    }
                    TrackRemoteEvent::OnEnded => break,
                    _ => {}
                }
            }
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn opus_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: SAMPLE_RATE,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

/// A loopback WebRTC client of the SFU.
pub struct Client {
    pub name: String,
    pc: Arc<dyn PeerConnection>,
    state: watch::Receiver<RTCPeerConnectionState>,
    shared: Arc<Shared>,
    mic: Option<(Arc<TrackLocalStaticRTP>, Arc<dyn RtpSender>)>,
    mic_ssrc: u32,
    tone: Option<ToneHandle>,
}

impl Client {
    /// Builds the peer connection. Its driver task runs on the calling runtime.
    pub async fn new(name: &str) -> Result<Client> {
        Client::with_consent_interval(name, None).await
    }

    /// Like [`Client::new`], with ICE consent checks every `consent` (as RFC 7675 clients
    /// do at 4-6 s; the `webrtc` crate's default is 2 s) and its own view of the connection
    /// kept for 30 s without a response, so only the server's behaviour is under test.
    pub async fn with_consent_interval(name: &str, consent: Option<Duration>) -> Result<Client> {
        let mut media = MediaEngine::default();
        media.register_codec(
            RTCRtpCodecParameters {
                rtp_codec: opus_codec(),
                payload_type: 111,
            },
            RtpCodecKind::Audio,
        )?;
        media.register_header_extension(
            RTCRtpHeaderExtensionCapability {
                uri: AUDIO_LEVEL_URI.to_owned(),
            },
            RtpCodecKind::Audio,
            None,
        )?;
        let registry = register_default_interceptors(Registry::new(), &mut media)?;
        let mut setting = SettingEngineBuilder::new()
            .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled);
        if let Some(every) = consent {
            setting = setting.with_ice_timeouts(
                Some(Duration::from_secs(30)),
                Some(Duration::from_secs(30)),
                Some(every),
            );
        }
        let setting = setting.build();
        let (state_tx, state_rx) = watch::channel(RTCPeerConnectionState::New);
        let shared = Arc::new(Shared::default());
        let pc = PeerConnectionBuilder::new()
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .with_setting_engine(setting)
            .with_handler(Arc::new(Handler {
                state: state_tx,
                shared: shared.clone(),
            }))
            .with_udp_addrs(vec!["127.0.0.1:0".to_owned()])
            .build()
            .await?;
        Ok(Client {
            name: name.to_owned(),
            pc: Arc::new(pc),
            state: state_rx,
            shared,
            mic: None,
            mic_ssrc: rand::random::<u32>() | 1,
            tone: None,
        })
    }

    /// Answers a server offer. With `publish`, attaches the microphone track first (once).
    pub async fn answer(&mut self, offer_sdp: &str, publish: bool) -> Result<String> {
        self.pc
            .set_remote_description(RTCSessionDescription::offer(offer_sdp.to_owned())?)
            .await?;
        if publish && self.mic.is_none() {
            let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
                format!("{}-stream", self.name),
                format!("{}-mic", self.name),
                "mic".to_owned(),
                RtpCodecKind::Audio,
                vec![RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        ssrc: Some(self.mic_ssrc),
                        ..Default::default()
                    },
                    codec: opus_codec(),
                    ..Default::default()
                }],
            )));
            let sender = self
                .pc
                .add_track(track.clone() as Arc<dyn TrackLocal>)
                .await?;
            self.mic = Some((track, sender));
        }
        let answer = self.pc.create_answer(None).await?;
        self.pc.set_local_description(answer).await?;
        let sdp = self
            .pc
            .local_description()
            .await
            .ok_or_else(|| anyhow!("no local description"))?
            .sdp;
        // Every slot m-line comes from one offer with one extmap: remember the id.
        *lock(&self.shared.incoming_level_id) = extmap_id(offer_sdp, AUDIO_LEVEL_URI);
        Ok(sdp)
    }

    pub async fn wait_connected(&mut self, within: Duration) -> Result<()> {
        let name = self.name.clone();
        tokio::time::timeout(
            within,
            self.state
                .wait_for(|s| *s == RTCPeerConnectionState::Connected),
        )
        .await
        .with_context(|| format!("{name} not connected within {within:?}"))??;
        Ok(())
    }

    /// Starts sending a sine tone (`level` is RFC 6464 -dBov, 0 = loudest).
    pub async fn start_tone(&mut self, freq_hz: f64, level: u8) -> Result<()> {
        let (track, sender) = self
            .mic
            .clone()
            .ok_or_else(|| anyhow!("{} has no microphone track", self.name))?;
        let params = sender.get_parameters().await?;
        let pt = params
            .rtp_parameters
            .codecs
            .iter()
            .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(MIME_TYPE_OPUS))
            .map(|c| c.payload_type)
            .ok_or_else(|| anyhow!("opus not negotiated on the mic"))?;
        let level_id = params
            .rtp_parameters
            .header_extensions
            .iter()
            .find(|h| h.uri == AUDIO_LEVEL_URI)
            .map(|h| h.id as u8);
        let ssrc = self.mic_ssrc;
        let level = Arc::new(std::sync::atomic::AtomicU8::new(level));
        let sent = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let (sent, stop, level) = (sent.clone(), stop.clone(), level.clone());
            tokio::spawn(async move {
                let Ok(mut encoder) =
                    opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, opus::Application::Audio)
                else {
                    return;
                };
                let mut ticker = tokio::time::interval(Duration::from_millis(20));
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                let mut seq: u16 = rand::random();
                let mut ts: u32 = rand::random();
                let mut phase = 0f64;
                let step = 2.0 * std::f64::consts::PI * freq_hz / f64::from(SAMPLE_RATE);
                let mut pcm = [0i16; FRAME];
                let mut out = [0u8; 1500];
                while !stop.load(Ordering::Relaxed) {
                    ticker.tick().await;
                    for s in pcm.iter_mut() {
                        *s = (phase.sin() * 10_000.0) as i16;
                        phase = (phase + step) % (2.0 * std::f64::consts::PI);
                    }
                    let Ok(n) = encoder.encode(&pcm, &mut out) else {
                        continue;
                    };
                    let mut header = rtp::Header {
                        version: 2,
                        payload_type: pt,
                        sequence_number: seq,
                        timestamp: ts,
                        ssrc,
                        ..Default::default()
                    };
                    if let Some(id) = level_id {
                        let l = level.load(Ordering::Relaxed) & 0x7f;
                        let _ = header.set_extension(id, Bytes::copy_from_slice(&[0x80 | l]));
                    }
                    let packet = rtp::Packet {
                        header,
                        payload: Bytes::copy_from_slice(&out[..n]),
                    };
                    if track.write_rtp(packet).await.is_ok() {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    seq = seq.wrapping_add(1);
                    ts = ts.wrapping_add(FRAME as u32);
                }
            })
        };
        self.tone = Some(ToneHandle {
            sent,
            stop,
            level,
            task,
        });
        Ok(())
    }

    /// Stop decoding received audio (only count it), for load measurements.
    pub fn skip_decoding(&self) {
        self.shared.no_decode.store(true, Ordering::Relaxed);
    }

    pub fn tone_sent(&self) -> u64 {
        self.tone
            .as_ref()
            .map_or(0, |t| t.sent.load(Ordering::Relaxed))
    }

    pub fn set_tone_level(&self, level: u8) {
        if let Some(t) = &self.tone {
            t.level.store(level, Ordering::Relaxed);
        }
    }

    pub async fn stop_tone(&mut self) {
        if let Some(t) = self.tone.take() {
            t.stop.store(true, Ordering::Relaxed);
            let _ = t.task.await;
        }
    }

    /// Runs `f` over the streams received so far (keyed by track id, i.e. slot name).
    pub fn with_streams<T>(&self, f: impl FnOnce(&HashMap<String, StreamRecord>) -> T) -> T {
        f(&lock(&self.shared.streams))
    }

    /// Total RTP packets received on all slots.
    pub fn received_total(&self) -> u64 {
        self.with_streams(|s| s.values().map(|r| r.packets).sum())
    }

    pub async fn close(mut self) -> Result<()> {
        self.stop_tone().await;
        self.pc.close().await?;
        Ok(())
    }
}

struct ToneHandle {
    sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    level: Arc<std::sync::atomic::AtomicU8>,
    task: tokio::task::JoinHandle<()>,
}

/// The id of `a=extmap:<id> <uri>` in an SDP.
pub fn extmap_id(sdp: &str, uri: &str) -> Option<u8> {
    sdp.lines().find_map(|l| {
        let rest = l.trim_end().strip_prefix("a=extmap:")?;
        let (id, u) = rest.split_once(' ')?;
        (u.trim() == uri).then(|| id.split('/').next()?.parse().ok())?
    })
}

/// Goertzel power of `freq` in `pcm`.
pub fn tone_power(pcm: &[i16], freq: f64) -> f64 {
    let k = 2.0 * (2.0 * std::f64::consts::PI * freq / f64::from(SAMPLE_RATE)).cos();
    let (mut s1, mut s2) = (0f64, 0f64);
    for &x in pcm {
        let s0 = f64::from(x) + k * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    s1 * s1 + s2 * s2 - k * s1 * s2
}

/// Which of `candidates` dominates `pcm`: at least 10x the power of every other candidate.
pub fn dominant_tone(pcm: &[i16], candidates: &[f64]) -> Option<f64> {
    if pcm.len() < FRAME * 10 {
        return None;
    }
    let mut powers: Vec<(f64, f64)> = candidates
        .iter()
        .map(|f| (*f, tone_power(pcm, *f)))
        .collect();
    powers.sort_by(|a, b| b.1.total_cmp(&a.1));
    match powers.as_slice() {
        [(f, p)] if *p > 0.0 => Some(*f),
        [(f, p), (_, q), ..] if *p > 10.0 * q => Some(*f),
        _ => None,
    }
}

/// Collects every SfuEvent so tests can wait on conditions over them.
#[derive(Clone, Default)]
pub struct Events(Arc<Mutex<Vec<media::SfuEvent>>>);

impl Events {
    pub fn spawn(mut rx: media::EventReceiver) -> Events {
        let events = Events::default();
        let sink = events.clone();
        tokio::spawn(async move {
            while let Some(e) = rx.recv().await {
                lock(&sink.0).push(e);
            }
        });
        events
    }

    pub fn count(&self, f: impl Fn(&media::SfuEvent) -> bool) -> usize {
        lock(&self.0).iter().filter(|e| f(e)).count()
    }

    pub fn all(&self) -> Vec<media::SfuEvent> {
        lock(&self.0).clone()
    }
}

/// An SFU on loopback with test-friendly timeouts.
pub fn test_config() -> media::SfuConfig {
    media::SfuConfig {
        bind: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        announce_ips: vec![],
        ..media::SfuConfig::default()
    }
}

/// Joins `pid` to `room`: builds a client, applies the server's offer, hands back the answer.
/// `client_publishes` attaches a microphone track even if the server did not offer to
/// receive one (to test refusal).
pub async fn join(
    sfu: &media::Sfu,
    room: media::RoomKey,
    pid: media::ParticipantId,
    can_publish: bool,
    client_publishes: bool,
    name: &str,
) -> Result<Client> {
    let mut client = Client::new(name).await?;
    let offer = sfu.join(room, pid, can_publish).await?;
    let answer = client.answer(&offer.sdp, client_publishes).await?;
    sfu.accept_answer(pid, answer).await?;
    Ok(client)
}

/// Polls `cond` until it holds or `within` passes.
pub async fn wait_until(
    within: Duration,
    what: &str,
    mut cond: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {within:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `a=mid` values of an SDP's m-sections, in order.
pub fn sdp_mids(sdp: &str) -> Vec<&str> {
    sdp.lines()
        .filter_map(|l| l.strip_prefix("a=mid:"))
        .collect()
}
