//! The master client: proposals and queries to the master group's leader, following hints
//! and trying other masters when one is unreachable; concurrent proposals travel together.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cairn_engine::state::{Outcome, ServiceId, TypedService};
use cairn_proto::group::Reply;
use cairn_proto::{Client, ClientOptions, Consistency, Leader, ProposeError, Rpc, RpcError};
use cairn_raft::RaftNode;
use cairn_raft::batch::{WAITING_MAX, Waiting, run_groups};
use cairn_raft::rpc::{
    AdminRequest, AdminRpc, ClientRequest, ClientRpc, ManyCommands, NodeStatus, ProposeManyRpc,
    StatusRpc,
};

/// Talks to a master group: sends proposals to the leader, following hints and trying other
/// masters when one is unreachable.
#[derive(Clone, Debug)]
pub struct MasterClient {
    /// The leader search (shared by every clone: one hint for all).
    leader: Leader,
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
            leader: Leader::new(Client::new(endpoint, options), masters),
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

    /// How long calls keep looking for a leader (elections take seconds).
    pub fn set_patience(&mut self, patience: Duration) {
        self.leader.patience = patience;
    }

    pub fn patience(&self) -> Duration {
        self.leader.patience
    }

    /// Commit one typed command of service `S`, stamped with this node's clock and a random
    /// id seed (the leader's state machine is deterministic; time and ids come from here).
    pub async fn propose_typed<S: TypedService>(
        &self,
        command: &S::Command,
    ) -> Result<Outcome, ProposeError> {
        self.propose(stamp::<S>(command)?).await
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

    /// Send a group of proposals to the leader (found by [`Leader::search`]); commands answered
    /// "not the leader" (a leadership change between the call and the append) go again.
    async fn propose_group(&self, mut group: Vec<Waiting>) {
        let deadline = tokio::time::Instant::now() + self.leader.patience;
        loop {
            let commands = ManyCommands(group.iter().map(|(c, _)| c.clone()).collect());
            let answer = self
                .leader
                .search(|addr| {
                    let client = self.leader.client().clone();
                    let commands = &commands;
                    async move {
                        match client.call::<ProposeManyRpc>(addr, commands).await {
                            // A master that refuses every command is not the leader.
                            Ok(results)
                                if !results.is_empty()
                                    && results.iter().all(|r| {
                                        matches!(r, Err(ProposeError::NotLeader { .. }))
                                    }) =>
                            {
                                match results.into_iter().next() {
                                    Some(Err(e)) => Reply::from_refusal(e),
                                    _ => Reply::NotLeader(None),
                                }
                            }
                            Ok(results) => Reply::Done(results),
                            Err(e) => Reply::from_rpc(e),
                        }
                    }
                })
                .await;
            let results = match answer {
                Ok(results) => results,
                Err(e) => {
                    for (_, w) in group {
                        let _ = w.send(Err(e.clone()));
                    }
                    return;
                }
            };
            let mut retry = Vec::new();
            let mut results = results.into_iter();
            for (command, w) in group {
                match results.next() {
                    Some(Err(ProposeError::NotLeader { leader })) => {
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
            group = retry;
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
        self.leader
            .call::<ClientRpc, _>(&req)
            .await
            .map(|outcome| outcome.0)
    }

    /// Call a leader-only method `R`, following leader hints and trying other masters while
    /// there is no leader (up to the client's patience).
    pub async fn call_leader<R, T>(&self, req: &R::Request) -> Result<T, ProposeError>
    where
        R: Rpc<Response = Result<T, ProposeError>>,
    {
        self.leader.call::<R, T>(req).await
    }

    /// The RPC client this master client calls through (shared connections).
    pub fn rpc(&self) -> &Client {
        self.leader.client()
    }

    /// One master's status.
    pub async fn status(&self, addr: SocketAddr) -> Result<NodeStatus, RpcError> {
        self.leader.client().call::<StatusRpc>(addr, &()).await
    }

    /// Send a membership change to the leader.
    pub async fn admin(&self, req: AdminRequest) -> Result<(), ProposeError> {
        self.call_leader::<AdminRpc, ()>(&req).await
    }
}

/// Frame a typed command for the log, stamped with this node's wall clock and a random id
/// seed.
pub fn stamp<S: TypedService>(c: &S::Command) -> Result<Vec<u8>, ProposeError> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    S::command(c, now_ms, rand::random())
        .map(|c| c.encode())
        .map_err(|e| ProposeError::Failed(e.to_string()))
}
