//! The leader's soft state, as in GFS: which chunkserver holds which replica, who is alive, how
//! full and busy each one is, and the work queued for each. Nothing here is logged; a new leader
//! starts empty and rebuilds it from full reports within one heartbeat interval.
//!
//! Time here is a monotonic millisecond count chosen by the caller (liveness is local).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use cairn_proto::ChunkHandle;

use crate::chunks::ChunkRecord;
use crate::planner::{self, Limits, PlacementError, Plan, PlanInput, ReplicaView, ServerView};
use cairn_proto::dataplane::{
    DataStatus, Heartbeat, HeartbeatReply, REPAIR_WINDOW_MS, RepairProgress, ServerId, ServerInfo,
    ServerStatus, Task,
};

/// How long a planned copy may run before it is planned again.
const COPY_TIMEOUT_MS: u64 = 30_000;
/// How long an allocation's chain stands in for replica reports.
const EXPECTED_MS: u64 = 600_000;

#[derive(Debug)]
struct ServerEntry {
    info: ServerInfo,
    last_seen_ms: u64,
    /// Whether the master has this server's complete replica list.
    known: bool,
    tasks: Vec<Task>,
    /// Bytes of chunks placed on it since its last report (so a burst of allocations spreads).
    assigned: u64,
}

/// The leader's map of the data plane.
#[derive(Debug, Default)]
pub struct ClusterMap {
    servers: BTreeMap<ServerId, ServerEntry>,
    replicas: HashMap<ChunkHandle, BTreeMap<ServerId, ReplicaView>>,
    /// Chains handed to writers, until replicas are reported.
    expected: HashMap<ChunkHandle, (Vec<ServerId>, u64)>,
    /// Copies running, by chunk.
    copies: HashMap<ChunkHandle, Copying>,
    /// Copies landed in the last `REPAIR_WINDOW_MS`: (when, bytes).
    landed: VecDeque<(u64, u64)>,
    /// Copies landed since this map was made, and their bytes.
    landed_total: (u64, u64),
    /// Rebalancing moves: chunk → the server to drop it from once the copy has landed.
    moves: HashMap<ChunkHandle, ServerId>,
    /// When this leader started listening (reports are trusted one dead-interval later).
    since_ms: u64,
    term: u64,
    last_plan: (u64, u64, u64),
    /// Replicas missing at the last tick, besides running copies, and their bytes.
    missing: (u64, u64),
    /// Operator settings from the log, refreshed every tick.
    overrides: Overrides,
}

/// A copy the planner started.
#[derive(Clone, Copy, Debug)]
struct Copying {
    to: ServerId,
    /// When it is given up and planned again.
    deadline_ms: u64,
    len: u64,
}

/// What the operator set through `cairn admin` (replicated settings).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    /// Servers being drained or retired.
    pub draining: BTreeSet<ServerId>,
    /// Zones set for servers, over what they report.
    pub zones: BTreeMap<ServerId, String>,
    pub rebalance_paused: bool,
}

impl ClusterMap {
    /// The operator's settings, as the log holds them.
    pub fn set_overrides(&mut self, o: Overrides) {
        self.overrides = o;
    }

    pub fn new(term: u64, now_ms: u64) -> ClusterMap {
        ClusterMap {
            term,
            since_ms: now_ms,
            ..ClusterMap::default()
        }
    }

    pub fn term(&self) -> u64 {
        self.term
    }

