//! The topic service on a real state store with the queue service beside it, through the
//! registry as the log applies them: a property over random subscriptions, filter policies and
//! publishes against a reference that says which queues each message reaches.

// Test code: a panic here is a failed test, which is what unwrap() should cause.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use cairn_engine::state::{Rejection, TypedService};
use cairn_master::queues::{QueueCommand, QueueResponse, QueueService, QueueSettings};
use cairn_master::topics::{Matcher, Target, TopicCommand, TopicResponse, TopicService};
use proptest::prelude::*;

mod common;

const T: u128 = 3;

struct State {
    log: common::Log,
}

impl State {
    fn new() -> State {
        State {
            log: common::Log::new(),
        }
    }

    fn run<S: TypedService>(&mut self, c: &S::Command) -> Result<S::Response, Rejection> {
        let time = 1_000_000 + self.log.next_index();
        self.log.run::<S>(c, time)
    }
}

/// A filter policy as the test generates it, with its own reading of the rules.
#[derive(Clone, Debug)]
enum Rule {
    Is(&'static str),
    Prefix(&'static str),
    Exists(bool),
    Above(f64),
}

fn rule() -> impl Strategy<Value = Rule> {
    prop_oneof![
        prop::sample::select(vec!["red", "blue", "green"]).prop_map(Rule::Is),
        prop::sample::select(vec!["re", "b"]).prop_map(Rule::Prefix),
        any::<bool>().prop_map(Rule::Exists),
        prop::sample::select(vec![1.0, 5.0, 10.0]).prop_map(Rule::Above),
    ]
}

/// The reference: does an attribute value pass one rule.
fn holds(r: &Rule, v: Option<&str>) -> bool {
    match r {
        Rule::Is(s) => v == Some(*s),
        Rule::Prefix(p) => v.is_some_and(|v| v.starts_with(p)),
        Rule::Exists(e) => v.is_some() == *e,
        Rule::Above(n) => v
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(|x| x > *n),
    }
}

fn matcher(r: &Rule) -> Matcher {
    match r {
        Rule::Is(s) => Matcher::Exact((*s).into()),
        Rule::Prefix(p) => Matcher::Prefix((*p).into()),
        Rule::Exists(e) => Matcher::Exists(*e),
        Rule::Above(n) => Matcher::Numeric(vec![(">".into(), *n)]),
    }
}

type Policy = Option<Vec<(&'static str, Vec<Rule>)>>;

fn policy() -> impl Strategy<Value = Policy> {
    prop::option::of(prop::collection::vec(
        (
            prop::sample::select(vec!["colour", "size"]),
            prop::collection::vec(rule(), 1..3),
        ),
        1..3,
    ))
    .prop_map(|p| {
        // One entry per attribute name, as a JSON object would have.
        p.map(|entries| {
            let mut by: BTreeMap<&'static str, Vec<Rule>> = BTreeMap::new();
            for (k, rs) in entries {
                by.entry(k).or_default().extend(rs);
            }
            by.into_iter().collect()
        })
    })
}

fn attributes() -> impl Strategy<Value = Vec<(String, String)>> {
    (
        prop::option::of(prop::sample::select(vec!["red", "blue", "green", "black"])),
        prop::option::of(prop::sample::select(vec!["0", "3", "7", "12", "x"])),
    )
        .prop_map(|(c, s)| {
            let mut a = Vec::new();
            if let Some(c) = c {
                a.push(("colour".to_owned(), c.to_owned()));
            }
            if let Some(s) = s {
                a.push(("size".to_owned(), s.to_owned()));
            }
            a
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn each_message_reaches_exactly_the_queues_whose_policy_it_passes(
        policies in prop::collection::vec(policy(), 1..5),
        messages in prop::collection::vec(attributes(), 1..12),
    ) {
        let mut s = State::new();
        let TopicResponse::Created { id: topic } = s
            .run::<TopicService>(&TopicCommand::Create { tenant: T, name: "t".into() })
            .unwrap()
        else { panic!() };
        let mut queues = Vec::new();
        for (i, p) in policies.iter().enumerate() {
            let QueueResponse::Created { id: q } = s
                .run::<QueueService>(&QueueCommand::Create {
                    tenant: T,
                    name: format!("q{i}"),
                    fifo: false,
                    settings: QueueSettings::default(),
                })
                .unwrap()
            else { panic!() };
            let filter = p.as_ref().map(|entries| {
                entries
                    .iter()
                    .map(|(k, rs)| ((*k).to_owned(), rs.iter().map(matcher).collect()))
                    .collect()
            });
            s.run::<TopicService>(&TopicCommand::Subscribe {
                tenant: T,
                topic,
                target: Target::Queue { queue: q },
                filter,
            })
            .unwrap();
            queues.push(q);
        }
        let mut want: BTreeMap<u128, Vec<String>> = BTreeMap::new();
        for (n, attrs) in messages.iter().enumerate() {
            let body = format!("m{n}");
            let r = s
                .run::<TopicService>(&TopicCommand::Publish {
                    tenant: T,
                    topic,
                    body: body.clone(),
                    attributes: attrs.clone(),
                })
                .unwrap();
            let TopicResponse::Published { number, delivered } = r else { panic!() };
            prop_assert_eq!(number, n as u64 + 1);
            let value = |k: &str| attrs.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str());
            let mut reached = Vec::new();
            for (p, q) in policies.iter().zip(&queues) {
                let passes = p.as_ref().is_none_or(|entries| {
                    entries.iter().all(|(k, rs)| rs.iter().any(|r| holds(r, value(k))))
                });
                if passes {
                    want.entry(*q).or_default().push(body.clone());
                    reached.push(*q);
                }
            }
            // Deliveries go in subscription-id order; compare as sets.
            let mut got: Vec<u128> = delivered.iter().map(|(_, q, _)| *q).collect();
            got.sort_unstable();
            reached.sort_unstable();
            prop_assert_eq!(got, reached);
        }
        // Every queue holds exactly what the reference sent it, in publish order.
        for q in &queues {
            let mut got = Vec::new();
            loop {
                let QueueResponse::Received(d) = s
                    .run::<QueueService>(&QueueCommand::Receive {
                        tenant: T,
                        queue: *q,
                        max: 10,
                        visibility_ms: Some(3_600_000),
                    })
                    .unwrap()
                else { panic!() };
                if d.is_empty() {
                    break;
                }
                got.extend(d.into_iter().map(|d| d.message.body));
            }
            let expected = want.get(q).cloned().unwrap_or_default();
            prop_assert_eq!(got, expected);
        }
    }
}

#[test]
fn a_topic_stays_in_its_tenant_and_delivers_only_to_its_tenants_standard_queues() {
    let mut s = State::new();
    let TopicResponse::Created { id: topic } = s
        .run::<TopicService>(&TopicCommand::Create {
            tenant: T,
            name: "t".into(),
        })
        .unwrap()
    else {
        panic!()
    };
    let queue = |s: &mut State, tenant: u128, name: &str, fifo: bool| {
        let QueueResponse::Created { id } = s
            .run::<QueueService>(&QueueCommand::Create {
                tenant,
                name: name.into(),
                fifo,
                settings: QueueSettings::default(),
            })
            .unwrap()
        else {
            panic!()
        };
        id
    };
    let theirs = queue(&mut s, T + 1, "theirs", false);
    let fifo = queue(&mut s, T, "mine.fifo", true);
    for target in [theirs, fifo] {
        let e = s
            .run::<TopicService>(&TopicCommand::Subscribe {
                tenant: T,
                topic,
                target: Target::Queue { queue: target },
                filter: None,
            })
            .unwrap_err();
        assert_eq!(e.code, "invalid_argument");
    }
    let e = s
        .run::<TopicService>(&TopicCommand::Publish {
            tenant: T + 1,
            topic,
            body: "x".into(),
            attributes: Vec::new(),
        })
        .unwrap_err();
    assert_eq!(e.code, "no_such_topic");
    // A subscribed queue that is deleted misses messages; the topic goes on.
    let mine = queue(&mut s, T, "mine", false);
    s.run::<TopicService>(&TopicCommand::Subscribe {
        tenant: T,
        topic,
        target: Target::Queue { queue: mine },
        filter: None,
    })
    .unwrap();
    s.run::<QueueService>(&QueueCommand::Delete {
        tenant: T,
        id: mine,
    })
    .unwrap();
    let TopicResponse::Published { delivered, .. } = s
        .run::<TopicService>(&TopicCommand::Publish {
            tenant: T,
            topic,
            body: "after".into(),
            attributes: Vec::new(),
        })
        .unwrap()
    else {
        panic!()
    };
    assert!(delivered.is_empty());
}
