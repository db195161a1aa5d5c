//! Raft groups of real nodes (real redb files, real mutual-TLS QUIC on loopback) in one process.

// Test code: a panic here is a failed test, which is what unwrap() should cause.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_client::MasterClient;
use cairn_engine::state::settings::{
    ClusterSettings, SettingsCommand, SettingsQuery, SettingsQueryResponse,
};
use cairn_engine::state::{Registry, StateError, Typed, TypedService};
use cairn_proto::Consistency;
use cairn_proto::{ClusterCa, TransportOptions};
use cairn_raft::{AdminRequest, RaftNode, RaftOptions};

fn registry() -> Result<Registry, StateError> {
    let mut r = Registry::new();
    r.register(Typed(ClusterSettings))?;
    Ok(r)
}

fn options() -> RaftOptions {
    RaftOptions {
        heartbeat: Duration::from_millis(100),
        election_timeout_min: Duration::from_millis(500),
        election_timeout_max: Duration::from_millis(1000),
        snapshot_after_entries: 60,
        entries_kept_after_snapshot: 10,
        ..RaftOptions::default()
    }
}

struct Harness {
    ca: ClusterCa,
    dir: tempfile::TempDir,
}

impl Harness {
    fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::create(&dir.path().join("ca")).unwrap();
        Harness { ca, dir }
    }

    fn data(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node-{id}"))
    }

    async fn start(&self, id: u64, addr: SocketAddr) -> RaftNode {
        let identity = self.ca.issue(&format!("node-{id}"), &[]).unwrap();
        // A restarted node reuses its address; the old endpoint may take a moment to let go.
        let mut tries = 0;
        loop {
            match RaftNode::start(id, &self.data(id), addr, &identity, registry, options()).await {
                Ok(n) => return n,
                Err(e) if tries < 100 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("start node {id}: {e}"),
            }
        }
    }

    fn client(&self, masters: Vec<SocketAddr>) -> MasterClient {
        let identity = self.ca.issue("client", &[]).unwrap();
        let ep = cairn_proto::endpoint(
            "127.0.0.1:0".parse().unwrap(),
            &identity,
            &TransportOptions::default(),
        )
        .unwrap();
        MasterClient::new(ep, masters)
    }
}

fn set(key: &str, value: &str, n: u64) -> Vec<u8> {
    let c = SettingsCommand::Set {
        key: key.into(),
        value: value.into(),
    };
    let mut seed = [0u8; 16];
    seed[..8].copy_from_slice(&n.to_le_bytes());
    ClusterSettings::command(&c, 1_700_000_000_000 + n, seed)
        .unwrap()
        .encode()
}

async fn all_settings(client: &MasterClient, consistency: Consistency) -> BTreeMap<String, String> {
    let q = ClusterSettings::encode_query(&SettingsQuery::List).unwrap();
    let out = client
        .query(ClusterSettings::ID, q, consistency)
        .await
        .unwrap()
        .unwrap();
    match ClusterSettings::query_response(&out).unwrap() {
        SettingsQueryResponse::All(all) => all.into_iter().map(|(k, s)| (k, s.value)).collect(),
        other => panic!("{other:?}"),
    }
}

