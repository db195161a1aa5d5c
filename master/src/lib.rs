//! Cairn's control plane above the replicated log: the chunk and object services (deterministic
//! state machines), the leader's soft state about chunkservers, and the planners that place,
//! heal, balance and collect chunks.
//!
//! - [`chunks`]: chunk records (handle, version, replication, life state), service 2.
//! - [`objects`]: object key → extents, service 3; commits reference chunks atomically.
//! - [`protocol`]: the RPCs chunkservers and data clients send to the master group.
//! - [`planner`]: pure planning functions (placement, re-replication, GC, rebalancing).
//! - [`cluster`]: the leader's map of chunkservers and replicas, rebuilt from heartbeats.
//! - [`dataplane`]: the RPC handlers and the planner tick on a master node.

pub mod chunks;
pub mod cluster;
pub mod dataplane;
pub mod objects;
pub mod planner;
pub mod protocol;

pub use dataplane::{DataOptions, DataPlane};
