//! Per-key rate limits for the login endpoints and room creation (keyed token buckets
//! from `governor`), and the client IP the login limits are keyed on.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;

use axum::extract::ConnectInfo;
use axum::http::request::Parts;
use governor::clock::{Clock as _, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use crate::config::RateLimitConfig;
use crate::error::ApiError;

type Keyed = RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock>;

pub struct RateLimiters {
    pub send_otp_phone: Keyed,
    pub send_otp_ip: Keyed,
    pub verify_otp_phone: Keyed,
    pub verify_otp_ip: Keyed,
    /// Keyed by user id.
    pub create_room_user: Keyed,
}

fn per_hour(n: u32) -> Keyed {
    let n = NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN);
    RateLimiter::keyed(Quota::per_hour(n))
}

impl RateLimiters {
    pub fn new(c: &RateLimitConfig) -> Self {
        Self {
            send_otp_phone: per_hour(c.send_otp_per_phone),
            send_otp_ip: per_hour(c.send_otp_per_ip),
            verify_otp_phone: per_hour(c.verify_otp_per_phone),
            verify_otp_ip: per_hour(c.verify_otp_per_ip),
            create_room_user: per_hour(c.create_room_per_user),
        }
    }

    /// Forgets keys whose buckets are full again, so the maps do not grow forever.
    pub fn retain_recent(&self) {
        for l in [
            &self.send_otp_phone,
            &self.send_otp_ip,
            &self.verify_otp_phone,
            &self.verify_otp_ip,
            &self.create_room_user,
        ] {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

/// Takes one token from `key`'s bucket, or refuses with 429 and the seconds until the next.
pub fn check(limiter: &Keyed, key: &str) -> Result<(), ApiError> {
    match limiter.check_key(&key.to_owned()) {
        Ok(()) => Ok(()),
        Err(not_until) => {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            Err(ApiError::TooManyRequests {
                retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
            })
        }
    }
}

/// The client's IP: the socket peer, or with `trust_proxy` the rightmost valid entry of
/// `X-Forwarded-For` (the one our proxy appended; entries to its left are client-supplied).
pub fn client_ip(parts: &Parts, trust_proxy: bool) -> IpAddr {
    if trust_proxy
        && let Some(ip) = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|s| s.trim().parse::<IpAddr>().ok())
            .next_back()
    {
        return ip;
    }
    match parts.extensions.get::<ConnectInfo<SocketAddr>>() {
        Some(c) => c.0.ip(),
        None => {
            // Served without `into_make_service_with_connect_info`: every client would
            // share one per-IP bucket.
            static WARN: std::sync::Once = std::sync::Once::new();
            WARN.call_once(|| {
                tracing::warn!(
                    "no peer address on requests: serve with into_make_service_with_connect_info::<SocketAddr>()"
                )
            });
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        }
    }
}

/// The rate-limit key of an address: IPv6 clients usually hold a whole /64, so they are
/// limited per /64 rather than per address.
pub fn ip_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// Extractor for the client IP, honouring the trust-proxy setting.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

impl axum::extract::FromRequestParts<crate::state::AppState> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &crate::state::AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(client_ip(parts, state.config.trust_proxy)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_share_a_key_per_64_and_mapped_ipv4_is_plain_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(ip_key(a), ip_key(b));
        assert_ne!(ip_key(a), ip_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("ip");
        assert_eq!(ip_key(mapped), "192.0.2.7");
        assert_eq!(ip_key("192.0.2.7".parse().expect("ip")), "192.0.2.7");
    }
}
