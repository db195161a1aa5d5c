//! The cron service on a real state store, through the registry as the log applies it: a
//! property that any interleaving of planners' proposals (repeats, stale instants, skips, as
//! two leaders or retried proposals would make) fires every instant at most once, in order, and
//! delivers exactly one queue message per firing.

// Test code: a panic here is a failed test, which is what unwrap() should cause.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use cairn_engine::state::{Rejection, TypedService};
use cairn_master::cron::{
    CronCommand, CronQuery, CronQueryResponse, CronResponse, CronService, CronTarget, Missed,
};
use cairn_master::queues::{
    QueueCommand, QueueQuery, QueueQueryResponse, QueueResponse, QueueService, QueueSettings,
};
use proptest::prelude::*;

mod common;

const T: u128 = 5;
const MINUTE: u64 = 60_000;
const START: u64 = 1_796_601_600_000;

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
        let time = START + self.log.next_index();
        self.log.run::<S>(c, time)
    }

    fn ask<S: TypedService>(&self, q: &S::Query) -> S::QueryResponse {
        self.log.ask::<S>(q)
    }
}

fn setup() -> (State, u128, u128) {
    let mut s = State::new();
    let QueueResponse::Created { id: queue } = s
        .run::<QueueService>(&QueueCommand::Create {
            tenant: T,
            name: "ticks".into(),
            fifo: false,
            settings: QueueSettings::default(),
        })
        .unwrap()
    else {
        panic!()
    };
    let CronResponse::Created { id: job } = s
        .run::<CronService>(&CronCommand::Create {
            tenant: T,
            name: "tick".into(),
            schedule: "* * * * *".into(),
            timezone: "UTC".into(),
            target: CronTarget::Queue {
                queue,
                body: "tick".into(),
            },
            missed: Missed::Skip,
            next_ms: START + MINUTE,
        })
        .unwrap()
    else {
        panic!()
    };
    (s, job, queue)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn every_instant_fires_at_most_once_and_in_order(
        proposals in prop::collection::vec((0u64..8, any::<bool>(), 1u64..3), 1..40),
    ) {
        let (mut s, job, queue) = setup();
        let mut fired = Vec::new();
        for (minute, skip, ahead) in proposals {
            let scheduled_ms = START + (minute + 1) * MINUTE;
            let next_ms = scheduled_ms + ahead * MINUTE;
            let c = if skip {
                CronCommand::Skip { id: job, scheduled_ms, next_ms }
            } else {
                CronCommand::Fire { id: job, scheduled_ms, next_ms }
            };
            let CronResponse::Fired { fired: f } = s.run::<CronService>(&c).unwrap() else {
                panic!()
            };
            if f {
                prop_assert!(!skip);
                fired.push(scheduled_ms);
            }
        }
        // Strictly increasing: no instant twice, never one before a later one.
        prop_assert!(fired.windows(2).all(|w| w[0] < w[1]), "{:?}", fired);
        // One message per firing, and the history says so.
        let QueueQueryResponse::Queue(Some(q)) = s.ask::<QueueService>(&QueueQuery::Queue { id: queue }) else {
            panic!()
        };
        prop_assert_eq!(q.depth, fired.len() as u64);
        let CronQueryResponse::Runs(runs) = s.ask::<CronService>(&CronQuery::Runs { id: job }) else {
            panic!()
        };
        let delivered: Vec<u64> = runs
            .iter()
            .rev()
            .filter(|r| r.status == "delivered")
            .map(|r| r.scheduled_ms)
            .collect();
        prop_assert_eq!(delivered, fired);
    }
}

#[test]
fn paused_jobs_do_not_fire_and_other_tenants_see_nothing() {
    let (mut s, job, _) = setup();
    s.run::<CronService>(&CronCommand::SetPaused {
        tenant: T,
        id: job,
        paused: true,
        next_ms: 0,
    })
    .unwrap();
    let r = s
        .run::<CronService>(&CronCommand::Fire {
            id: job,
            scheduled_ms: START + MINUTE,
            next_ms: START + 2 * MINUTE,
        })
        .unwrap();
    assert_eq!(r, CronResponse::Fired { fired: false });
    let CronQueryResponse::Due(due) = s.ask::<CronService>(&CronQuery::Due {
        now_ms: START + 10 * MINUTE,
    }) else {
        panic!()
    };
    assert!(due.is_empty());
    let e = s
        .run::<CronService>(&CronCommand::Delete {
            tenant: T + 1,
            id: job,
        })
        .unwrap_err();
    assert_eq!(e.code, "no_such_job");
    let CronQueryResponse::Jobs(theirs) = s.ask::<CronService>(&CronQuery::Jobs { tenant: T + 1 })
    else {
        panic!()
    };
    assert!(theirs.is_empty());
    // A target of another tenant is refused.
    let QueueResponse::Created { id: theirs_q } = s
        .run::<QueueService>(&QueueCommand::Create {
            tenant: T + 1,
            name: "q".into(),
            fifo: false,
            settings: QueueSettings::default(),
        })
        .unwrap()
    else {
        panic!()
    };
    let e = s
        .run::<CronService>(&CronCommand::Create {
            tenant: T,
            name: "sneaky".into(),
            schedule: "* * * * *".into(),
            timezone: "UTC".into(),
            target: CronTarget::Queue {
                queue: theirs_q,
                body: "x".into(),
            },
            missed: Missed::Skip,
            next_ms: START + MINUTE,
        })
        .unwrap_err();
    assert_eq!(e.code, "invalid_argument");
}
