//! Cairn's data plane: chunkservers that store replicated, checksummed chunks, and the client
//! that streams objects through them.
//!
//! - [`protocol`]: the chunk protocol (pipelined chain writes, verified reads) on QUIC streams.
//! - [`server`]: the chunkserver: protocol server, heartbeats and tasks, scrubber.
//! - [`client`]: `put`/`read` through chains and replicas, with failover.

pub mod client;
pub mod protocol;
pub mod server;

pub use client::{ChunkSink, DataClient, DataError, WriteSink, Written};
pub use server::{Chunkserver, ChunkserverOptions, StartError};
