//! The scrubber shares the chunkserver's runtime with everything else it does: it must never
//! keep a worker from the rest.
//!
//! Found by the fault suite: a chunkserver whose store held only chunks being written spun in
//! the scrubber's loop without ever awaiting. The worker it ran on never came back, and the
//! timers and sockets that worker drove went with it: the node stopped heartbeating, answering
//! and finishing its own write, while its process looked alive.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use cairn_chunkserver::{Chunkserver, ChunkserverOptions};
use cairn_proto::chunk::{
    ChunkFailure, ChunkHandle, METHOD_READ, METHOD_WRITE, METHOD_WRITE_DATA, ReadHeader,
    ReadRequest, WriteHeader,
};
use cairn_proto::frame::{self, Frame, Kind};
use cairn_proto::{Client, ClientOptions, ClusterCa, TransportOptions};

/// How long a reply may take before the chunkserver counts as stuck. Not a speed bound: a
/// chunkserver answering a read of a missing chunk does it in microseconds; this only keeps a
/// stuck one from hanging the test.
const STUCK: Duration = Duration::from_secs(60);

#[test]
fn a_chunkserver_holding_only_a_chunk_being_written_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::create(&dir.path().join("ca")).unwrap();
    let server_id = ca.issue("cs", &[]).unwrap();
    let client_id = ca.issue("client", &[]).unwrap();

    // One worker, as a busy two-core machine effectively gives: whatever pins it pins the node.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let options = ChunkserverOptions {
        // No master: heartbeats fail and are retried, which is beside the point here.
        masters: vec!["127.0.0.1:9".parse().unwrap()],
        scrub_rate: 1 << 30,
        ..ChunkserverOptions::default()
    };
    let cs = server_rt
        .block_on(Chunkserver::start(
            &dir.path().join("cs"),
            &server_id,
            options,
        ))
        .unwrap();
    let addr = cs.addr();

    // The client runs on its own thread and runtime, so a stuck server cannot stop it.
    let (tx, rx) = mpsc::channel();
    let client = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let ep = cairn_proto::endpoint(
                "127.0.0.1:0".parse().unwrap(),
                &client_id,
                &TransportOptions::default(),
            )
            .unwrap();
            let client = Client::new(ep, ClientOptions::default());
            // A write that has begun and not ended: the store's only chunk is unsealed.
            let header = WriteHeader {
                handle: ChunkHandle(1),
                version: 1,
                chain: Vec::new(),
            };
            let body = Bytes::from(postcard::to_stdvec(&header).unwrap());
            let (mut send, _recv) = client.open_stream(addr, METHOD_WRITE, body).await.unwrap();
            let piece = Frame::new(Kind::Request, METHOD_WRITE_DATA, vec![7u8; 4096]);
            frame::write_frame_quic(&mut send, &piece).await.unwrap();
            // The scrubber sleeps 5 s while the store is empty; give it time to wake and find
            // the unsealed chunk, then ask the server something.
            tokio::time::sleep(Duration::from_secs(7)).await;
            tx.send(read_missing(&client, addr).await).unwrap();
            // Keep the write open until the test has its answer.
            tokio::time::sleep(Duration::from_secs(1)).await;
        });
    });

    match rx.recv_timeout(STUCK + Duration::from_secs(10)) {
        Ok(answer) => {
            let failure = answer.expect_err("chunk 2 was never written");
            assert!(failure.message.contains("not found"), "{failure:?}");
        }
        Err(_) => {
            // The runtime's worker never comes back: don't wait for it on drop.
            server_rt.shutdown_background();
            panic!(
                "the chunkserver stopped answering while its only chunk was being written \
                 (its runtime is pinned)"
            );
        }
    }
    client.join().unwrap();
    drop(cs);
    server_rt.shutdown_timeout(Duration::from_secs(5));
}

/// Ask for a chunk the server does not hold; the answer is its refusal.
async fn read_missing(client: &Client, addr: SocketAddr) -> Result<ReadHeader, ChunkFailure> {
    let request = ReadRequest {
        handle: ChunkHandle(2),
        version: 1,
        offset: 0,
        len: u64::MAX,
    };
    let body = Bytes::from(postcard::to_stdvec(&request).unwrap());
    let asked = async {
        let (_send, mut recv) = client.open_stream(addr, METHOD_READ, body).await.unwrap();
        let reply = frame::read_frame(&mut recv, 1 << 20).await.unwrap();
        assert_eq!((reply.kind, reply.method), (Kind::Response, METHOD_READ));
        postcard::from_bytes::<Result<ReadHeader, ChunkFailure>>(&reply.body).unwrap()
    };
    match tokio::time::timeout(STUCK, asked).await {
        Ok(answer) => answer,
        Err(_) => panic!("no answer to a read in {STUCK:?}"),
    }
}
