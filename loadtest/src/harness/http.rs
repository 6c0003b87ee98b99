//! A minimal HTTP/1.1 client for the few control-plane calls the harness makes
//! (create a room, log in, scrape `/metrics`). One request per connection
//! (`Connection: close`), bounded response size and time. Plain HTTP only: the harness
//! targets a server on loopback or a lab network, and the WebSocket client has no TLS.

use super::HarnessError;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response body accepted (a `/metrics` page is a few tens of KB).
const MAX_RESPONSE: usize = 8 << 20;

/// Where the server is: `http://host:port` split up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseUrl {
    pub host: String,
    pub port: u16,
}

impl BaseUrl {
    /// Parses `http://host[:port][/]`. Anything else is refused with a reason.
    pub fn parse(url: &str) -> Result<Self, HarnessError> {
        let bad = |why: &str| HarnessError::Config(format!("bad --url {url:?}: {why}"));
        let rest = if let Some(r) = url.strip_prefix("http://") {
            r
        } else if url.starts_with("https://") {
            return Err(bad(
                "https is not supported (the harness speaks plain HTTP/WS)",
            ));
        } else {
            return Err(bad("expected http://host:port"));
        };
        let hostport = rest.trim_end_matches('/');
        if hostport.contains('/') {
            return Err(bad("no path allowed, only http://host:port"));
        }
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                let port = p.parse::<u16>().map_err(|_| bad("invalid port"))?;
                (h, port)
            }
            _ => (hostport, 80),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }

    /// Resolves the host; every address must be loopback unless `allow_remote`.
    pub async fn resolve(&self, allow_remote: bool) -> Result<SocketAddr, HarnessError> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|e| HarnessError::Config(format!("cannot resolve {}: {e}", self.host)))?
            .collect();
        let first = *addrs
            .first()
            .ok_or_else(|| HarnessError::Config(format!("{} resolves to nothing", self.host)))?;
        if !allow_remote && addrs.iter().any(|a| !a.ip().is_loopback()) {
            return Err(HarnessError::Config(format!(
                "{} is not a loopback address; pass --allow-remote to load a remote server",
                self.host
            )));
        }
        Ok(first)
    }
}

/// A response, body fully read.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON, or an error quoting the status and the start of the body.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, HarnessError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            HarnessError::Http(format!(
                "HTTP {}: unexpected body ({e}): {}",
                self.status,
                self.text().chars().take(200).collect::<String>()
            ))
        })
    }
}

/// Sends one request and reads the whole response within `timeout`.
pub async fn request(
    addr: SocketAddr,
    host: &str,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    json_body: Option<&serde_json::Value>,
    timeout: Duration,
) -> Result<Response, HarnessError> {
    let fut = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| HarnessError::Http(format!("connect {addr}: {e}")))?;
        let body = match json_body {
            Some(v) => serde_json::to_vec(v).map_err(|e| HarnessError::Http(e.to_string()))?,
            None => Vec::new(),
        };
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: chorus-loadtest\r\nAccept: */*\r\n"
        );
        if let Some(t) = bearer {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        if json_body.is_some() {
            head.push_str("Content-Type: application/json\r\n");
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        stream
            .write_all(head.as_bytes())
            .await
            .map_err(|e| HarnessError::Http(format!("write: {e}")))?;
        stream
            .write_all(&body)
            .await
            .map_err(|e| HarnessError::Http(format!("write: {e}")))?;
        let mut raw = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = stream
                .read(&mut buf)
                .await
                .map_err(|e| HarnessError::Http(format!("read: {e}")))?;
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&buf[..n]);
            if raw.len() > MAX_RESPONSE {
                return Err(HarnessError::Http(format!(
                    "response larger than {MAX_RESPONSE} bytes"
                )));
            }
        }
        parse_response(&raw)
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(HarnessError::Http(format!(
            "{method} {path}: no response within {timeout:?}"
        ))),
    }
}

/// Parses a complete HTTP/1.1 response (Content-Length, chunked, or read-to-close).
pub fn parse_response(raw: &[u8]) -> Result<Response, HarnessError> {
    let bad = |why: &str| HarnessError::Http(format!("malformed HTTP response: {why}"));
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("headers not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("no status line"))?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad("no status code"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let rest = &raw[end + 4..];
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let body = if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        dechunk(rest).ok_or_else(|| bad("broken chunked body"))?
    } else if let Some(len) = get("content-length") {
        let len: usize = len.parse().map_err(|_| bad("bad content-length"))?;
        rest.get(..len)
            .ok_or_else(|| bad("body shorter than content-length"))?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_str = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_str.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_accepts_host_and_port_and_refuses_https_and_paths() {
        assert_eq!(
            BaseUrl::parse("http://127.0.0.1:5500/").ok(),
            Some(BaseUrl {
                host: "127.0.0.1".into(),
                port: 5500
            })
        );
        assert_eq!(
            BaseUrl::parse("http://localhost").ok().map(|b| b.port),
            Some(80)
        );
        assert_eq!(
            BaseUrl::parse("http://[::1]:8080").ok().map(|b| b.host),
            Some("::1".to_owned())
        );
        assert!(BaseUrl::parse("https://x:1").is_err());
        assert!(BaseUrl::parse("http://x:1/api").is_err());
        assert!(BaseUrl::parse("x:1").is_err());
        assert!(BaseUrl::parse("http://x:99999").is_err());
    }

    #[tokio::test]
    async fn non_loopback_targets_are_refused_without_allow_remote() {
        let remote = BaseUrl::parse("http://192.0.2.1:80").unwrap_or_else(|e| panic!("{e}"));
        let err = remote.resolve(false).await.err().map(|e| e.to_string());
        assert!(
            err.as_deref().is_some_and(|e| e.contains("--allow-remote")),
            "{err:?}"
        );
        assert!(remote.resolve(true).await.is_ok());
        let local = BaseUrl::parse("http://127.0.0.1:1").unwrap_or_else(|e| panic!("{e}"));
        assert!(local.resolve(false).await.is_ok());
    }

    #[test]
    fn responses_with_length_chunked_and_close_framing_parse() {
        let r = parse_response(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nX: y\r\n\r\n{}junk")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((r.status, r.body.as_slice()), (201, &b"{}"[..]));
        assert_eq!(r.header("x"), Some("y"));
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.body, b"abcde");
        let r = parse_response(b"HTTP/1.1 200 OK\r\n\r\nrest").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.body, b"rest");
        assert!(parse_response(b"garbage").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab").is_err());
    }
}
