//! The queue service on a real state store, through the registry as the log applies it: a
//! property against an in-memory reference queue (what is received, when, how often, and that
//! an acked message never returns), FIFO groups and deduplication, dead letters, retention,
//! purge and delete in batches, and tenant isolation.

// Test code: a panic here is a failed test, which is what unwrap() should cause.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use cairn_engine::state::Rejection;
use cairn_master::queues::{
    DEDUP_WINDOW_MS, NewMessage, QueueCommand, QueueQuery, QueueQueryResponse, QueueResponse,
    QueueService, QueueSettings, Receipt,
};
use proptest::prelude::*;

mod common;

struct State {
    log: common::Log,
    now: u64,
}

const T: u128 = 7;

impl State {
    fn new() -> State {
        State {
            log: common::Log::new(),
            now: 1_000_000,
        }
    }

    fn run(&mut self, c: QueueCommand) -> Result<QueueResponse, Rejection> {
        self.log.run::<QueueService>(&c, self.now)
    }

    fn ok(&mut self, c: QueueCommand) -> QueueResponse {
        self.run(c).unwrap()
    }

    fn code(&mut self, c: QueueCommand) -> String {
        self.run(c).unwrap_err().code
    }

    fn ask(&self, q: QueueQuery) -> QueueQueryResponse {
        self.log.ask::<QueueService>(&q)
    }

    fn create(&mut self, name: &str, fifo: bool, settings: QueueSettings) -> u128 {
        match self.ok(QueueCommand::Create {
            tenant: T,
            name: name.into(),
            fifo,
            settings,
        }) {
            QueueResponse::Created { id } => id,
            other => panic!("{other:?}"),
        }
    }

    fn send(&mut self, queue: u128, body: &str) -> u64 {
        match self.ok(QueueCommand::Send {
            tenant: T,
            queue,
            messages: vec![plain(body)],
        }) {
            QueueResponse::Sent(s) => s[0].0,
            other => panic!("{other:?}"),
        }
    }

    fn receive(&mut self, queue: u128, max: u32) -> Vec<(String, Receipt, u32)> {
        match self.ok(QueueCommand::Receive {
            tenant: T,
            queue,
            max,
            visibility_ms: None,
        }) {
            QueueResponse::Received(d) => d
                .into_iter()
                .map(|d| (d.message.body, d.receipt, d.message.receive_count))
                .collect(),
            other => panic!("{other:?}"),
        }
    }

    fn depth(&self, queue: u128) -> u64 {
        match self.ask(QueueQuery::Queue { id: queue }) {
            QueueQueryResponse::Queue(Some(q)) => q.depth,
            other => panic!("{other:?}"),
        }
    }
}

fn plain(body: &str) -> NewMessage {
    NewMessage {
        body: body.into(),
        attributes: Vec::new(),
        delay_ms: None,
        group: None,
        dedup: None,
    }
}

fn fifo(body: &str, group: &str, dedup: &str) -> NewMessage {
    NewMessage {
        group: Some(group.into()),
        dedup: Some(dedup.into()),
        ..plain(body)
    }
}

const VT: u64 = 30_000;

/// The reference: a standard queue as a list of messages with a visibility time.
#[derive(Default)]
struct Model {
    /// seq → (body, visible_ms, receive_count, latest receipt nonce)
    messages: BTreeMap<u64, (String, u64, u32, u64)>,
    next: u64,
}