async fn wait_for(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn free_addr() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn local_settings(data: &Path) -> usize {
    let store = cairn_engine::state::StateStore::open(data.join("state.redb")).unwrap();
    let txn = redb::ReadableDatabase::begin_read(store.db()).unwrap();
    ClusterSettings::list(&txn).unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_masters_elect_replicate_fail_over_and_catch_up() {
    let h = Harness::new();
    let addrs: Vec<SocketAddr> = (0..4).map(|_| free_addr()).collect();
    let n1 = h.start(1, addrs[0]).await;
    assert!(n1.initialize_if_new().await.unwrap());
    let n2 = h.start(2, addrs[1]).await;
    let n3 = h.start(3, addrs[2]).await;
    let client = h.client(addrs[..3].to_vec());

    // Grow the group: learners catch up, then become voters.
    client
        .admin(AdminRequest::AddLearner {
            id: 2,
            addr: addrs[1].to_string(),
        })
        .await
        .unwrap();
    client
        .admin(AdminRequest::AddLearner {
            id: 3,
            addr: addrs[2].to_string(),
        })
        .await
        .unwrap();
    client
        .admin(AdminRequest::SetVoters(BTreeSet::from([1, 2, 3])))
        .await
        .unwrap();
    assert_eq!(n1.status().voters, vec![1, 2, 3]);

    // Writes succeed, concurrently (they share fsyncs through openraft's batching).
    let mut acked = BTreeMap::new();
    let writes = (0..100u64).map(|i| {
        let c = client.clone();
        tokio::spawn(async move {
            (
                i,
                c.propose(set(&format!("k{i}"), &format!("v{i}"), i)).await,
            )
        })
    });
    for w in writes.collect::<Vec<_>>() {
        let (i, r) = w.await.unwrap();
        r.unwrap().unwrap();
        acked.insert(format!("k{i}"), format!("v{i}"));
    }
    assert_eq!(
        all_settings(&client, Consistency::Linearizable).await,
        acked
    );

    // A follower answers a stale read locally once it has applied the writes.
    let follower = [&n1, &n2, &n3]
        .into_iter()
        .find(|n| n.status().state == "follower")
        .unwrap()
        .clone();
    let last = n1.status().last_log_index;
    wait_for("the follower to apply", async || {
        follower.status().applied_index >= last
    })
    .await;
    let q = ClusterSettings::encode_query(&SettingsQuery::List).unwrap();
    let out = follower
        .query(ClusterSettings::ID, q, Consistency::Stale)
        .await
        .unwrap()
        .unwrap();
    match ClusterSettings::query_response(&out).unwrap() {
        SettingsQueryResponse::All(all) => assert_eq!(all.len(), acked.len()),
        other => panic!("{other:?}"),
    }
    drop(follower);

    // Kill the leader: a new one is elected and every acknowledged write is still there.
    let leader = n1.status().leader.unwrap();
    let (old, nodes): (Vec<RaftNode>, Vec<RaftNode>) =
        [n1, n2, n3].into_iter().partition(|n| n.id == leader);
    for n in old {
        n.shutdown().await;
    }
    let survivors: Vec<&RaftNode> = nodes.iter().collect();
    wait_for("a new leader", async || {
        survivors
            .iter()
            .any(|n| n.status().state == "leader" && n.status().leader != Some(leader))
    })
    .await;
    for i in 100..160u64 {
        client
            .propose(set(&format!("k{i}"), &format!("v{i}"), i))
            .await
            .unwrap()
            .unwrap();
        acked.insert(format!("k{i}"), format!("v{i}"));
    }
    assert_eq!(
        all_settings(&client, Consistency::Linearizable).await,
        acked
    );

    // The old leader restarts from its files and catches up.
    let idx = (leader - 1) as usize;
    let back = h.start(leader, addrs[idx]).await;
    let target = survivors[0].status().last_log_index;
    wait_for("the restarted node to catch up", async || {
        back.status().applied_index >= target
    })
    .await;

    // A node that missed many entries (the log was compacted past them) arrives by snapshot.
    let n4 = h.start(4, addrs[3]).await;
    client
        .admin(AdminRequest::AddLearner {
            id: 4,
            addr: addrs[3].to_string(),
        })
        .await
        .unwrap();
    wait_for("node 4 to catch up", async || {
        n4.status().applied_index >= target
    })
    .await;
    assert!(
        n4.status().snapshot_index.is_some(),
        "node 4 should have been sent a snapshot"
    );
    let n4_data = h.data(4);
    n4.shutdown().await;
    drop(n4);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(local_settings(&n4_data), acked.len());

    // Remove a member under write load: writes keep succeeding.
    let writer = {
        let c = client.clone();
        tokio::spawn(async move {
            for i in 160..200u64 {
                c.propose(set(&format!("k{i}"), &format!("v{i}"), i))
                    .await
                    .unwrap()
                    .unwrap();
            }
        })
    };
    // Voters become the two survivors: the restarted old leader is removed.
    let keep: BTreeSet<u64> = nodes.iter().map(|n| n.id).collect();
    client.admin(AdminRequest::SetVoters(keep)).await.unwrap();
    writer.await.unwrap();
    for i in 160..200u64 {
        acked.insert(format!("k{i}"), format!("v{i}"));
    }
    assert_eq!(
        all_settings(&client, Consistency::Linearizable).await,
        acked
    );
    back.shutdown().await;
    for n in &nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_after_restart_equals_state_before() {
    let h = Harness::new();
    let addr = free_addr();
    let node = h.start(1, addr).await;
    node.initialize_if_new().await.unwrap();
    let client = h.client(vec![addr]);
    for i in 0..150u64 {
        client
            .propose(set(&format!("k{}", i % 40), &format!("v{i}"), i))
            .await
            .unwrap()
            .unwrap();
    }
    let export = |n: &RaftNode| {
        let mut out = Vec::new();
        n.state.store().export_snapshot(&mut out).unwrap();
        out
    };
    let before = export(&node);
    let applied = node.status().applied_index;
    node.shutdown().await;
    drop(node);
    let again = h.start(1, addr).await;
    wait_for("the restarted node to lead", async || {
        again.status().state == "leader"
    })
    .await;
    assert!(again.status().applied_index >= applied);
    // The restart appends a blank entry as the new term begins; the state of the services and
    // the log position it reflects are otherwise the same.
    let client = h.client(vec![addr]);
    assert_eq!(
        all_settings(&client, Consistency::Linearizable).await.len(),
        40
    );
    let after = export(&again);
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let sa = cairn_engine::state::StateStore::open(a.path().join("s.redb")).unwrap();
    let sb = cairn_engine::state::StateStore::open(b.path().join("s.redb")).unwrap();
    sa.import_snapshot(&before[..]).unwrap();
    sb.import_snapshot(&after[..]).unwrap();
    let settings = |s: &cairn_engine::state::StateStore| {
        let txn = redb::ReadableDatabase::begin_read(s.db()).unwrap();
        ClusterSettings::list(&txn).unwrap()
    };
    assert_eq!(settings(&sa), settings(&sb));
    again.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_masters_survive_two_failures() {
    let h = Harness::new();
    let addrs: Vec<SocketAddr> = (0..5).map(|_| free_addr()).collect();
    let mut nodes = Vec::new();
    for (i, a) in addrs.iter().enumerate() {
        nodes.push(h.start(i as u64 + 1, *a).await);
    }
    nodes[0].initialize_if_new().await.unwrap();
    let client = h.client(addrs.clone());
    for (i, a) in addrs.iter().enumerate().skip(1) {
        client
            .admin(AdminRequest::AddLearner {
                id: i as u64 + 1,
                addr: a.to_string(),
            })
            .await
            .unwrap();
    }
    client
        .admin(AdminRequest::SetVoters((1..=5).collect()))
        .await
        .unwrap();
    assert_eq!(nodes[0].status().voters, vec![1, 2, 3, 4, 5]);
    let mut acked = BTreeMap::new();
    for i in 0..30u64 {
        client
            .propose(set(&format!("k{i}"), "v", i))
            .await
            .unwrap()
            .unwrap();
        acked.insert(format!("k{i}"), "v".to_string());
    }
    // Two of five fail, the leader among them: the other three still form a majority.
    let leader = nodes[0].status().leader.unwrap();
    let other = (1..=5u64).find(|id| *id != leader).unwrap();
    for n in nodes.iter().filter(|n| n.id == leader || n.id == other) {
        n.shutdown().await;
    }
    for i in 30..60u64 {
        client
            .propose(set(&format!("k{i}"), "v", i))
            .await
            .unwrap()
            .unwrap();
        acked.insert(format!("k{i}"), "v".to_string());
    }
    assert_eq!(
        all_settings(&client, Consistency::Linearizable).await,
        acked
    );
    for n in &nodes {
        n.shutdown().await;
    }
}

/// A client whose list of masters holds an unreachable address finds the leader on its first
/// call even with a patience shorter than the time spent on that address, and every later call
/// goes straight to the leader. Chunkservers heartbeat with 2 s of patience; before, the search
/// always began at the second master of the list and gave up after a follower's answer past the
/// deadline without keeping its hint, so while that master was down a chunkserver could not
/// heartbeat at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_finds_the_leader_past_an_unreachable_master() {
    let h = Harness::new();
    let addrs: Vec<SocketAddr> = (0..2).map(|_| free_addr()).collect();
    let n1 = h.start(1, addrs[0]).await;
    assert!(n1.initialize_if_new().await.unwrap());
    let n2 = h.start(2, addrs[1]).await;
    let setup = h.client(addrs.clone());
    setup
        .admin(AdminRequest::AddLearner {
            id: 2,
            addr: addrs[1].to_string(),
        })
        .await
        .unwrap();
    setup
        .admin(AdminRequest::SetVoters(BTreeSet::from([1, 2])))
        .await
        .unwrap();
    let leader = n1.status().leader.unwrap();
    let (leader, follower) = if leader == 1 {
        (addrs[0], addrs[1])
    } else {
        (addrs[1], addrs[0])
    };
    let dead = free_addr();
    // Each order puts the unreachable master where a search from either end meets it first.
    for (i, masters) in [
        vec![dead, follower, leader],
        vec![leader, dead, follower],
        vec![follower, dead, leader],
    ]
    .into_iter()
    .enumerate()
    {
        let mut client = h.client(masters.clone());
        client.set_patience(Duration::from_secs(2));
        client
            .admin(AdminRequest::SetVoters(BTreeSet::from([1, 2])))
            .await
            .unwrap_or_else(|e| panic!("{masters:?}: the first call failed: {e}"));
        // From now on the leader is known: writes and reads go straight there.
        for n in 0..3u64 {
            client
                .propose(set(&format!("order{i}-{n}"), "v", 1000 + i as u64 * 10 + n))
                .await
                .unwrap_or_else(|e| panic!("{masters:?}: write {n}: {e}"))
                .unwrap();
        }
        let seen = all_settings(&client, Consistency::Linearizable).await;
        assert_eq!(
            seen.get(&format!("order{i}-2")).map(String::as_str),
            Some("v")
        );
    }
    n1.shutdown().await;
    n2.shutdown().await;
}

/// The log store keeps its newest entries in memory (queued and recently durable, up to 8 MiB)
/// and reads older ones from redb. Reads of every window across that boundary, while the node
/// runs, must equal the same reads after a restart, when everything comes from redb.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_reads_from_the_memory_tail_equal_reads_from_redb() {
    use openraft::RaftLogReader;
    let h = Harness::new();
    let addr = free_addr();
    let node = h.start(1, addr).await;
    node.initialize_if_new().await.unwrap();
    wait_for("the node to lead", async || node.status().state == "leader").await;
    // 30 groups of 100 commands of ~4 KiB: about 12 MiB of entries, beyond the tail's 8 MiB.
    let value = "x".repeat(4000);
    for g in 0..30u64 {
        let commands = (0..100u64)
            .map(|i| set(&format!("k{}", (g * 100 + i) % 50), &value, g * 100 + i))
            .collect();
        for r in node.propose_many(commands).await {
            r.unwrap().unwrap();
        }
    }
    let last = node.status().last_log_index.unwrap();
    assert!(
        last >= 30,
        "30 groups should be at least 30 entries, got {last}"
    );
    let windows: Vec<(u64, u64)> = (0..=last)
        .step_by(3)
        .flat_map(|a| [(a, a + 1), (a, a + 7), (a, last + 1), (a, u64::MAX)])
        .collect();
    let mut log = node.log.clone();
    let mut before = Vec::new();
    for (a, b) in &windows {
        let entries = log.try_get_log_entries(*a..*b).await.unwrap();
        let want: Vec<u64> = (*a..(*b).min(last + 1)).collect();
        let got: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
        assert_eq!(got, want, "window {a}..{b}");
        before.push(entries);
    }
    node.shutdown().await;
    drop((node, log));
    // Reopen only the log: nothing is in memory, every read comes from redb. The stopped
    // node's tasks let go of the file shortly after shutdown.
    let path = h.data(1).join("raft-log.redb");
    let mut opened = None;
    wait_for("the log file to be released", async || {
        opened = cairn_raft::log_store::LogStore::open(&path).ok();
        opened.is_some()
    })
    .await;
    let mut reopened = opened.unwrap();
    for ((a, b), entries) in windows.iter().zip(&before) {
        let again = reopened.try_get_log_entries(*a..*b).await.unwrap();
        assert!(again == *entries, "window {a}..{b} differs after a restart");
    }
}
