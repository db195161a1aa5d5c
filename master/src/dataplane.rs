//! The master's side of the data plane: heartbeat, allocation, location and status RPCs, and
//! the planner tick, all on the Raft leader. Followers answer with a leader hint.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cairn_engine::state::{StateError, TypedService};
use cairn_proto::ChunkHandle;
use cairn_proto::ProposeError;
use cairn_proto::{RemoteError, Router};
use cairn_raft::RaftNode;
use parking_lot::Mutex;
use redb::ReadableDatabase;

use crate::chunks::{ChunkCommand, ChunkResponse, ChunkService};
use crate::cluster::ClusterMap;
use crate::planner::Limits;
use cairn_proto::dataplane::{
    AllocateRequest, AllocateRpc, Allocation, BadReplicaRpc, DataRepairRpc, DataStatus,
    DataStatusRpc, Heartbeat, HeartbeatReply, HeartbeatRpc, LOCATE_MAX, LocateRpc, Location,
    RepairProgress,
};

/// Data-plane settings of the master group.
#[derive(Clone, Copy, Debug)]
pub struct DataOptions {
    /// Replicas per chunk unless a writer asks otherwise.
    pub replication: u8,
    /// Fewest live chunkservers a chunk may be written to when fewer than its replication
    /// are live (it is copied up to R once servers come back); `None`: a majority of R
    /// (2 when R=3, 1 when R is 1 or 2). See [`write_replicas_min`].
    pub write_replicas_min: Option<u8>,
    /// A chunkserver silent this long is dead (its replicas no longer count).
    pub dead_after: Duration,
    /// How often the planners run.
    pub tick: Duration,
    /// Largest chunk a writer fills.
    pub chunk_size: u64,
    pub limits: Limits,
    /// How often bucket lifecycle rules are carried out.
    pub lifecycle: Duration,
}

impl Default for DataOptions {
    fn default() -> Self {
        DataOptions {
            replication: 3,
            write_replicas_min: None,
            dead_after: Duration::from_secs(5),
            tick: Duration::from_secs(1),
            chunk_size: cairn_engine::chunk::CHUNK_SIZE_MAX_DEFAULT,
            limits: Limits::default(),
            lifecycle: Duration::from_secs(60),
        }
    }
}

/// The fewest live chunkservers a chunk of replication `r` is written to: `configured`
/// (at most `r`), else a majority of `r`. An acknowledged write is on that many disks, so it
/// survives the loss of one fewer servers until repair brings it to `r`.
pub fn write_replicas_min(r: u8, configured: Option<u8>) -> u8 {
    let r = r.max(1);
    configured.unwrap_or(r / 2 + 1).clamp(1, r)
}

/// The shortest time between two planner runs started early by finished copies.
const REPLAN_MIN: Duration = Duration::from_millis(100);

/// Wall-clock milliseconds, as stamped into commands.
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Frame a typed command for the log, stamped with this node's time and a random id seed.
pub fn command<S: TypedService>(c: &S::Command) -> Result<Vec<u8>, ProposeError> {
    S::command(c, wall_ms(), rand::random())
        .map(|c| c.encode())
        .map_err(|e| ProposeError::Failed(e.to_string()))
}

/// The data-plane service running beside a master node.
#[derive(Clone)]
pub struct DataPlane {
    node: RaftNode,
    map: Arc<Mutex<ClusterMap>>,
    options: DataOptions,
    epoch: Instant,
    /// Run the planner now (copies finished: plan the next ones without waiting for the tick).
    replan: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for DataPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataPlane")
            .field("options", &self.options)
            .finish()
    }
}

impl DataPlane {
    /// Start the planner tick for `node` (it acts only while the node leads).
    pub fn start(node: RaftNode, options: DataOptions) -> DataPlane {
        let dp = DataPlane {
            node,
            map: Arc::new(Mutex::new(ClusterMap::default())),
            options,
            epoch: Instant::now(),
            replan: Arc::new(tokio::sync::Notify::new()),
        };
        let ticker = dp.clone();
        tokio::spawn(async move { ticker.run_ticks().await });
        let lifecycle = dp.clone();
        tokio::spawn(async move { lifecycle.run_lifecycle().await });
        let cron = dp.clone();
        tokio::spawn(async move { cron.run_cron().await });
        dp
    }

