//! What chunkservers and data clients say to the master group (RPC methods 200-209), over the
//! same mutual-TLS QUIC endpoint as Raft. Followers answer [`ProposeError::NotLeader`] with a
//! hint; the soft state lives on the leader.

use serde::{Deserialize, Serialize};

use crate::Rpc;
use crate::chunk::ChunkHandle;
use crate::group::ProposeError;

/// Most chunks one [`LocateRpc`] call may name.
pub const LOCATE_MAX: usize = 1024;

/// A piece of an object: `len` bytes at `offset` in chunk `handle`. What the data client's
/// writes return and the bucket service's versions record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    pub handle: ChunkHandle,
    pub offset: u64,
    pub len: u64,
}

/// A chunkserver's cluster-wide id (random, kept in its data folder).
pub type ServerId = u64;

/// What a chunkserver says about itself in every heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    pub id: ServerId,
    /// Its QUIC address for the chunk protocol.
    pub addr: String,
    pub zone: Option<String>,
    /// Bytes of the file system holding its chunks, and bytes free there.
    pub capacity: u64,
    pub free: u64,
    /// Transfers (writes, reads, copies) running now.
    pub load: u32,
}

/// One replica a chunkserver holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    pub handle: ChunkHandle,
    pub version: u64,
    pub len: u64,
    pub sealed: bool,
}

/// Sent every heartbeat interval.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub server: ServerInfo,
    /// `replicas` is the complete list (first heartbeat to a leader, or when asked).
    pub full: bool,
    /// Everything held (full report) or what is new or changed since the last heartbeat.
    pub replicas: Vec<Replica>,
    /// Replicas gone since the last heartbeat.
    pub removed: Vec<ChunkHandle>,
    /// Replicas found corrupt (and already deleted) by reads or the scrubber.
    pub corrupt: Vec<ChunkHandle>,
    /// Copies the master asked for that failed (it may plan them again at once).
    pub copies_failed: Vec<ChunkHandle>,
}

/// Work the master hands a chunkserver in a heartbeat reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Task {
    /// Delete this replica (garbage, stale, corrupt elsewhere-reported, or surplus).
    Delete { handle: ChunkHandle },
    /// Copy this sealed chunk from the chunkserver at `from`, verifying it on the way.
    Copy {
        handle: ChunkHandle,
        version: u64,
        from: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// The master lacks this server's complete list: send a full report now.
    pub full_report: bool,
    pub tasks: Vec<Task>,
}

/// Ask for a new chunk and its replication chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocateRequest {
    /// Replicas wanted; the cluster default when absent.
    pub replication: Option<u8>,
    /// Chunkservers to keep away from (they just failed this writer); used again only when
    /// too few others are left.
    pub exclude: Vec<ServerId>,
}

/// A chunk to write and the chain to write it through (first element first).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub handle: ChunkHandle,
    pub version: u64,
    pub chain: Vec<(ServerId, String)>,
    /// Largest number of bytes the chunk may hold.
    pub size_max: u64,
}

/// Where a chunk's replicas are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    pub handle: ChunkHandle,
    pub version: u64,
    /// Live replicas, least loaded first.
    pub replicas: Vec<(ServerId, String)>,
}

/// A reader found a replica bad (checksum mismatch or unreadable).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadReplica {
    pub handle: ChunkHandle,
    pub server: ServerId,
    pub reason: String,
}

/// One chunkserver as the leader sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStatus {
    pub info: ServerInfo,
    pub alive: bool,
    pub last_heartbeat_ms_ago: u64,
    pub chunks: u64,
    pub bytes: u64,
    /// Being drained (`cairn admin drain`) or retired (`cairn admin decommission`).
    pub draining: bool,
}

/// The data plane as the leader sees it (`cairn admin status`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataStatus {
    pub servers: Vec<ServerStatus>,
    pub replication_default: u8,
    /// Chunk records in the log.
    pub chunks: u64,
    /// Live chunks with fewer good replicas than wanted (at the last planner tick).
    pub under_replicated: u64,
    /// Live chunks with no good replica at all.
    pub lost: u64,
    pub copies_in_flight: u64,
    pub deletes_queued: u64,
}

#[derive(Debug)]
pub struct HeartbeatRpc;
impl Rpc for HeartbeatRpc {
    const METHOD: u16 = 200;
    const NAME: &'static str = "data.heartbeat";
    type Request = Heartbeat;
    type Response = Result<HeartbeatReply, ProposeError>;
}

#[derive(Debug)]
pub struct AllocateRpc;
impl Rpc for AllocateRpc {
    const METHOD: u16 = 201;
    const NAME: &'static str = "data.allocate";
    type Request = AllocateRequest;
    type Response = Result<Allocation, ProposeError>;
}

#[derive(Debug)]
pub struct LocateRpc;
impl Rpc for LocateRpc {
    const METHOD: u16 = 202;
    const NAME: &'static str = "data.locate";
    type Request = Vec<ChunkHandle>;
    type Response = Result<Vec<Location>, ProposeError>;
}

#[derive(Debug)]
pub struct BadReplicaRpc;
impl Rpc for BadReplicaRpc {
    const METHOD: u16 = 203;
    const NAME: &'static str = "data.bad_replica";
    type Request = BadReplica;
    type Response = Result<(), ProposeError>;
}

#[derive(Debug)]
pub struct DataStatusRpc;
impl Rpc for DataStatusRpc {
    const METHOD: u16 = 204;
    const NAME: &'static str = "data.status";
    type Request = ();
    type Response = Result<DataStatus, ProposeError>;
}