#[derive(Clone, Debug)]
enum Op {
    Send(u8),
    Receive(u32),
    /// Ack the i-th message of the last receive (stale receipts included).
    Ack(usize),
    /// Make the i-th message of the last receive receivable again.
    Release(usize),
    Wait(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => any::<u8>().prop_map(Op::Send),
        3 => (1u32..=10).prop_map(Op::Receive),
        2 => (0usize..10).prop_map(Op::Ack),
        1 => (0usize..10).prop_map(Op::Release),
        1 => prop_oneof![Just(1_000u64), Just(VT), Just(2 * VT)].prop_map(Op::Wait),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// A receive hands out exactly the receivable messages, oldest-visible first; a received
    /// message stays hidden for its timeout; only the latest receipt acks; an acked message
    /// never comes back; depth counts what is stored.
    #[test]
    fn a_standard_queue_behaves_as_the_reference(ops in proptest::collection::vec(op(), 1..60)) {
        let mut s = State::new();
        let q = s.create("model", false, QueueSettings::default());
        let mut m = Model { next: 1, ..Model::default() };
        let mut last: Vec<(u64, Receipt)> = Vec::new();
        let mut acked: Vec<u64> = Vec::new();
        for op in ops {
            match op {
                Op::Send(b) => {
                    let seq = s.send(q, &format!("m{b}"));
                    prop_assert_eq!(seq, m.next);
                    m.messages.insert(seq, (format!("m{b}"), s.now, 0, 0));
                    m.next += 1;
                }
                Op::Receive(max) => {
                    let got = match s.ok(QueueCommand::Receive { tenant: T, queue: q, max, visibility_ms: None }) {
                        QueueResponse::Received(d) => d,
                        other => panic!("{other:?}"),
                    };
                    // The reference: due messages by (visible time, seq).
                    let mut due: Vec<(u64, u64)> = m.messages.iter()
                        .filter(|(_, v)| v.1 <= s.now)
                        .map(|(seq, v)| (v.1, *seq))
                        .collect();
                    due.sort();
                    let want: Vec<u64> = due.into_iter().take(max as usize).map(|(_, seq)| seq).collect();
                    let seqs: Vec<u64> = got.iter().map(|d| d.seq).collect();
                    prop_assert_eq!(&seqs, &want);
                    last.clear();
                    for d in got {
                        prop_assert!(!acked.contains(&d.seq), "an acked message came back");
                        let e = m.messages.get_mut(&d.seq).unwrap();
                        prop_assert_eq!(&d.message.body, &e.0);
                        e.1 = s.now + VT;
                        e.2 += 1;
                        e.3 = d.receipt.nonce;
                        prop_assert_eq!(d.message.receive_count, e.2);
                        last.push((d.seq, d.receipt));
                    }
                }
                Op::Ack(i) => {
                    let Some((seq, r)) = last.get(i).copied() else { continue };
                    let r2 = match s.ok(QueueCommand::Ack { tenant: T, queue: q, receipts: vec![r] }) {
                        QueueResponse::Acked(r) => r,
                        other => panic!("{other:?}"),
                    };
                    let latest = m.messages.get(&seq).is_some_and(|e| e.3 == r.nonce);
                    prop_assert_eq!(r2[0].is_ok(), latest);
                    if latest {
                        m.messages.remove(&seq);
                        acked.push(seq);
                    }
                }
                Op::Release(i) => {
                    let Some((seq, r)) = last.get(i).copied() else { continue };
                    let res = s.run(QueueCommand::ChangeVisibility { tenant: T, queue: q, receipt: r, timeout_ms: 0 });
                    let ok = m.messages.get(&seq).is_some_and(|e| e.3 == r.nonce && e.1 > s.now);
                    prop_assert_eq!(res.is_ok(), ok, "{:?}", res);
                    if ok {
                        m.messages.get_mut(&seq).unwrap().1 = s.now;
                    }
                }
                Op::Wait(ms) => s.now += ms,
            }
            prop_assert_eq!(s.depth(q), m.messages.len() as u64);
        }
    }
}

#[test]
fn fifo_groups_go_in_order_one_batch_at_a_time_and_dedup_ids_drop_resends() {
    let mut s = State::new();
    assert_eq!(
        s.code(QueueCommand::Create {
            tenant: T,
            name: "orders".into(),
            fifo: true,
            settings: QueueSettings::default(),
        }),
        "invalid_argument"
    );
    let q = s.create("orders.fifo", true, QueueSettings::default());
    // A FIFO message needs its group and deduplication id.
    assert_eq!(
        s.code(QueueCommand::Send {
            tenant: T,
            queue: q,
            messages: vec![plain("x")],
        }),
        "invalid_argument"
    );
    let sent = s.ok(QueueCommand::Send {
        tenant: T,
        queue: q,
        messages: vec![
            fifo("a1", "a", "d1"),
            fifo("b1", "b", "d2"),
            fifo("a2", "a", "d3"),
            fifo("a1 again", "a", "d1"),
        ],
    });
    let QueueResponse::Sent(sent) = sent else {
        panic!()
    };
    assert_eq!(sent, vec![(1, false), (2, false), (3, false), (1, true)]);
    // One message at a time: group a's first blocks a2, b1 is free.
    let got = s.receive(q, 1);
    assert_eq!(got[0].0, "a1");
    let got = s.receive(q, 10);
    let bodies: Vec<&str> = got.iter().map(|g| g.0.as_str()).collect();
    assert_eq!(bodies, vec!["b1"]);
    assert!(s.receive(q, 10).is_empty());
    // The timeouts pass: a group's messages come in send order (a batch may hold several of
    // one group, as SQS hands them out), never a2 before a1.
    s.now += VT;
    let got = s.receive(q, 10);
    let bodies: Vec<&str> = got.iter().map(|g| g.0.as_str()).collect();
    assert_eq!(bodies, vec!["a1", "b1", "a2"]);
    let receipts: Vec<Receipt> = got.iter().take(2).map(|g| g.1).collect();
    s.ok(QueueCommand::Ack {
        tenant: T,
        queue: q,
        receipts,
    });
    // a2 is still in flight: nothing of group a until it is acked or its timeout passes.
    assert!(s.receive(q, 10).is_empty());
    s.now += VT;
    assert_eq!(s.receive(q, 10)[0].0, "a2");
    // After the window a deduplication id may be used again.
    s.now += DEDUP_WINDOW_MS;
    let QueueResponse::Sent(again) = s.ok(QueueCommand::Send {
        tenant: T,
        queue: q,
        messages: vec![fifo("a1 later", "a", "d1")],
    }) else {
        panic!()
    };
    assert_eq!(again, vec![(4, false)]);
}

#[test]
fn dead_letters_retention_delays_purge_delete_and_tenants() {
    let mut s = State::new();
    let dlq = s.create("dlq", false, QueueSettings::default());
    // The dead-letter queue is of this tenant and kind, and comes with a receive count.
    let bad = QueueSettings {
        dead_letter: Some(dlq),
        ..QueueSettings::default()
    };
    assert_eq!(
        s.code(QueueCommand::Create {
            tenant: T,
            name: "work".into(),
            fifo: false,
            settings: bad,
        }),
        "invalid_argument"
    );
    assert_eq!(
        s.code(QueueCommand::Create {
            tenant: T + 1,
            name: "work".into(),
            fifo: false,
            settings: QueueSettings {
                dead_letter: Some(dlq),
                max_receives: Some(2),
                ..QueueSettings::default()
            },
        }),
        "invalid_argument"
    );
    let q = s.create(
        "work",
        false,
        QueueSettings {
            dead_letter: Some(dlq),
            max_receives: Some(2),
            delay_ms: 5_000,
            retention_ms: 3_600_000,
            ..QueueSettings::default()
        },
    );
    assert_eq!(
        s.code(QueueCommand::Create {
            tenant: T,
            name: "work".into(),
            fifo: false,
            settings: QueueSettings::default(),
        }),
        "already_exists"
    );
    s.send(q, "poison");
    // Delayed: nothing yet.
    assert!(s.receive(q, 10).is_empty());
    s.now += 5_000;
    for n in 1..=2 {
        let got = s.receive(q, 10);
        assert_eq!((got[0].0.as_str(), got[0].2), ("poison", n));
        s.now += VT;
    }
    // The third receive moves it to the dead-letter queue.
    assert!(s.receive(q, 10).is_empty());
    assert_eq!(s.depth(q), 0);
    assert_eq!(s.receive(dlq, 10)[0].0, "poison");

    // Another tenant sees and touches nothing.
    assert_eq!(
        s.code(QueueCommand::Send {
            tenant: T + 1,
            queue: q,
            messages: vec![plain("x")],
        }),
        "no_such_queue"
    );
    let QueueQueryResponse::Queues(theirs) = s.ask(QueueQuery::Queues { tenant: T + 1 }) else {
        panic!()
    };
    assert!(theirs.is_empty());
    // A receipt of another queue acks nothing here.
    s.send(q, "mine");
    s.now += 5_000;
    let r = s.receive(q, 1)[0].1;
    let QueueResponse::Acked(res) = s.ok(QueueCommand::Ack {
        tenant: T,
        queue: dlq,
        receipts: vec![r],
    }) else {
        panic!()
    };
    assert!(res[0].is_err());

    // Retention: the sweep removes what is past it.
    s.send(q, "old");
    s.now += 3_600_000;
    assert!(matches!(
        s.ok(QueueCommand::Sweep),
        QueueResponse::Removed { removed, more: false } if removed >= 2
    ));
    assert_eq!(s.depth(q), 0);

    // Purge, then delete: the queue goes with its messages.
    for i in 0..25 {
        s.send(dlq, &format!("m{i}"));
    }
    assert!(matches!(
        s.ok(QueueCommand::Purge {
            tenant: T,
            queue: dlq
        }),
        QueueResponse::Removed { more: false, .. }
    ));
    assert_eq!(s.depth(dlq), 0);
    s.send(dlq, "last");
    assert!(matches!(
        s.ok(QueueCommand::Delete { tenant: T, id: dlq }),
        QueueResponse::Removed {
            removed: 1,
            more: false
        }
    ));
    assert!(matches!(
        s.ask(QueueQuery::Queue { id: dlq }),
        QueueQueryResponse::Queue(None)
    ));
    // Its dead letters now have nowhere to go, and the queue still works.
    s.send(q, "after");
    s.now += 5_000;
    assert_eq!(s.receive(q, 1)[0].0, "after");
}
