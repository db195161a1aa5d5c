//! Cairn's openraft type configuration.

use std::io::Cursor;

use cairn_engine::state::Outcome;
use serde::{Deserialize, Serialize};

/// A proposal: one engine command envelope (`cairn_engine::state::Command::encode`), already
/// stamped with the proposer's time and id seed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal(pub Vec<u8>);

impl std::fmt::Display for Proposal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "proposal({} bytes)", self.0.len())
    }
}

/// The outcome of applying one log entry: the service's response or its rejection. Blank and
/// membership entries answer with an empty response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied(pub Outcome);

openraft::declare_raft_types!(
    /// Cairn's Raft types: node ids are u64, a node is its QUIC address, snapshots are the
    /// engine's checksummed snapshot stream.
    pub TypeConfig:
        D = Proposal,
        R = Applied,
        NodeId = u64,
        Node = openraft::BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
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
