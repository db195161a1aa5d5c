//! Cairn's data plane: chunkservers that store replicated, checksummed chunks. The protocol
//! they speak is `cairn_proto::chunk` (with the master group: `cairn_proto::dataplane`); the
//! client that streams objects through them is `cairn_client::DataClient`.
//!
//! - [`server`]: the chunkserver: protocol server, heartbeats and tasks, scrubber.

pub mod server;

pub use server::{Chunkserver, ChunkserverOptions, StartError};
