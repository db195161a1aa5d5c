//! openraft's network over cairn-proto: AppendEntries, Vote and InstallSnapshot as typed RPCs on
//! mutual-TLS QUIC. Snapshots travel in openraft's bounded chunks (`snapshot_max_chunk_size`).

use std::net::SocketAddr;

use cairn_proto::{Client, ClientOptions, RemoteError as WireError, Router, Rpc, RpcError};
use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use crate::types::{NodeId, Raft, TypeConfig, io_err};

#[derive(Debug)]
pub struct AppendEntries;
impl Rpc for AppendEntries {
    const METHOD: u16 = 100;
    const NAME: &'static str = "raft.append_entries";
    type Request = AppendEntriesRequest<TypeConfig>;
    type Response = Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>;
}

#[derive(Debug)]
pub struct Vote;
impl Rpc for Vote {
    const METHOD: u16 = 101;
    const NAME: &'static str = "raft.vote";
    type Request = VoteRequest<NodeId>;
    type Response = Result<VoteResponse<NodeId>, RaftError<NodeId>>;
}

#[derive(Debug)]
pub struct InstallSnapshot;
impl Rpc for InstallSnapshot {
    const METHOD: u16 = 102;
    const NAME: &'static str = "raft.install_snapshot";
    type Request = InstallSnapshotRequest<TypeConfig>;
    type Response =
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>;
}

/// Add the Raft peer RPCs, served by `raft`, to a router.
pub fn routes(router: Router, raft: Raft) -> Router {
    let (r1, r2, r3) = (raft.clone(), raft.clone(), raft);
    router
        .route::<AppendEntries, _, _>(move |req| {
            let raft = r1.clone();
            async move { Ok::<_, WireError>(raft.append_entries(req).await) }
        })
        .route::<Vote, _, _>(move |req| {
            let raft = r2.clone();
            async move { Ok::<_, WireError>(raft.vote(req).await) }
        })
        .route::<InstallSnapshot, _, _>(move |req| {
            let raft = r3.clone();
            async move { Ok::<_, WireError>(raft.install_snapshot(req).await) }
        })
}

/// Creates per-peer network handles sharing one QUIC client (one connection per peer).
#[derive(Clone, Debug)]
pub struct Network {
    client: Client,
}

impl Network {
    pub fn new(endpoint: quinn::Endpoint) -> Network {
        // openraft retries on its own schedule: one attempt per call here.
        let options = ClientOptions {
            attempts: 1,
            ..ClientOptions::default()
        };
        Network {
            client: Client::new(endpoint, options),
        }
    }
}

/// The network handle for one peer.
#[derive(Debug)]
pub struct Peer {
    client: Client,
    target: NodeId,
    addr: Result<SocketAddr, String>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        Peer {
            client: self.client.clone(),
            target,
            addr: node
                .addr
                .parse()
                .map_err(|_| format!("node {target} has a bad address {:?}", node.addr)),
        }
    }
}

impl Peer {
    async fn call<R, E>(
        &self,
        req: R::Request,
        option: &RPCOption,
    ) -> Result<R::Response, RPCError<NodeId, BasicNode, E>>
    where
        R: Rpc,
        E: std::error::Error,
    {
        let addr = self
            .addr
            .clone()
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&io_err(e))))?;
        let call = self.client.call::<R>(addr, &req);
        match tokio::time::timeout(option.hard_ttl(), call).await {
            Err(_) => Err(RPCError::Unreachable(Unreachable::new(&io_err(format!(
                "{} to node {} timed out",
                R::NAME,
                self.target
            ))))),
            Ok(Ok(r)) => Ok(r),
            Ok(Err(
                e @ (RpcError::Connect { .. }
                | RpcError::Connection { .. }
                | RpcError::Timeout { .. }
                | RpcError::Refused { .. }),
            )) => Err(RPCError::Unreachable(Unreachable::new(&e))),
            Ok(Err(e)) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }
}

fn remote<E: std::error::Error>(
    target: NodeId,
    e: RaftError<NodeId, E>,
) -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>> {
    RPCError::RemoteError(RemoteError::new(target, e))
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        req: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call::<AppendEntries, _>(req, &option)
            .await?
            .map_err(|e| remote(self.target, e))
    }

    async fn install_snapshot(
        &mut self,
        req: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call::<InstallSnapshot, _>(req, &option)
            .await?
            .map_err(|e| remote(self.target, e))
    }

    async fn vote(
        &mut self,
        req: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call::<Vote, _>(req, &option)
            .await?
            .map_err(|e| remote(self.target, e))
    }
}
