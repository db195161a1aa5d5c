//! The data plane (not built yet; the data-plane issue fills it).
//!
//! This crate will own the chunk protocol server over QUIC on top of
//! `cairn_engine::chunk::ChunkStore`: pipelined replication chains, range reads that stream
//! without buffering whole chunks, replica-to-replica copies, heartbeats to the master group and
//! the rate-limited background scrubber.
