//! The playing time of an uploaded voice note, read from its container: WebM
//! (Matroska; what Chromium's and Firefox's MediaRecorder write) and Ogg (Opus or
//! Vorbis). Browsers cannot show a duration for MediaRecorder's WebM until the whole
//! file is played (it has no `Duration` element), so the server measures it once at
//! upload and returns it with the message.
//!
//! Both readers only walk headers over bytes already in memory: every step moves
//! forward, sizes are checked against what is left, and anything malformed gives
//! `None` (no duration), never a panic. MP4, MPEG and WAV are not measured.

/// Longest duration believed: a voice note is minutes, not days.
const MAX_MS: u64 = 24 * 3600 * 1000;

/// Milliseconds of audio in `bytes`, if it is WebM or Ogg and its timing can be read.
pub fn audio_duration_ms(bytes: &[u8]) -> Option<u64> {
    let ms = if bytes.starts_with(&[0x1A, 0x45, 0xDF, 0xA3]) {
        webm_duration_ms(bytes)?
    } else if bytes.starts_with(b"OggS") {
        ogg_duration_ms(bytes)?
    } else {
        return None;
    };
    (ms <= MAX_MS).then_some(ms)
}

// ---- WebM / Matroska (EBML) ----------------------------------------------

const ID_SEGMENT: u32 = 0x1853_8067;
const ID_INFO: u32 = 0x1549_A966;
const ID_TIMECODE_SCALE: u32 = 0x2A_D7B1;
const ID_DURATION: u32 = 0x4489;
const ID_CLUSTER: u32 = 0x1F43_B675;
const ID_CLUSTER_TIMECODE: u32 = 0xE7;
const ID_SIMPLE_BLOCK: u32 = 0xA3;
const ID_BLOCK_GROUP: u32 = 0xA0;
const ID_BLOCK: u32 = 0xA1;
const ID_BLOCK_DURATION: u32 = 0x9B;

/// An element ID: 1 to 4 bytes, length marker kept (as Matroska writes IDs).
fn read_id(b: &[u8], at: usize) -> Option<(u32, usize)> {
    let first = *b.get(at)?;
    let len = first.leading_zeros() as usize + 1;
    if len > 4 {
        return None;
    }
    let bytes = b.get(at..at + len)?;
    let id = bytes.iter().fold(0u32, |acc, &x| (acc << 8) | u32::from(x));
    Some((id, len))
}

/// A size: 1 to 8 bytes, marker removed; `None` inside for "unknown size" (all ones).
fn read_size(b: &[u8], at: usize) -> Option<(Option<u64>, usize)> {
    let first = *b.get(at)?;
    let len = first.leading_zeros() as usize + 1;
    if len > 8 {
        return None;
    }
    let bytes = b.get(at..at + len)?;
    let mask = if len == 8 { 0 } else { 0xFFu8 >> len };
    let mut v = u64::from(first & mask);
    for &x in &bytes[1..] {
        v = (v << 8) | u64::from(x);
    }
    let all_ones = (1u64 << (7 * len)) - 1;
    Some(((v != all_ones).then_some(v), len))
}

