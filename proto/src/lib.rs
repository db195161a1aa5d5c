//! Everything that crosses a process boundary: the cluster's trust (CA and node certificates),
//! QUIC endpoints with mutual TLS, checksummed frames, and typed RPC clients and servers.
//!
//! - [`tls`]: cluster CA, node identities, rustls configurations (TLS 1.3, client certs required).
//! - [`endpoint`]: the one place where quinn is configured (socket buffers, windows, timeouts).
//! - [`frame`]: the versioned, length-limited, checksummed frame codec.
//! - [`rpc`]: typed methods, the server loop, and clients with timeouts, retries with backoff and
//!   jitter, and one reused connection per peer.

pub mod endpoint;
pub mod frame;
pub mod rpc;
pub mod secrets;
pub mod tls;

pub use endpoint::{EndpointError, TransportOptions, endpoint};
pub use quinn::Endpoint;
pub use rpc::{
    Client, ClientOptions, ErrorCode, RemoteError, Router, Rpc, RpcError, ServeOptions, serve,
};
pub use secrets::{SecretsError, SecretsKey};
pub use tls::{ClusterCa, NodeIdentity, TlsError};
