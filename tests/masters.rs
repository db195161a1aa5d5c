//! End-to-end: three `cairn master` processes on loopback, grown and inspected with the real
//! `cairn admin` commands; the leader is killed with SIGKILL and restarted; a client with a
//! certificate from another CA is refused.

// Test code: a panic here is a failed test, which is what unwrap() should cause.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cairn_client::MasterClient;
use cairn_engine::state::TypedService;
use cairn_engine::state::settings::{
    ClusterSettings, SettingsCommand, SettingsQuery, SettingsQueryResponse,
};
use cairn_proto::Consistency;
use cairn_proto::{NodeIdentity, TransportOptions};
use cairn_tests::{CairnProcess, PATIENCE, run};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_cairn");

fn free_udp() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn start_master(id: u64, data: &Path, addr: SocketAddr) -> CairnProcess {
    let mut p = CairnProcess::start(
        Path::new(BIN),
        &[
            "master",
            "--id",
            &id.to_string(),
            "--listen",
            &addr.to_string(),
            "--data",
            data.to_str().unwrap(),
        ],
        &[],
        data.parent().unwrap(),
    )
    .unwrap();
    p.wait_for_line("master listening on quic://").unwrap();
    p
}

fn cairn(args: &[&str], cwd: &Path) -> (bool, String, String) {
    let (status, out, err) = run(Path::new(BIN), args, &[], cwd).unwrap();
    (status.success(), out, err)
}

fn status_json(tls: &Path, master: SocketAddr, cwd: &Path) -> (bool, Value) {
    let (ok, out, err) = cairn(
        &[
            "admin",
            "status",
            "--master",
            &master.to_string(),
            "--tls",
            tls.to_str().unwrap(),
            "--json",
        ],
        cwd,
    );
    let v: Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("status output {out:?} ({e}); stderr {err}"));
    (ok, v)
}

fn set(i: u64) -> Vec<u8> {
    let c = SettingsCommand::Set {
        key: format!("k{i}"),
        value: format!("v{i}"),
    };
    let mut seed = [0u8; 16];
    seed[..8].copy_from_slice(&i.to_le_bytes());
    ClusterSettings::command(&c, 1_700_000_000_000 + i, seed)
        .unwrap()
        .encode()
}

async fn settings(client: &MasterClient) -> BTreeMap<String, String> {
    let q = ClusterSettings::encode_query(&SettingsQuery::List).unwrap();
    let out = client
        .query(ClusterSettings::ID, q, Consistency::Linearizable)
        .await
        .unwrap()
        .unwrap();
    match ClusterSettings::query_response(&out).unwrap() {
        SettingsQueryResponse::All(all) => all.into_iter().map(|(k, s)| (k, s.value)).collect(),
        other => panic!("{other:?}"),
    }
}

