//! A master node: the stores, openraft, and the RPCs peers and clients call, on one QUIC
//! endpoint; and [`MasterClient`], which finds the leader and follows its hints.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cairn_engine::state::{Outcome, Registry, ServiceId, StateError, StateStore};
use cairn_engine::wire::WireOutcome;
use cairn_proto::{
    Client, ClientOptions, NodeIdentity, RemoteError as WireError, Router, Rpc, RpcError,
    ServeOptions, TransportOptions,
};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, Config, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};

use crate::log_store::LogStore;
use crate::network::{self, Network};
use crate::state_machine::StateMachine;
use crate::types::{NodeId, Proposal, Raft};

/// Raft timing and compaction.
#[derive(Clone, Copy, Debug)]
pub struct RaftOptions {
    pub heartbeat: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// Build a snapshot (and allow purging the log) after this many entries.
    pub snapshot_after_entries: u64,
    /// Entries kept in the log behind a snapshot, for followers that are only a little behind.
    pub entries_kept_after_snapshot: u64,
    /// Size of the pieces a snapshot is streamed in.
    pub snapshot_chunk_bytes: u64,
}

impl Default for RaftOptions {
    fn default() -> Self {
        RaftOptions {
            heartbeat: Duration::from_millis(200),
            election_timeout_min: Duration::from_millis(1000),
            election_timeout_max: Duration::from_millis(2000),
            snapshot_after_entries: 10_000,
            entries_kept_after_snapshot: 1_000,
            snapshot_chunk_bytes: 4 << 20,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Endpoint(#[from] cairn_proto::EndpointError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("raft log store: {0}")]
    Log(String),
    #[error("raft: {0}")]
    Raft(String),
}

/// Why a proposal or a linearizable query did not go through.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ProposeError {
    #[error("not the leader; the leader is {leader:?}")]
    NotLeader { leader: Option<(NodeId, String)> },
    /// Transient: no quorum answered right now (an election or a slow peer); retry.
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Failed(String),
}

/// A query's consistency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Consistency {
    /// Confirmed with a quorum (openraft read-index) before reading: sees every write
    /// acknowledged before the query started.
    Linearizable,
    /// Read this node's state as it is (may lag the leader).
    Stale,
}

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
struct ManyCommands(#[serde(with = "cairn_engine::wire::bytes_vec")] Vec<Vec<u8>>);

struct ClientRpc;
impl Rpc for ClientRpc {
    const METHOD: u16 = 110;
    const NAME: &'static str = "master.client";
    type Request = ClientRequest;
    type Response = Result<WireOutcome, ProposeError>;
}

/// Many commands in one call (a client coalescing its concurrent proposals); one result per
/// command, so a partial failure retries only the commands that were not appended.
struct ProposeManyRpc;
impl Rpc for ProposeManyRpc {
    const METHOD: u16 = 113;
    const NAME: &'static str = "master.propose_many";
    type Request = ManyCommands;
    type Response = Vec<Result<WireOutcome, ProposeError>>;
}

struct StatusRpc;
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

struct AdminRpc;
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

/// A client command waiting for its group to commit.
type Waiting = (
    Vec<u8>,
    tokio::sync::oneshot::Sender<Result<Outcome, ProposeError>>,
);

/// Most commands one log entry carries.
const GROUP_COMMANDS_MAX: usize = 1024;
/// Most command bytes one log entry carries.
const GROUP_BYTES_MAX: usize = 4 << 20;
/// Groups being committed at once. While they are in flight, new commands queue up and form
/// the next group, so the group size follows the load. One is best (measured with
/// `cairn-bench raft` and `cairn-bench s3`, BENCHMARKS.md): fewer, larger entries cost fewer
/// appends, fsyncs and apply transactions than overlapping small ones; 2 gave 41K commands/s on
/// one node at 256 clients, 1 gives 55K, and small S3 PUTs went from 4.8K to 6.3K/s.
const GROUPS_IN_FLIGHT: usize = 1;
/// Commands that may wait for a group (worst case ~GROUP_BYTES_MAX × this / GROUP_COMMANDS_MAX).
const WAITING_MAX: usize = 16 * 1024;

/// `first` and whatever else is already queued, up to a group's limits.
fn take_group(first: Waiting, queue: &mut tokio::sync::mpsc::Receiver<Waiting>) -> Vec<Waiting> {
    let mut bytes = first.0.len();
    let mut group = vec![first];
    while group.len() < GROUP_COMMANDS_MAX && bytes < GROUP_BYTES_MAX {
        match queue.try_recv() {
            Ok(w) => {
                bytes += w.0.len();
                group.push(w);
            }
            Err(_) => break,
        }
    }
    group
}

/// Runs `handle` on groups taken from `queue`, at most `in_flight` at a time. A slot is taken
/// before the group: commands arriving while all slots are busy join the next group, so group
/// size follows the load. Ends when the queue's senders are gone.
async fn run_groups<F, Fut>(
    mut queue: tokio::sync::mpsc::Receiver<Waiting>,
    in_flight: usize,
    handle: F,
) where
    F: Fn(Vec<Waiting>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(in_flight));
    while let Some(first) = queue.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let work = handle(take_group(first, &mut queue));
        tokio::spawn(async move {
            work.await;
            drop(permit);
        });
    }
}