    pub fn options(&self) -> DataOptions {
        self.options
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn dead_ms(&self) -> u64 {
        self.options.dead_after.as_millis() as u64
    }

    /// The current term if this node leads; otherwise the hint to answer with.
    fn leading(&self) -> Result<u64, ProposeError> {
        let m = self.node.raft.metrics().borrow().clone();
        if m.current_leader == Some(self.node.id) {
            return Ok(m.current_term);
        }
        let leader = m.current_leader.and_then(|id| {
            m.membership_config
                .membership()
                .get_node(&id)
                .map(|n| (id, n.addr.clone()))
        });
        Err(ProposeError::NotLeader { leader })
    }

    /// The map, reset when this node has become leader in a new term.
    fn map(&self) -> Result<parking_lot::MutexGuard<'_, ClusterMap>, ProposeError> {
        let term = self.leading()?;
        let mut map = self.map.lock();
        if map.term() != term {
            tracing::info!(
                term,
                "leading the data plane; rebuilding the chunk map from reports"
            );
            *map = ClusterMap::new(term, self.now());
        }
        Ok(map)
    }

    /// Routes for the master's endpoint.
    pub fn routes(&self, router: Router) -> Router {
        let (a, b, c, d, e, f) = (
            self.clone(),
            self.clone(),
            self.clone(),
            self.clone(),
            self.clone(),
            self.clone(),
        );
        router
            .route::<HeartbeatRpc, _, _>(move |hb| {
                let dp = a.clone();
                async move { Ok::<_, RemoteError>(dp.heartbeat(hb).await) }
            })
            .route::<AllocateRpc, _, _>(move |req| {
                let dp = b.clone();
                async move { Ok::<_, RemoteError>(dp.allocate(req).await) }
            })
            .route::<LocateRpc, _, _>(move |handles| {
                let dp = c.clone();
                async move { Ok::<_, RemoteError>(dp.locate(handles).await) }
            })
            .route::<BadReplicaRpc, _, _>(move |bad| {
                let dp = d.clone();
                async move {
                    tracing::warn!(chunk = %bad.handle, server = bad.server, reason = %bad.reason, "reader reported a bad replica");
                    Ok::<_, RemoteError>(dp.map().map(|mut m| m.bad_replica(bad.handle, bad.server)))
                }
            })
            .route::<DataStatusRpc, _, _>(move |()| {
                let dp = e.clone();
                async move { Ok::<_, RemoteError>(dp.status()) }
            })
            .route::<DataRepairRpc, _, _>(move |()| {
                let dp = f.clone();
                async move { Ok::<_, RemoteError>(dp.repair()) }
            })
    }

    /// Take a chunkserver's report and answer with its instructions. Fencing: an answer goes
    /// out only once a quorum has confirmed, after the instructions were planned, that this
    /// node still leads in the term that planned them, and they carry that term (a chunkserver refuses
    /// a term older than the newest it has seen). A deposed leader that has not heard of its
    /// successor plans from a stale map; it cannot get that confirmation, so nothing it
    /// planned reaches a chunkserver.
    async fn heartbeat(&self, hb: Heartbeat) -> Result<HeartbeatReply, ProposeError> {
        let now = self.now();
        let server = hb.server.id;
        let reply = {
            let mut map = self.map()?;
            let copies = map.copies_running();
            let reply = map.heartbeat(hb, now);
            if map.copies_running() < copies {
                self.replan.notify_one();
            }
            reply
        };
        // Confirmed even with nothing to send: a deposed leader that went on answering
        // heartbeats would keep the chunkservers from its successor.
        match self.node.confirm_leadership().await {
            Ok(term) if term == reply.term => Ok(reply),
            confirmed => {
                if reply.tasks.is_empty() {
                    tracing::debug!(
                        planned_in = reply.term,
                        ?confirmed,
                        "leadership not confirmed"
                    );
                } else {
                    tracing::warn!(
                        planned_in = reply.term,
                        ?confirmed,
                        tasks = reply.tasks.len(),
                        "not sending chunkserver instructions: leadership of their term not confirmed"
                    );
                }
                if let Ok(mut map) = self.map()
                    && map.term() == reply.term
                {
                    map.requeue(server, reply.tasks);
                }
                match confirmed {
                    Err(e) => Err(e),
                    Ok(_) => Err(ProposeError::NotLeader { leader: None }),
                }
            }
        }
    }

