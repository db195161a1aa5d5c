//! openraft plumbing: Cairn's one replicated log.
//!
//! - [`log_store`]: the Raft log and vote in redb, fsynced before anything is reported durable.
//! - [`state_machine`]: the engine's service registry applied in one redb transaction per batch,
//!   with the last applied log id and membership; snapshots from one consistent read.
//! - [`network`]: AppendEntries, Vote and InstallSnapshot over cairn-proto (mutual-TLS QUIC).
//! - [`node`]: a master node: opens the stores, runs openraft, serves peers and clients.
//! - [`rpc`]: what clients say to a master node (propose, query, status, membership).
//! - [`batch`]: grouping concurrent commands, for group commit and for clients.

// openraft's storage traits return its `StorageError` (200+ bytes) by value; the size is
// openraft's, and our helpers return the same type to avoid conversions on every path.
#![allow(clippy::result_large_err)]

pub mod batch;
pub mod log_store;
pub mod network;
pub mod node;
pub mod rpc;
pub mod state_machine;
pub mod types;

pub use node::{NodeError, RaftNode, RaftOptions};
pub use rpc::{AdminRequest, ClientRequest, NodeStatus};
pub use types::{Applied, NodeId, Proposal, TypeConfig};
