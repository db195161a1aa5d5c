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

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HeartbeatReply {
    /// The master lacks this server's complete list: send a full report now.
    pub full_report: bool,
    pub tasks: Vec<Task>,
    /// The Raft term of the leader that planned `tasks` (fencing: a chunkserver carries out
    /// no instruction from a term older than the newest it has seen). 0 from a master built
    /// before fencing, whose replies end after `tasks`.
    pub term: u64,
}

/// Written by hand so that a reply without `term` (a master of the previous release, during a
/// rolling upgrade) still decodes, as term 0. postcard encodes a struct as its fields in
/// order; the reply is the last thing in its frame, so a missing `term` is the end of input.
impl<'de> Deserialize<'de> for HeartbeatReply {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = HeartbeatReply;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a heartbeat reply")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<HeartbeatReply, A::Error> {
                use serde::de::Error;
                let full_report = seq
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(0, &self))?;
                let tasks = seq
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(1, &self))?;
                let term = seq.next_element().ok().flatten().unwrap_or(0);
                Ok(HeartbeatReply {
                    full_report,
                    tasks,
                    term,
                })
            }
        }
        d.deserialize_struct("HeartbeatReply", &["full_report", "tasks", "term"], Fields)
    }
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

/// How re-replication and rebalancing are getting on, as the leader sees them (`cairn admin
/// status`, `/metrics`). Rates are over the copies that landed in the last
/// [`REPAIR_WINDOW_MS`]; totals count from when this master became leader.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RepairProgress {
    /// Replicas still to make: missing ones not yet started, plus copies running.
    pub remaining_replicas: u64,
    /// Their bytes.
    pub remaining_bytes: u64,
    pub copies_running: u64,
    /// Copies landed per second, and their bytes per second.
    pub replicas_per_sec: f64,
    pub bytes_per_sec: f64,
    /// Seconds until `remaining_bytes` are copied at `bytes_per_sec`; `None` while nothing is
    /// left or nothing has landed lately to measure a rate by.
    pub eta_secs: Option<u64>,
    /// Copies landed since this leader took over, and their bytes.
    pub copied_replicas: u64,
    pub copied_bytes: u64,
}

/// The span the repair rates are measured over.
pub const REPAIR_WINDOW_MS: u64 = 10_000;

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

/// Repair progress (added after `data.status`, so a master of an older release answers
/// "unknown method" and callers leave the progress out).
#[derive(Debug)]
pub struct DataRepairRpc;
impl Rpc for DataRepairRpc {
    const METHOD: u16 = 205;
    const NAME: &'static str = "data.repair";
    type Request = ();
    type Response = Result<RepairProgress, ProposeError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reply of a master from before fencing (no `term`) still decodes, as term 0; a
    /// reply with a term round-trips.
    #[test]
    fn heartbeat_replies_without_a_term_still_decode() {
        #[derive(Serialize)]
        struct Before {
            full_report: bool,
            tasks: Vec<Task>,
        }
        let tasks = vec![Task::Delete {
            handle: ChunkHandle(7),
        }];
        let old: Result<Before, crate::ProposeError> = Ok(Before {
            full_report: false,
            tasks: tasks.clone(),
        });
        let bytes = postcard::to_stdvec(&old).unwrap();
        let got: Result<HeartbeatReply, crate::ProposeError> =
            postcard::from_bytes(&bytes).unwrap();
        assert_eq!(
            got,
            Ok(HeartbeatReply {
                full_report: false,
                tasks: tasks.clone(),
                term: 0
            })
        );
        let new = HeartbeatReply {
            full_report: true,
            tasks,
            term: 9,
        };
        let bytes = postcard::to_stdvec(&new).unwrap();
        assert_eq!(postcard::from_bytes::<HeartbeatReply>(&bytes).unwrap(), new);
        // Garbage is still an error, not a default.
        assert!(postcard::from_bytes::<HeartbeatReply>(&[]).is_err());
    }
}
