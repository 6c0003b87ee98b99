//! Upload content types decided from the bytes (never from the client), and HTTP
//! single-range parsing for downloads.

/// The audio types accepted for voice notes, by magic bytes.
pub fn sniff_audio(b: &[u8]) -> Option<&'static str> {
    if b.starts_with(&[0x1A, 0x45, 0xDF, 0xA3]) {
        // EBML header: WebM/Matroska, what MediaRecorder produces in Chromium and Firefox.
        return Some("audio/webm");
    }
    if b.starts_with(b"OggS") {
        return Some("audio/ogg");
    }
    if b.len() >= 12 && &b[4..8] == b"ftyp" {
        // ISO BMFF (mp4/m4a): Safari's MediaRecorder output.
        return Some("audio/mp4");
    }
    if b.starts_with(b"ID3") || (b.len() >= 2 && b[0] == 0xFF && (b[1] & 0xE0) == 0xE0) {
        return Some("audio/mpeg");
    }
    if b.len() >= 12 && b.starts_with(b"RIFF") && &b[8..12] == b"WAVE" {
        return Some("audio/wav");
    }
    None
}

/// The image types accepted for chat images, by magic bytes. All are safe to render
/// inline (no SVG or HTML).
pub fn sniff_image(b: &[u8]) -> Option<&'static str> {
    if b.starts_with(&[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A]) {
        return Some("image/png");
    }
    if b.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return Some("image/jpeg");
    }
    if b.len() >= 12 && b.starts_with(b"RIFF") && &b[8..12] == b"WEBP" {
        return Some("image/webp");
    }
    if b.starts_with(b"GIF87a") || b.starts_with(b"GIF89a") {
        return Some("image/gif");
    }
    None
}

/// Whether a stored content type may be shown inline by a browser.
pub fn is_safe_inline_image(content_type: &str) -> bool {
    matches!(
        content_type,
        "image/png" | "image/jpeg" | "image/webp" | "image/gif"
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable `Range` header (absent, malformed, or several ranges): send everything.
    Full,
    /// Half-open byte range within the resource.
    Partial { start: u64, end: u64 },
    /// Syntactically valid but outside the resource: 416.
    Unsatisfiable,
}

/// Parses a `Range` header against a resource of `len` bytes (RFC 9110 §14.1.2, one range).
pub fn parse_range(header: Option<&str>, len: u64) -> RangeRequest {
    let Some(h) = header else {
        return RangeRequest::Full;
    };
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        // Multipart byteranges are not supported; a full response is allowed.
        return RangeRequest::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        // Suffix range: the last N bytes.
        let Ok(n) = b.parse::<u64>() else {
            return RangeRequest::Full;
        };
        if n == 0 || len == 0 {
            return RangeRequest::Unsatisfiable;
        }
        return RangeRequest::Partial {
            start: len.saturating_sub(n),
            end: len,
        };
    }
    let Ok(start) = a.parse::<u64>() else {
        return RangeRequest::Full;
    };
    let end_incl = if b.is_empty() {
        len.saturating_sub(1)
    } else {
        match b.parse::<u64>() {
            Ok(e) if e >= start => e.min(len.saturating_sub(1)),
            _ => return RangeRequest::Full,
        }
    };
    if start >= len {
        return RangeRequest::Unsatisfiable;
    }
    RangeRequest::Partial {
        start,
        end: end_incl + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audio_formats_are_recognised_by_magic_bytes() {
        assert_eq!(
            sniff_audio(&[0x1A, 0x45, 0xDF, 0xA3, 1, 2]),
            Some("audio/webm")
        );
        assert_eq!(sniff_audio(b"OggS\0\x02rest"), Some("audio/ogg"));
        assert_eq!(sniff_audio(b"\0\0\0\x20ftypM4A \0\0"), Some("audio/mp4"));
        assert_eq!(sniff_audio(b"ID3\x04rest"), Some("audio/mpeg"));
        assert_eq!(sniff_audio(&[0xFF, 0xFB, 0x90, 0x00]), Some("audio/mpeg"));
        assert_eq!(sniff_audio(b"RIFF\0\0\0\0WAVEfmt "), Some("audio/wav"));
        assert_eq!(sniff_audio(b"<html><script>"), None);
        assert_eq!(sniff_audio(b""), None);
        assert_eq!(sniff_audio(b"RIFF\0\0\0\0WEBPVP8 "), None);
    }

    #[test]
    fn image_formats_are_recognised_by_magic_bytes() {
        assert_eq!(sniff_image(b"\x89PNG\r\n\x1a\nrest"), Some("image/png"));
        assert_eq!(sniff_image(&[0xFF, 0xD8, 0xFF, 0xE0]), Some("image/jpeg"));
        assert_eq!(sniff_image(b"RIFF\0\0\0\0WEBPVP8 "), Some("image/webp"));
        assert_eq!(sniff_image(b"GIF89a..."), Some("image/gif"));
        assert_eq!(sniff_image(b"<svg xmlns="), None);
    }

    #[test]
    fn ranges_parse_per_rfc() {
        use RangeRequest::*;
        assert_eq!(parse_range(None, 100), Full);
        assert_eq!(
            parse_range(Some("bytes=0-9"), 100),
            Partial { start: 0, end: 10 }
        );
        assert_eq!(
            parse_range(Some("bytes=90-"), 100),
            Partial {
                start: 90,
                end: 100
            }
        );
        assert_eq!(
            parse_range(Some("bytes=-10"), 100),
            Partial {
                start: 90,
                end: 100
            }
        );
        assert_eq!(
            parse_range(Some("bytes=-500"), 100),
            Partial { start: 0, end: 100 }
        );
        assert_eq!(
            parse_range(Some("bytes=50-5000"), 100),
            Partial {
                start: 50,
                end: 100
            }
        );
        assert_eq!(parse_range(Some("bytes=100-"), 100), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 100), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=5-2"), 100), Full);
        assert_eq!(parse_range(Some("bytes=0-1,5-6"), 100), Full);
        assert_eq!(parse_range(Some("items=0-1"), 100), Full);
        assert_eq!(parse_range(Some("bytes=x-y"), 100), Full);
    }
}
