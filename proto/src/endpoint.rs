//! QUIC endpoints: the one place where quinn is configured.
//!
//! Every endpoint serves (mutual TLS, client certificate required) and connects (presenting its
//! own certificate) on one UDP socket. Settings are made for bulk data too: large socket buffers
//! (quinn drops packets with the default 208 KiB receive buffer), large flow-control windows,
//! GSO/GRO where the kernel offers them (quinn's default), and MTU discovery up to the largest UDP
//! payload, so paths that carry large datagrams (loopback, jumbo-frame LANs) use them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{EndpointConfig, MtuDiscoveryConfig, TransportConfig, VarInt};

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
    /// A connection with no traffic for this long is closed (a keep-alive goes out every
    /// quarter of it, so only a dead or cut-off peer gets there). This is how a write into a
    /// chain notices a replica that died (`kill -9` leaves no one to answer): at 30 s, a
    /// chain with a dead replica held its writer for 30 s; at 4 s, about 4.5 s; at 2 s (a
    /// keep-alive every 0.5 s, so four in a row must go unanswered), 2.6-3.5 s
    /// (`writes_go_on_with_one_of_three_chunkservers_down`).
    pub idle_timeout: Duration,
    /// Largest UDP payload this endpoint accepts and MTU discovery searches up to (1200-65527).
    /// Packets start at QUIC's safe 1200 bytes and grow only as far as probes get through, so a
    /// high bound is safe on any path; where the path carries them (loopback, jumbo-frame LANs),
    /// larger packets cut the per-packet cost (crypto setup, acknowledgements, bookkeeping) that
    /// bounds a connection's rate: one loopback stream moved 2.2x the bytes at 6,400 as at 1,452
    /// (BENCHMARKS.md). quinn's own default is 1452 (Ethernet).
    ///
    /// Keep it at most 6,500: quinn hands the kernel up to 10 datagrams per GSO send, and the
    /// kernel refuses a send over 64 KiB, which quinn then drops as if it were a lost MTU probe.
    /// At 8,952 the loopback rate fell to a third.
    pub max_udp_payload: u16,
}

impl Default for TransportOptions {
    fn default() -> Self {
        TransportOptions {
            stream_window: 16 << 20,
            connection_window: 64 << 20,
            socket_buffer: 8 << 20,
            streams_max: 1024,
            idle_timeout: Duration::from_secs(2),
            max_udp_payload: 6_500,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("QUIC TLS configuration: {0}")]
    Crypto(String),
    #[error("QUIC transport configuration: {0}")]
    Config(String),
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
        .keep_alive_interval(Some(options.idle_timeout / 4))
        .max_idle_timeout(Some(
            options
                .idle_timeout
                .try_into()
                .map_err(|_| EndpointError::Config("idle timeout out of range".into()))?,
        ));
    let mut mtu = MtuDiscoveryConfig::default();
    mtu.upper_bound(options.max_udp_payload);
    t.mtu_discovery_config(Some(mtu));
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

/// Endpoint keys that are the same in every life of the node: a node restarted on its address
/// (after a crash or in a rolling restart) recognises the connection IDs of its previous life
/// and answers their packets with a stateless reset its peers can verify, so they drop the dead
/// connection at once. With quinn's defaults (a random reset key and connection-ID key per
/// process) the new process silently drops those packets, and the peer keeps writing into the
/// dead connection until its idle timeout (30 s), stalling every call on it: in the
/// rolling-restart test a gateway's put, and the gateway's shutdown behind it, waited that long
/// on a restarted chunkserver.
fn endpoint_config(
    identity: &NodeIdentity,
    options: &TransportOptions,
) -> Result<EndpointConfig, EndpointError> {
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
        .max_udp_payload_size(options.max_udp_payload)
        .map_err(|_| {
            EndpointError::Config(format!(
                "max UDP payload {} is outside 1200-65527",
                options.max_udp_payload
            ))
        })?;
    Ok(config)
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
    let mut endpoint = quinn::Endpoint::new(
        endpoint_config(identity, options)?,
        Some(server),
        socket,
        runtime,
    )
    .map_err(|source| EndpointError::Bind { addr, source })?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}
