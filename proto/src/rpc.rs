//! Typed request/response RPC over QUIC: one bidirectional stream per call, one connection per
//! peer (reused), postcard bodies in checksummed frames.
//!
//! A peer that sends a malformed frame (bad checksum, oversize, unknown version or kind) gets an
//! error frame naming the problem and its connection closed with [`CLOSE_PROTOCOL_VIOLATION`];
//! the server goes on serving everyone else.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::frame::{self, FRAME_BODY_MAX, Frame, FrameError, Kind};
use crate::tls::CLUSTER_SERVER_NAME;

/// Application close code: the peer broke the frame protocol.
pub const CLOSE_PROTOCOL_VIOLATION: u32 = 0x10;
/// How long a violating peer's connection stays open for its error frame to be delivered.
const VIOLATION_LINGER: Duration = Duration::from_secs(2);
/// Application close code: orderly shutdown.
pub const CLOSE_SHUTDOWN: u32 = 0x0;

/// One RPC method: its wire number and its typed request and response.
pub trait Rpc: Send + Sync + 'static {
    const METHOD: u16;
    const NAME: &'static str;
    type Request: Serialize + DeserializeOwned + Send + Sync + 'static;
    type Response: Serialize + DeserializeOwned + Send + Sync + 'static;
}

/// Protocol-level failure classes carried in error frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The request frame or body was malformed.
    BadRequest,
    /// No handler for the method.
    UnknownMethod,
    /// The handler failed; details in the message.
    Internal,
    /// The node cannot serve this now (starting, overloaded, not the leader...); retryable.
    Unavailable,
}

/// An error answered by the remote side.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct RemoteError {
    pub code: ErrorCode,
    pub message: String,
}

impl RemoteError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> RemoteError {
        RemoteError {
            code,
            message: message.into(),
        }
    }
}

/// How a call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    /// The TLS handshake failed: one side does not trust the other's certificate (issued by
    /// another cluster's CA, expired, or for another name). Trying again will not help.
    #[error("{addr} and this node do not trust each other's certificates: {reason}")]
    Untrusted { addr: SocketAddr, reason: String },
    #[error("connection to {addr} failed: {reason}")]
    Connection { addr: SocketAddr, reason: String },
    #[error("call to {addr} timed out after {after:?}")]
    Timeout { addr: SocketAddr, after: Duration },
    #[error("{addr} closed the connection: {reason}")]
    Refused { addr: SocketAddr, reason: String },
    #[error("bad frame from {addr}: {error}")]
    Frame { addr: SocketAddr, error: FrameError },
    #[error("{addr} answered: {error}")]
    Remote {
        addr: SocketAddr,
        error: RemoteError,
    },
    #[error("encode request: {0}")]
    Encode(String),
    #[error("decode response from {addr}: {reason}")]
    Decode { addr: SocketAddr, reason: String },
}

impl RpcError {
    /// Whether trying again (after a pause) may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            RpcError::Connect { .. } | RpcError::Connection { .. } | RpcError::Timeout { .. } => {
                true
            }
            RpcError::Remote { error, .. } => error.code == ErrorCode::Unavailable,
            _ => false,
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type Handler = Arc<dyn Fn(Bytes) -> BoxFuture<Result<Bytes, RemoteError>> + Send + Sync>;
type StreamHandler =
    Arc<dyn Fn(Bytes, quinn::SendStream, quinn::RecvStream) -> BoxFuture<()> + Send + Sync>;

/// Maps methods to handlers.
#[derive(Default, Clone)]
pub struct Router {
    handlers: HashMap<u16, (&'static str, Handler)>,
    streams: HashMap<u16, (&'static str, StreamHandler)>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.handlers.iter().map(|(m, (n, _))| (m, n)))
            .finish()
    }
}

impl Router {
    pub fn new() -> Router {
        Router::default()
    }