    pub fn status(&self) -> Result<DataStatus, ProposeError> {
        let now = self.now();
        Ok(self
            .map()?
            .status(now, self.dead_ms(), self.options.replication))
    }

    /// How re-replication and rebalancing are getting on.
    pub fn repair(&self) -> Result<RepairProgress, ProposeError> {
        let now = self.now();
        Ok(self.map()?.repair(now))
    }

    async fn allocate(&self, req: AllocateRequest) -> Result<Allocation, ProposeError> {
        let r = req.replication.unwrap_or(self.options.replication);
        let exclude: BTreeSet<_> = req.exclude.into_iter().collect();
        let min = write_replicas_min(r, self.options.write_replicas_min);
        let chain = {
            let now = self.now();
            let mut map = self.map()?;
            // Until every live server has had the time to report to this leader, a missing
            // one may just not have reported yet: no write goes to fewer than R then.
            let settled = map.settled(now, self.dead_ms());
            let placed = map.place(
                usize::from(r),
                usize::from(if settled { min } else { r }),
                &exclude,
                self.options.chunk_size,
                now,
                self.dead_ms(),
                self.options.limits.free_min.min(self.options.chunk_size),
            );
            match placed {
                Ok(chain) => chain,
                // A new leader's map fills from heartbeats: until every live server has had
                // the time to report, the writer waits (its leader search retries).
                Err(e) if !settled => {
                    return Err(ProposeError::Unavailable(format!(
                        "{e} (this leader is still hearing from the chunkservers)"
                    )));
                }
                Err(e) => {
                    return Err(ProposeError::TryLater(format!(
                        "{e}: a write needs at least {min} live chunkservers (master.write_replicas_min)"
                    )));
                }
            }
        };
        if chain.len() < usize::from(r) {
            tracing::debug!(
                replication = r,
                placed = chain.len(),
                "chunk placed on fewer servers than its replication; repair will copy it up"
            );
        }
        let bytes = command::<ChunkService>(&ChunkCommand::Allocate {
            count: 1,
            replication: r,
        })?;
        let outcome = self.node.propose(bytes).await?;
        let response = outcome
            .map_err(|rej| ProposeError::Failed(rej.to_string()))
            .and_then(|b| {
                ChunkService::response(&b).map_err(|e| ProposeError::Failed(e.to_string()))
            })?;
        let ChunkResponse::Allocated { handles, version } = response else {
            return Err(ProposeError::Failed(
                "unexpected allocation response".into(),
            ));
        };
        let handle = *handles
            .first()
            .ok_or_else(|| ProposeError::Failed("no handle allocated".into()))?;
        let now = self.now();
        self.map()?
            .expect(handle, chain.iter().map(|(id, _)| *id).collect(), now);
        Ok(Allocation {
            handle,
            version,
            chain,
            size_max: self.options.chunk_size,
        })
    }

    async fn locate(&self, handles: Vec<ChunkHandle>) -> Result<Vec<Location>, ProposeError> {
        self.leading()?;
        if handles.len() > LOCATE_MAX {
            return Err(ProposeError::Failed(format!(
                "locate at most {LOCATE_MAX} chunks per call, not {}",
                handles.len()
            )));
        }
        // Versions come from the log (the replicas' own claims are not trusted for this).
        let hs = handles.clone();
        let records = self
            .read_state(move |txn| {
                hs.iter()
                    .map(|h| ChunkService::get(txn, *h))
                    .collect::<Result<Vec<_>, _>>()
            })
            .await?;
        let now = self.now();
        let map = self.map()?;
        Ok(handles
            .into_iter()
            .zip(records)
            .map(|(handle, rec)| match rec {
                Some(rec) => Location {
                    handle,
                    version: rec.version,
                    replicas: map.locate(handle, rec.version, now, self.dead_ms()),
                },
                None => Location {
                    handle,
                    version: 0,
                    replicas: Vec::new(),
                },
            })
            .collect())
    }

