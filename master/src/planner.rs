//! The leader's planners, as pure functions from a snapshot of the cluster to decisions: where
//! new chunks go, which chunks to copy (most endangered first), which replicas to delete
//! (stale, broken, surplus, orphaned), which chunk records to forget (garbage collection), and
//! which chunks to move onto emptier servers. No clock, no sockets: the caller builds the
//! [`PlanInput`] and carries out the [`Plan`], so every rule is tested here deterministically.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use cairn_proto::ChunkHandle;

use crate::chunks::{ChunkRecord, ChunkState};
use cairn_proto::dataplane::ServerId;

/// One chunkserver, as the planner sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerView {
    pub zone: Option<String>,
    pub capacity: u64,
    pub free: u64,
    pub load: u32,
    pub alive: bool,
    /// Bytes of the replicas it holds, plus bytes of chunks just placed on it.
    pub held: u64,
    /// Copies to it that are running now.
    pub copies_in: u32,
    /// Being drained (or retired): it takes no new chunk, its replicas do not count towards a
    /// chunk's R, and once the chunk has R elsewhere its replica is deleted.
    pub draining: bool,
}

/// One replica, as reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaView {
    pub version: u64,
    pub len: u64,
    pub sealed: bool,
}

/// Bounds on the work one tick starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Pending and released chunks are forgotten this long after they stopped being used.
    pub grace_ms: u64,
    /// Concurrent copies into one server.
    pub copies_per_server: u32,
    /// Copies started per tick to even out how full servers are.
    pub rebalance_per_tick: usize,
    /// Chunk records forgotten per tick.
    pub forget_per_tick: usize,
    /// Free bytes a server needs to be given a new chunk.
    pub free_min: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            grace_ms: 3_600_000,
            copies_per_server: 8,
            rebalance_per_tick: 2,
            forget_per_tick: 1000,
            free_min: 64 << 20,
        }
    }
}

/// Everything a tick decides from.
#[derive(Debug)]
pub struct PlanInput<'a> {
    /// Wall-clock milliseconds (compared with the proposers' times in chunk records).
    pub now_ms: u64,
    pub servers: &'a BTreeMap<ServerId, ServerView>,
    /// Chunk records in handle order.
    pub records: &'a [(ChunkHandle, ChunkRecord)],
    /// Every handle below this was allocated once.
    pub next_handle: u64,
    pub replicas: &'a HashMap<ChunkHandle, BTreeMap<ServerId, ReplicaView>>,
    /// Chunks with a copy running.
    pub copying: &'a HashSet<ChunkHandle>,
    /// Chunks being moved by rebalancing: the server to drop the replica from once the new
    /// copy has landed.
    pub moving: &'a HashMap<ChunkHandle, ServerId>,
    /// Whether every live server has reported since this leader took over. Until then only
    /// garbage collection of records runs: an unreported replica is not a missing one.
    pub settled: bool,
    /// Rebalancing paused by the operator (`cairn admin rebalance --pause`); healing and drains
    /// go on.
    pub rebalance_paused: bool,
}

/// A copy to start: `to` fetches `handle` from `from`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyPlan {
    pub handle: ChunkHandle,
    pub version: u64,
    pub from: ServerId,
    pub to: ServerId,
    /// A move (rebalancing): `from`'s replica is to be dropped once the copy has landed.
    pub moves: bool,
}

/// Why a replica is to be deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeleteReason {
    Stale,
    Surplus,
    Orphan,
}

/// What one tick decided.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub copies: Vec<CopyPlan>,
    pub deletes: Vec<(ServerId, ChunkHandle, DeleteReason)>,
    pub forget: Vec<ChunkHandle>,
    pub under_replicated: u64,
    pub lost: u64,
    /// Replicas missing from live chunks, besides the copies already running, and their
    /// bytes (each chunk's length as its good replicas report it): the repair backlog.
    pub missing_replicas: u64,
    pub missing_bytes: u64,
}

/// Why no chain could be formed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("need {wanted} chunkservers with free space, {available} available")]
pub struct PlacementError {
    pub wanted: usize,
    pub available: usize,
}

fn fullness(s: &ServerView) -> (u128, u64, u32) {
    // Held bytes relative to capacity first (in parts per million), then held bytes, then load.
    let ppm = if s.capacity == 0 {
        u128::MAX
    } else {
        u128::from(s.held) * 1_000_000 / u128::from(s.capacity)
    };
    (ppm, s.held, s.load)
}

