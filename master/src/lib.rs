//! The control plane (not built yet; the control-plane and data-plane issues fill it).
//!
//! This crate will own the platform's service state machines (objects and chunks, namespaces,
//! identity, ...) registered on the one replicated log, the soft state rebuilt from chunkserver
//! heartbeats, and the leader-only planners: placement, leases, re-replication, rebalancing and
//! garbage collection, each a pure function from a cluster snapshot to decisions.
