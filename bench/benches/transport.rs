//! Bulk transfer over the internal transport against plain TCP, on loopback, in the same run.
//!
//! - `raw_tcp`: 256 MiB over one loopback TCP connection (the physical limit here).
//! - `quic_1_stream` / `quic_4_streams`: the same bytes over one or four QUIC streams between two
//!   `cairn_proto` endpoints (mutual TLS, Cairn's tuned windows and socket buffers, MTU discovery
//!   up to 6,500-byte datagrams, which loopback carries).
//! - `quic_1_stream_1452`: one stream with datagrams capped at 1452 bytes (quinn's default bound,
//!   what an Ethernet path without jumbo frames allows).
//!
//! Connections are set up outside the timed region; each transfer ends when the receiver has
//! read every byte and acknowledged it.
//!
//! Run: `cargo bench -p cairn-bench --bench transport`, then
//! `cargo run -p cairn-bench --bin criterion-ratios`.

// Benchmark code: a failure to set up is a failed run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cairn_proto::tls::CLUSTER_SERVER_NAME;
use cairn_proto::{ClusterCa, TransportOptions};
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: usize = 1 << 20;
const TOTAL: usize = 256 * MIB;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn tcp(g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    let rt = runtime();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    // Receiver: read everything, then answer one byte.
    rt.spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; MIB];
                let mut got = 0;
                while got < TOTAL {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got += n,
                    }
                }
                let _ = s.write_all(&[1]).await;
            });
        }
    });
    let data = vec![7u8; MIB];
    g.bench_function("raw_tcp", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                    s.set_nodelay(true).unwrap();
                    let t = Instant::now();
                    for _ in 0..TOTAL / MIB {
                        s.write_all(&data).await.unwrap();
                    }
                    let mut ack = [0u8; 1];
                    s.read_exact(&mut ack).await.unwrap();
                    total += t.elapsed();
                }
                total
            })
        })
    });
}

async fn quic_receiver(endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                tokio::spawn(async move {
                    while let Ok(Some(_chunk)) = recv.read_chunk(usize::MAX, true).await {}
                    let _ = send.write_all(&[1]).await;
                    let _ = send.finish();
                });
            }
        });
    }
}

fn quic(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    options: TransportOptions,
    suffix: &str,
    stream_counts: &[usize],
) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::create(dir.path()).unwrap();
    let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let (conn, _server, _client) = rt.block_on(async {
        let server =
            cairn_proto::endpoint(local, &ca.issue("receiver", &[]).unwrap(), &options).unwrap();
        let addr = server.local_addr().unwrap();
        tokio::spawn(quic_receiver(server.clone()));
        let client =
            cairn_proto::endpoint(local, &ca.issue("sender", &[]).unwrap(), &options).unwrap();
        let conn = client
            .connect(addr, CLUSTER_SERVER_NAME)
            .unwrap()
            .await
            .unwrap();
        (conn, server, client)
    });
    let data = bytes::Bytes::from(vec![7u8; MIB]);
    for &streams in stream_counts {
        let name = if streams == 1 {
            format!("quic_1_stream{suffix}")
        } else {
            format!("quic_{streams}_streams{suffix}")
        };
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let t = Instant::now();
                        let tasks: Vec<_> = (0..streams)
                            .map(|_| {
                                let conn = conn.clone();
                                let data = data.clone();
                                tokio::spawn(async move {
                                    let (mut send, mut recv) = conn.open_bi().await.unwrap();
                                    for _ in 0..TOTAL / MIB / streams {
                                        send.write_chunk(data.clone()).await.unwrap();
                                    }
                                    send.finish().unwrap();
                                    let mut ack = [0u8; 1];
                                    recv.read_exact(&mut ack).await.unwrap();
                                })
                            })
                            .collect();
                        for task in tasks {
                            task.await.unwrap();
                        }
                        total += t.elapsed();
                    }
                    total
                })
            })
        });
    }
}

fn transfer(c: &mut Criterion) {
    let mut g = c.benchmark_group("transport");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .measurement_time(Duration::from_secs(15))
        .throughput(Throughput::Bytes(TOTAL as u64));
    tcp(&mut g);
    quic(&mut g, TransportOptions::default(), "", &[1, 4]);
    let ethernet = TransportOptions {
        max_udp_payload: 1452,
        ..TransportOptions::default()
    };
    quic(&mut g, ethernet, "_1452", &[1]);
    g.finish();
}

criterion_group!(benches, transfer);
criterion_main!(benches);