    /// Run `read` on a read transaction of this node's state, on a blocking thread.
    async fn read_state<T: Send + 'static>(
        &self,
        read: impl FnOnce(&redb::ReadTransaction) -> Result<T, StateError> + Send + 'static,
    ) -> Result<T, ProposeError> {
        let node = self.node.clone();
        tokio::task::spawn_blocking(move || {
            let txn = node
                .state
                .store()
                .db()
                .begin_read()
                .map_err(StateError::from)?;
            read(&txn)
        })
        .await
        .map_err(|e| ProposeError::Failed(e.to_string()))?
        .map_err(|e| ProposeError::Failed(e.to_string()))
    }

    async fn run_ticks(&self) {
        let mut interval = tokio::time::interval(self.options.tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                // Copies finished: plan the next ones now (at most every REPLAN_MIN).
                () = self.replan.notified() => {
                    tokio::time::sleep_until(last + REPLAN_MIN).await;
                }
            }
            last = tokio::time::Instant::now();
            if self.leading().is_err() {
                continue;
            }
            if let Err(e) = self.tick().await {
                tracing::warn!(error = %e, "planner tick failed");
            }
        }
    }

    /// The lifecycle planner: on the leader, every `lifecycle` interval, each bucket with rules
    /// gets `Expire` commands (bounded batches) until nothing is due.
    async fn run_lifecycle(&self) {
        let mut interval = tokio::time::interval(self.options.lifecycle);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            if self.leading().is_err() {
                continue;
            }
            if let Err(e) = self.lifecycle_pass().await {
                tracing::warn!(error = %e, "lifecycle pass failed");
            }
            if let Err(e) = self.queue_sweep().await {
                tracing::warn!(error = %e, "queue sweep failed");
            }
        }
    }

    /// The cron planner: on the leader, four times a second, every job whose instant is due
    /// gets its `Fire` (or `Skip`, when missed under the skip policy). The state machine
    /// fires an instant only while it is the job's due one, so a planner that proposes twice
    /// (a retry, two leaders for a moment) fires it once.
    async fn run_cron(&self) {
        use crate::cron::{CronQuery, CronQueryResponse, CronService, plan};
        let mut interval = tokio::time::interval(std::time::Duration::from_millis(250));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            if self.leading().is_err() {
                continue;
            }
            let now = wall_ms();
            let due = self
                .read_state(move |txn| {
                    match CronService.query(txn, CronQuery::Due { now_ms: now }) {
                        Ok(CronQueryResponse::Due(d)) => Ok(d),
                        Ok(_) => Ok(Vec::new()),
                        Err(cairn_engine::state::ApplyError::Storage(e)) => Err(e),
                        Err(cairn_engine::state::ApplyError::Rejected(r)) => {
                            Err(cairn_engine::state::StateError::Corrupt(r.to_string()))
                        }
                    }
                })
                .await;
            let due = match due {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(error = %e, "cron: reading due jobs failed");
                    continue;
                }
            };
            for (id, job) in due {
                let Some(c) = plan(id, &job, now) else {
                    tracing::warn!(job = %job.name, "cron: the schedule no longer parses");
                    continue;
                };
                match command::<CronService>(&c) {
                    Ok(bytes) => {
                        if let Err(e) = self.node.propose(bytes).await {
                            tracing::warn!(error = %e, "cron: proposing a firing failed");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cron: encoding a firing failed"),
                }
            }
        }
    }

    /// The queue service's housekeeping, while it reports more: messages past their
    /// retention, stale deduplication ids, queues being deleted.
    async fn queue_sweep(&self) -> Result<(), ProposeError> {
        use crate::queues::{
            QueueCommand, QueueQuery, QueueQueryResponse, QueueResponse, QueueService,
        };
        let any = self
            .read_state(|txn| match QueueService.query(txn, QueueQuery::Stats) {
                Ok(QueueQueryResponse::Stats(s)) => Ok(!s.is_empty()),
                Ok(_) => Ok(false),
                Err(cairn_engine::state::ApplyError::Storage(e)) => Err(e),
                Err(cairn_engine::state::ApplyError::Rejected(r)) => {
                    Err(cairn_engine::state::StateError::Corrupt(r.to_string()))
                }
            })
            .await?;
        if !any {
            return Ok(());
        }
        for _ in 0..100 {
            let bytes = command::<QueueService>(&QueueCommand::Sweep)?;
            match self.node.propose(bytes).await? {
                Ok(b) => match QueueService::response(&b) {
                    Ok(QueueResponse::Removed { removed, more }) => {
                        if removed > 0 {
                            tracing::info!(removed, "queue sweep removed expired messages");
                        }
                        if !more {
                            break;
                        }
                    }
                    _ => break,
                },
                Err(_) => break,
            }
        }
        Ok(())
    }

    async fn lifecycle_pass(&self) -> Result<(), ProposeError> {
        use crate::buckets::{
            BucketCommand, BucketQuery, BucketQueryResponse, BucketResponse, BucketService,
        };
        let buckets = self
            .read_state(|txn| match BucketService.query(txn, BucketQuery::Buckets) {
                Ok(BucketQueryResponse::Buckets(b)) => Ok(b
                    .into_iter()
                    .filter(|(_, r)| {
                        r.lifecycle
                            .as_ref()
                            .is_some_and(|l| l.iter().any(|x| x.enabled))
                    })
                    .map(|(n, _)| n)
                    .collect::<Vec<_>>()),
                Ok(_) => Ok(Vec::new()),
                Err(cairn_engine::state::ApplyError::Storage(e)) => Err(e),
                Err(cairn_engine::state::ApplyError::Rejected(r)) => {
                    Err(cairn_engine::state::StateError::Corrupt(r.to_string()))
                }
            })
            .await?;
        for bucket in buckets {
            for _ in 0..100 {
                let bytes = command::<BucketService>(&BucketCommand::Expire {
                    bucket: bucket.clone(),
                })?;
                match self.node.propose(bytes).await? {
                    Ok(b) => match BucketService::response(&b) {
                        Ok(BucketResponse::Expired { removed, more }) => {
                            if removed > 0 {
                                tracing::info!(
                                    bucket,
                                    removed,
                                    "lifecycle expired versions and uploads"
                                );
                            }
                            if !more {
                                break;
                            }
                        }
                        _ => break,
                    },
                    Err(_) => break,
                }
            }
        }
        Ok(())
    }

    async fn tick(&self) -> Result<(), ProposeError> {
        let (records, next, overrides) = self
            .read_state(|txn| {
                let records = ChunkService::scan(txn, None, usize::MAX)?;
                Ok((records, ChunkService::next_handle(txn)?, overrides(txn)?))
            })
            .await?;
        let plan = {
            let now = self.now();
            let mut map = self.map()?;
            map.set_overrides(overrides);
            map.tick(
                now,
                wall_ms(),
                &records,
                next,
                &self.options.limits,
                self.dead_ms(),
            )
        };
        if !plan.forget.is_empty() {
            let cutoff_ms = wall_ms().saturating_sub(self.options.limits.grace_ms);
            let bytes = command::<ChunkService>(&ChunkCommand::Forget {
                handles: plan.forget,
                cutoff_ms,
            })?;
            let outcome = self.node.propose(bytes).await?;
            if let Ok(b) = outcome
                && let Ok(ChunkResponse::Forgotten { handles }) = ChunkService::response(&b)
            {
                tracing::info!(chunks = handles.len(), "garbage chunks forgotten");
            }
        }
        Ok(())
    }
}

