//! An in-process stand-in for the Chorus SFU's media side, built on the async
//! `webrtc` crate: it OFFERS the server's layout (one microphone m-line, recvonly or
//! inactive, then N sendonly slot m-lines), sends a known Opus tone on every slot and
//! records what arrives on the microphone m-line (packets, audio-level extension,
//! decoded PCM). It lets the client be tested before the real server exists.

#![allow(dead_code)]

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use loadtest::audio::{self, OpusDecoder, OpusEncoder, PcmRing, SignalSource, Tone};
use loadtest::peer::{OfferLayout, negotiated, opus_codec};
use parking_lot::Mutex;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::RTCOfferOptions;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCIceGatheringState,
    RTCPeerConnectionState, RTCSessionDescription, SettingEngineBuilder,
};
use webrtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit, RtpTransceiver};

/// What the stand-in heard on the microphone m-line.
pub struct MicRx {
    pub packets: u64,
    pub with_level: u64,
    pub levels: Vec<u8>,
    pub payload_types: Vec<u8>,
    pub pcm: PcmRing,
    decoder: Option<OpusDecoder>,
}

struct Shared {
    conn: watch::Sender<RTCPeerConnectionState>,
    gathering: watch::Sender<RTCIceGatheringState>,
    tracks: mpsc::UnboundedSender<Arc<dyn TrackRemote>>,
}

struct Handler(Arc<Shared>);

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let _ = self.0.tracks.send(track);
    }
    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        self.0.conn.send_replace(state);
    }
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        self.0.gathering.send_replace(state);
    }
}

pub struct Slot {
    pub track: Arc<TrackLocalStaticRTP>,
    pub ssrc: u32,
    pub transceiver: Arc<dyn RtpTransceiver>,
    pub sent: Arc<AtomicU64>,
}

pub struct StandIn {
    pub pc: Arc<dyn PeerConnection>,
    pub mic: Arc<dyn RtpTransceiver>,
    pub slots: Vec<Slot>,
    pub mic_rx: Arc<Mutex<MicRx>>,
    shared: Arc<Shared>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
    }
}

/// Deliberately unlike the client's own engine (Opus on 109 instead of 111, the
/// audio-level extension on id 2 instead of 1), so tests prove the client sends
/// with what was negotiated rather than with its own defaults.
fn standin_media_engine() -> Result<webrtc::peer_connection::MediaEngine> {
    let mut me = webrtc::peer_connection::MediaEngine::default();
    me.register_codec(
        rtc::rtp_transceiver::rtp_sender::RTCRtpCodecParameters {
            rtp_codec: opus_codec(),
            payload_type: 109,
        },
        RtpCodecKind::Audio,
    )?;
    for uri in [
        "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
        loadtest::peer::AUDIO_LEVEL_URI,
    ] {
        me.register_header_extension(
            rtc::rtp_transceiver::rtp_sender::RTCRtpHeaderExtensionCapability {
                uri: uri.to_owned(),
            },
            RtpCodecKind::Audio,
            None,
        )?;
    }
    Ok(me)
}

/// Logs to the test output when RUST_LOG is set (rtc logs through `log`).
pub fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