    /// Take in a heartbeat; answer with the server's queued work.
    pub fn heartbeat(&mut self, hb: Heartbeat, now_ms: u64) -> HeartbeatReply {
        let id = hb.server.id;
        let entry = self.servers.entry(id).or_insert_with(|| ServerEntry {
            info: hb.server.clone(),
            last_seen_ms: now_ms,
            known: false,
            tasks: Vec::new(),
            assigned: 0,
        });
        entry.info = hb.server;
        entry.last_seen_ms = now_ms;
        // Chunks placed since the last report are now reported (or still being written).
        entry.assigned = 0;
        if hb.full {
            entry.known = true;
            for reps in self.replicas.values_mut() {
                reps.remove(&id);
            }
            self.replicas.retain(|_, r| !r.is_empty());
        } else if !entry.known {
            return HeartbeatReply {
                full_report: true,
                tasks: Vec::new(),
                term: self.term,
            };
        }
        let tasks = std::mem::take(&mut entry.tasks);
        for r in hb.replicas.iter().filter(|r| r.sealed) {
            self.replicas.entry(r.handle).or_default().insert(
                id,
                ReplicaView {
                    version: r.version,
                    len: r.len,
                    sealed: r.sealed,
                },
            );
            if self.copies.get(&r.handle).is_some_and(|c| c.to == id) {
                self.copies.remove(&r.handle);
                self.prune_landed(now_ms);
                self.landed.push_back((now_ms, r.len));
                self.landed_total.0 += 1;
                self.landed_total.1 += r.len;
            }
            self.expected.remove(&r.handle);
        }
        for h in hb.removed.iter().chain(&hb.corrupt) {
            if let Some(reps) = self.replicas.get_mut(h) {
                reps.remove(&id);
                if reps.is_empty() {
                    self.replicas.remove(h);
                }
            }
        }
        for h in &hb.corrupt {
            tracing::warn!(chunk = %h, server = id, "chunkserver reported a corrupt replica");
        }
        for h in &hb.copies_failed {
            if self.copies.get(h).is_some_and(|c| c.to == id) {
                self.copies.remove(h);
            }
        }
        HeartbeatReply {
            full_report: false,
            tasks,
            term: self.term,
        }
    }

    fn alive(&self, e: &ServerEntry, now_ms: u64, dead_after_ms: u64) -> bool {
        e.known && now_ms.saturating_sub(e.last_seen_ms) <= dead_after_ms
    }

    fn held(&self) -> HashMap<ServerId, (u64, u64)> {
        let mut held: HashMap<ServerId, (u64, u64)> = HashMap::new();
        for reps in self.replicas.values() {
            for (id, r) in reps {
                let e = held.entry(*id).or_default();
                e.0 += 1;
                e.1 += r.len;
            }
        }
        held
    }

    fn views(&self, now_ms: u64, dead_after_ms: u64) -> BTreeMap<ServerId, ServerView> {
        let held = self.held();
        let mut copies_in: HashMap<ServerId, u32> = HashMap::new();
        for c in self.copies.values() {
            *copies_in.entry(c.to).or_default() += 1;
        }
        self.servers
            .iter()
            .map(|(id, e)| {
                (
                    *id,
                    ServerView {
                        zone: self
                            .overrides
                            .zones
                            .get(id)
                            .cloned()
                            .or_else(|| e.info.zone.clone()),
                        capacity: e.info.capacity,
                        free: e.info.free,
                        load: e.info.load,
                        alive: self.alive(e, now_ms, dead_after_ms),
                        held: held.get(id).map_or(0, |h| h.1) + e.assigned,
                        copies_in: copies_in.get(id).copied().unwrap_or(0),
                        draining: self.overrides.draining.contains(id),
                    },
                )
            })
            .collect()
    }

    /// Choose a chain for a new chunk of up to `size` bytes, away from the servers that just
    /// failed this writer (`avoid`) when there are enough others. When there are not, they
    /// are chosen again: a failed chain names the server where it broke, which may be back at
    /// once (a chunkserver restarted on its address fails the writer's stale connection, and
    /// is fine on a new one), and a writer that runs out of servers to try fails its request,
    /// where trying a suspect one again costs one more attempt.
    #[allow(clippy::too_many_arguments)]
    pub fn place(
        &mut self,
        r: usize,
        min: usize,
        avoid: &BTreeSet<ServerId>,
        size: u64,
        now_ms: u64,
        dead_after_ms: u64,
        free_min: u64,
    ) -> Result<Vec<(ServerId, String)>, PlacementError> {
        let views = self.views(now_ms, dead_after_ms);
        let (no_servers, no_zones) = (BTreeSet::new(), BTreeSet::new());
        // R servers, away from `avoid` if possible; else as few as `min`, the same way.
        let chosen = planner::place(&views, r, avoid, &no_zones, free_min)
            .or_else(|_| planner::place(&views, r, &no_servers, &no_zones, free_min))
            .or_else(|_| planner::place_at_least(&views, r, min, avoid, free_min))
            .or_else(|_| planner::place_at_least(&views, r, min, &no_servers, free_min))?;
        Ok(chosen
            .into_iter()
            .filter_map(|id| {
                let e = self.servers.get_mut(&id)?;
                e.assigned += size;
                Some((id, e.info.addr.clone()))
            })
            .collect())
    }

