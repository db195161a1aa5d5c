//! Cairn's data plane: chunkservers that store replicated, checksummed chunks. The protocol
//! they speak is `cairn_proto::chunk` (with the master group: `cairn_proto::dataplane`); the
//! client that streams objects through them is `cairn_client::DataClient`.
//!
//! - [`server`]: the chunkserver: start, routes, shutdown, and its state.
//! - [`write`]: chain writes (pipelined: written here while forwarded down the chain).
//! - [`read`]: verified reads, remote and in-process.
//! - [`copy`]: replica copies the master asks for, digest-checked.
//! - [`pace`]: the rate copies go at, yielding to client transfers.
//! - [`heartbeat`]: reports to the master leader and the tasks it answers with.
//! - [`scrub`]: the background re-verification of sealed chunks.

pub mod copy;
pub mod heartbeat;
pub mod pace;
pub mod read;
pub mod scrub;
pub mod server;
pub mod write;

pub use pace::CopyRates;
pub use server::{Chunkserver, ChunkserverOptions, StartError};
