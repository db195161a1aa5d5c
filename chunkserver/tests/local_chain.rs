//! A data client in the same process as a chunkserver (as `cairn serve`'s gateway is) puts
//! that chunkserver at the head of each chain and hands it the data on a channel; the rest of
//! the chain is QUIC as usual. The write is the same contract: every replica stores and syncs
//! the bytes before the acknowledgement, and a broken chain fails cleanly and leaves nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use cairn_chunkserver::{Chunkserver, ChunkserverOptions};
use cairn_client::{DataClient, MasterClient};
use cairn_master::DataOptions;
use cairn_proto::{ClusterCa, TransportOptions};
use cairn_raft::RaftOptions;

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_process_chunkserver_heads_the_chain_and_a_broken_chain_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::create(&dir.path().join("ca")).unwrap();
    let (node, _plane) = cairn_master::start(
        1,
        &dir.path().join("master"),
        "127.0.0.1:0".parse().unwrap(),
        &ca.issue("master", &[]).unwrap(),
        RaftOptions::default(),
        DataOptions {
            // Every chain then holds the local server (placement is the master's; the client
            // only orders the chain).
            replication: 3,
            ..DataOptions::default()
        },
    )
    .await
    .unwrap();
    node.initialize_if_new().await.unwrap();
    let mut servers = Vec::new();
    for i in 0..3 {
        let options = ChunkserverOptions {
            masters: vec![node.addr],
            heartbeat: Duration::from_millis(200),
            scrub_rate: 0,
            ..ChunkserverOptions::default()
        };
        let id = ca.issue(&format!("cs-{i}"), &[]).unwrap();
        servers.push(
            Chunkserver::start(&dir.path().join(format!("cs{i}")), &id, options)
                .await
                .unwrap(),
        );
    }
    let ep = cairn_proto::endpoint(
        "127.0.0.1:0".parse().unwrap(),
        &ca.issue("client", &[]).unwrap(),
        &TransportOptions::default(),
    )
    .unwrap();
    let client = DataClient::new(MasterClient::new(ep.clone(), vec![node.addr]), ep)
        .with_local(servers[0].clone());
    let start = Instant::now();
    while client
        .status()
        .await
        .map_or(true, |s| s.servers.iter().filter(|s| s.alive).count() < 3)
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "chunkservers did not report"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Every chunk is on the local server (it heads each chain) and on both remote ones.
    for len in [0usize, 1, 65_537, 5 << 20] {
        let data = pattern(len);
        let written = client.put(&mut &data[..]).await.unwrap();
        assert_eq!(written.size, len as u64);
        for e in &written.extents {
            assert!(
                servers[0]
                    .store()
                    .stat(cairn_engine::chunk::ChunkHandle(e.handle.0))
                    .is_ok(),
                "chunk {} not on the local server",
                e.handle
            );
            let elsewhere = servers[1..]
                .iter()
                .filter(|s| {
                    s.store()
                        .stat(cairn_engine::chunk::ChunkHandle(e.handle.0))
                        .is_ok()
                })
                .count();
            assert_eq!(
                elsewhere, 2,
                "chunk {} should have two remote replicas",
                e.handle
            );
        }
        let mut out = Vec::new();
        client
            .read(&written.extents, 0, written.size, &mut out)
            .await
            .unwrap();
        assert_eq!(out, data);
    }

    // Both remote servers stop; the master still lists them for a while, so every chain it
    // hands out breaks at the local head's forward. The put fails with a clean error and the
    // local server keeps no chunk of it.
    let before = servers[0].store().list().len();
    for s in &servers[1..] {
        s.shutdown().await;
    }
    let data = pattern(3 << 20);
    if let Ok(w) = client.put(&mut &data[..]).await {
        panic!("a put with no live remote replica succeeded: {w:?}");
    }
    assert_eq!(
        servers[0].store().list().len(),
        before,
        "an abandoned chunk was left behind"
    );
    servers[0].shutdown().await;
    node.shutdown().await;
}