/// Choose `r` distinct live servers for a new chunk (or a copy): distinct zones first when
/// zones are set, then the least full and least loaded. `exclude` are never chosen.
pub fn place(
    servers: &BTreeMap<ServerId, ServerView>,
    r: usize,
    exclude: &BTreeSet<ServerId>,
    avoid_zones: &BTreeSet<Option<String>>,
    free_min: u64,
) -> Result<Vec<ServerId>, PlacementError> {
    let mut candidates: Vec<(&ServerId, &ServerView)> = servers
        .iter()
        .filter(|(id, s)| s.alive && !s.draining && s.free >= free_min && !exclude.contains(id))
        .collect();
    candidates.sort_by_key(|(id, s)| (fullness(s), **id));
    if candidates.len() < r {
        return Err(PlacementError {
            wanted: r,
            available: candidates.len(),
        });
    }
    let mut chosen = Vec::with_capacity(r);
    let mut zones = avoid_zones.clone();
    // First pass: one per zone not yet used. Second pass: the least full of the rest.
    for (id, s) in &candidates {
        if chosen.len() == r {
            break;
        }
        if s.zone.is_none() || !zones.contains(&s.zone) {
            zones.insert(s.zone.clone());
            chosen.push(**id);
        }
    }
    for (id, _) in &candidates {
        if chosen.len() == r {
            break;
        }
        if !chosen.contains(id) {
            chosen.push(**id);
        }
    }
    Ok(chosen)
}

/// Choose the chain of a new chunk: `r` servers when that many are live with free space,
/// else all there are as long as that is at least `min` (the chunk is under-replicated and
/// the planner copies it up to `r` once servers come back), else an error naming `min`.
pub fn place_at_least(
    servers: &BTreeMap<ServerId, ServerView>,
    r: usize,
    min: usize,
    exclude: &BTreeSet<ServerId>,
    free_min: u64,
) -> Result<Vec<ServerId>, PlacementError> {
    let available = servers
        .iter()
        .filter(|(id, s)| s.alive && !s.draining && s.free >= free_min && !exclude.contains(id))
        .count();
    let min = min.clamp(1, r.max(1));
    if available < min {
        return Err(PlacementError {
            wanted: min,
            available,
        });
    }
    place(
        servers,
        r.min(available),
        exclude,
        &BTreeSet::new(),
        free_min,
    )
}

