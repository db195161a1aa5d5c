//! openraft plumbing (not built yet; the control-plane issue fills it).
//!
//! This crate will own Cairn's openraft type configuration, the Raft log store and vote in redb
//! with group commit, the state machine that hands committed batches to
//! `cairn_engine::state::Registry`, snapshots streamed over `cairn-proto`, and the Raft network.
