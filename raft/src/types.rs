//! Cairn's openraft type configuration.

use cairn_engine::state::Outcome;
use serde::{Deserialize, Serialize};

/// One log entry's payload: a group of engine command envelopes
/// (`cairn_engine::state::Command::encode`, each stamped with its proposer's time and id seed),
/// collected from concurrent clients and committed together (group commit above openraft,
/// which appends and applies entry by entry).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal(#[serde(with = "cairn_engine::wire::bytes_vec")] pub Vec<Vec<u8>>);

impl std::fmt::Display for Proposal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "proposal({} commands)", self.0.len())
    }
}

/// The outcomes of one entry's commands, in order: each a response or a rejection. Blank and
/// membership entries have none.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied(pub Vec<Outcome>);

openraft::declare_raft_types!(
    /// Cairn's Raft types: node ids are u64, a node is its QUIC address, snapshots are the
    /// engine's checksummed snapshot stream in a file.
    pub TypeConfig:
        D = Proposal,
        R = Applied,
        NodeId = u64,
        Node = openraft::BasicNode,
        SnapshotData = tokio::fs::File,
);

pub type NodeId = u64;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type Raft = openraft::Raft<TypeConfig>;
pub type Membership = openraft::StoredMembership<NodeId, openraft::BasicNode>;

pub(crate) fn io_err(e: impl std::fmt::Display) -> openraft::AnyError {
    openraft::AnyError::error(e.to_string())
}
