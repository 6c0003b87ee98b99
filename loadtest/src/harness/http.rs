//! The few control-plane calls the harness makes (create a room, log in, scrape
//! `/metrics`), over reqwest: one shared client, bounded response size and time. Plain
//! HTTP only: the harness targets a server on loopback or a lab network, and the WebSocket
//! client has no TLS.

use super::HarnessError;
use reqwest::Url;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HOST, USER_AGENT};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Largest response body accepted (a `/metrics` page is a few tens of KB).
const MAX_RESPONSE: usize = 8 << 20;

/// Where the server is: `http://host:port` split up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseUrl {
    pub host: String,
    pub port: u16,
}

impl BaseUrl {
    /// Parses `http://host[:port][/]` (with the `url` crate). Anything else is refused
    /// with a reason.
    pub fn parse(url: &str) -> Result<Self, HarnessError> {
        let bad = |why: &str| HarnessError::Config(format!("bad --url {url:?}: {why}"));
        let parsed =
            Url::parse(url).map_err(|e| bad(&format!("expected http://host:port ({e})")))?;
        match parsed.scheme() {
            "http" => {}
            "https" => {
                return Err(bad(
                    "https is not supported (the harness speaks plain HTTP/WS)",
                ));
            }
            _ => return Err(bad("expected http://host:port")),
        }
        if parsed.path() != "/" || parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(bad("no path allowed, only http://host:port"));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(bad("no credentials allowed, only http://host:port"));
        }
        let host = match parsed.host() {
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            Some(h) => h.to_string(),
            None => return Err(bad("empty host")),
        };
        Ok(Self {
            host,
            port: parsed.port_or_known_default().unwrap_or(80),
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

/// The harness's one HTTP client (connections are pooled across calls).
fn client() -> Result<&'static reqwest::Client, HarnessError> {
    static CLIENT: OnceLock<Result<reqwest::Client, String>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            // Plain HTTP only, but reqwest's rustls build wants a TLS configuration (and a
            // crypto provider): one that trusts nothing.
            let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
            reqwest::Client::builder()
                .tls_backend_preconfigured(tls)
                .http1_only()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| HarnessError::Http(format!("cannot build the HTTP client: {e}")))
}

/// Sends one request to `addr` (with `Host: host`) and reads the whole response within
/// `timeout`.
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
        let err = |e: reqwest::Error| HarnessError::Http(format!("{method} {path}: {e}"));
        let method = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|e| HarnessError::Http(format!("bad method {method:?}: {e}")))?;
        let url = Url::parse(&format!("http://{addr}"))
            .and_then(|base| base.join(path))
            .map_err(|e| HarnessError::Http(format!("bad path {path:?}: {e}")))?;
        let mut req = client()?
            .request(method, url)
            .header(HOST, host)
            .header(USER_AGENT, "chorus-loadtest");
        if let Some(t) = bearer {
            req = req.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        if let Some(v) = json_body {
            let body = serde_json::to_vec(v).map_err(|e| HarnessError::Http(e.to_string()))?;
            req = req.header(CONTENT_TYPE, "application/json").body(body);
        }
        let mut resp = req.send().await.map_err(err)?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
                (k.as_str().to_owned(), v)
            })
            .collect();
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(err)? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_RESPONSE {
                return Err(HarnessError::Http(format!(
                    "response larger than {MAX_RESPONSE} bytes"
                )));
            }
        }
        Ok(Response {
            status,
            headers,
            body,
        })
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(HarnessError::Http(format!(
            "{method} {path}: no response within {timeout:?}"
        ))),
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

    /// A one-shot server on loopback: reads a request, answers `reply` and returns what
    /// it read.
    async fn serve_once(reply: &'static [u8]) -> (SocketAddr, tokio::task::JoinHandle<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap_or_else(|e| panic!("{e}"));
            let mut raw = Vec::new();
            let mut buf = [0u8; 4096];
            // Headers, then the JSON body (the test's is small and sent at once).
            while !String::from_utf8_lossy(&raw).contains("\r\n\r\n{")
                && !String::from_utf8_lossy(&raw).starts_with("GET")
            {
                let n = s.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                raw.extend_from_slice(&buf[..n]);
            }
            let _ = s.write_all(reply).await;
            let _ = s.shutdown().await;
            String::from_utf8_lossy(&raw).into_owned()
        });
        (addr, task)
    }

    #[tokio::test]
    async fn a_json_request_carries_host_token_and_body_and_reads_a_chunked_reply() {
        let (addr, server) = serve_once(
            b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nX: y\r\n\r\n3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n",
        )
        .await;
        let r = request(
            addr,
            "chorus.test",
            "POST",
            "/api/rooms",
            Some("tok"),
            Some(&serde_json::json!({ "topic": "t" })),
            Duration::from_secs(10),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status, 201);
        assert_eq!(r.header("x"), Some("y"));
        assert_eq!(
            r.json::<serde_json::Value>().ok(),
            Some(serde_json::json!({ "a": 1 }))
        );
        let seen = server
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .to_ascii_lowercase();
        assert!(seen.starts_with("post /api/rooms http/1.1\r\n"), "{seen}");
        assert!(seen.contains("host: chorus.test\r\n"), "{seen}");
        assert!(seen.contains("authorization: bearer tok\r\n"), "{seen}");
        assert!(
            seen.contains("content-type: application/json\r\n"),
            "{seen}"
        );
        assert!(seen.ends_with(r#"{"topic":"t"}"#), "{seen}");
    }

    #[tokio::test]
    async fn a_reply_that_never_comes_is_a_timeout_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let err = request(
            addr,
            "x",
            "GET",
            "/metrics",
            None,
            None,
            Duration::from_millis(300),
        )
        .await
        .err()
        .map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("no response within")),
            "{err:?}"
        );
        drop(listener);
    }
}
