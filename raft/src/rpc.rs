//! What clients say to any master (RPC methods 110-113): proposals, queries, status and
//! membership changes. The master node serves these; `cairn-client`'s master client calls them.

use std::collections::{BTreeMap, BTreeSet};

use cairn_engine::state::ServiceId;
use cairn_engine::wire::WireOutcome;
use cairn_proto::{Consistency, ProposeError, Rpc};
use serde::{Deserialize, Serialize};

use crate::types::NodeId;

/// Requests a client sends to any master.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ClientRequest {
    /// One engine command envelope, to be committed (grouped with others) and applied.
    Propose(#[serde(with = "serde_bytes")] Vec<u8>),
    Query {
        service: ServiceId,
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
        consistency: Consistency,
    },
}

/// Command envelopes of one `ProposeManyRpc` call.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ManyCommands(#[serde(with = "cairn_engine::wire::bytes_vec")] pub Vec<Vec<u8>>);

#[derive(Debug)]
pub struct ClientRpc;
impl Rpc for ClientRpc {
    const METHOD: u16 = 110;
    const NAME: &'static str = "master.client";
    type Request = ClientRequest;
    type Response = Result<WireOutcome, ProposeError>;
}

/// Many commands in one call (a client coalescing its concurrent proposals); one result per
/// command, so a partial failure retries only the commands that were not appended.
#[derive(Debug)]
pub struct ProposeManyRpc;
impl Rpc for ProposeManyRpc {
    const METHOD: u16 = 113;
    const NAME: &'static str = "master.propose_many";
    type Request = ManyCommands;
    type Response = Vec<Result<WireOutcome, ProposeError>>;
}

#[derive(Debug)]
pub struct StatusRpc;
impl Rpc for StatusRpc {
    const METHOD: u16 = 111;
    const NAME: &'static str = "master.status";
    type Request = ();
    type Response = NodeStatus;
}

/// Membership changes, sent to the leader.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum AdminRequest {
    /// Add a learner and wait until it has caught up with the log.
    AddLearner { id: NodeId, addr: String },
    /// Make exactly these nodes the voters (learners not listed stay learners).
    SetVoters(BTreeSet<NodeId>),
}

#[derive(Debug)]
pub struct AdminRpc;
impl Rpc for AdminRpc {
    const METHOD: u16 = 112;
    const NAME: &'static str = "master.admin";
    type Request = AdminRequest;
    type Response = Result<(), ProposeError>;
}

/// What one node reports about itself and the group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub id: NodeId,
    pub addr: String,
    pub state: String,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub last_log_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    pub nodes: BTreeMap<NodeId, String>,
    /// On the leader: each follower's matched log index.
    pub replication: BTreeMap<NodeId, Option<u64>>,
}