/// Groups concurrent client commands into log entries (group commit above openraft, which
/// appends, commits and applies entry by entry).
async fn group_commit(raft: Raft, queue: tokio::sync::mpsc::Receiver<Waiting>) {
    run_groups(queue, GROUPS_IN_FLIGHT, move |group| {
        let raft = raft.clone();
        async move {
            let (commands, waiters): (Vec<Vec<u8>>, Vec<_>) = group.into_iter().unzip();
            let result = raft.client_write(Proposal(commands)).await;
            match result {
                Ok(r) => {
                    let mut outcomes = r.data.0.into_iter();
                    for w in waiters {
                        let o = outcomes.next().ok_or_else(|| {
                            ProposeError::Failed(
                                "the state machine returned too few outcomes".into(),
                            )
                        });
                        let _ = w.send(o);
                    }
                }
                Err(e) => {
                    let err = not_leader(&e).unwrap_or_else(|| ProposeError::Failed(e.to_string()));
                    for w in waiters {
                        let _ = w.send(Err(err.clone()));
                    }
                }
            }
        }
    })
    .await;
}

/// A running master node.
#[derive(Clone)]
pub struct RaftNode {
    pub id: NodeId,
    pub addr: SocketAddr,
    pub raft: Raft,
    pub state: StateMachine,
    pub log: LogStore,
    registry: Arc<Registry>,
    endpoint: quinn::Endpoint,
    commands: tokio::sync::mpsc::Sender<Waiting>,
}

impl std::fmt::Debug for RaftNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftNode")
            .field("id", &self.id)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// The leader hint a follower answers with.
fn forward(f: &openraft::error::ForwardToLeader<NodeId, BasicNode>) -> ProposeError {
    ProposeError::NotLeader {
        leader: f
            .leader_id
            .zip(f.leader_node.as_ref().map(|n| n.addr.clone())),
    }
}

fn not_leader(e: &RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> Option<ProposeError> {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => Some(forward(f)),
        _ => None,
    }
}

impl RaftNode {
    /// Open the stores in `data`, start openraft, and serve on `listen` (QUIC, mutual TLS).
    /// `registry` builds the services (called twice: one registry applies, one answers queries).
    pub async fn start(
        id: NodeId,
        data: &Path,
        listen: SocketAddr,
        identity: &NodeIdentity,
        registry: impl Fn() -> Result<Registry, StateError>,
        options: RaftOptions,
    ) -> Result<RaftNode, NodeError> {
        Self::start_with_routes(id, data, listen, identity, registry, options, |_, r| r).await
    }

