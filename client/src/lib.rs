//! How anything reaches a Cairn cluster: the gateway, the `cairn` binary's admin commands,
//! benches and tests all talk to the masters and chunkservers through this crate.
//!
//! - [`master`]: [`MasterClient`]: proposals and queries to the master group's leader, with
//!   leader search, hints and coalesced proposals; a master in the same process is called
//!   directly while it leads.
//! - [`data`]: [`DataClient`]: objects streamed into chunks through replication chains and read
//!   back from live replicas with checksum verification and failover.

pub mod data;
pub mod master;

pub use data::{ChunkSink, DataClient, DataError, WriteSink, Written};
pub use master::{MasterClient, stamp};