    /// Copies planned and not yet reported done or failed.
    pub fn copies_running(&self) -> usize {
        self.copies.len()
    }

    /// Give `server` back instructions that could not be sent (the leadership that planned
    /// them was not confirmed in time): they go with its next heartbeat answer, so a
    /// momentary failure to confirm loses no copy or deletion.
    pub fn requeue(&mut self, server: ServerId, tasks: Vec<Task>) {
        if let Some(e) = self.servers.get_mut(&server) {
            let later = std::mem::replace(&mut e.tasks, tasks);
            e.tasks.extend(later);
        }
    }

    /// Whether this map has led long enough for every live chunkserver to have reported (a
    /// new leader's map fills from heartbeats).
    pub fn settled(&self, now_ms: u64, dead_after_ms: u64) -> bool {
        now_ms.saturating_sub(self.since_ms) > dead_after_ms
    }

    /// Remember the chain a writer was given (stands in for replica reports meanwhile).
    pub fn expect(&mut self, handle: ChunkHandle, chain: Vec<ServerId>, now_ms: u64) {
        self.expected.insert(handle, (chain, now_ms + EXPECTED_MS));
    }

    /// Live replicas of `handle` at `version` or newer, least loaded first; the writer's chain
    /// when nothing is reported yet.
    pub fn locate(
        &self,
        handle: ChunkHandle,
        version: u64,
        now_ms: u64,
        dead_after_ms: u64,
    ) -> Vec<(ServerId, String)> {
        let live = |id: &ServerId| {
            self.servers
                .get(id)
                .filter(|e| self.alive(e, now_ms, dead_after_ms))
        };
        let mut out: Vec<(u32, ServerId, String)> = self
            .replicas
            .get(&handle)
            .into_iter()
            .flatten()
            .filter(|(_, r)| r.sealed && r.version >= version)
            .filter_map(|(id, _)| live(id).map(|e| (e.info.load, *id, e.info.addr.clone())))
            .collect();
        if out.is_empty()
            && let Some((chain, _)) = self.expected.get(&handle)
        {
            out = chain
                .iter()
                .filter_map(|id| live(id).map(|e| (e.info.load, *id, e.info.addr.clone())))
                .collect();
        }
        out.sort();
        out.into_iter().map(|(_, id, a)| (id, a)).collect()
    }

    /// A reader found `server`'s replica bad: forget it and have the server delete it.
    pub fn bad_replica(&mut self, handle: ChunkHandle, server: ServerId) {
        let held = self
            .replicas
            .get_mut(&handle)
            .is_some_and(|reps| reps.remove(&server).is_some());
        if held && let Some(e) = self.servers.get_mut(&server) {
            e.tasks.push(Task::Delete { handle });
        }
    }