    /// [`RaftNode::start`], also serving the routes `extra` adds (services that run beside
    /// the log on the same endpoint, such as the data plane).
    pub async fn start_with_routes(
        id: NodeId,
        data: &Path,
        listen: SocketAddr,
        identity: &NodeIdentity,
        registry: impl Fn() -> Result<Registry, StateError>,
        options: RaftOptions,
        extra: impl FnOnce(&RaftNode, Router) -> Router,
    ) -> Result<RaftNode, NodeError> {
        let endpoint = cairn_proto::endpoint(listen, identity, &TransportOptions::default())?;
        let addr = endpoint
            .local_addr()
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        std::fs::create_dir_all(data)
            .map_err(|e| NodeError::Log(format!("create {}: {e}", data.display())))?;
        let log = LogStore::open(&data.join("raft-log.redb"))
            .map_err(|e| NodeError::Log(e.to_string()))?;
        let store = StateStore::open(data.join("state.redb"))?;
        let applying = registry()?;
        applying.init(&store)?;
        let state = StateMachine::new(store, applying)?;
        let config = Config {
            cluster_name: "cairn".into(),
            heartbeat_interval: options.heartbeat.as_millis() as u64,
            election_timeout_min: options.election_timeout_min.as_millis() as u64,
            election_timeout_max: options.election_timeout_max.as_millis() as u64,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(options.snapshot_after_entries),
            max_in_snapshot_log_to_keep: options.entries_kept_after_snapshot,
            snapshot_max_chunk_size: options.snapshot_chunk_bytes,
            ..Config::default()
        }
        .validate()
        .map_err(|e| NodeError::Raft(e.to_string()))?;
        let raft = Raft::new(
            id,
            Arc::new(config),
            Network::new(endpoint.clone()),
            log.clone(),
            state.clone(),
        )
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))?;
        let (commands, queue) = tokio::sync::mpsc::channel(WAITING_MAX);
        tokio::spawn(group_commit(raft.clone(), queue));
        let node = RaftNode {
            commands,
            id,
            addr,
            raft: raft.clone(),
            state,
            log,
            registry: Arc::new(registry()?),
            endpoint: endpoint.clone(),
        };
        let router = extra(&node, node.routes(network::routes(Router::new(), raft)));
        tokio::spawn(cairn_proto::serve(
            endpoint,
            router,
            ServeOptions::default(),
        ));
        Ok(node)
    }

    fn routes(&self, router: Router) -> Router {
        let (a, b, c, d) = (self.clone(), self.clone(), self.clone(), self.clone());
        router
            .route::<ProposeManyRpc, _, _>(move |commands: ManyCommands| {
                let node = d.clone();
                async move {
                    let results = node.propose_many(commands.0).await;
                    Ok::<_, WireError>(results.into_iter().map(|r| r.map(WireOutcome)).collect())
                }
            })
            .route::<ClientRpc, _, _>(move |req| {
                let node = a.clone();
                async move { Ok::<_, WireError>(node.handle(req).await.map(WireOutcome)) }
            })
            .route::<StatusRpc, _, _>(move |()| {
                let node = b.clone();
                async move { Ok::<_, WireError>(node.status()) }
            })
            .route::<AdminRpc, _, _>(move |req| {
                let node = c.clone();
                async move { Ok::<_, WireError>(node.admin(req).await) }
            })
    }

    /// Make this node a one-node cluster if no cluster state exists yet (first start).
    pub async fn initialize_if_new(&self) -> Result<bool, NodeError> {
        if self
            .raft
            .is_initialized()
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?
        {
            return Ok(false);
        }
        let members = BTreeMap::from([(self.id, BasicNode::new(self.addr.to_string()))]);
        self.raft
            .initialize(members)
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        Ok(true)
    }

    /// Commit one command envelope on this node (it must be the leader) and return the
    /// service's outcome. Concurrent commands are committed together in one log entry.
    pub async fn propose(&self, command: Vec<u8>) -> Result<Outcome, ProposeError> {
        let (done, outcome) = tokio::sync::oneshot::channel();
        self.commands
            .send((command, done))
            .await
            .map_err(|_| ProposeError::Failed("node is shutting down".into()))?;
        outcome
            .await
            .map_err(|_| ProposeError::Failed("node is shutting down".into()))?
    }

    /// Answer a query from this node's state, after a read-index round if linearizable.
    pub async fn query(
        &self,
        service: ServiceId,
        payload: Vec<u8>,
        consistency: Consistency,
    ) -> Result<Outcome, ProposeError> {
        if consistency == Consistency::Linearizable {
            self.raft.ensure_linearizable().await.map_err(|e| match e {
                RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(f)) => {
                    forward(&f)
                }
                RaftError::APIError(openraft::error::CheckIsLeaderError::QuorumNotEnough(q)) => {
                    ProposeError::Unavailable(q.to_string())
                }
                other => ProposeError::Failed(other.to_string()),
            })?;
        }
        // Read in place: a query is one short redb read transaction over (mostly cached)
        // pages, cheaper than the thread hand-off a blocking task would cost per request.
        self.registry
            .query(self.state.store(), service, &payload)
            .map_err(|e| ProposeError::Failed(e.to_string()))
    }

    /// Commit several commands (they join the same group-commit queue); one result each.
    pub async fn propose_many(&self, commands: Vec<Vec<u8>>) -> Vec<Result<Outcome, ProposeError>> {
        let mut waiting = Vec::with_capacity(commands.len());
        for command in commands {
            let (done, outcome) = tokio::sync::oneshot::channel();
            if self.commands.send((command, done)).await.is_err() {
                break;
            }
            waiting.push(outcome);
        }
        let mut results = Vec::with_capacity(waiting.len());
        for w in waiting {
            results.push(
                w.await
                    .unwrap_or_else(|_| Err(ProposeError::Failed("node is shutting down".into()))),
            );
        }
        results
    }

    async fn handle(&self, req: ClientRequest) -> Result<Outcome, ProposeError> {
        match req {
            ClientRequest::Propose(p) => self.propose(p).await,
            ClientRequest::Query {
                service,
                payload,
                consistency,
            } => self.query(service, payload, consistency).await,
        }
    }

    async fn admin(&self, req: AdminRequest) -> Result<(), ProposeError> {
        let result = match req {
            AdminRequest::AddLearner { id, addr } => self
                .raft
                .add_learner(id, BasicNode::new(addr), true)
                .await
                .map(|_| ()),
            AdminRequest::SetVoters(voters) => {
                self.raft.change_membership(voters, false).await.map(|_| ())
            }
        };
        result.map_err(|e| not_leader(&e).unwrap_or_else(|| ProposeError::Failed(e.to_string())))
    }

    /// This node's view of itself and the group.
    pub fn status(&self) -> NodeStatus {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let learners: Vec<NodeId> = membership.learner_ids().collect();
        let nodes = membership
            .nodes()
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect();
        let replication = m
            .replication
            .as_ref()
            .map(|r| r.iter().map(|(id, l)| (*id, l.map(|l| l.index))).collect())
            .unwrap_or_default();
        NodeStatus {
            id: self.id,
            addr: self.addr.to_string(),
            state: match m.state {
                ServerState::Leader => "leader",
                ServerState::Follower => "follower",
                ServerState::Candidate => "candidate",
                ServerState::Learner => "learner",
                ServerState::Shutdown => "shutdown",
            }
            .into(),
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index,
            applied_index: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            voters,
            learners,
            nodes,
            replication,
        }
    }

    /// Stop Raft and the endpoint.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        self.endpoint.close(
            quinn::VarInt::from_u32(cairn_proto::rpc::CLOSE_SHUTDOWN),
            b"shutdown",
        );
    }
}