/// Decide one tick's work.
pub fn plan(input: &PlanInput<'_>, limits: &Limits) -> Plan {
    let mut out = Plan::default();
    let alive = |id: &ServerId| input.servers.get(id).is_some_and(|s| s.alive);
    let draining = |id: &ServerId| input.servers.get(id).is_some_and(|s| s.draining);
    let cutoff = input.now_ms.saturating_sub(limits.grace_ms);
    let empty = BTreeMap::new();
    // The servers as this tick leaves them: copies planned here count against the bounds.
    let mut servers = input.servers.clone();
    let mut needs: Vec<Need> = Vec::new();

    for (h, rec) in input.records {
        let reps = input.replicas.get(h).unwrap_or(&empty);
        match rec.state {
            ChunkState::Pending { since_ms } | ChunkState::Released { since_ms }
                if since_ms <= cutoff && out.forget.len() < limits.forget_per_tick =>
            {
                out.forget.push(*h);
                continue;
            }
            _ => {}
        }
        if !input.settled {
            continue;
        }
        let live = matches!(rec.state, ChunkState::Live { .. });
        for (sid, r) in reps {
            if !alive(sid) {
                continue;
            }
            if r.version < rec.version {
                out.deletes.push((*sid, *h, DeleteReason::Stale));
            }
        }
        if !live {
            continue;
        }
        let all_good: Vec<ServerId> = reps
            .iter()
            .filter(|(sid, r)| alive(sid) && r.sealed && r.version == rec.version)
            .map(|(sid, _)| *sid)
            .collect();
        // Replicas on draining servers are copy sources but do not count towards R.
        let (leaving, good): (Vec<ServerId>, Vec<ServerId>) =
            all_good.iter().partition(|id| draining(id));
        let want = usize::from(rec.replication);
        let good_len = good.len();
        let len = all_good
            .iter()
            .filter_map(|id| reps.get(id).map(|r| r.len))
            .max()
            .unwrap_or(0);
        if input.copying.contains(h) {
            // One copy runs (a chunk gets one at a time): the rest is still to come.
            let later = want.saturating_sub(good_len + 1) as u64;
            out.missing_replicas += later;
            out.missing_bytes += later * len;
            continue;
        }
        if all_good.is_empty() {
            out.lost += 1;
        } else if good_len < want {
            out.under_replicated += 1;
            out.missing_replicas += (want - good_len) as u64;
            out.missing_bytes += (want - good_len) as u64 * len;
            let holders: Vec<ServerId> = reps.keys().copied().collect();
            needs.push(Need {
                handle: *h,
                version: rec.version,
                good: all_good,
                holders,
                missing: want - good_len,
            });
        } else if !leaving.is_empty() {
            // R replicas elsewhere: the draining servers let go of theirs.
            for sid in leaving {
                out.deletes.push((sid, *h, DeleteReason::Surplus));
            }
        } else if good_len > want {
            // A move drops its source; otherwise the fullest servers give up their replicas.
            let source = input.moving.get(h).filter(|id| good.contains(id));
            let mut by_fullness = good;
            by_fullness.sort_by_key(|id| {
                (
                    Some(id) != source,
                    std::cmp::Reverse(servers.get(id).map(fullness).unwrap_or_default()),
                )
            });
            for sid in by_fullness.into_iter().take(good_len - want) {
                out.deletes.push((sid, *h, DeleteReason::Surplus));
            }
        }
    }

    // Most endangered first.
    needs.sort_by_key(|n| (n.good.len(), n.handle));
    for Need {
        handle: h,
        version,
        good: sources,
        holders,
        missing,
    } in needs
    {
        let Some(&from) = sources
            .iter()
            .min_by_key(|id| (servers.get(*id).map_or(u32::MAX, |s| s.load), **id))
        else {
            continue;
        };
        let exclude: BTreeSet<ServerId> = holders
            .iter()
            .copied()
            .chain(
                servers
                    .iter()
                    .filter(|(_, s)| s.copies_in >= limits.copies_per_server)
                    .map(|(id, _)| *id),
            )
            .collect();
        let zones: BTreeSet<Option<String>> = sources
            .iter()
            .filter_map(|id| servers.get(id).map(|s| s.zone.clone()))
            .filter(Option::is_some)
            .collect();
        let Ok(targets) = place(&servers, missing.min(1), &exclude, &zones, limits.free_min) else {
            continue;
        };
        for to in targets {
            if let Some(s) = servers.get_mut(&to) {
                s.copies_in += 1;
            }
            out.copies.push(CopyPlan {
                handle: h,
                version,
                from,
                to,
                moves: false,
            });
        }
    }

    if input.settled {
        // Orphans: replicas of chunks that were allocated once and are no longer recorded.
        for (h, reps) in input.replicas {
            if input.records.binary_search_by_key(h, |(k, _)| *k).is_ok() {
                continue;
            }
            if h.0 < input.next_handle {
                for sid in reps.keys().filter(|id| alive(id)) {
                    out.deletes.push((*sid, *h, DeleteReason::Orphan));
                }
            }
        }
        out.deletes.sort_by_key(|(sid, h, _)| (*sid, *h));
        if out.copies.is_empty() && out.under_replicated == 0 && !input.rebalance_paused {
            rebalance(input, limits, &mut servers, &mut out);
        }
    }
    out
}

/// A chunk below its replication factor.
struct Need {
    handle: ChunkHandle,
    version: u64,
    /// Live servers with a good replica (copy sources).
    good: Vec<ServerId>,
    /// Every server reporting a replica, good or not (not copy targets).
    holders: Vec<ServerId>,
    missing: usize,
}

