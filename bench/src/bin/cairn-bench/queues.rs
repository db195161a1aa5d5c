//! `cairn-bench queues`: message cycles (send one message, receive it, ack it) through the queue
//! service of a one- and a three-node master group in this process (real redb files, real
//! mutual-TLS QUIC on loopback), beside the raw commit rate of the same group at the same
//! concurrency, measured in the same run. A cycle is three commands; the target is that it
//! costs no more than three commits' worth of the log: `raw commits/s ÷ cycles/s ≤ 3`.

use std::time::{Duration, Instant};

use cairn_client::MasterClient;
use cairn_master::dataplane::command;
use cairn_master::queues::{NewMessage, QueueCommand, QueueResponse, QueueService, QueueSettings};

use crate::{group, load, pct};

const TENANT: u128 = 1;

async fn queue_command(client: &MasterClient, c: &QueueCommand) -> anyhow::Result<QueueResponse> {
    let bytes = command::<QueueService>(c)?;
    match client.propose(bytes).await? {
        Ok(b) => Ok(<QueueService as cairn_engine::state::TypedService>::response(&b)?),
        Err(r) => anyhow::bail!("refused: {} {}", r.code, r.message),
    }
}

/// Latencies of each step of the cycles one run completed.
#[derive(Default)]
struct Cycles {
    send: Vec<Duration>,
    receive: Vec<Duration>,
    ack: Vec<Duration>,
    /// Receives that found nothing (another client took the message).
    empty: u64,
    errors: u64,
}

async fn cycles(
    client: &MasterClient,
    queue: u128,
    clients: usize,
    seconds: u64,
) -> (Cycles, Duration) {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut out = Cycles::default();
                let mut i = 0u64;
                while Instant::now() < deadline {
                    i += 1;
                    let t = Instant::now();
                    let sent = queue_command(
                        &client,
                        &QueueCommand::Send {
                            tenant: TENANT,
                            queue,
                            messages: vec![NewMessage {
                                body: format!("client {c} message {i}"),
                                attributes: Vec::new(),
                                delay_ms: None,
                                group: None,
                                dedup: None,
                            }],
                        },
                    )
                    .await;
                    if sent.is_err() {
                        out.errors += 1;
                        continue;
                    }
                    out.send.push(t.elapsed());
                    // Receive until one comes (another client may take this one, and this
                    // client another's).
                    let got = loop {
                        let t = Instant::now();
                        match queue_command(
                            &client,
                            &QueueCommand::Receive {
                                tenant: TENANT,
                                queue,
                                max: 1,
                                visibility_ms: None,
                            },
                        )
                        .await
                        {
                            Ok(QueueResponse::Received(d)) if !d.is_empty() => {
                                out.receive.push(t.elapsed());
                                break Some(d[0].receipt);
                            }
                            Ok(_) => {
                                out.empty += 1;
                                if Instant::now() >= deadline {
                                    break None;
                                }
                            }
                            Err(_) => {
                                out.errors += 1;
                                break None;
                            }
                        }
                    };
                    let Some(receipt) = got else { continue };
                    let t = Instant::now();
                    match queue_command(
                        &client,
                        &QueueCommand::Ack {
                            tenant: TENANT,
                            queue,
                            receipts: vec![receipt],
                        },
                    )
                    .await
                    {
                        Ok(QueueResponse::Acked(r)) if r.iter().all(Result::is_ok) => {
                            out.ack.push(t.elapsed());
                        }
                        _ => out.errors += 1,
                    }
                }
                out
            })
        })
        .collect();
    let mut all = Cycles::default();
    for t in tasks {
        if let Ok(c) = t.await {
            all.send.extend(c.send);
            all.receive.extend(c.receive);
            all.ack.extend(c.ack);
            all.empty += c.empty;
            all.errors += c.errors;
        }
    }
    all.send.sort();
    all.receive.sort();
    all.ack.sort();
    (all, start.elapsed())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub async fn run(
    seconds: u64,
    clients: Vec<usize>,
    nodes: Vec<u64>,
    dir: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let base = dir.unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::tempdir_in(&base)?;
    println!(
        "| nodes | clients | raw commits/s | cycles/s | commits per cycle | send p50/p99 ms | receive p50/p99 ms | ack p50/p99 ms | empty receives | errors |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut next = 1u64 << 40;
    for n in nodes {
        let (group_nodes, client) = group(&tmp.path().join(format!("group-{n}")), n).await?;
        let QueueResponse::Created { id: queue } = queue_command(
            &client,
            &QueueCommand::Create {
                tenant: TENANT,
                name: "bench".into(),
                fifo: false,
                settings: QueueSettings::default(),
            },
        )
        .await?
        else {
            anyhow::bail!("unexpected answer to create");
        };
        for &c in &clients {
            // Warm up connections and the leader cache.
            let _ = load(&client, c.min(4), 1, next).await;
            next += 10_000_000_000_000;
            let raw = load(&client, c, seconds, next).await;
            next += 10_000_000_000_000;
            let raw_rate = raw.commands as f64 / raw.elapsed.as_secs_f64();
            let (cy, took) = cycles(&client, queue, c, seconds).await;
            let rate = cy.ack.len() as f64 / took.as_secs_f64();
            println!(
                "| {n} | {c} | {raw_rate:.0} | {rate:.0} | {:.2} | {:.1} / {:.1} | {:.1} / {:.1} | {:.1} / {:.1} | {} | {} |",
                if rate > 0.0 {
                    raw_rate / rate
                } else {
                    f64::INFINITY
                },
                ms(pct(&cy.send, 0.5)),
                ms(pct(&cy.send, 0.99)),
                ms(pct(&cy.receive, 0.5)),
                ms(pct(&cy.receive, 0.99)),
                ms(pct(&cy.ack, 0.5)),
                ms(pct(&cy.ack, 0.99)),
                cy.empty,
                cy.errors + raw.errors,
            );
        }
        for node in &group_nodes {
            node.shutdown().await;
        }
    }
    Ok(())
}