    /// Run the planners and queue their work; returns the chunk records to forget.
    pub fn tick(
        &mut self,
        now_ms: u64,
        wall_ms: u64,
        records: &[(ChunkHandle, ChunkRecord)],
        next_handle: u64,
        limits: &Limits,
        dead_after_ms: u64,
    ) -> Plan {
        self.copies.retain(|_, c| c.deadline_ms > now_ms);
        let copies = &self.copies;
        self.moves.retain(|h, _| {
            copies.contains_key(h) || self.replicas.get(h).is_some_and(|r| r.len() > 1)
        });
        self.expected.retain(|_, (_, deadline)| *deadline > now_ms);
        let views = self.views(now_ms, dead_after_ms);
        // A dead server's queued work is stale by the time it returns.
        for (id, e) in &mut self.servers {
            if !views.get(id).is_some_and(|v| v.alive) {
                e.tasks.clear();
            }
        }
        let copying: HashSet<ChunkHandle> = self.copies.keys().copied().collect();
        let plan = planner::plan(
            &PlanInput {
                now_ms: wall_ms,
                servers: &views,
                records,
                next_handle,
                replicas: &self.replicas,
                copying: &copying,
                moving: &self.moves,
                settled: now_ms.saturating_sub(self.since_ms) > dead_after_ms,
                rebalance_paused: self.overrides.rebalance_paused,
            },
            limits,
        );
        for c in &plan.copies {
            let Some(from) = self.servers.get(&c.from).map(|e| e.info.addr.clone()) else {
                continue;
            };
            if let Some(e) = self.servers.get_mut(&c.to) {
                // A deletion still queued for the same chunk would remove the new copy.
                e.tasks
                    .retain(|t| !matches!(t, Task::Delete { handle } if *handle == c.handle));
                e.tasks.push(Task::Copy {
                    handle: c.handle,
                    version: c.version,
                    from,
                });
                let len = self
                    .replicas
                    .get(&c.handle)
                    .and_then(|reps| reps.get(&c.from))
                    .map_or(0, |r| r.len);
                self.copies.insert(
                    c.handle,
                    Copying {
                        to: c.to,
                        deadline_ms: now_ms + COPY_TIMEOUT_MS,
                        len,
                    },
                );
                if c.moves {
                    self.moves.insert(c.handle, c.from);
                }
                tracing::info!(chunk = %c.handle, from = c.from, to = c.to, "copy planned");
            }
        }
        for (sid, h, reason) in &plan.deletes {
            if *reason == crate::planner::DeleteReason::Surplus {
                self.moves.remove(h);
            }
            if let Some(e) = self.servers.get_mut(sid) {
                e.tasks.push(Task::Delete { handle: *h });
                tracing::info!(chunk = %h, server = sid, ?reason, "replica deletion planned");
            }
            if let Some(reps) = self.replicas.get_mut(h) {
                reps.remove(sid);
                if reps.is_empty() {
                    self.replicas.remove(h);
                }
            }
        }
        self.last_plan = (plan.under_replicated, plan.lost, records.len() as u64);
        // The repairs started just now count as running copies, not as missing.
        let (mut replicas, mut bytes) = (plan.missing_replicas, plan.missing_bytes);
        for c in plan.copies.iter().filter(|c| !c.moves) {
            let len = self.copies.get(&c.handle).map_or(0, |x| x.len);
            replicas = replicas.saturating_sub(1);
            bytes = bytes.saturating_sub(len);
        }
        self.missing = (replicas, bytes);
        plan
    }

    /// Forget copies that landed before the window (also as new ones land, so the record
    /// stays bounded when nobody asks for progress).
    fn prune_landed(&mut self, now_ms: u64) {
        while self
            .landed
            .front()
            .is_some_and(|(at, _)| now_ms.saturating_sub(*at) > REPAIR_WINDOW_MS)
        {
            self.landed.pop_front();
        }
    }