/// Talks to a master group: sends proposals to the leader, following hints and trying other
/// masters when one is unreachable.
#[derive(Clone, Debug)]
pub struct MasterClient {
    client: Client,
    masters: Vec<SocketAddr>,
    leader: Arc<parking_lot::Mutex<Option<SocketAddr>>>,
    /// Where the search for a leader starts when none is known: it moves on with every try,
    /// across calls, so an unreachable master early in the list is not tried first each time.
    rotation: Arc<std::sync::atomic::AtomicUsize>,
    /// How long to keep looking for a leader (elections take seconds).
    pub patience: Duration,
    /// Coalesces this client's concurrent proposals into `ProposeManyRpc` calls (started on
    /// first use, ends when every clone of this client is gone).
    proposals: Arc<tokio::sync::OnceCell<tokio::sync::mpsc::Sender<Waiting>>>,
    /// A master in this process: while it leads, calls go to it directly (no QUIC round trip,
    /// no serialization), as `cairn serve`'s gateway does.
    local: Option<LocalNode>,
}

/// The in-process master of a [`MasterClient`].
#[derive(Clone)]
struct LocalNode(RaftNode);

impl std::fmt::Debug for LocalNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LocalNode({})", self.0.id)
    }
}

impl LocalNode {
    /// The node, if it leads right now.
    fn leading(&self) -> Option<&RaftNode> {
        let m = self.0.raft.metrics();
        let leads = m.borrow().current_leader == Some(self.0.id);
        leads.then_some(&self.0)
    }
}

/// Proposal calls a client keeps in flight; proposals arriving meanwhile form the next call.
const CLIENT_CALLS_IN_FLIGHT: usize = 4;

