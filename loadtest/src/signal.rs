//! The WebSocket signaling client: connects with the access token, sends typed
//! `ClientMessage`s and yields typed `ServerMessage`s (JSON text frames), with
//! deadline-bounded waits. Two tasks own the socket halves; this side talks to them
//! over channels, so a sender can be cloned into other tasks.

use crate::protocol::{ClientMessage, ServerMessage};
use crate::{Error, Result, within};
use futures::{SinkExt, StreamExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Largest frame accepted from the server; anything bigger is a server bug.
const MAX_FRAME: usize = 1 << 20;
/// Messages buffered between the socket reader and the consumer.
const INBOX: usize = 4096;
/// Received messages kept for inspection after the fact.
const HISTORY: usize = 1024;

/// How the client presents its access token.
#[derive(Clone, Debug)]
pub enum Auth {
    /// No token (to test refusals).
    None,
    /// `Authorization: Bearer <token>`.
    Bearer(String),
    /// `Cookie: <name>=<token>` (what a browser sends).
    Cookie { name: String, token: String },
    /// `?token=<token>` appended to the URL.
    Query(String),
}

/// Sending half; cheap to clone.
#[derive(Clone)]
pub struct SignalSender {
    out: mpsc::Sender<Message>,
}

impl SignalSender {
    /// Sends one typed message as a JSON text frame.
    pub async fn send(&self, msg: &ClientMessage) -> Result<()> {
        self.send_raw(serde_json::to_string(msg)?).await
    }

    /// Sends any text frame (for malformed-input tests).
    pub async fn send_raw(&self, text: String) -> Result<()> {
        within(Duration::from_secs(5), "websocket send queue", async {
            self.out
                .send(Message::text(text))
                .await
                .map_err(|_| Error::Closed)
        })
        .await
    }

    /// Sends a close frame; the reader ends once the server closes too.
    pub async fn close(&self) {
        let _ = self.out.send(Message::Close(None)).await;
    }
}

#[derive(Debug)]
enum Incoming {
    Msg(Box<ServerMessage>),
    Closed(Option<String>),
}

/// Receiving half.
pub struct SignalReceiver {
    inbox: mpsc::Receiver<Incoming>,
    history: std::collections::VecDeque<ServerMessage>,
    malformed: Arc<AtomicU64>,
    closed: Option<Option<String>>,
}

impl SignalReceiver {
    /// Next server message, waiting at most `deadline`.
    pub async fn recv(&mut self, deadline: Duration) -> Result<ServerMessage> {
        if self.closed.is_some() {
            return Err(Error::Closed);
        }
        match tokio::time::timeout(deadline, self.inbox.recv()).await {
            Err(_) => Err(Error::Timeout {
                what: "a signaling message".into(),
                after: deadline,
            }),
            Ok(None) => {
                self.closed = Some(None);
                Err(Error::Closed)
            }
            Ok(Some(Incoming::Closed(reason))) => {
                self.closed = Some(reason);
                Err(Error::Closed)
            }
            Ok(Some(Incoming::Msg(m))) => {
                if self.history.len() == HISTORY {
                    self.history.pop_front();
                }
                self.history.push_back((*m).clone());
                Ok(*m)
            }
        }
    }

    /// Waits up to `deadline` for a message `pick` accepts, skipping the others (they
    /// stay in [`history`](Self::history)). A fatal server `error` that `pick` does not
    /// accept ends the wait with [`Error::Server`].
    pub async fn wait_for<T>(
        &mut self,
        deadline: Duration,
        mut pick: impl FnMut(&ServerMessage) -> Option<T>,
    ) -> Result<T> {
        let end = tokio::time::Instant::now() + deadline;
        loop {
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            let m = match self.recv(left).await {
                Err(Error::Timeout { .. }) => {
                    return Err(Error::Timeout {
                        what: "the expected signaling message".into(),
                        after: deadline,
                    });
                }
                r => r?,
            };
            if let Some(t) = pick(&m) {
                return Ok(t);
            }
            if let ServerMessage::Error {
                code,
                message,
                fatal: true,
            } = m
            {
                return Err(Error::Server {
                    code,
                    message,
                    fatal: true,
                });
            }
        }
    }

    /// The last messages received (oldest first).
    pub fn history(&self) -> impl Iterator<Item = &ServerMessage> {
        self.history.iter()
    }

    /// Text frames from the server that were not valid protocol JSON (dropped).
    pub fn malformed_frames(&self) -> u64 {
        self.malformed.load(Ordering::Relaxed)
    }

    /// Close reason if the connection ended.
    pub fn closed(&self) -> Option<&Option<String>> {
        self.closed.as_ref()
    }
}

/// A connected signaling client.
pub struct SignalClient {
    pub sender: SignalSender,
    pub receiver: SignalReceiver,
}

impl SignalClient {
    /// Connects to `url` (`ws://host:port/path`), presenting the token as `auth` says.
    pub async fn connect(url: &str, auth: &Auth, deadline: Duration) -> Result<Self> {
        let url = match auth {
            Auth::Query(token) => {
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}token={}", percent_encode(token))
            }
            _ => url.to_owned(),
        };
        let mut req = url.as_str().into_client_request()?;
        let header = |v: String| {
            HeaderValue::from_str(&v)
                .map_err(|_| Error::Invalid("token is not a valid header value".into()))
        };
        match auth {
            Auth::Bearer(token) => {
                req.headers_mut()
                    .insert("authorization", header(format!("Bearer {token}"))?);
            }
            Auth::Cookie { name, token } => {
                req.headers_mut()
                    .insert("cookie", header(format!("{name}={token}"))?);
            }
            Auth::None | Auth::Query(_) => {}
        }
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_FRAME))
            .max_frame_size(Some(MAX_FRAME));
        let (ws, _resp) = within(deadline, "websocket connect", async {
            Ok(tokio_tungstenite::connect_async_with_config(req, Some(config), true).await?)
        })
        .await?;
        let (mut sink, mut stream) = ws.split();

        let (out_tx, mut out_rx) = mpsc::channel::<Message>(256);
        let (in_tx, in_rx) = mpsc::channel::<Incoming>(INBOX);
        let malformed = Arc::new(AtomicU64::new(0));

        tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                let close = matches!(m, Message::Close(_));
                if sink.send(m).await.is_err() || close {
                    break;
                }
            }
            let _ = sink.close().await;
        });

        let bad = malformed.clone();
        tokio::spawn(async move {
            let reason = loop {
                match stream.next().await {
                    None => break None,
                    Some(Err(e)) => break Some(e.to_string()),
                    Some(Ok(Message::Text(t))) => match serde_json::from_str::<ServerMessage>(&t) {
                        Ok(m) => {
                            if in_tx.send(Incoming::Msg(Box::new(m))).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            bad.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(error = %e, "malformed signaling frame from server");
                        }
                    },
                    Some(Ok(Message::Close(frame))) => {
                        break frame.map(|f| format!("{} {}", u16::from(f.code), f.reason));
                    }
                    // Pings are answered by tungstenite itself; binary frames are not protocol.
                    Some(Ok(Message::Binary(_))) => {
                        bad.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(Ok(_)) => {}
                }
            };
            let _ = in_tx.send(Incoming::Closed(reason)).await;
        });

        Ok(Self {
            sender: SignalSender { out: out_tx },
            receiver: SignalReceiver {
                inbox: in_rx,
                history: Default::default(),
                malformed,
                closed: None,
            },
        })
    }

    pub async fn send(&self, msg: &ClientMessage) -> Result<()> {
        self.sender.send(msg).await
    }

    pub async fn recv(&mut self, deadline: Duration) -> Result<ServerMessage> {
        self.receiver.recv(deadline).await
    }

    pub async fn wait_for<T>(
        &mut self,
        deadline: Duration,
        pick: impl FnMut(&ServerMessage) -> Option<T>,
    ) -> Result<T> {
        self.receiver.wait_for(deadline, pick).await
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ErrorCode;
    use tokio::net::TcpListener;

    /// A tiny WebSocket server that records the handshake headers, sends `script`
    /// frames and echoes nothing.
    #[allow(clippy::result_large_err)] // the handshake callback signature is tungstenite's
    async fn serve(
        script: Vec<String>,
    ) -> (
        String,
        tokio::sync::oneshot::Receiver<(Option<String>, Option<String>, String)>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let mut seen = None;
            let cb = |req: &tokio_tungstenite::tungstenite::handshake::server::Request, resp| {
                let h = |n: &str| {
                    req.headers()
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                };
                seen = Some((h("authorization"), h("cookie"), req.uri().to_string()));
                Ok(resp)
            };
            let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, cb).await else {
                return;
            };
            if let Some(s) = seen {
                let _ = tx.send(s);
            }
            for f in script {
                let _ = ws.send(Message::text(f)).await;
            }
            // Read what the client sends until it closes.
            while let Some(Ok(m)) = ws.next().await {
                if let Message::Text(t) = m {
                    let _ = ws
                        .send(Message::text(format!(
                            "{{\"type\":\"error\",\"code\":\"bad_message\",\"message\":{}}}",
                            serde_json::Value::String(t.to_string())
                        )))
                        .await;
                }
            }
        });
        (format!("ws://{addr}/ws"), rx)
    }

    #[tokio::test]
    async fn bearer_token_goes_in_the_authorization_header() {
        let (url, seen) = serve(vec![r#"{"type":"pong"}"#.into()]).await;
        let mut c =
            SignalClient::connect(&url, &Auth::Bearer("tok123".into()), Duration::from_secs(5))
                .await
                .expect("connect");
        let (auth, cookie, uri) = seen.await.expect("handshake seen");
        assert_eq!(auth.as_deref(), Some("Bearer tok123"));
        assert_eq!(cookie, None);
        assert_eq!(uri, "/ws");
        assert_eq!(
            c.recv(Duration::from_secs(5)).await.expect("pong"),
            ServerMessage::Pong
        );
    }

    #[tokio::test]
    async fn cookie_and_query_token_options_are_sent() {
        let (url, seen) = serve(vec![]).await;
        let _c = SignalClient::connect(
            &url,
            &Auth::Cookie {
                name: "accessToken".into(),
                token: "abc".into(),
            },
            Duration::from_secs(5),
        )
        .await
        .expect("connect");
        let (auth, cookie, _) = seen.await.expect("handshake seen");
        assert_eq!(auth, None);
        assert_eq!(cookie.as_deref(), Some("accessToken=abc"));

        let (url, seen) = serve(vec![]).await;
        let _c = SignalClient::connect(&url, &Auth::Query("a b".into()), Duration::from_secs(5))
            .await
            .expect("connect");
        let (_, _, uri) = seen.await.expect("handshake seen");
        assert_eq!(uri, "/ws?token=a%20b");
    }

    #[tokio::test]
    async fn wait_for_skips_other_messages_and_malformed_frames() {
        let (url, _seen) = serve(vec![
            "not json".into(),
            r#"{"type":"pong"}"#.into(),
            r#"{"type":"call_state","connected":true}"#.into(),
        ])
        .await;
        let mut c = SignalClient::connect(&url, &Auth::None, Duration::from_secs(5))
            .await
            .expect("connect");
        let connected = c
            .wait_for(Duration::from_secs(5), |m| match m {
                ServerMessage::CallState { connected } => Some(*connected),
                _ => None,
            })
            .await
            .expect("call_state");
        assert!(connected);
        assert_eq!(c.receiver.malformed_frames(), 1);
        assert_eq!(c.receiver.history().count(), 2);
    }

    #[tokio::test]
    async fn wait_for_times_out_and_fatal_errors_end_it() {
        let (url, _seen) = serve(vec![]).await;
        let mut c = SignalClient::connect(&url, &Auth::None, Duration::from_secs(5))
            .await
            .expect("connect");
        let r = c.wait_for(Duration::from_millis(200), |_| Some(())).await;
        assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");

        let (url, _seen) = serve(vec![
            r#"{"type":"error","code":"forbidden","message":"no","fatal":true}"#.into(),
        ])
        .await;
        let mut c = SignalClient::connect(&url, &Auth::None, Duration::from_secs(5))
            .await
            .expect("connect");
        let r = c.wait_for(Duration::from_secs(5), |_m| None::<()>).await;
        assert!(
            matches!(
                r,
                Err(Error::Server {
                    code: ErrorCode::Forbidden,
                    ..
                })
            ),
            "{r:?}"
        );
    }

    #[tokio::test]
    async fn typed_send_reaches_the_server_as_json() {
        let (url, _seen) = serve(vec![]).await;
        let mut c = SignalClient::connect(&url, &Auth::None, Duration::from_secs(5))
            .await
            .expect("connect");
        c.send(&ClientMessage::JoinCall).await.expect("send");
        let echoed = c
            .wait_for(Duration::from_secs(5), |m| match m {
                ServerMessage::Error { message, .. } => Some(message.clone()),
                _ => None,
            })
            .await
            .expect("echo");
        assert_eq!(echoed, r#"{"type":"join_call"}"#);
    }

    #[tokio::test]
    async fn oversized_server_frame_ends_the_connection_with_an_error() {
        let (url, _seen) = serve(vec!["x".repeat(MAX_FRAME + 1)]).await;
        let mut c = SignalClient::connect(&url, &Auth::None, Duration::from_secs(5))
            .await
            .expect("connect");
        let r = c.recv(Duration::from_secs(5)).await;
        assert!(matches!(r, Err(Error::Closed)), "{r:?}");
        assert!(c.receiver.closed().is_some());
        // Stays closed; no hang, no panic.
        assert!(matches!(
            c.recv(Duration::from_secs(1)).await,
            Err(Error::Closed)
        ));
    }

    #[tokio::test]
    async fn connecting_to_nothing_fails_fast_with_an_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let r = SignalClient::connect(
            &format!("ws://{addr}/ws"),
            &Auth::None,
            Duration::from_secs(5),
        )
        .await;
        assert!(r.is_err());
    }
}
