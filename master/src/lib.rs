//! Cairn's control plane above the replicated log: the chunk and object services (deterministic
//! state machines), the leader's soft state about chunkservers, and the planners that place,
//! heal, balance and collect chunks.
//!
//! - [`chunks`]: chunk records (handle, version, replication, life state), service 2.
//! - [`objects`]: object key → extents, service 3, retired (kept so old logs replay); its
//!   `Extent` is what bucket versions and parts are made of.
//! - [`buckets`]: S3 buckets, versions, multipart uploads, lifecycle, service 4.
//!   [`bucket_policy`] parses, checks and evaluates their S3 bucket policies.
//! - [`keys`]: S3 access keys with sealed secrets, service 5.
//! - [`identity`]: users, login sessions and the token signing key, service 6.
//!   [`tenancy`] holds its tenants, members and policies; [`policy`] decides what a member may do.
//! - [`audit`]: the append-only audit log, service 7.
//! - [`images`]: the image store's records, service 8 (content in the system bucket).
//! - [`kms`]: encryption keys for SSE-KMS and the cluster's SSE-S3 key, service 9.
//! - [`shares`]: share links, in the bucket service's transactions.
//!   The RPCs chunkservers and data clients send to the master group are `cairn_proto::dataplane`.
//! - [`planner`]: pure planning functions (placement, re-replication, GC, rebalancing).
//! - [`cluster`]: the leader's map of chunkservers and replicas, rebuilt from heartbeats.
//! - [`dataplane`]: the RPC handlers and the planner tick on a master node.

pub mod audit;
pub mod bucket_policy;
pub mod buckets;
pub mod chunks;
pub mod cluster;
pub mod cron;
pub mod dataplane;
pub mod identity;
pub mod images;
pub mod keys;
pub mod kms;
pub mod objects;
pub mod planner;
pub mod policy;
pub mod queues;
pub mod shares;
pub mod tenancy;
pub mod topics;

pub use dataplane::{DataOptions, DataPlane};

use std::net::SocketAddr;
use std::path::Path;

use cairn_engine::state::settings::ClusterSettings;
use cairn_engine::state::{Registry, StateError, Typed};
use cairn_proto::NodeIdentity;
use cairn_raft::{NodeError, RaftNode, RaftOptions};

/// Every service on the replicated log, in one place.
pub fn registry() -> Result<Registry, StateError> {
    let mut r = Registry::new();
    r.register(Typed(ClusterSettings))?;
    r.register(Typed(chunks::ChunkService))?;
    r.register(Typed(objects::ObjectService))?;
    r.register(Typed(buckets::BucketService))?;
    r.register(Typed(keys::KeyService))?;
    r.register(Typed(identity::IdentityService))?;
    r.register(Typed(audit::AuditService))?;
    r.register(Typed(images::ImageService))?;
    r.register(Typed(kms::KmsService))?;
    r.register(Typed(queues::QueueService))?;
    r.register(Typed(topics::TopicService))?;
    r.register(Typed(cron::CronService))?;
    Ok(r)
}

/// Start a master node with every service and the data plane beside it, serving on `listen`.
pub async fn start(
    id: u64,
    dir: &Path,
    listen: SocketAddr,
    identity: &NodeIdentity,
    raft: RaftOptions,
    data: DataOptions,
) -> Result<(RaftNode, DataPlane), NodeError> {
    let mut plane = None;
    let node =
        RaftNode::start_with_routes(id, dir, listen, identity, registry, raft, |node, router| {
            let dp = DataPlane::start(node.clone(), data);
            let router = dp.routes(router);
            plane = Some(dp);
            router
        })
        .await?;
    let plane = plane.ok_or_else(|| NodeError::Raft("the data plane did not start".into()))?;
    Ok((node, plane))
}