fn read_uint(b: &[u8]) -> Option<u64> {
    if b.len() > 8 {
        return None;
    }
    Some(b.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
}

fn read_float(b: &[u8]) -> Option<f64> {
    match b.len() {
        4 => Some(f64::from(f32::from_be_bytes(b.try_into().ok()?))),
        8 => Some(f64::from_be_bytes(b.try_into().ok()?)),
        _ => None,
    }
}

/// Nanoseconds of audio in one Opus packet, from its TOC byte (RFC 6716 §3.1).
fn opus_packet_ns(packet: &[u8]) -> Option<u64> {
    let toc = *packet.first()?;
    let config = toc >> 3;
    let frame_us: u64 = match config {
        0..=11 => [10_000, 20_000, 40_000, 60_000][usize::from(config % 4)],
        12..=15 => [10_000, 20_000][usize::from(config % 2)],
        _ => [2_500, 5_000, 10_000, 20_000][usize::from(config % 4)],
    };
    let frames: u64 = match toc & 3 {
        0 => 1,
        1 | 2 => 2,
        _ => u64::from(*packet.get(1)? & 0x3F),
    };
    Some(frame_us * frames * 1000)
}

/// Walks the element headers in one flat pass: masters we need (Segment, Info,
/// Cluster, BlockGroup) are entered, everything else is skipped by its size. That
/// copes with MediaRecorder's unknown-size Segment and Clusters, which end only where
/// the next Cluster (or the file) begins.
fn webm_duration_ms(b: &[u8]) -> Option<u64> {
    let mut scale_ns: u64 = 1_000_000;
    let mut info_duration: Option<f64> = None;
    let mut cluster_tc: u64 = 0;
    // End of the latest-ending block, in nanoseconds.
    let mut end_ns: u64 = 0;
    let mut pending_block: Option<u64> = None; // start (ticks) of a Block awaiting its BlockDuration
    let mut at = 0usize;
    while at < b.len() {
        let Some((id, id_len)) = read_id(b, at) else {
            break;
        };
        let Some((size, size_len)) = read_size(b, at + id_len) else {
            break;
        };
        let data = at + id_len + size_len;
        match id {
            ID_SEGMENT | ID_INFO | ID_CLUSTER | ID_BLOCK_GROUP => {
                // Entered: the children follow.
                at = data;
                continue;
            }
            _ => {}
        }
        // Any other element needs a known size that fits.
        let Some(end) = size
            .and_then(|s| usize::try_from(s).ok())
            .and_then(|s| data.checked_add(s))
        else {
            break;
        };
        let Some(body) = b.get(data..end) else {
            // A truncated last element (recording cut short): keep what was read.
            break;
        };
        match id {
            ID_TIMECODE_SCALE => scale_ns = read_uint(body).filter(|s| *s > 0)?,
            ID_DURATION => info_duration = read_float(body).filter(|d| d.is_finite() && *d > 0.0),
            ID_CLUSTER_TIMECODE => cluster_tc = read_uint(body)?,
            ID_SIMPLE_BLOCK | ID_BLOCK => {
                // Track number (a size-like varint), then a signed 16-bit timecode
                // relative to the cluster, then flags, then the frame.
                let (_, track_len) = read_size(body, 0)?;
                let rel = body.get(track_len..track_len + 2)?;
                let rel = i64::from(i16::from_be_bytes([rel[0], rel[1]]));
                let flags = *body.get(track_len + 2)?;
                let start = (i64::try_from(cluster_tc).ok()? + rel).max(0) as u64;
                let start_ns = start.saturating_mul(scale_ns);
                // Without lacing the frame is one Opus packet: add its length.
                let frame_ns = if flags & 0x06 == 0 {
                    opus_packet_ns(body.get(track_len + 3..)?).unwrap_or(0)
                } else {
                    0
                };
                end_ns = end_ns.max(start_ns.saturating_add(frame_ns));
                pending_block = (id == ID_BLOCK).then_some(start);
            }
            ID_BLOCK_DURATION => {
                if let (Some(start), Some(d)) = (pending_block.take(), read_uint(body)) {
                    end_ns = end_ns.max(start.saturating_add(d).saturating_mul(scale_ns));
                }
            }
            _ => {}
        }
        at = end;
    }
    if let Some(d) = info_duration {
        let ns = d * scale_ns as f64;
        if ns.is_finite() && ns > 0.0 && ns < (MAX_MS as f64) * 1e6 {
            return Some((ns / 1e6).round() as u64);
        }
    }
    (end_ns > 0).then(|| (end_ns + 500_000) / 1_000_000)
}

// ---- Ogg -------------------------------------------------------------------

/// One page header at `at`: (serial, granule position, header length, body length).
fn ogg_page(b: &[u8], at: usize) -> Option<(u32, u64, usize, usize)> {
    let h = b.get(at..at + 27)?;
    if &h[..4] != b"OggS" || h[4] != 0 {
        return None;
    }
    let granule = u64::from_le_bytes(h[6..14].try_into().ok()?);
    let serial = u32::from_le_bytes(h[14..18].try_into().ok()?);
    let segments = usize::from(h[26]);
    let table = b.get(at + 27..at + 27 + segments)?;
    let body: usize = table.iter().map(|&x| usize::from(x)).sum();
    Some((serial, granule, 27 + segments, body))
}

/// The last page's granule position is the stream's length in samples (48 kHz for
/// Opus, less the encoder's pre-skip; the header's rate for Vorbis).
fn ogg_duration_ms(b: &[u8]) -> Option<u64> {
    let (serial, _, header_len, body_len) = ogg_page(b, 0)?;
    let head = b.get(header_len..header_len + body_len)?;
    let (rate, pre_skip) = if head.starts_with(b"OpusHead") {
        (
            48_000u64,
            u64::from(u16::from_le_bytes(head.get(10..12)?.try_into().ok()?)),
        )
    } else if head.starts_with(b"\x01vorbis") {
        let rate = u32::from_le_bytes(head.get(12..16)?.try_into().ok()?);
        (u64::from(rate), 0)
    } else {
        return None;
    };
    if rate == 0 {
        return None;
    }
    // From the end back, the first page of this stream with a granule position.
    let mut at = b.len().saturating_sub(27);
    loop {
        if let Some((s, granule, _, _)) = ogg_page(b, at)
            && s == serial
            && granule != u64::MAX
        {
            let samples = granule.saturating_sub(pre_skip);
            return Some(samples.saturating_mul(1000) / rate);
        }
        if at == 0 {
            return None;
        }
        at -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// EBML element with a known size (1-byte size field when it fits).
    fn el(id: u32, body: &[u8]) -> Vec<u8> {
        let mut v = id_bytes(id);
        assert!(body.len() < 0x7F);
        v.push(0x80 | body.len() as u8);
        v.extend_from_slice(body);
        v
    }

    fn id_bytes(id: u32) -> Vec<u8> {
        let b = id.to_be_bytes();
        let skip = b.iter().take_while(|x| **x == 0).count();
        b[skip..].to_vec()
    }

    /// A master element of unknown size (as MediaRecorder writes Segment and Cluster).
    fn unknown(id: u32) -> Vec<u8> {
        let mut v = id_bytes(id);
        v.extend_from_slice(&[0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]);
        v
    }

    /// A SimpleBlock on track 1 at `rel` ms holding one 20 ms CELT Opus packet.
    fn block(rel: i16) -> Vec<u8> {
        let mut body = vec![0x81];
        body.extend_from_slice(&rel.to_be_bytes());
        body.push(0x80); // keyframe, no lacing
        body.extend_from_slice(&[0xFC, 0x01, 0x02, 0x03]); // config 31 (20 ms), 1 frame
        el(ID_SIMPLE_BLOCK, &body)
    }

    fn media_recorder_webm(clusters: &[(u64, &[i16])]) -> Vec<u8> {
        let mut v = el(0x1A45_DFA3, &el(0x4282, b"webm"));
        v.extend(unknown(ID_SEGMENT));
        v.extend(el(ID_INFO, &el(ID_TIMECODE_SCALE, &[0x0F, 0x42, 0x40])));
        v.extend(el(0x1654_AE6B, &[0xAE, 0x80])); // Tracks, skipped
        for (tc, blocks) in clusters {
            v.extend(unknown(ID_CLUSTER));
            v.extend(el(ID_CLUSTER_TIMECODE, &tc.to_be_bytes()[6..]));
            for rel in *blocks {
                v.extend(block(*rel));
            }
        }
        v
    }

    #[test]
    fn webm_without_a_duration_element_is_measured_to_its_last_block_end() {
        let v = media_recorder_webm(&[(0, &[0, 20, 40]), (3000, &[0, 20, 4960])]);
        // Last block starts at 3000 + 4960 ms and lasts 20 ms.
        assert_eq!(audio_duration_ms(&v), Some(7980));
    }

    #[test]
    fn webm_duration_element_wins_when_present() {
        let mut v = el(0x1A45_DFA3, &[]);
        v.extend(unknown(ID_SEGMENT));
        let mut info = el(ID_TIMECODE_SCALE, &[0x0F, 0x42, 0x40]);
        info.extend(el(ID_DURATION, &2500.0f64.to_be_bytes()));
        v.extend(el(ID_INFO, &info));
        v.extend(unknown(ID_CLUSTER));
        v.extend(el(ID_CLUSTER_TIMECODE, &[0]));
        v.extend(block(0));
        assert_eq!(audio_duration_ms(&v), Some(2500));
    }

    #[test]
    fn a_truncated_webm_keeps_what_was_read_and_garbage_gives_none() {
        let v = media_recorder_webm(&[(0, &[0, 20, 40, 60])]);
        assert_eq!(audio_duration_ms(&v[..v.len() - 3]), Some(60));
        assert_eq!(audio_duration_ms(&[0x1A, 0x45, 0xDF, 0xA3]), None);
        assert_eq!(
            audio_duration_ms(&[0x1A, 0x45, 0xDF, 0xA3, 0x00, 0x00]),
            None
        );
        assert_eq!(audio_duration_ms(b"not audio at all"), None);
        assert_eq!(audio_duration_ms(&[]), None);
        // Every prefix of a valid file parses without panicking.
        for n in 0..v.len() {
            let _ = audio_duration_ms(&v[..n]);
        }
        // And so do random bytes after a WebM magic.
        let mut x: u32 = 12345;
        for _ in 0..2000 {
            let mut buf = vec![0x1A, 0x45, 0xDF, 0xA3];
            for _ in 0..64 {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                buf.push((x >> 16) as u8);
            }
            let _ = audio_duration_ms(&buf);
        }
    }

    #[test]
    fn an_absurd_duration_is_not_believed() {
        let mut v = el(0x1A45_DFA3, &[]);
        v.extend(unknown(ID_SEGMENT));
        v.extend(el(ID_INFO, &el(ID_DURATION, &1e15f64.to_be_bytes())));
        assert_eq!(audio_duration_ms(&v), None);
    }

    fn ogg_page_bytes(granule: u64, serial: u32, body: &[u8]) -> Vec<u8> {
        let mut v = b"OggS\0\0".to_vec();
        v.extend_from_slice(&granule.to_le_bytes());
        v.extend_from_slice(&serial.to_le_bytes());
        v.extend_from_slice(&[0; 8]); // sequence, checksum (not checked)
        v.push(1);
        v.push(body.len() as u8);
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn ogg_opus_is_the_last_granule_less_the_pre_skip() {
        let mut head = b"OpusHead\x01\x01".to_vec();
        head.extend_from_slice(&312u16.to_le_bytes());
        head.extend_from_slice(&48_000u32.to_le_bytes());
        let mut v = ogg_page_bytes(0, 7, &head);
        v.extend(ogg_page_bytes(0, 7, b"OpusTags"));
        v.extend(ogg_page_bytes(48_000, 7, &[0xFC; 40]));
        v.extend(ogg_page_bytes(48_000 * 3 + 312, 7, &[0xFC; 40]));
        assert_eq!(audio_duration_ms(&v), Some(3000));
        // A trailing page of another stream is ignored.
        v.extend(ogg_page_bytes(10_000_000, 9, &[0; 4]));
        assert_eq!(audio_duration_ms(&v), Some(3000));
        for n in 0..v.len() {
            let _ = audio_duration_ms(&v[..n]);
        }
    }

    #[test]
    fn opus_packet_lengths_follow_the_toc() {
        assert_eq!(opus_packet_ns(&[0xFC]), Some(20_000_000)); // CELT 20 ms
        assert_eq!(opus_packet_ns(&[0x78 | 1]), Some(40_000_000)); // hybrid 20 ms, 2 frames
        assert_eq!(opus_packet_ns(&[0x18 | 3, 3]), Some(180_000_000)); // SILK 60 ms x3
        assert_eq!(opus_packet_ns(&[0x03]), None);
    }
}