fn leader_of(v: &Value) -> Option<u64> {
    v["members"]
        .as_array()?
        .iter()
        .find(|m| m["state"] == "leader")
        .and_then(|m| m["id"].as_u64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_master_processes_fail_over_and_keep_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let data: Vec<PathBuf> = (1..=3).map(|i| root.join(format!("m{i}"))).collect();
    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_udp()).collect();
    let admin = root.join("admin-tls");

    // Master 1 creates the cluster CA and a one-node group on first start.
    let mut procs: BTreeMap<u64, CairnProcess> = BTreeMap::new();
    procs.insert(1, start_master(1, &data[0], addrs[0]));
    let d1 = data[0].to_str().unwrap();
    for (name, out) in [
        ("master-2", data[1].join("tls")),
        ("master-3", data[2].join("tls")),
        ("admin", admin.clone()),
    ] {
        let (ok, _, err) = cairn(
            &[
                "cluster",
                "issue-cert",
                "--data",
                d1,
                "--name",
                name,
                "--out",
                out.to_str().unwrap(),
            ],
            root,
        );
        assert!(ok, "{err}");
    }
    procs.insert(2, start_master(2, &data[1], addrs[1]));
    // Master 3 takes everything from a config file.
    let m3_config = root.join("m3.toml");
    std::fs::write(
        &m3_config,
        format!(
            "data = {:?}\n[master]\nid = 3\n[cluster]\nlisten = \"{}\"\n",
            data[2].to_str().unwrap(),
            addrs[2]
        ),
    )
    .unwrap();
    let mut m3 = CairnProcess::start(
        Path::new(BIN),
        &["master", "--config", m3_config.to_str().unwrap()],
        &[],
        root,
    )
    .unwrap();
    m3.wait_for_line("master listening on quic://").unwrap();
    procs.insert(3, m3);
    // Without an id a master refuses to start.
    let (ok, _, err) = cairn(
        &[
            "master",
            "--listen",
            "127.0.0.1:1",
            "--data",
            root.join("noid").to_str().unwrap(),
        ],
        root,
    );
    assert!(!ok && err.contains("missing `master.id`"), "{err}");
    let m1 = addrs[0].to_string();
    let tls = admin.to_str().unwrap();
    for (id, addr) in [(2, addrs[1]), (3, addrs[2])] {
        let (ok, out, err) = cairn(
            &[
                "admin",
                "cluster",
                "add-master",
                "--master",
                &m1,
                "--tls",
                tls,
                "--id",
                &id.to_string(),
                &addr.to_string(),
            ],
            root,
        );
        assert!(ok, "add-master {id}: {out} {err}");
    }
    let (healthy, v) = status_json(&admin, addrs[0], root);
    assert!(healthy, "{v:#}");
    assert_eq!(v["members"].as_array().unwrap().len(), 3, "{v:#}");
    let (ok, table, _) = cairn(&["admin", "status", "--master", &m1, "--tls", tls], root);
    assert!(ok && table.contains("group: healthy"), "{table}");
    println!("{table}");

    // Adding a master that is already there is refused (exit 2) and changes nothing: by id,
    // and by address under a new id.
    let add = |id: &str, addr: &str| {
        let args = [
            "admin",
            "cluster",
            "add-master",
            "--master",
            &m1,
            "--tls",
            tls,
            "--id",
            id,
            addr,
        ];
        let (status, out, err) = run(Path::new(BIN), &args, &[], root).unwrap();
        (status.code(), format!("{out}{err}"))
    };
    let (code, said) = add("2", &addrs[1].to_string());
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("master 2 is already a member"), "{said}");
    let (code, said) = add("9", &addrs[2].to_string());
    assert_eq!(code, Some(2), "{said}");
    assert!(
        said.contains(&format!("{} is already the address of master 3", addrs[2])),
        "{said}"
    );
    let (_, v) = status_json(&admin, addrs[0], root);
    assert_eq!(v["members"].as_array().unwrap().len(), 3, "{v:#}");

    // Output into a pipe whose reader has gone (`cairn admin status | head -0`) ends quietly.
    let mut child = std::process::Command::new(BIN)
        .args(["admin", "status", "--master", &m1, "--tls", tls])
        .current_dir(root)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(out.status.success(), "{:?} {err}", out.status);

    // Writes through a client holding a certificate from the cluster CA.
    let identity = NodeIdentity::load(&admin).unwrap();
    let ep = cairn_proto::endpoint(
        "127.0.0.1:0".parse().unwrap(),
        &identity,
        &TransportOptions::default(),
    )
    .unwrap();
    let client = MasterClient::new(ep, addrs.clone());
    let mut acked = BTreeMap::new();
    for i in 0..50 {
        client.propose(set(i)).await.unwrap().unwrap();
        acked.insert(format!("k{i}"), format!("v{i}"));
    }
    assert_eq!(settings(&client).await, acked);

    // kill -9 the leader: the others elect a new one, and nothing acknowledged is lost.
    let old = leader_of(&v).unwrap();
    procs.get_mut(&old).unwrap().kill().unwrap();
    let killed = Instant::now();
    // Ask the survivors directly (a status of the whole group waits on the dead member).
    let survivors: Vec<SocketAddr> = (1..=3u64)
        .filter(|i| *i != old)
        .map(|i| addrs[(i - 1) as usize])
        .collect();
    let new_leader = loop {
        let mut found = None;
        for s in &survivors {
            if let Ok(st) = client.status(*s).await
                && st.state == "leader"
            {
                found = Some(st.id);
            }
        }
        if let Some(l) = found {
            break l;
        }
        assert!(killed.elapsed() < PATIENCE, "no new leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!(
        "new leader {new_leader} elected {:?} after the old leader {old} was killed",
        killed.elapsed()
    );
    for i in 50..80 {
        client.propose(set(i)).await.unwrap().unwrap();
        acked.insert(format!("k{i}"), format!("v{i}"));
    }
    assert_eq!(settings(&client).await, acked);

    // `admin status` with a member down asks every master at once and reports the dead one
    // as unreachable (the group is then unhealthy: exit 1). The time it took is printed.
    let asked = Instant::now();
    let (m2, m3) = (addrs[1].to_string(), addrs[2].to_string());
    let every = [
        "admin", "status", "--master", &m1, "--master", &m2, "--master", &m3, "--tls", tls,
    ];
    let (ok, table, err) = cairn(&every, root);
    println!(
        "admin status with master {old} down took {:?}",
        asked.elapsed()
    );
    assert!(!ok && err.contains("not healthy"), "{table}{err}");
    let dead = addrs[(old - 1) as usize].to_string();
    let row = table
        .lines()
        .find(|l| l.contains(&dead))
        .unwrap_or_default();
    assert!(row.contains("unreachable"), "{table}");
    assert!(table.contains("group: UNHEALTHY"), "{table}");

    // The old leader restarts from its files and catches up.
    let idx = (old - 1) as usize;
    procs.insert(old, start_master(old, &data[idx], addrs[idx]));
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (healthy, v) = status_json(&admin, addrs[idx], root);
        let lagging = v["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["lag"].as_u64() != Some(0));
        if healthy && !lagging {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "restarted master never caught up: {v:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Its state was rebuilt from the log (applies are not fsynced; the log is): a stale read
    // on that node alone sees every acknowledged write.
    let ep = cairn_proto::endpoint(
        "127.0.0.1:0".parse().unwrap(),
        &identity,
        &TransportOptions::default(),
    )
    .unwrap();
    let only_restarted = MasterClient::new(ep, vec![addrs[idx]]);
    let q = ClusterSettings::encode_query(&SettingsQuery::List).unwrap();
    let out = only_restarted
        .query(ClusterSettings::ID, q, Consistency::Stale)
        .await
        .unwrap()
        .unwrap();
    let local: BTreeMap<String, String> = match ClusterSettings::query_response(&out).unwrap() {
        SettingsQueryResponse::All(all) => all.into_iter().map(|(k, s)| (k, s.value)).collect(),
        other => panic!("{other:?}"),
    };
    assert_eq!(local, acked, "the restarted master's state differs");

    // A client whose certificate comes from another CA is refused at the handshake.
    let other = root.join("other");
    let (ok, _, err) = cairn(
        &[
            "cluster",
            "init",
            "--data",
            other.to_str().unwrap(),
            "--name",
            "intruder",
        ],
        root,
    );
    assert!(ok, "{err}");
    let (ok, out, _) = cairn(
        &[
            "admin",
            "status",
            "--master",
            &m1,
            "--tls",
            other.join("tls").to_str().unwrap(),
            "--json",
        ],
        root,
    );
    assert!(!ok, "a foreign certificate must not get a status: {out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["healthy"], false);
    assert!(v["members"][0]["error"].is_string(), "{v:#}");

    // Remove a master: the group shrinks to two voters and keeps serving.
    let remove = if new_leader == 3 { 2 } else { 3 };
    let (ok, out, err) = cairn(
        &[
            "admin",
            "cluster",
            "remove-master",
            "--master",
            &m1,
            "--tls",
            tls,
            "--id",
            &remove.to_string(),
        ],
        root,
    );
    assert!(ok, "{out} {err}");
    client.propose(set(80)).await.unwrap().unwrap();
    acked.insert("k80".into(), "v80".into());
    assert_eq!(settings(&client).await, acked);
}

/// Start `args` and wait (up to the patience) for the process to exit by itself; returns
/// whether it succeeded and its log. A process still running then is killed and fails the test.
fn exits_by_itself(args: &[&str], cwd: &Path) -> (bool, String) {
    let mut p = CairnProcess::start(Path::new(BIN), args, &[], cwd).unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = p.exited() {
            // The log reader may lag the exit by a moment.
            std::thread::sleep(Duration::from_millis(200));
            return (status.success(), p.log());
        }
        if Instant::now() >= deadline {
            let log = p.log();
            p.kill().unwrap();
            panic!("{args:?} did not exit by itself; log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Operator errors with certificates. A chunkserver or a gateway whose certificate comes from
/// another cluster's CA says so in words and exits at start (it used to retry for ever, ~16
/// times a second); a node.key that is not node.pem's key, and a damaged node.pem, are named
/// plainly (not `KeyMismatch: keys may not be consistent: KeyMismatch`, not byte arrays).
#[test]
fn nodes_with_wrong_certificates_say_what_is_wrong_and_exit() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let d = |n: &str| root.join(n);
    for ca in ["ours", "theirs"] {
        let (ok, _, err) = cairn(
            &[
                "cluster",
                "init",
                "--data",
                d(ca).to_str().unwrap(),
                "--name",
                "master-1",
            ],
            root,
        );
        assert!(ok, "{err}");
    }
    let addr = free_udp();
    let mut master = start_master(1, &d("ours"), addr);
    let issue = |ca: &str, name: &str| {
        let (ok, _, err) = cairn(
            &[
                "cluster",
                "issue-cert",
                "--data",
                d(ca).to_str().unwrap(),
                "--name",
                name,
                "--out",
                d(name).join("tls").to_str().unwrap(),
            ],
            root,
        );
        assert!(ok, "{err}");
    };
    issue("theirs", "stranger-cs");
    issue("theirs", "stranger-gw");
    issue("ours", "mixed");
    issue("ours", "damaged");
    let addr_s = addr.to_string();
    let chunkserver = |name: &str| {
        exits_by_itself(
            &[
                "chunkserver",
                "--listen",
                &free_udp().to_string(),
                "--data",
                d(name).to_str().unwrap(),
                "--master",
                &addr_s,
            ],
            root,
        )
    };

    let (ok, log) = chunkserver("stranger-cs");
    assert!(!ok, "{log}");
    assert!(
        log.contains("cannot join the cluster")
            && log.contains("do not trust each other's certificates")
            && log.contains("another cluster's CA"),
        "{log}"
    );
    let (ok, log) = exits_by_itself(
        &[
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--data",
            d("stranger-gw").to_str().unwrap(),
            "--master",
            &addr_s,
        ],
        root,
    );
    assert!(!ok, "{log}");
    assert!(
        log.contains("do not trust each other's certificates"),
        "{log}"
    );

    // A key from another certificate folder.
    std::fs::copy(
        d("ours").join("tls/node.key"),
        d("mixed").join("tls/node.key"),
    )
    .unwrap();
    let (ok, log) = chunkserver("mixed");
    assert!(!ok, "{log}");
    assert!(
        log.contains("node.key is not the private key of node.pem"),
        "{log}"
    );
    assert_eq!(log.matches("KeyMismatch").count(), 0, "{log}");

    // A certificate cut short.
    let pem = std::fs::read_to_string(d("damaged").join("tls/node.pem")).unwrap();
    std::fs::write(d("damaged").join("tls/node.pem"), &pem[..pem.len() / 2]).unwrap();
    let (ok, log) = chunkserver("damaged");
    assert!(!ok, "{log}");
    assert!(
        log.contains("node.pem")
            && log.contains("never ends")
            && log.contains("-----END CERTIFICATE-----"),
        "{log}"
    );

    // The master itself was never disturbed: a node with the right certificate joins.
    issue("ours", "member");
    let mut member = CairnProcess::start(
        Path::new(BIN),
        &[
            "chunkserver",
            "--listen",
            &free_udp().to_string(),
            "--data",
            d("member").to_str().unwrap(),
            "--master",
            &addr_s,
        ],
        &[],
        root,
    )
    .unwrap();
    member.wait_for_line("chunkserver listening").unwrap();
    member.kill().unwrap();
    master.kill().unwrap();
}