async fn client_batches(core: MasterClient, queue: tokio::sync::mpsc::Receiver<Waiting>) {
    run_groups(queue, CLIENT_CALLS_IN_FLIGHT, move |group| {
        let core = core.clone();
        async move { core.propose_group(group).await }
    })
    .await;
}

impl MasterClient {
    pub fn new(endpoint: quinn::Endpoint, masters: Vec<SocketAddr>) -> MasterClient {
        let options = ClientOptions {
            attempts: 2,
            attempt_timeout: Duration::from_secs(5),
            ..ClientOptions::default()
        };
        MasterClient {
            client: Client::new(endpoint, options),
            masters,
            leader: Arc::new(parking_lot::Mutex::new(None)),
            rotation: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            patience: Duration::from_secs(20),
            proposals: Arc::new(tokio::sync::OnceCell::new()),
            local: None,
        }
    }

    /// Send calls straight to `node` (a master in this process) while it leads; the network
    /// path stays for when it does not.
    pub fn with_local(mut self, node: RaftNode) -> MasterClient {
        self.local = Some(LocalNode(node));
        self
    }

    /// The master to try next: the leader last seen or hinted, else the next in turn.
    /// `masters` is not empty.
    fn target(&self) -> SocketAddr {
        if let Some(l) = *self.leader.lock() {
            return l;
        }
        let i = self
            .rotation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.masters[i % self.masters.len()]
    }

    /// Remember the leader a master named (or forget it: `None` while an election runs).
    fn follow(&self, leader: Option<&(u64, String)>) -> Option<SocketAddr> {
        let hint = leader.and_then(|(_, a)| a.parse().ok());
        *self.leader.lock() = hint;
        hint
    }

    /// Commit one command envelope; returns the service's outcome once committed and applied.
    /// Concurrent proposals through clones of this client travel together.
    pub async fn propose(&self, command: Vec<u8>) -> Result<Outcome, ProposeError> {
        if let Some(node) = self.local.as_ref().and_then(LocalNode::leading) {
            match node.propose(command.clone()).await {
                Err(ProposeError::NotLeader { .. }) => {}
                other => return other,
            }
        }
        let queue = self
            .proposals
            .get_or_init(|| async {
                let (tx, rx) = tokio::sync::mpsc::channel(WAITING_MAX);
                // The batching task holds a clone without the queue, so it ends with the client.
                let core = MasterClient {
                    proposals: Arc::new(tokio::sync::OnceCell::new()),
                    ..self.clone()
                };
                tokio::spawn(client_batches(core, rx));
                tx
            })
            .await;
        let (done, outcome) = tokio::sync::oneshot::channel();
        queue
            .send((command, done))
            .await
            .map_err(|_| ProposeError::Failed("client is shutting down".into()))?;
        outcome
            .await
            .map_err(|_| ProposeError::Failed("client is shutting down".into()))?
    }

    /// Send a group of proposals to the leader; commands answered "not the leader" (never
    /// appended) go again to the leader hinted, the others get their results.
    async fn propose_group(&self, mut group: Vec<Waiting>) {
        let deadline = tokio::time::Instant::now() + self.patience;
        loop {
            if self.masters.is_empty() {
                for (_, w) in group {
                    let _ = w.send(Err(ProposeError::Failed("no masters configured".into())));
                }
                return;
            }
            let target = self.target();
            let commands = ManyCommands(group.iter().map(|(c, _)| c.clone()).collect());
            match self.client.call::<ProposeManyRpc>(target, &commands).await {
                Ok(results) => {
                    *self.leader.lock() = Some(target);
                    let mut retry = Vec::new();
                    let mut results = results.into_iter();
                    for (command, w) in group {
                        match results.next() {
                            // The hint is kept even past the deadline: the next call goes
                            // straight to the leader.
                            Some(Err(ProposeError::NotLeader { leader })) => {
                                self.follow(leader.as_ref());
                                if tokio::time::Instant::now() < deadline {
                                    retry.push((command, w));
                                } else {
                                    let _ = w.send(Err(ProposeError::NotLeader { leader }));
                                }
                            }
                            Some(r) => {
                                let _ = w.send(r.map(|o| o.0));
                            }
                            None => {
                                let _ = w.send(Err(ProposeError::Failed(
                                    "the master returned too few results".into(),
                                )));
                            }
                        }
                    }
                    if retry.is_empty() {
                        return;
                    }
                    if self.leader.lock().is_none() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    group = retry;
                }
                Err(e) if e.is_retryable() && tokio::time::Instant::now() < deadline => {
                    *self.leader.lock() = None;
                }
                Err(e) => {
                    let e = ProposeError::Failed(e.to_string());
                    for (_, w) in group {
                        let _ = w.send(Err(e.clone()));
                    }
                    return;
                }
            }
        }
    }