/// Move chunks from the fullest live server to the emptiest while the gap is more than twice
/// the chunk moved (so a move never overshoots into the opposite imbalance).
fn rebalance(
    input: &PlanInput<'_>,
    limits: &Limits,
    servers: &mut BTreeMap<ServerId, ServerView>,
    out: &mut Plan,
) {
    let surplus: HashSet<ChunkHandle> = out
        .deletes
        .iter()
        .filter(|(_, _, r)| *r == DeleteReason::Surplus)
        .map(|(_, h, _)| *h)
        .collect();
    if !surplus.is_empty() {
        return; // let the last moves finish first
    }
    for _ in 0..limits.rebalance_per_tick {
        let live: Vec<(ServerId, u64)> = servers
            .iter()
            .filter(|(_, s)| s.alive && !s.draining)
            .map(|(id, s)| (*id, s.held))
            .collect();
        let Some(&(full, full_held)) = live.iter().max_by_key(|(id, held)| (*held, *id)) else {
            return;
        };
        let Some(&(empty, empty_held)) = live
            .iter()
            .filter(|(id, _)| {
                servers.get(id).is_some_and(|s| {
                    s.copies_in < limits.copies_per_server && s.free >= limits.free_min
                })
            })
            .min_by_key(|(id, held)| (*held, *id))
        else {
            return;
        };
        if full == empty {
            return;
        }
        let gap = full_held - empty_held.min(full_held);
        let candidate = input.records.iter().find(|(h, rec)| {
            let Some(reps) = input.replicas.get(h) else {
                return false;
            };
            let good = |id: &ServerId| {
                reps.get(id)
                    .is_some_and(|r| r.sealed && r.version == rec.version)
            };
            matches!(rec.state, ChunkState::Live { .. })
                && !input.copying.contains(h)
                && !out.copies.iter().any(|c| c.handle == *h)
                && good(&full)
                && !reps.contains_key(&empty)
                && reps
                    .get(&full)
                    .is_some_and(|r| r.len > 0 && gap > 2 * r.len)
        });
        let Some((h, rec)) = candidate else {
            return;
        };
        let len = input
            .replicas
            .get(h)
            .and_then(|r| r.get(&full))
            .map_or(0, |r| r.len);
        out.copies.push(CopyPlan {
            handle: *h,
            version: rec.version,
            from: full,
            to: empty,
            moves: true,
        });
        if let Some(s) = servers.get_mut(&full) {
            s.held = s.held.saturating_sub(len);
        }
        if let Some(s) = servers.get_mut(&empty) {
            s.held += len;
            s.copies_in += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    fn server(zone: Option<&str>, held: u64) -> ServerView {
        ServerView {
            zone: zone.map(String::from),
            capacity: 1000 * MB,
            free: 500 * MB,
            load: 0,
            alive: true,
            held,
            copies_in: 0,
            draining: false,
        }
    }

    fn live(r: u8) -> ChunkRecord {
        ChunkRecord {
            version: 1,
            replication: r,
            state: ChunkState::Live { refs: 1 },
            created_ms: 0,
        }
    }

    fn rep(version: u64) -> ReplicaView {
        ReplicaView {
            version,
            len: MB,
            sealed: true,
        }
    }

    struct World {
        servers: BTreeMap<ServerId, ServerView>,
        records: Vec<(ChunkHandle, ChunkRecord)>,
        replicas: HashMap<ChunkHandle, BTreeMap<ServerId, ReplicaView>>,
        copying: HashSet<ChunkHandle>,
        moving: HashMap<ChunkHandle, ServerId>,
        now_ms: u64,
        next_handle: u64,
        rebalance_paused: bool,
    }

    impl World {
        fn new(servers: &[(ServerId, ServerView)]) -> World {
            World {
                servers: servers.iter().cloned().collect(),
                records: Vec::new(),
                replicas: HashMap::new(),
                copying: HashSet::new(),
                moving: HashMap::new(),
                now_ms: 10_000_000,
                next_handle: 1,
                rebalance_paused: false,
            }
        }
        fn chunk(&mut self, h: u64, rec: ChunkRecord, on: &[(ServerId, ReplicaView)]) {
            self.records.push((ChunkHandle(h), rec));
            self.records.sort_by_key(|(h, _)| *h);
            self.next_handle = self.next_handle.max(h + 1);
            self.replicas
                .insert(ChunkHandle(h), on.iter().copied().collect());
        }
        fn plan(&self) -> Plan {
            plan(
                &PlanInput {
                    now_ms: self.now_ms,
                    servers: &self.servers,
                    records: &self.records,
                    next_handle: self.next_handle,
                    replicas: &self.replicas,
                    copying: &self.copying,
                    moving: &self.moving,
                    settled: true,
                    rebalance_paused: self.rebalance_paused,
                },
                &Limits::default(),
            )
        }
    }

    #[test]
    fn placement_prefers_distinct_zones_then_least_full() {
        let servers: BTreeMap<_, _> = [
            (1, server(Some("a"), 10 * MB)),
            (2, server(Some("a"), 0)),
            (3, server(Some("b"), 50 * MB)),
            (4, server(Some("c"), 40 * MB)),
        ]
        .into_iter()
        .collect();
        let chain = place(&servers, 3, &BTreeSet::new(), &BTreeSet::new(), MB).unwrap();
        assert_eq!(chain, vec![2, 4, 3], "one per zone, least full first");
        let chain = place(&servers, 4, &BTreeSet::new(), &BTreeSet::new(), MB).unwrap();
        assert_eq!(chain, vec![2, 4, 3, 1]);
        let chain = place(&servers, 2, &BTreeSet::from([2]), &BTreeSet::new(), MB).unwrap();
        assert_eq!(chain, vec![1, 4]);
    }

    #[test]
    fn placement_skips_dead_full_and_excluded_servers() {
        let mut servers: BTreeMap<_, _> = [
            (1, server(None, 0)),
            (2, server(None, 0)),
            (3, server(None, 0)),
        ]
        .into_iter()
        .collect();
        servers.get_mut(&1).unwrap().alive = false;
        servers.get_mut(&2).unwrap().free = 0;
        assert_eq!(
            place(&servers, 2, &BTreeSet::new(), &BTreeSet::new(), MB),
            Err(PlacementError {
                wanted: 2,
                available: 1
            })
        );
        assert_eq!(
            place(&servers, 1, &BTreeSet::new(), &BTreeSet::new(), MB).unwrap(),
            vec![3]
        );
    }

    #[test]
    fn placement_without_zones_uses_least_full_then_least_loaded() {
        let mut servers: BTreeMap<_, _> = [
            (1, server(None, 5 * MB)),
            (2, server(None, 5 * MB)),
            (3, server(None, MB)),
        ]
        .into_iter()
        .collect();
        servers.get_mut(&1).unwrap().load = 7;
        let chain = place(&servers, 2, &BTreeSet::new(), &BTreeSet::new(), MB).unwrap();
        assert_eq!(chain, vec![3, 2]);
    }

    #[test]
    fn under_replicated_chunks_are_copied_most_endangered_first() {
        let mut w = World::new(&[
            (1, server(None, 0)),
            (2, server(None, 0)),
            (3, server(None, 0)),
            (4, server(None, 0)),
        ]);
        w.servers.get_mut(&4).unwrap().alive = false;
        // Chunk 1: two good replicas of three. Chunk 2: one good replica (plus one on a dead
        // server). Chunk 3: fully replicated.
        w.chunk(1, live(3), &[(1, rep(1)), (2, rep(1))]);
        w.chunk(2, live(3), &[(3, rep(1)), (4, rep(1))]);
        w.chunk(3, live(3), &[(1, rep(1)), (2, rep(1)), (3, rep(1))]);
        let p = w.plan();
        assert_eq!(p.under_replicated, 2);
        assert_eq!(p.lost, 0);
        assert_eq!(
            (p.missing_replicas, p.missing_bytes),
            (3, 3 * MB),
            "one replica missing from chunk 1, two from chunk 2"
        );
        assert_eq!(p.copies.len(), 2);
        assert_eq!(
            p.copies[0].handle,
            ChunkHandle(2),
            "fewest live replicas first"
        );
        assert_eq!(p.copies[0].from, 3);
        assert!(p.copies[0].to != 3 && p.copies[0].to != 4);
        assert_eq!(p.copies[1].handle, ChunkHandle(1));
        assert_eq!(p.copies[1].to, 3, "the only live server without it");
        assert!(p.deletes.is_empty());
    }

    #[test]
    fn copies_per_server_are_bounded() {
        let mut w = World::new(&[(1, server(None, 0)), (2, server(None, 0))]);
        for h in 1..=10 {
            w.chunk(h, live(2), &[(1, rep(1))]);
        }
        let p = w.plan();
        assert_eq!(p.under_replicated, 10);
        assert_eq!(p.copies.len(), Limits::default().copies_per_server as usize);
        assert!(p.copies.iter().all(|c| c.from == 1 && c.to == 2));
        // Copies already running count against the bound, and chunks being copied wait.
        w.servers.get_mut(&2).unwrap().copies_in = Limits::default().copies_per_server - 1;
        w.copying.insert(ChunkHandle(1));
        let p = w.plan();
        assert_eq!(p.copies.len(), 1);
        assert_ne!(p.copies[0].handle, ChunkHandle(1));
    }

    #[test]
    fn chunks_with_no_good_replica_are_reported_lost() {
        let mut w = World::new(&[(1, server(None, 0)), (2, server(None, 0))]);
        w.chunk(1, live(2), &[]);
        w.chunk(2, live(2), &[(1, rep(0))]);
        let p = w.plan();
        assert_eq!(p.lost, 2);
        assert!(p.copies.is_empty());
        assert_eq!(p.deletes, vec![(1, ChunkHandle(2), DeleteReason::Stale)]);
    }

    #[test]
    fn stale_and_surplus_replicas_are_deleted() {
        let mut w = World::new(&[
            (1, server(None, 10 * MB)),
            (2, server(None, 30 * MB)),
            (3, server(None, 20 * MB)),
            (4, server(None, 0)),
        ]);
        let mut rec = live(2);
        rec.version = 2;
        w.chunk(
            1,
            rec,
            &[(1, rep(2)), (2, rep(2)), (3, rep(2)), (4, rep(1))],
        );
        let p = w.plan();
        assert_eq!(
            p.deletes,
            vec![
                (2, ChunkHandle(1), DeleteReason::Surplus),
                (4, ChunkHandle(1), DeleteReason::Stale),
            ],
            "the surplus replica goes from the fullest server"
        );
        assert!(p.copies.is_empty());
    }

    #[test]
    fn a_pending_chunk_being_written_is_left_alone() {
        let mut w = World::new(&[(1, server(None, 0)), (2, server(None, 0))]);
        let pending = ChunkRecord {
            state: ChunkState::Pending {
                since_ms: w.now_ms - 1000,
            },
            ..live(2)
        };
        let writing = ReplicaView {
            sealed: false,
            ..rep(1)
        };
        w.chunk(1, pending, &[(1, writing)]);
        assert_eq!(w.plan(), Plan::default());
    }

    #[test]
    fn garbage_is_forgotten_after_the_grace_period_then_its_replicas_deleted() {
        let mut w = World::new(&[(1, server(None, 0)), (2, server(None, 0))]);
        let grace = Limits::default().grace_ms;
        let at = |since_ms| ChunkRecord {
            state: ChunkState::Released { since_ms },
            ..live(2)
        };
        w.chunk(1, at(w.now_ms - grace), &[(1, rep(1)), (2, rep(1))]);
        w.chunk(2, at(w.now_ms - grace + 1), &[(1, rep(1))]);
        let abandoned = ChunkRecord {
            state: ChunkState::Pending {
                since_ms: w.now_ms - grace - 5,
            },
            ..live(2)
        };
        w.chunk(3, abandoned, &[(2, rep(1))]);
        let p = w.plan();
        assert_eq!(p.forget, vec![ChunkHandle(1), ChunkHandle(3)]);
        assert!(p.deletes.is_empty(), "records go first");
        // Once forgotten, their replicas are orphans of allocated handles: deleted.
        w.records.retain(|(h, _)| h.0 == 2);
        // A replica of a handle never allocated is not touched (this master may be behind).
        w.replicas
            .insert(ChunkHandle(99), BTreeMap::from([(1, rep(1))]));
        let p = w.plan();
        assert_eq!(
            p.deletes,
            vec![
                (1, ChunkHandle(1), DeleteReason::Orphan),
                (2, ChunkHandle(1), DeleteReason::Orphan),
                (2, ChunkHandle(3), DeleteReason::Orphan),
            ]
        );
    }

    #[test]
    fn until_settled_only_records_are_collected() {
        let mut w = World::new(&[(1, server(None, 0)), (2, server(None, 0))]);
        w.chunk(1, live(2), &[(1, rep(1))]);
        w.replicas
            .insert(ChunkHandle(0), BTreeMap::from([(1, rep(1))]));
        let p = plan(
            &PlanInput {
                now_ms: w.now_ms,
                servers: &w.servers,
                records: &w.records,
                next_handle: w.next_handle,
                replicas: &w.replicas,
                copying: &w.copying,
                moving: &w.moving,
                settled: false,
                rebalance_paused: false,
            },
            &Limits::default(),
        );
        assert_eq!(p, Plan::default());
    }

    #[test]
    fn a_move_drops_its_source_not_the_new_copy() {
        let mut w = World::new(&[
            (1, server(None, 10 * MB)),
            (2, server(None, 2 * MB)),
            (3, server(None, 30 * MB)),
        ]);
        w.chunk(1, live(2), &[(1, rep(1)), (2, rep(1)), (3, rep(1))]);
        assert_eq!(
            w.plan().deletes,
            vec![(3, ChunkHandle(1), DeleteReason::Surplus)],
            "without a move, the fullest gives it up"
        );
        w.moving.insert(ChunkHandle(1), 1);
        assert_eq!(
            w.plan().deletes,
            vec![(1, ChunkHandle(1), DeleteReason::Surplus)],
            "the move's source gives it up"
        );
    }

    #[test]
    fn a_new_empty_server_receives_chunks_until_balanced() {
        let mut w = World::new(&[
            (1, server(None, 4 * MB)),
            (2, server(None, 4 * MB)),
            (3, server(None, 0)),
        ]);
        for h in 1..=4 {
            w.chunk(h, live(2), &[(1, rep(1)), (2, rep(1))]);
        }
        let p = w.plan();
        assert_eq!(p.copies.len(), 2, "bounded per tick");
        assert!(p.copies.iter().all(|c| c.to == 3 && c.moves));
        w.rebalance_paused = true;
        assert!(w.plan().copies.is_empty(), "paused by the operator");
        w.rebalance_paused = false;
        assert_ne!(
            p.copies[0].from, p.copies[1].from,
            "from the fullest each time"
        );
        // Balanced: nothing moves.
        let mut w = World::new(&[
            (1, server(None, 2 * MB)),
            (2, server(None, 2 * MB)),
            (3, server(None, MB)),
        ]);
        w.chunk(1, live(2), &[(1, rep(1)), (2, rep(1))]);
        assert!(w.plan().copies.is_empty());
    }

    #[test]
    fn a_draining_server_is_copied_off_then_let_go_and_takes_nothing_new() {
        let draining = ServerView {
            draining: true,
            ..server(None, 2 * MB)
        };
        let mut w = World::new(&[
            (1, draining.clone()),
            (2, server(None, 2 * MB)),
            (3, server(None, 2 * MB)),
            (4, server(None, 0)),
        ]);
        // R = 3 with one replica on the draining server: copied to 4 from any holder, and
        // counted as under-replicated until then.
        w.chunk(1, live(3), &[(1, rep(1)), (2, rep(1)), (3, rep(1))]);
        let p = w.plan();
        assert_eq!(p.under_replicated, 1);
        assert_eq!(p.copies.len(), 1);
        assert_eq!(p.copies[0].to, 4);
        assert!(
            p.deletes.is_empty(),
            "nothing deleted before the copy lands"
        );
        // Once 4 holds it, the draining server's replica goes.
        w.replicas
            .get_mut(&ChunkHandle(1))
            .unwrap()
            .insert(4, rep(1));
        let p = w.plan();
        assert_eq!(p.under_replicated, 0);
        assert_eq!(p.deletes, vec![(1, ChunkHandle(1), DeleteReason::Surplus)]);
        assert!(
            p.copies.is_empty(),
            "no rebalancing onto or off a draining server"
        );
        // A chunk only the draining server holds is not lost: it is the copy source.
        w.chunk(2, live(1), &[(1, rep(1))]);
        let p = w.plan();
        assert_eq!(p.lost, 0);
        assert!(
            p.copies
                .iter()
                .any(|c| c.handle == ChunkHandle(2) && c.from == 1 && c.to != 1)
        );
        // New chunks never go to it, even when it is the emptiest.
        let servers: BTreeMap<ServerId, ServerView> = [
            (
                1,
                ServerView {
                    draining: true,
                    ..server(None, 0)
                },
            ),
            (2, server(None, 5 * MB)),
            (3, server(None, 6 * MB)),
        ]
        .into_iter()
        .collect();
        let chosen = place(&servers, 2, &BTreeSet::new(), &BTreeSet::new(), 0).unwrap();
        assert_eq!(chosen, vec![2, 3]);
        assert!(place(&servers, 3, &BTreeSet::new(), &BTreeSet::new(), 0).is_err());
    }
}
