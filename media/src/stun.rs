//! Just enough STUN parsing to demultiplex the shared socket: is this datagram STUN, and if
//! so which of our ICE usernames does it address. Everything else (integrity, fingerprint,
//! the ICE state machine) is `rtc`'s job once the datagram reaches the right connection.
//!
//! Called on attacker-controlled bytes from any address: bounds-checked, allocation-free,
//! never panics.

const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
const HEADER_LEN: usize = 20;
const ATTR_USERNAME: u16 = 0x0006;
/// RFC 8489 limits USERNAME to 513 bytes; ICE ufrags are far shorter.
const MAX_USERNAME: usize = 513;

/// What kind of packet a datagram is, by its first byte (RFC 7983 demultiplexing).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Stun,
    Dtls,
    Rtp,
    Other,
}

pub(crate) fn classify(buf: &[u8]) -> Kind {
    match buf.first() {
        Some(0..=3) => Kind::Stun,
        Some(20..=63) => Kind::Dtls,
        Some(128..=191) => Kind::Rtp,
        _ => Kind::Other,
    }
}

/// A STUN Binding request (RFC 8489: method 0x001, class request), the form of every ICE
/// connectivity and consent check.
pub(crate) fn is_binding_request(buf: &[u8]) -> bool {
    buf.len() >= HEADER_LEN && buf[..2] == [0x00, 0x01] && buf[4..8] == MAGIC_COOKIE
}

/// Why a datagram that looked like STUN was not usable.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum StunError {
    Truncated,
    NotStun,
    BadAttribute,
}

/// The local (our) ufrag a STUN message addresses: USERNAME is `ours:theirs` in a request
/// sent to us. `Ok(None)` for a well-formed STUN message without USERNAME (e.g. a response
/// or an indication).
pub(crate) fn local_ufrag(buf: &[u8]) -> Result<Option<&str>, StunError> {
    if buf.len() < HEADER_LEN {
        return Err(StunError::Truncated);
    }
    if buf[0] & 0xC0 != 0 || buf[4..8] != MAGIC_COOKIE {
        return Err(StunError::NotStun);
    }
    let body_len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    if !body_len.is_multiple_of(4) {
        return Err(StunError::NotStun);
    }
    let body = buf
        .get(HEADER_LEN..HEADER_LEN + body_len)
        .ok_or(StunError::Truncated)?;
    let mut at = 0usize;
    while at + 4 <= body.len() {
        let typ = u16::from_be_bytes([body[at], body[at + 1]]);
        let len = u16::from_be_bytes([body[at + 2], body[at + 3]]) as usize;
        let value = body
            .get(at + 4..at + 4 + len)
            .ok_or(StunError::BadAttribute)?;
        if typ == ATTR_USERNAME {
            if len > MAX_USERNAME {
                return Err(StunError::BadAttribute);
            }
            let username = std::str::from_utf8(value).map_err(|_| StunError::BadAttribute)?;
            let ours = username.split(':').next().unwrap_or_default();
            if ours.is_empty() {
                return Err(StunError::BadAttribute);
            }
            return Ok(Some(ours));
        }
        // Attribute values are padded to a multiple of four bytes.
        at += 4 + len.div_ceil(4) * 4;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (typ, value) in attrs {
            body.extend_from_slice(&typ.to_be_bytes());
            body.extend_from_slice(&(value.len() as u16).to_be_bytes());
            body.extend_from_slice(value);
            while !body.len().is_multiple_of(4) {
                body.push(0);
            }
        }
        let mut out = vec![0x00, 0x01];
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(&MAGIC_COOKIE);
        out.extend_from_slice(&[7u8; 12]);
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn username_yields_the_local_half() {
        let m = message(&[(0x8022, b"soft"), (ATTR_USERNAME, b"srvUfrag:cli")]);
        assert_eq!(local_ufrag(&m), Ok(Some("srvUfrag")));
    }

    #[test]
    fn binding_requests_are_told_from_responses_and_other_bytes() {
        let request = message(&[(ATTR_USERNAME, b"a:b")]);
        assert!(is_binding_request(&request));
        let mut response = request.clone();
        response[..2].copy_from_slice(&[0x01, 0x01]);
        assert!(!is_binding_request(&response));
        let mut no_cookie = request.clone();
        no_cookie[4] = 0;
        assert!(!is_binding_request(&no_cookie));
        for cut in 0..20 {
            assert!(!is_binding_request(&request[..cut]));
        }
    }

    #[test]
    fn message_without_username_is_none() {
        let m = message(&[(0x8022, b"software")]);
        assert_eq!(local_ufrag(&m), Ok(None));
    }

    #[test]
    fn truncated_and_foreign_bytes_are_errors_not_panics() {
        let m = message(&[(ATTR_USERNAME, b"abc:def")]);
        for cut in 0..m.len() {
            let r = local_ufrag(&m[..cut]);
            assert!(r.is_err(), "cut at {cut} gave {r:?}");
        }
        assert_eq!(local_ufrag(&[0u8; 20]), Err(StunError::NotStun));
        let mut lying = message(&[(ATTR_USERNAME, b"abc:def")]);
        lying[22] = 0xff; // attribute length beyond the body
        lying[23] = 0xff;
        assert_eq!(local_ufrag(&lying), Err(StunError::BadAttribute));
        let bad_utf8 = message(&[(ATTR_USERNAME, &[0xff, 0xfe, b':', b'a'])]);
        assert_eq!(local_ufrag(&bad_utf8), Err(StunError::BadAttribute));
        let empty_local = message(&[(ATTR_USERNAME, b":theirs")]);
        assert_eq!(local_ufrag(&empty_local), Err(StunError::BadAttribute));
    }

    #[test]
    fn pseudo_random_garbage_never_panics() {
        // A cheap deterministic fuzz: xorshift bytes, with a valid header prefix half the time.
        let mut x: u64 = 0x9E3779B97F4A7C15;
        for i in 0..20_000 {
            let len = (i % 90) as usize;
            let mut buf = Vec::with_capacity(len);
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                buf.push(x as u8);
            }
            if i % 2 == 0 && len >= 20 {
                buf[0] = 0;
                buf[4..8].copy_from_slice(&MAGIC_COOKIE);
                let body = (len - 20) as u16 & !3;
                buf[2..4].copy_from_slice(&body.to_be_bytes());
            }
            let _ = local_ufrag(&buf);
            let _ = classify(&buf);
        }
    }

    #[test]
    fn classify_follows_rfc7983() {
        assert_eq!(classify(&[0x00, 0x01]), Kind::Stun);
        assert_eq!(classify(&[22]), Kind::Dtls);
        assert_eq!(classify(&[0x80]), Kind::Rtp);
        assert_eq!(classify(&[]), Kind::Other);
        assert_eq!(classify(&[0xff]), Kind::Other);
    }
}