    /// Route method `R` to `handler`. A later route for the same method replaces the earlier.
    pub fn route<R, F, Fut>(mut self, handler: F) -> Router
    where
        R: Rpc,
        F: Fn(R::Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R::Response, RemoteError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let erased: Handler = Arc::new(move |body: Bytes| {
            let handler = handler.clone();
            Box::pin(async move {
                let request: R::Request = postcard::from_bytes(&body).map_err(|e| {
                    RemoteError::new(ErrorCode::BadRequest, format!("{} request: {e}", R::NAME))
                })?;
                let response = handler(request).await?;
                postcard::to_stdvec(&response)
                    .map(Bytes::from)
                    .map_err(|e| {
                        RemoteError::new(ErrorCode::Internal, format!("{} response: {e}", R::NAME))
                    })
            })
        });
        self.handlers.insert(R::METHOD, (R::NAME, erased));
        self
    }

    /// Route `method` to a stream handler: it gets the request frame's body and both halves of
    /// the stream, and speaks its own protocol on them from there (bulk transfers).
    pub fn route_stream<F, Fut>(mut self, method: u16, name: &'static str, handler: F) -> Router
    where
        F: Fn(Bytes, quinn::SendStream, quinn::RecvStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let erased: StreamHandler = Arc::new(move |body, send, recv| {
            let handler = handler.clone();
            Box::pin(async move { handler(body, send, recv).await })
        });
        self.streams.insert(method, (name, erased));
        self
    }
}

/// Server limits.
#[derive(Clone, Copy, Debug)]
pub struct ServeOptions {
    pub max_body: u32,
    /// How long a client may take to send its request frame.
    pub request_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            max_body: FRAME_BODY_MAX,
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// Serve `router` on `endpoint` until the endpoint is closed.
pub async fn serve(endpoint: quinn::Endpoint, router: Router, options: ServeOptions) {
    let router = Arc::new(router);
    while let Some(incoming) = endpoint.accept().await {
        let router = router.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(conn) => serve_connection(conn, router, options).await,
                // Includes peers without a certificate from the cluster CA.
                Err(e) => {
                    tracing::info!(%remote, error = %e, "refused a connection at the handshake")
                }
            }
        });
    }
}

async fn serve_connection(conn: quinn::Connection, router: Arc<Router>, options: ServeOptions) {
    loop {
        let (send, recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(remote = %conn.remote_address(), error = %e, "connection ended");
                return;
            }
        };
        let conn = conn.clone();
        let router = router.clone();
        tokio::spawn(async move { serve_stream(conn, send, recv, router, options).await });
    }
}

async fn serve_stream(
    conn: quinn::Connection,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    router: Arc<Router>,
    options: ServeOptions,
) {
    let read = tokio::time::timeout(
        options.request_timeout,
        frame::read_frame(&mut recv, options.max_body),
    )
    .await;
    let request = match read {
        Err(_) => {
            let _ = send.reset(quinn::VarInt::from_u32(1));
            return;
        }
        Ok(Err(e)) if e.is_violation() => return violation(&conn, &mut send, &e.to_string()).await,
        Ok(Err(_)) => return,
        Ok(Ok(f)) if f.kind != Kind::Request => {
            return violation(
                &conn,
                &mut send,
                &format!("expected a request frame, got {:?}", f.kind),
            )
            .await;
        }
        Ok(Ok(f)) => f,
    };
    if let Some((_, handler)) = router.streams.get(&request.method) {
        return handler(request.body, send, recv).await;
    }
    let reply = match router.handlers.get(&request.method) {
        None => Err(RemoteError::new(
            ErrorCode::UnknownMethod,
            format!("no method {}", request.method),
        )),
        Some((_, handler)) => handler(request.body).await,
    };
    let frame = match reply {
        Ok(body) => Frame::new(Kind::Response, request.method, body),
        Err(e) => error_frame(request.method, &e),
    };
    if frame::write_frame(&mut send, &frame).await.is_ok() {
        let _ = send.finish();
    }
}