impl StandIn {
    /// `mic_can_publish`: offer the microphone m-line recvonly (else inactive).
    pub async fn new(slots: usize, mic_can_publish: bool) -> Result<Self> {
        init_logs();
        let (tracks_tx, mut tracks_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            conn: watch::channel(RTCPeerConnectionState::New).0,
            gathering: watch::channel(RTCIceGatheringState::New).0,
            tracks: tracks_tx,
        });
        let settings = SettingEngineBuilder::default()
            .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
            .with_include_loopback_candidate(true)
            .build();
        let pc = PeerConnectionBuilder::new()
            .with_media_engine(standin_media_engine()?)
            .with_setting_engine(settings)
            .with_handler(Arc::new(Handler(shared.clone())))
            .with_udp_addrs(vec!["127.0.0.1:0".to_owned()])
            .build()
            .await?;
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);

        let mic = pc
            .add_transceiver_from_kind(
                RtpCodecKind::Audio,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Recvonly,
                    streams: vec![],
                    send_encodings: vec![],
                }),
            )
            .await?;
        // add_transceiver_from_kind only takes recvonly; a listener's m-line is inactive.
        if !mic_can_publish {
            mic.set_direction(RTCRtpTransceiverDirection::Inactive)
                .await?;
        }

        let mut out = Vec::new();
        for i in 0..slots {
            let ssrc = 0x5100_0000 + i as u32;
            let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
                "sfu".to_owned(),
                format!("slot{i}"),
                format!("slot{i}"),
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
            let t: Arc<dyn TrackLocal> = track.clone();
            let transceiver = pc
                .add_transceiver_from_track(
                    t,
                    Some(RTCRtpTransceiverInit {
                        direction: RTCRtpTransceiverDirection::Sendonly,
                        streams: vec![],
                        send_encodings: vec![],
                    }),
                )
                .await?;
            out.push(Slot {
                track,
                ssrc,
                transceiver,
                sent: Arc::new(AtomicU64::new(0)),
            });
        }

        let mic_rx = Arc::new(Mutex::new(MicRx {
            packets: 0,
            with_level: 0,
            levels: Vec::new(),
            payload_types: Vec::new(),
            pcm: PcmRing::new(audio::SAMPLE_RATE as usize * 2),
            decoder: None,
        }));
        let rx = mic_rx.clone();
        let weak = Arc::downgrade(&pc);
        let reader = tokio::spawn(async move {
            while let Some(track) = tracks_rx.recv().await {
                let rx = rx.clone();
                let weak = weak.clone();
                tokio::spawn(async move {
                    let mut level_id = None;
                    while let Some(evt) = track.poll().await {
                        match evt {
                            TrackRemoteEvent::OnOpen(init) => {
                                let tid: usize = init.receiver_id.into();
                                let Some(pc) = weak.upgrade() else { return };
                                for t in pc.get_transceivers().await {
                                    if t.id() == tid
                                        && let Ok(Some(r)) = t.receiver().await
                                        && let Ok(p) = r.get_parameters().await
                                    {
                                        level_id = negotiated(&p.rtp_parameters).1;
                                    }
                                }
                            }
                            TrackRemoteEvent::OnRtpPacket(p) => {
                                let mut m = rx.lock();
                                m.packets += 1;
                                m.payload_types.push(p.header.payload_type);
                                if let Some(id) = level_id
                                    && let Some(b) = p.header.get_extension(id)
                                    && let Some((lvl, _)) = audio::parse_audio_level(&b)
                                {
                                    m.with_level += 1;
                                    m.levels.push(lvl);
                                }
                                if m.decoder.is_none() {
                                    m.decoder = OpusDecoder::new().ok();
                                }
                                let m = &mut *m;
                                if let Some(d) = m.decoder.as_mut()
                                    && let Ok(pcm) = d.decode(&p.payload)
                                {
                                    m.pcm.push(pcm);
                                }
                            }
                            TrackRemoteEvent::OnEnded => break,
                            _ => {}
                        }
                    }
                });
            }
        });

        Ok(Self {
            pc,
            mic,
            slots: out,
            mic_rx,
            shared,
            tasks: Mutex::new(vec![reader]),
        })
    }

    /// Creates an offer (optionally an ICE restart), sets it locally, waits for
    /// candidates, and returns the SDP with the layout the server would send.
    pub async fn offer(&self, ice_restart: bool) -> Result<(String, OfferLayout)> {
        let opts = ice_restart.then_some(RTCOfferOptions { ice_restart: true });
        let offer = self.pc.create_offer(opts).await?;
        self.pc.set_local_description(offer).await?;
        let mut g = self.shared.gathering.subscribe();
        let sdp = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Some(d) = self.pc.local_description().await
                    && *g.borrow_and_update() == RTCIceGatheringState::Complete
                    && d.sdp.contains("a=candidate:")
                {
                    return d.sdp;
                }
                let _ = tokio::time::timeout(Duration::from_millis(20), g.changed()).await;
            }
        })
        .await
        .context("stand-in gathering")?;
        let publish_mid = self
            .mic
            .mid()
            .await?
            .ok_or_else(|| anyhow!("mic has no mid"))?;
        let mut slot_mids = Vec::new();
        for s in &self.slots {
            slot_mids.push(
                s.transceiver
                    .mid()
                    .await?
                    .ok_or_else(|| anyhow!("slot has no mid"))?,
            );
        }
        Ok((
            sdp,
            OfferLayout {
                publish_mid,
                slot_mids,
            },
        ))
    }

    pub async fn accept_answer(&self, sdp: String) -> Result<()> {
        self.pc
            .set_remote_description(RTCSessionDescription::answer(sdp.clone())?)
            .await?;
        loadtest::peer::add_inactive_section_candidates(self.pc.as_ref(), &sdp).await;
        Ok(())
    }

    pub async fn set_mic_can_publish(&self, yes: bool) -> Result<()> {
        self.mic
            .set_direction(if yes {
                RTCRtpTransceiverDirection::Recvonly
            } else {
                RTCRtpTransceiverDirection::Inactive
            })
            .await?;
        Ok(())
    }

    pub async fn wait_connected(&self, deadline: Duration) -> Result<()> {
        let mut c = self.shared.conn.subscribe();
        tokio::time::timeout(deadline, async {
            loop {
                if *c.borrow_and_update() == RTCPeerConnectionState::Connected {
                    return Ok(());
                }
                c.changed().await?;
            }
        })
        .await
        .context("stand-in connect timeout")?
    }

    /// Sends `frames` 20 ms frames of `freqs[i]` on slot i (real time), with the
    /// audio-level extension. Returns when done.
    pub async fn send_tones(&self, freqs: &[f64], frames: usize) -> Result<()> {
        let mut senders = Vec::new();
        for (i, &f) in freqs.iter().enumerate() {
            let slot = self.slots.get(i).ok_or_else(|| anyhow!("no slot {i}"))?;
            let sender = slot
                .transceiver
                .sender()
                .await?
                .ok_or_else(|| anyhow!("slot without sender"))?;
            let (pt, level_id) = negotiated(&sender.get_parameters().await?.rtp_parameters);
            let pt = pt.ok_or_else(|| anyhow!("opus not negotiated on slot {i}"))?;
            senders.push((
                slot.track.clone(),
                slot.ssrc,
                pt,
                level_id,
                Tone::new(f, 0.5),
                OpusEncoder::new()?,
                slot.sent.clone(),
            ));
        }
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let mut pcm = vec![0i16; audio::FRAME_SAMPLES];
        for _ in 0..frames {
            tick.tick().await;
            for (track, ssrc, pt, level_id, tone, enc, sent) in senders.iter_mut() {
                // Continue numbering across calls so each slot stays one stream.
                let n = sent.load(Ordering::Relaxed) as usize;
                tone.fill(&mut pcm);
                let f = enc.encode(&pcm)?;
                let mut header = rtp::header::Header {
                    version: 2,
                    payload_type: *pt,
                    sequence_number: 1000u16.wrapping_add(n as u16),
                    timestamp: 5000u32.wrapping_add((n * audio::FRAME_SAMPLES) as u32),
                    ssrc: *ssrc,
                    ..Default::default()
                };
                if let Some(id) = level_id {
                    header.extension = true;
                    header.extension_profile = rtp::header::EXTENSION_PROFILE_ONE_BYTE;
                    header.set_extension(
                        *id,
                        Bytes::copy_from_slice(&[audio::encode_audio_level(f.level, true)]),
                    )?;
                }
                track
                    .write_rtp(rtp::Packet {
                        header,
                        payload: f.payload,
                    })
                    .await?;
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    pub async fn close(&self) {
        let _ = tokio::time::timeout(Duration::from_secs(3), self.pc.close()).await;
    }
}

/// Polls `cond` every 20 ms until it holds or `deadline` passes.
pub async fn eventually(
    deadline: Duration,
    what: &str,
    mut cond: impl FnMut() -> bool,
) -> Result<()> {
    tokio::time::timeout(deadline, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .with_context(|| format!("timed out waiting for {what}"))
}

/// Keeps `SignalSource` in scope for test files.
pub fn boxed(s: impl SignalSource + 'static) -> Box<dyn SignalSource> {
    Box::new(s)
}
