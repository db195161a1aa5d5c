//! Everything that crosses a process boundary: the cluster's trust (CA and node certificates),
//! QUIC endpoints with mutual TLS, checksummed frames, typed RPC clients and servers, and the
//! messages the roles exchange.
//!
//! - [`tls`]: cluster CA, node identities, rustls configurations (TLS 1.3, client certs required).
//! - [`secrets`]: the cluster secrets key that seals secrets before they reach the log.
//! - [`endpoint`]: the one place where quinn is configured (socket buffers, windows, timeouts).
//! - [`frame`]: the versioned, length-limited, checksummed frame codec.
//! - [`rpc`]: typed methods, the server loop, and clients with timeouts, retries with backoff and
//!   jitter, and one reused connection per peer.
//! - [`group`]: calling the master group: its errors, query consistency, leader search.
//! - [`dataplane`]: what chunkservers and data clients say to the master group (heartbeats,
//!   allocation, locations).
//! - [`chunk`]: the chunk protocol between data clients and chunkservers (chain writes, reads).
//! - [`chain`]: the chain write as pure logic both ends share (frames, forwarding, acks).

pub mod chain;
pub mod chunk;
pub mod dataplane;
pub mod endpoint;
mod files;
pub mod frame;
pub mod group;
pub mod rpc;
pub mod search;
pub mod secrets;
pub mod tls;

pub use chunk::ChunkHandle;
pub use endpoint::{EndpointError, TransportOptions, endpoint};
pub use group::{Consistency, Leader, NodeId, ProposeError};
pub use quinn::Endpoint;
pub use rpc::{
    Client, ClientOptions, ErrorCode, RemoteError, Router, Rpc, RpcError, ServeOptions, serve,
};
pub use secrets::{SecretsError, SecretsKey};
pub use tls::{ClusterCa, NodeIdentity, TlsError};