fn error_frame(method: u16, e: &RemoteError) -> Frame {
    // A two-field struct always encodes; fall back to an empty body rather than panic.
    Frame::new(
        Kind::Error,
        method,
        postcard::to_stdvec(e).unwrap_or_default(),
    )
}

/// Tell the peer what was wrong, then close its connection with a typed code.
async fn violation(conn: &quinn::Connection, send: &mut quinn::SendStream, reason: &str) {
    tracing::warn!(remote = %conn.remote_address(), %reason, "protocol violation; closing connection");
    let e = RemoteError::new(ErrorCode::BadRequest, format!("bad frame: {reason}"));
    let _ = frame::write_frame(send, &error_frame(0, &e)).await;
    let _ = send.finish();
    // Closing discards undelivered stream data: give the error frame a bounded moment to be
    // acknowledged first.
    let _ = tokio::time::timeout(VIOLATION_LINGER, send.stopped()).await;
    let mut reason = format!("protocol violation: {reason}").into_bytes();
    reason.truncate(200);
    conn.close(quinn::VarInt::from_u32(CLOSE_PROTOCOL_VIOLATION), &reason);
}

/// TLS alerts travel as QUIC transport error codes 0x100-0x1ff (RFC 9001, 4.8).
fn tls_alert(code: quinn_proto::TransportErrorCode) -> Option<u8> {
    let code = u64::from(code);
    (0x100..=0x1ff)
        .contains(&code)
        .then_some((code & 0xff) as u8)
}

/// What a TLS alert says, in words.
fn alert_words(alert: u8) -> &'static str {
    match alert {
        42 => "a certificate was refused",
        43 => "the certificate type is not supported",
        44 => "a certificate was revoked",
        45 => "a certificate has expired",
        46 => "a certificate could not be checked",
        48 => "a certificate is signed by a CA the other side does not know",
        51 => "a signature did not verify (a certificate from another cluster's CA)",
        116 => "no certificate was sent",
        _ => "the handshake was refused",
    }
}

/// Classify a failed connection attempt: a TLS refusal (either side's) is [`RpcError::Untrusted`],
/// said in words; anything else is [`RpcError::Connect`].
fn connect_failure(addr: SocketAddr, e: quinn::ConnectionError) -> RpcError {
    let untrusted = |alert: u8, by: &str| RpcError::Untrusted {
        addr,
        reason: format!(
            "{} ({by}, TLS alert {alert}); are both nodes' certificates issued by this \
             cluster's CA (`cairn cluster issue-cert` on the node that holds `ca.key`) and still valid?",
            alert_words(alert)
        ),
    };
    match &e {
        quinn::ConnectionError::TransportError(t) => {
            if let Some(alert) = tls_alert(t.code) {
                return untrusted(alert, "this node refused the peer's certificate");
            }
        }
        quinn::ConnectionError::ConnectionClosed(c) => {
            if let Some(alert) = tls_alert(c.error_code) {
                return untrusted(alert, "the peer refused this node's certificate");
            }
        }
        _ => {}
    }
    RpcError::Connect {
        addr,
        reason: e.to_string(),
    }
}

/// Client behaviour.
#[derive(Clone, Copy, Debug)]
pub struct ClientOptions {
    /// Limit for one attempt (connect, send, wait for the answer).
    pub attempt_timeout: Duration,
    /// Attempts for retryable failures, the first included.
    pub attempts: u32,
    /// First backoff; doubles each retry up to `backoff_max`, with full jitter.
    pub backoff: Duration,
    pub backoff_max: Duration,
    pub max_body: u32,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            attempt_timeout: Duration::from_secs(10),
            attempts: 5,
            backoff: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            max_body: FRAME_BODY_MAX,
        }
    }
}

/// One peer's connection, behind its own lock: concurrent callers of the same peer share one
/// handshake, while a slow or dead peer never holds up calls to the others.
type Slot = Arc<Mutex<Option<quinn::Connection>>>;