/// Settings that mark a chunkserver (16 hex digits) as being drained, or as retired by
/// `cairn admin decommission`: either way it takes no new chunk and its replicas move off.
pub const DRAIN_PREFIX: &str = "chunkserver.drain.";
pub const RETIRED_PREFIX: &str = "chunkserver.retired.";
/// A zone set by the operator for a chunkserver, over the one it reports.
pub const ZONE_PREFIX: &str = "chunkserver.zone.";
/// Rebalancing paused while this setting exists.
pub const REBALANCE_PAUSED: &str = "rebalance.paused";

/// The operator's settings for the data plane: prefix scans of the few keys it reads, never
/// the whole settings table (which users may fill; a full scan every tick once held a copy of a
/// million settings in the leader's heap).
fn overrides(txn: &redb::ReadTransaction) -> Result<crate::cluster::Overrides, StateError> {
    use cairn_engine::state::settings::ClusterSettings;
    let id = |hex: &str| u64::from_str_radix(hex, 16).ok();
    let mut o = crate::cluster::Overrides::default();
    for prefix in [DRAIN_PREFIX, RETIRED_PREFIX] {
        for (k, _) in ClusterSettings::with_prefix(txn, prefix)? {
            if let Some(s) = k.strip_prefix(prefix).and_then(id) {
                o.draining.insert(s);
            }
        }
    }
    for (k, v) in ClusterSettings::with_prefix(txn, ZONE_PREFIX)? {
        if let Some(s) = k.strip_prefix(ZONE_PREFIX).and_then(id) {
            o.zones.insert(s, v.value);
        }
    }
    o.rebalance_paused = ClusterSettings::get(txn, REBALANCE_PAUSED)?.is_some();
    Ok(o)
}
