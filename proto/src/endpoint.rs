//! QUIC endpoints: the one place where quinn is configured.
//!
//! Every endpoint serves (mutual TLS, client certificate required) and connects (presenting its
//! own certificate) on one UDP socket. Settings are made for bulk data too: large socket buffers
//! (quinn drops packets with the default 208 KiB receive buffer), large flow-control windows, and
//! GSO/GRO where the kernel offers them (quinn's default).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{EndpointConfig, TransportConfig, VarInt};

use crate::tls::{NodeIdentity, TlsError};

/// Transport tuning. Defaults suit both small RPCs and gigabyte transfers on a LAN.
#[derive(Clone, Copy, Debug)]
pub struct TransportOptions {
    /// Per-stream receive window (bytes in flight per stream).
    pub stream_window: u32,
    /// Per-connection receive and send windows.
    pub connection_window: u32,
    /// UDP socket send and receive buffer sizes asked of the kernel (it may cap them).
    pub socket_buffer: usize,
    /// Concurrent bidirectional streams a peer may open.
    pub streams_max: u32,
    /// A connection with no traffic for this long is closed (keep-alives are sent well before).
    pub idle_timeout: Duration,
}

impl Default for TransportOptions {
    fn default() -> Self {
        TransportOptions {
            stream_window: 16 << 20,
            connection_window: 64 << 20,
            socket_buffer: 8 << 20,
            streams_max: 1024,
            idle_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("QUIC TLS configuration: {0}")]
    Crypto(String),
    #[error("cannot bind UDP {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

fn transport(options: &TransportOptions) -> Result<Arc<TransportConfig>, EndpointError> {
    let mut t = TransportConfig::default();
    t.stream_receive_window(VarInt::from_u32(options.stream_window))
        .receive_window(VarInt::from_u32(options.connection_window))
        .send_window(u64::from(options.connection_window))
        .max_concurrent_bidi_streams(VarInt::from_u32(options.streams_max))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .keep_alive_interval(Some(options.idle_timeout / 3))
        .max_idle_timeout(Some(
            options
                .idle_timeout
                .try_into()
                .map_err(|_| EndpointError::Crypto("idle timeout out of range".into()))?,
        ));
    Ok(Arc::new(t))
}

fn udp_socket(
    addr: SocketAddr,
    options: &TransportOptions,
) -> Result<std::net::UdpSocket, EndpointError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let bind = |source| EndpointError::Bind { addr, source };
    let socket =
        Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(bind)?;
    // Best effort: the kernel caps these at net.core.{r,w}mem_max.
    let _ = socket.set_recv_buffer_size(options.socket_buffer);
    let _ = socket.set_send_buffer_size(options.socket_buffer);
    socket.bind(&addr.into()).map_err(bind)?;
    Ok(socket.into())
}

/// Endpoint keys that are the same in every life of the node: a node restarted on its address (after a crash or in a
/// rolling restart) recognises the connection IDs of its previous life and answers their
/// packets with a stateless reset its peers can verify, so they drop the dead connection at
/// once. With quinn's defaults (a random reset key and connection-ID key per process) the new
/// process silently drops those packets, and the peer keeps writing into the dead connection
/// until its idle timeout (30 s), stalling every call on it: in the rolling-restart test a
/// gateway's put, and the gateway's shutdown behind it, waited that long on a restarted
/// chunkserver.
fn endpoint_config(identity: &NodeIdentity) -> EndpointConfig {
    let reset = identity.derived_secret("quic stateless reset key");
    let cid = identity.derived_secret("quic connection id key");
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&cid[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    let mut config = EndpointConfig::new(Arc::new(ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        &reset,
    )));
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
            as Box<dyn quinn::ConnectionIdGenerator>
    });
    config
}

/// A QUIC endpoint on `addr` that accepts cluster peers and connects to them.
pub fn endpoint(
    addr: SocketAddr,
    identity: &NodeIdentity,
    options: &TransportOptions,
) -> Result<quinn::Endpoint, EndpointError> {
    let transport = transport(options)?;
    let server_crypto = QuicServerConfig::try_from(identity.server_config()?)
        .map_err(|e| EndpointError::Crypto(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
    server.transport_config(transport.clone());
    let client_crypto = QuicClientConfig::try_from(identity.client_config()?)
        .map_err(|e| EndpointError::Crypto(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
    client.transport_config(transport);

    let socket = udp_socket(addr, options)?;
    let runtime = Arc::new(quinn::TokioRuntime);
    let mut endpoint =
        quinn::Endpoint::new(endpoint_config(identity), Some(server), socket, runtime)
            .map_err(|source| EndpointError::Bind { addr, source })?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}