/// Calls peers over one endpoint, keeping one connection per peer.
#[derive(Debug, Clone)]
pub struct Client {
    endpoint: quinn::Endpoint,
    connections: Arc<parking_lot::Mutex<HashMap<SocketAddr, Slot>>>,
    options: ClientOptions,
}

impl Client {
    pub fn new(endpoint: quinn::Endpoint, options: ClientOptions) -> Client {
        Client {
            endpoint,
            connections: Arc::new(parking_lot::Mutex::new(HashMap::new())),
            options,
        }
    }

    pub fn options(&self) -> ClientOptions {
        self.options
    }

    /// Call `R` on `addr`, retrying retryable failures with exponential backoff and jitter.
    pub async fn call<R: Rpc>(
        &self,
        addr: SocketAddr,
        request: &R::Request,
    ) -> Result<R::Response, RpcError> {
        let body =
            Bytes::from(postcard::to_stdvec(request).map_err(|e| RpcError::Encode(e.to_string()))?);
        let mut backoff = self.options.backoff;
        let mut attempt = 1;
        loop {
            let result = tokio::time::timeout(
                self.options.attempt_timeout,
                self.attempt(addr, R::METHOD, body.clone()),
            )
            .await
            .unwrap_or(Err(RpcError::Timeout {
                addr,
                after: self.options.attempt_timeout,
            }));
            match result {
                Ok(bytes) => {
                    return postcard::from_bytes(&bytes).map_err(|e| RpcError::Decode {
                        addr,
                        reason: format!("{}: {e}", R::NAME),
                    });
                }
                Err(e) if e.is_retryable() && attempt < self.options.attempts => {
                    if !matches!(e, RpcError::Remote { .. }) {
                        self.forget(addr);
                    }
                    let pause =
                        Duration::from_micros(rand::random_range(0..=backoff.as_micros() as u64));
                    tracing::debug!(%addr, method = R::NAME, attempt, error = %e, ?pause, "retrying");
                    tokio::time::sleep(pause).await;
                    backoff = (backoff * 2).min(self.options.backoff_max);
                    attempt += 1;
                }
                Err(e) => {
                    if matches!(
                        e,
                        RpcError::Connection { .. }
                            | RpcError::Refused { .. }
                            | RpcError::Timeout { .. }
                    ) {
                        self.forget(addr);
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Whether this node and the peers trust each other's certificates, asked of all at once
    /// (a TLS handshake each, up to `wait`). Fails with the first [`RpcError::Untrusted`] when
    /// some peer refused and none accepted: a node started with a certificate from another
    /// cluster's CA says so at start instead of retrying for ever. Peers that cannot be
    /// reached are not counted either way (they may be starting).
    pub async fn check_trust(&self, peers: &[SocketAddr], wait: Duration) -> Result<(), RpcError> {
        let tries = peers.iter().map(|addr| async move {
            tokio::time::timeout(wait, self.connection(*addr))
                .await
                .unwrap_or(Err(RpcError::Timeout {
                    addr: *addr,
                    after: wait,
                }))
        });
        let results = futures::future::join_all(tries).await;
        if results.iter().any(Result::is_ok) {
            return Ok(());
        }
        match results
            .into_iter()
            .find_map(|r| r.err().filter(|e| matches!(e, RpcError::Untrusted { .. })))
        {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Drop the cached connection to `addr` (the next call reconnects). For callers that saw
    /// a stream stall: a peer that restarted on the same address leaves the old connection
    /// open until its idle timeout.
    pub fn forget(&self, addr: SocketAddr) {
        self.connections.lock().remove(&addr);
    }

    async fn connection(&self, addr: SocketAddr) -> Result<quinn::Connection, RpcError> {
        let slot = self.connections.lock().entry(addr).or_default().clone();
        let mut conn = slot.lock().await;
        if let Some(c) = conn.as_ref()
            && c.close_reason().is_none()
        {
            return Ok(c.clone());
        }
        let connect_err = |reason: String| RpcError::Connect { addr, reason };
        let connecting = self
            .endpoint
            .connect(addr, CLUSTER_SERVER_NAME)
            .map_err(|e| connect_err(e.to_string()))?;
        let c = connecting.await.map_err(|e| connect_failure(addr, e))?;
        *conn = Some(c.clone());
        Ok(c)
    }

    /// Open a stream to `addr` for a stream method: sends the request frame and hands back both
    /// halves (the caller finishes the send half). Connection failures are retried like calls.
    pub async fn open_stream(
        &self,
        addr: SocketAddr,
        method: u16,
        body: Bytes,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), RpcError> {
        let mut backoff = self.options.backoff;
        let mut attempt = 1;
        loop {
            let opened = tokio::time::timeout(self.options.attempt_timeout, async {
                let conn = self.connection(addr).await?;
                let lost = |e: quinn::ConnectionError| RpcError::Connection {
                    addr,
                    reason: e.to_string(),
                };
                let (mut send, recv) = conn.open_bi().await.map_err(lost)?;
                let request = Frame::new(Kind::Request, method, body.clone());
                frame::write_frame(&mut send, &request)
                    .await
                    .map_err(|e| RpcError::Frame { addr, error: e })?;
                Ok((send, recv))
            })
            .await
            .unwrap_or(Err(RpcError::Timeout {
                addr,
                after: self.options.attempt_timeout,
            }));
            match opened {
                Ok(s) => return Ok(s),
                Err(e) if e.is_retryable() && attempt < self.options.attempts => {
                    self.forget(addr);
                    let pause =
                        Duration::from_micros(rand::random_range(0..=backoff.as_micros() as u64));
                    tokio::time::sleep(pause).await;
                    backoff = (backoff * 2).min(self.options.backoff_max);
                    attempt += 1;
                }
                Err(e) => {
                    self.forget(addr);
                    return Err(e);
                }
            }
        }
    }

    async fn attempt(&self, addr: SocketAddr, method: u16, body: Bytes) -> Result<Bytes, RpcError> {
        let conn = self.connection(addr).await?;
        let lost = |e: quinn::ConnectionError| match e {
            // Only a protocol-violation close is a refusal; any other close (a node shutting
            // down) means this peer went away, which another attempt or master can survive.
            quinn::ConnectionError::ApplicationClosed(close)
                if close.error_code == quinn::VarInt::from_u32(CLOSE_PROTOCOL_VIOLATION) =>
            {
                RpcError::Refused {
                    addr,
                    reason: String::from_utf8_lossy(&close.reason).into_owned(),
                }
            }
            other => RpcError::Connection {
                addr,
                reason: other.to_string(),
            },
        };
        let (mut send, mut recv) = conn.open_bi().await.map_err(lost)?;
        let request = Frame::new(Kind::Request, method, body);
        frame::write_frame(&mut send, &request).await.map_err(|e| {
            conn.close_reason()
                .map_or(RpcError::Frame { addr, error: e }, lost)
        })?;
        let _ = send.finish();
        let reply = frame::read_frame(&mut recv, self.options.max_body)
            .await
            .map_err(|e| match conn.close_reason() {
                Some(reason) => lost(reason),
                None => RpcError::Frame { addr, error: e },
            })?;
        match reply.kind {
            Kind::Response if reply.method == method => Ok(reply.body),
            Kind::Error => {
                let error: RemoteError =
                    postcard::from_bytes(&reply.body).map_err(|e| RpcError::Decode {
                        addr,
                        reason: format!("error frame: {e}"),
                    })?;
                Err(RpcError::Remote { addr, error })
            }
            kind => Err(RpcError::Decode {
                addr,
                reason: format!("unexpected {kind:?} frame for method {}", reply.method),
            }),
        }
    }
}