    /// How repair is getting on: what is left (at the last tick, plus the copies running) and
    /// the rate copies landed at over the last `REPAIR_WINDOW_MS`.
    pub fn repair(&mut self, now_ms: u64) -> RepairProgress {
        self.prune_landed(now_ms);
        let running: u64 = self.copies.values().map(|c| c.len).sum();
        let remaining_bytes = self.missing.1 + running;
        // Over the window, or since leading began if that is shorter (a new leader's rate is
        // not diluted by the time before it led).
        let span_ms = REPAIR_WINDOW_MS
            .min(now_ms.saturating_sub(self.since_ms))
            .max(1_000);
        let secs = span_ms as f64 / 1000.0;
        let replicas_per_sec = self.landed.len() as f64 / secs;
        let bytes_per_sec = self.landed.iter().map(|(_, b)| *b).sum::<u64>() as f64 / secs;
        let eta_secs = (remaining_bytes > 0 && bytes_per_sec > 0.0)
            .then(|| (remaining_bytes as f64 / bytes_per_sec).ceil() as u64);
        RepairProgress {
            remaining_replicas: self.missing.0 + self.copies.len() as u64,
            remaining_bytes,
            copies_running: self.copies.len() as u64,
            replicas_per_sec,
            bytes_per_sec,
            eta_secs,
            copied_replicas: self.landed_total.0,
            copied_bytes: self.landed_total.1,
        }
    }