    pub async fn query(
        &self,
        service: ServiceId,
        payload: Vec<u8>,
        consistency: Consistency,
    ) -> Result<Outcome, ProposeError> {
        if let Some(node) = self.local.as_ref().and_then(LocalNode::leading) {
            match node.query(service, payload.clone(), consistency).await {
                Err(ProposeError::NotLeader { .. }) => {}
                other => return other,
            }
        }
        self.send(ClientRequest::Query {
            service,
            payload,
            consistency,
        })
        .await
    }

    async fn send(&self, req: ClientRequest) -> Result<Outcome, ProposeError> {
        let deadline = tokio::time::Instant::now() + self.patience;
        let mut last_error = ProposeError::Failed("no masters configured".into());
        while tokio::time::Instant::now() < deadline && !self.masters.is_empty() {
            let target = self.target();
            match self.client.call::<ClientRpc>(target, &req).await {
                Ok(Ok(outcome)) => {
                    *self.leader.lock() = Some(target);
                    return Ok(outcome.0);
                }
                Ok(Err(ProposeError::NotLeader { leader })) => {
                    let hint = self.follow(leader.as_ref());
                    last_error = ProposeError::NotLeader { leader: None };
                    if hint.is_none() {
                        // An election is running: give it a moment.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                Ok(Err(e @ ProposeError::Unavailable(_))) => {
                    last_error = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(Err(e)) => return Err(e),
                Err(e) => {
                    *self.leader.lock() = None;
                    last_error = ProposeError::Failed(e.to_string());
                    if !e.is_retryable() {
                        return Err(last_error);
                    }
                }
            }
        }
        Err(last_error)
    }

    /// Call a leader-only method `R`, following leader hints and trying other masters while
    /// there is no leader (up to the client's patience).
    pub async fn call_leader<R, T>(&self, req: &R::Request) -> Result<T, ProposeError>
    where
        R: Rpc<Response = Result<T, ProposeError>>,
    {
        if self.masters.is_empty() {
            return Err(ProposeError::Failed("no masters configured".into()));
        }
        let deadline = tokio::time::Instant::now() + self.patience;
        // Past the deadline, a master that names the leader still gets the call sent there
        // once: the time went on an unreachable master, and the leader is one step away.
        let mut last_chance = false;
        loop {
            let target = self.target();
            let late = tokio::time::Instant::now() >= deadline;
            match self.client.call::<R>(target, req).await {
                Ok(Ok(v)) => {
                    *self.leader.lock() = Some(target);
                    return Ok(v);
                }
                Ok(Err(ProposeError::NotLeader { leader })) => {
                    let hint = self.follow(leader.as_ref());
                    if late && (last_chance || hint.is_none()) {
                        return Err(ProposeError::NotLeader { leader });
                    }
                    last_chance |= late;
                    if hint.is_none() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                Ok(Err(ProposeError::Unavailable(_))) if !late => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(Err(e)) => return Err(e),
                Err(e) if e.is_retryable() && !late => *self.leader.lock() = None,
                Err(e) => {
                    // An unreachable leader is not tried first again by the next call.
                    if e.is_retryable() {
                        *self.leader.lock() = None;
                    }
                    return Err(ProposeError::Failed(e.to_string()));
                }
            }
        }
    }

    /// The RPC client this master client calls through (shared connections).
    pub fn rpc(&self) -> &Client {
        &self.client
    }

    /// One master's status.
    pub async fn status(&self, addr: SocketAddr) -> Result<NodeStatus, RpcError> {
        self.client.call::<StatusRpc>(addr, &()).await
    }

    /// Send a membership change to the leader.
    pub async fn admin(&self, req: AdminRequest) -> Result<(), ProposeError> {
        self.call_leader::<AdminRpc, ()>(&req).await
    }
}