    /// What `cairn admin status` shows.
    pub fn status(&self, now_ms: u64, dead_after_ms: u64, replication_default: u8) -> DataStatus {
        let held = self.held();
        DataStatus {
            servers: self
                .servers
                .iter()
                .map(|(id, e)| ServerStatus {
                    info: {
                        let mut info = e.info.clone();
                        if let Some(z) = self.overrides.zones.get(id) {
                            info.zone = Some(z.clone());
                        }
                        info
                    },
                    alive: self.alive(e, now_ms, dead_after_ms),
                    last_heartbeat_ms_ago: now_ms.saturating_sub(e.last_seen_ms),
                    chunks: held.get(id).map_or(0, |h| h.0),
                    bytes: held.get(id).map_or(0, |h| h.1),
                    draining: self.overrides.draining.contains(id),
                })
                .collect(),
            replication_default,
            chunks: self.last_plan.2,
            under_replicated: self.last_plan.0,
            lost: self.last_plan.1,
            copies_in_flight: self.copies.len() as u64,
            deletes_queued: self
                .servers
                .values()
                .map(|e| {
                    e.tasks
                        .iter()
                        .filter(|t| matches!(t, Task::Delete { .. }))
                        .count() as u64
                })
                .sum(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(id: ServerId) -> Heartbeat {
        Heartbeat {
            server: ServerInfo {
                id,
                addr: format!("127.0.0.1:{}", 7000 + id),
                zone: None,
                capacity: 1 << 40,
                free: 1 << 40,
                load: 0,
            },
            full: true,
            replicas: Vec::new(),
            removed: Vec::new(),
            corrupt: Vec::new(),
            copies_failed: Vec::new(),
        }
    }

    #[test]
    fn a_writer_is_kept_away_from_servers_that_failed_it_while_others_remain() {
        let mut map = ClusterMap::new(1, 0);
        for id in 1..=5 {
            map.heartbeat(beat(id), 0);
        }
        let place = |map: &mut ClusterMap, avoid: &[ServerId]| -> BTreeSet<ServerId> {
            let avoid: BTreeSet<ServerId> = avoid.iter().copied().collect();
            map.place(3, 3, &avoid, 1, 10, 10_000, 0)
                .unwrap()
                .into_iter()
                .map(|(id, _)| id)
                .collect()
        };
        // Two failed it: the chain is the other three.
        assert_eq!(place(&mut map, &[1, 2]), BTreeSet::from([3, 4, 5]));
        // Three failed it (say three restarted chunkservers): too few are left, so the chain
        // may use them again rather than fail the write.
        assert_eq!(place(&mut map, &[1, 2, 3]).len(), 3);
        // Dead servers are never chosen, avoided or not.
        let mut map = ClusterMap::new(1, 0);
        for id in 1..=3 {
            map.heartbeat(beat(id), 0);
        }
        map.heartbeat(beat(4), 50_000);
        assert!(
            map.place(3, 2, &BTreeSet::from([4]), 1, 50_000, 10_000, 0)
                .is_err(),
            "servers 1 to 3 are dead"
        );
    }

    /// With fewer live servers than R, a write goes to all there are as long as they reach the
    /// minimum; below it, the error names the minimum.
    #[test]
    fn a_write_is_placed_on_fewer_servers_down_to_the_minimum() {
        let mut map = ClusterMap::new(1, 0);
        for id in 1..=2 {
            map.heartbeat(beat(id), 0);
        }
        let chain = map.place(3, 2, &BTreeSet::new(), 1, 10, 10_000, 0).unwrap();
        assert_eq!(chain.len(), 2);
        // Avoided servers are used again rather than fall below the minimum.
        let chain = map
            .place(3, 2, &BTreeSet::from([1]), 1, 10, 10_000, 0)
            .unwrap();
        assert_eq!(chain.len(), 2);
        let e = map
            .place(3, 3, &BTreeSet::new(), 1, 10, 10_000, 0)
            .unwrap_err();
        assert_eq!((e.wanted, e.available), (3, 2));
        map.heartbeat(beat(3), 0);
        assert_eq!(
            map.place(3, 2, &BTreeSet::new(), 1, 10, 10_000, 0)
                .unwrap()
                .len(),
            3
        );
    }

    /// Repair progress: what is left counts missing replicas and running copies once each;
    /// the rate is what landed over the window; the estimate is what is left at that rate.
    #[test]
    fn repair_progress_counts_what_is_left_and_the_rate_copies_land_at() {
        use crate::chunks::{ChunkRecord, ChunkState};
        const MB: u64 = 1 << 20;
        let replica = |h: u64| cairn_proto::dataplane::Replica {
            handle: ChunkHandle(h),
            version: 1,
            len: 4 * MB,
            sealed: true,
        };
        let mut map = ClusterMap::new(1, 0);
        // Ten chunks of R=3 on servers 1 and 2; server 3 is new and empty.
        for id in 1..=2 {
            let mut hb = beat(id);
            hb.replicas = (1..=10).map(replica).collect();
            map.heartbeat(hb, 15_000);
        }
        map.heartbeat(beat(3), 15_000);
        let records: Vec<(ChunkHandle, ChunkRecord)> = (1..=10)
            .map(|h| {
                (
                    ChunkHandle(h),
                    ChunkRecord {
                        version: 1,
                        replication: 3,
                        state: ChunkState::Live { refs: 1 },
                        created_ms: 0,
                    },
                )
            })
            .collect();
        let limits = Limits {
            copies_per_server: 4,
            ..Limits::default()
        };
        // Settled (one dead-interval after taking over), nothing landed yet: no rate, no ETA.
        let plan = map.tick(20_000, 0, &records, 11, &limits, 10_000);
        assert_eq!(plan.copies.len(), 4);
        let p = map.repair(20_000);
        assert_eq!(p.remaining_replicas, 10, "4 running + 6 waiting, each once");
        assert_eq!(p.remaining_bytes, 40 * MB);
        assert_eq!(p.copies_running, 4);
        assert_eq!((p.replicas_per_sec, p.eta_secs), (0.0, None));
        // Two copies land two seconds later.
        let mut hb = beat(3);
        hb.full = false;
        hb.replicas = plan.copies[..2]
            .iter()
            .map(|c| replica(c.handle.0))
            .collect();
        map.heartbeat(hb, 22_000);
        let p = map.repair(22_000);
        assert_eq!((p.remaining_replicas, p.copies_running), (8, 2));
        assert_eq!((p.copied_replicas, p.copied_bytes), (2, 8 * MB));
        // 8 MB over the 10 s window: 0.8 MB/s, 32 MB left: 40 s.
        assert_eq!(p.bytes_per_sec, 8.0 * MB as f64 / 10.0);
        assert_eq!(p.eta_secs, Some(40));
        // Out of the window, the rate is gone but the totals stay.
        let p = map.repair(40_000);
        assert_eq!((p.bytes_per_sec, p.eta_secs), (0.0, None));
        assert_eq!(p.copied_replicas, 2);
    }
}
