//! The cron service (service 12): jobs on a schedule (standard 5-field cron expressions or
//! `@hourly`-style aliases, in a time zone) whose firings are commands on the log.
//!
//! Exactly once per scheduled instant: a job records the instant it is due next (`next_ms`),
//! and `Fire { scheduled_ms }` fires only when that is the job's due instant, moving it on in
//! the same command; a second `Fire` of the same instant (a new leader's planner racing an
//! old one's, a retried proposal) finds the instant moved and changes nothing. The proposer
//! computes schedules ([`next_after`]); the state machine only compares and records, so a
//! replay never depends on the cron library's version.
//!
//! A firing delivers in the same command: a queue target gets a message, a topic target
//! publishes (through the queue and topic services' own functions). After downtime, a job's
//! `missed` policy decides: `Skip` moves past the missed instants without firing, `FireOnce`
//! fires the first missed one once.
//!
//! Tables:
//! - `cron.jobs`: job id (16 BE) → [`Job`].
//! - `cron.runs`: job id ‖ scheduled ms (8 BE) → [`Run`]; the newest [`RUNS_KEPT`] per job.

use std::str::FromStr;

use cairn_engine::state::{
    ApplyContext, ApplyError, ServiceId, StateError, TypedService, TypedTable, reject,
};
use redb::{ReadTransaction, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::queues::{self, NewMessage};

cairn_engine::refusals! {
    /// Why the cron service refuses a command.
    pub enum CronRefusal {
        NoSuchJob = "no_such_job",
        AlreadyExists = "already_exists",
        InvalidArgument = "invalid_argument",
        LimitExceeded = "limit_exceeded",
    }
}

const JOBS: TypedTable<u128, Job> = TypedTable::new("cron.jobs");
const RUNS: TypedTable<Vec<u8>, Run> = TypedTable::new("cron.runs");

/// Most jobs per tenant.
pub const JOBS_MAX: usize = 1000;
/// Runs kept per job.
pub const RUNS_KEPT: usize = 100;
/// How late a firing may be before `Skip` jobs count the instant as missed.
pub const LATE_MS: u64 = 60_000;
/// Longest message body a job sends.
pub const BODY_MAX: usize = 64 * 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CronTarget {
    /// A message to a standard queue of the job's tenant.
    Queue { queue: u128, body: String },
    /// A publish to a topic of the job's tenant.
    Topic { topic: u128, body: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Missed {
    /// Instants missed by more than [`LATE_MS`] are passed over.
    Skip,
    /// The first missed instant fires once; the rest are passed over.
    FireOnce,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub tenant: u128,
    pub name: String,
    /// As given: five fields or an alias.
    pub schedule: String,
    /// An IANA time zone name (`UTC` by default).
    pub timezone: String,
    pub target: CronTarget,
    pub missed: Missed,
    pub paused: bool,
    pub created_ms: u64,
    /// The instant it is due next.
    pub next_ms: u64,
    pub last_fired_ms: Option<u64>,
    pub fired: u64,
}

/// One firing (or a skip of missed instants).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    pub scheduled_ms: u64,
    /// When the firing command applied (the proposer's stamp).
    pub fired_ms: u64,
    /// "delivered", "failed" or "skipped".
    pub status: String,
    pub detail: String,
}

cairn_engine::records! {
    Job = "cron job",
    Run = "cron run",
}

/// The first instant strictly after `after_ms` that `schedule` names in `timezone` (ms since
/// the epoch), or why the schedule or zone is not one.
pub fn next_after(schedule: &str, timezone: &str, after_ms: u64) -> Result<u64, String> {
    use chrono::TimeZone;
    let tz = chrono_tz::Tz::from_str(timezone).map_err(|_| {
        format!("unknown time zone {timezone:?} (an IANA name such as Europe/Paris)")
    })?;
    let fields = schedule.split_whitespace().count();
    if !schedule.trim_start().starts_with('@') && fields != 5 {
        return Err(format!(
            "a schedule is five fields (minute hour day-of-month month day-of-week) or an alias such as @hourly, not {fields} fields"
        ));
    }
    let cron = croner::Cron::from_str(schedule.trim())
        .map_err(|e| format!("not a cron expression: {e}"))?;
    let secs = i64::try_from(after_ms / 1000).map_err(|_| "a time out of range".to_owned())?;
    let from = tz
        .timestamp_opt(secs, 0)
        .single()
        .ok_or_else(|| "a time out of range".to_owned())?;
    let next = cron
        .find_next_occurrence(&from, false)
        .map_err(|e| format!("the schedule never fires: {e}"))?;
    u64::try_from(next.timestamp_millis()).map_err(|_| "a time out of range".to_owned())
}

/// Names: 1..=128 letters, digits, `-`, `_` or `.`.
pub fn check_name(name: &str) -> Result<(), ApplyError> {
    if name.is_empty()
        || name.len() > 128
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(reject(
            CronRefusal::InvalidArgument,
            "a job name is 1 to 128 letters, digits, '-', '_' or '.'",
        ));
    }
    Ok(())
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CronCommand {
    /// `next_ms`: the first instant, computed by the proposer.
    Create {
        tenant: u128,
        name: String,
        schedule: String,
        timezone: String,
        target: CronTarget,
        missed: Missed,
        next_ms: u64,
    },
    Delete {
        tenant: u128,
        id: u128,
    },
    /// Pause, or resume from `next_ms` (the next instant after the resume).
    SetPaused {
        tenant: u128,
        id: u128,
        paused: bool,
        next_ms: u64,
    },
    /// Fire the instant `scheduled_ms` if it is the job's due one; the job is due next at
    /// `next_ms`.
    Fire {
        id: u128,
        scheduled_ms: u64,
        next_ms: u64,
    },
    /// Pass over the missed instants from `scheduled_ms` (if still the due one) to `next_ms`.
    Skip {
        id: u128,
        scheduled_ms: u64,
        next_ms: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CronResponse {
    Created {
        id: u128,
    },
    Done,
    /// Whether this command fired (false: the instant was not due, already fired or passed).
    Fired {
        fired: bool,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CronQuery {
    Job {
        id: u128,
    },
    Jobs {
        tenant: u128,
    },
    /// Every unpaused job due at or before `now_ms` (the planner's question).
    Due {
        now_ms: u64,
    },
    /// A job's runs, newest first.
    Runs {
        id: u128,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CronQueryResponse {
    Job(Option<Job>),
    Jobs(Vec<(u128, Job)>),
    Due(Vec<(u128, Job)>),
    Runs(Vec<Run>),
}

#[derive(Clone, Copy, Debug, Default)]
pub struct CronService;

fn run_key(job: u128, scheduled_ms: u64) -> Vec<u8> {
    let mut k = job.to_be_bytes().to_vec();
    k.extend_from_slice(&scheduled_ms.to_be_bytes());
    k
}

fn job_of(k: &[u8]) -> Option<u128> {
    Some(u128::from_be_bytes(k.get(..16)?.try_into().ok()?))
}

fn tenant_job(txn: &WriteTransaction, tenant: u128, id: u128) -> Result<Job, ApplyError> {
    match JOBS.open(txn)?.get(&id)? {
        Some(j) if j.tenant == tenant => Ok(j),
        _ => Err(reject(CronRefusal::NoSuchJob, "no such job")),
    }
}

fn runs_of(
    items: impl DoubleEndedIterator<Item = Result<(Vec<u8>, Run), StateError>>,
    id: u128,
) -> Result<Vec<(Vec<u8>, Run)>, StateError> {
    let mut out = Vec::new();
    for item in items {
        let (k, r) = item?;
        if job_of(&k) != Some(id) {
            break;
        }
        out.push((k, r));
    }
    Ok(out)
}

/// Record a run, keeping the newest [`RUNS_KEPT`].
fn record(txn: &WriteTransaction, id: u128, run: Run) -> Result<(), ApplyError> {
    let mut t = RUNS.open(txn)?;
    t.insert(&run_key(id, run.scheduled_ms), &run)?;
    let all = runs_of(t.range_from(&run_key(id, 0))?, id)?;
    if all.len() > RUNS_KEPT {
        for (k, _) in all.iter().take(all.len() - RUNS_KEPT) {
            t.remove(k)?;
        }
    }
    Ok(())
}

fn check_target(txn: &WriteTransaction, tenant: u128, t: &CronTarget) -> Result<(), ApplyError> {
    let (body, ok) = match t {
        CronTarget::Queue { queue, body } => (
            body,
            queues::queue_of_tenant(txn, tenant, *queue).is_ok_and(|q| !q.fifo),
        ),
        CronTarget::Topic { topic, body } => (
            body,
            crate::topics::topic_of_tenant(txn, tenant, *topic).is_ok(),
        ),
    };
    if !ok {
        return Err(reject(
            CronRefusal::InvalidArgument,
            "the target is not a standard queue or a topic of this tenant",
        ));
    }
    if body.is_empty() || body.len() > BODY_MAX {
        return Err(reject(
            CronRefusal::InvalidArgument,
            "a job's message body is 1 byte to 64 KiB",
        ));
    }
    Ok(())
}

/// Deliver a firing: (status, detail).
fn deliver(
    txn: &WriteTransaction,
    now: u64,
    job: &Job,
    scheduled_ms: u64,
) -> Result<(&'static str, String), ApplyError> {
    let attributes = vec![
        ("cron-job".to_owned(), job.name.clone()),
        ("cron-scheduled-ms".to_owned(), scheduled_ms.to_string()),
    ];
    Ok(match &job.target {
        CronTarget::Queue { queue, body } => {
            let m = NewMessage {
                body: body.clone(),
                attributes,
                delay_ms: None,
                group: None,
                dedup: None,
            };
            match queues::deliver(txn, now, job.tenant, *queue, m)? {
                Some(seq) => ("delivered", format!("queue message {seq:016x}")),
                None => ("failed", "the queue is gone or refused the message".into()),
            }
        }
        CronTarget::Topic { topic, body } => {
            match crate::topics::publish(txn, now, job.tenant, *topic, body.clone(), attributes)? {
                Some((n, subs)) => (
                    "delivered",
                    format!("topic message {n} to {subs} subscriptions"),
                ),
                None => ("failed", "the topic is gone".into()),
            }
        }
    })
}

impl TypedService for CronService {
    const ID: ServiceId = ServiceId(12);
    const NAME: &'static str = "cron";
    const VERSION: u16 = 1;
    type Command = CronCommand;
    type Response = CronResponse;
    type Query = CronQuery;
    type QueryResponse = CronQueryResponse;

    fn init(&self, txn: &WriteTransaction) -> Result<(), StateError> {
        JOBS.init(txn)?;
        RUNS.init(txn)
    }

    fn apply(
        &self,
        txn: &WriteTransaction,
        ctx: &ApplyContext,
        command: CronCommand,
    ) -> Result<CronResponse, ApplyError> {
        let now = ctx.time_ms;
        match command {
            CronCommand::Create {
                tenant,
                name,
                schedule,
                timezone,
                target,
                missed,
                next_ms,
            } => {
                check_name(&name)?;
                if schedule.is_empty() || schedule.len() > 256 || timezone.len() > 64 {
                    return Err(reject(
                        CronRefusal::InvalidArgument,
                        "a schedule is at most 256 bytes and a time zone name 64",
                    ));
                }
                check_target(txn, tenant, &target)?;
                let all = JOBS.open(txn)?.all()?;
                let mine: Vec<&Job> = all
                    .iter()
                    .map(|(_, j)| j)
                    .filter(|j| j.tenant == tenant)
                    .collect();
                if mine.iter().any(|j| j.name == name) {
                    return Err(reject(
                        CronRefusal::AlreadyExists,
                        format!("a job named {name} exists"),
                    ));
                }
                if mine.len() >= JOBS_MAX {
                    return Err(reject(
                        CronRefusal::LimitExceeded,
                        format!("a tenant has at most {JOBS_MAX} jobs"),
                    ));
                }
                let id = ctx.fresh_id();
                JOBS.open(txn)?.insert(
                    &id,
                    &Job {
                        tenant,
                        name,
                        schedule,
                        timezone,
                        target,
                        missed,
                        paused: false,
                        created_ms: now,
                        next_ms,
                        last_fired_ms: None,
                        fired: 0,
                    },
                )?;
                Ok(CronResponse::Created { id })
            }
            CronCommand::Delete { tenant, id } => {
                tenant_job(txn, tenant, id)?;
                JOBS.open(txn)?.remove(&id)?;
                let runs = runs_of(RUNS.open(txn)?.range_from(&run_key(id, 0))?, id)?;
                let mut t = RUNS.open(txn)?;
                for (k, _) in runs {
                    t.remove(&k)?;
                }
                Ok(CronResponse::Done)
            }
            CronCommand::SetPaused {
                tenant,
                id,
                paused,
                next_ms,
            } => {
                let mut j = tenant_job(txn, tenant, id)?;
                if j.paused != paused {
                    j.paused = paused;
                    if !paused {
                        j.next_ms = next_ms;
                    }
                    JOBS.open(txn)?.insert(&id, &j)?;
                }
                Ok(CronResponse::Done)
            }
            CronCommand::Fire {
                id,
                scheduled_ms,
                next_ms,
            } => {
                let Some(mut j) = JOBS.open(txn)?.get(&id)? else {
                    return Ok(CronResponse::Fired { fired: false });
                };
                if j.paused || j.next_ms != scheduled_ms || next_ms <= scheduled_ms {
                    return Ok(CronResponse::Fired { fired: false });
                }
                let (status, detail) = deliver(txn, now, &j, scheduled_ms)?;
                j.next_ms = next_ms;
                j.last_fired_ms = Some(scheduled_ms);
                j.fired += 1;
                JOBS.open(txn)?.insert(&id, &j)?;
                record(
                    txn,
                    id,
                    Run {
                        scheduled_ms,
                        fired_ms: now,
                        status: status.into(),
                        detail,
                    },
                )?;
                Ok(CronResponse::Fired { fired: true })
            }
            CronCommand::Skip {
                id,
                scheduled_ms,
                next_ms,
            } => {
                let Some(mut j) = JOBS.open(txn)?.get(&id)? else {
                    return Ok(CronResponse::Fired { fired: false });
                };
                if j.next_ms != scheduled_ms || next_ms <= scheduled_ms {
                    return Ok(CronResponse::Fired { fired: false });
                }
                j.next_ms = next_ms;
                JOBS.open(txn)?.insert(&id, &j)?;
                record(
                    txn,
                    id,
                    Run {
                        scheduled_ms,
                        fired_ms: now,
                        status: "skipped".into(),
                        detail: "missed while the cluster was down or busy (policy: skip)".into(),
                    },
                )?;
                Ok(CronResponse::Fired { fired: false })
            }
        }
    }

    fn query(
        &self,
        txn: &ReadTransaction,
        query: CronQuery,
    ) -> Result<CronQueryResponse, ApplyError> {
        Ok(match query {
            CronQuery::Job { id } => CronQueryResponse::Job(JOBS.read(txn)?.get(&id)?),
            CronQuery::Jobs { tenant } => {
                let mut out = Vec::new();
                for item in JOBS.read(txn)?.iter()? {
                    let (id, j) = item?;
                    if j.tenant == tenant {
                        out.push((id, j));
                    }
                }
                CronQueryResponse::Jobs(out)
            }
            CronQuery::Due { now_ms } => {
                let mut out = Vec::new();
                for item in JOBS.read(txn)?.iter()? {
                    let (id, j) = item?;
                    if !j.paused && j.next_ms <= now_ms {
                        out.push((id, j));
                    }
                }
                CronQueryResponse::Due(out)
            }
            CronQuery::Runs { id } => {
                let mut runs: Vec<Run> = runs_of(RUNS.read(txn)?.range_from(&run_key(id, 0))?, id)?
                    .into_iter()
                    .map(|(_, r)| r)
                    .collect();
                runs.reverse();
                CronQueryResponse::Runs(runs)
            }
        })
    }
}

/// What the leader's planner proposes for a due job at `now_ms`: a firing of its due instant
/// (on time, or late under `FireOnce`) or a skip (late under `Skip`), each with the next
/// instant after `now_ms`. `None` when the schedule no longer parses (it did when made).
pub fn plan(id: u128, j: &Job, now_ms: u64) -> Option<CronCommand> {
    let next_ms = next_after(&j.schedule, &j.timezone, now_ms.max(j.next_ms)).ok()?;
    let late = now_ms.saturating_sub(j.next_ms) > LATE_MS;
    Some(if late && j.missed == Missed::Skip {
        CronCommand::Skip {
            id,
            scheduled_ms: j.next_ms,
            next_ms,
        }
    } else {
        CronCommand::Fire {
            id,
            scheduled_ms: j.next_ms,
            next_ms,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: u64 = 60_000;
    /// 2026-12-07T00:00:00Z.
    const DAY: u64 = 1_796_601_600_000;

    #[test]
    fn schedules_aliases_and_zones() {
        assert_eq!(next_after("*/5 * * * *", "UTC", DAY), Ok(DAY + 5 * MINUTE));
        assert_eq!(next_after("@hourly", "UTC", DAY + 1), Ok(DAY + 60 * MINUTE));
        assert_eq!(
            next_after("0 9 * * *", "UTC", DAY),
            Ok(DAY + 9 * 60 * MINUTE)
        );
        // 09:00 in Paris is 08:00 UTC in December.
        assert_eq!(
            next_after("0 9 * * *", "Europe/Paris", DAY),
            Ok(DAY + 8 * 60 * MINUTE)
        );
        assert!(next_after("* * * *", "UTC", DAY).is_err());
        assert!(next_after("61 * * * *", "UTC", DAY).is_err());
        assert!(next_after("* * * * *", "Mars/Olympus", DAY).is_err());
        assert!(next_after("not cron at all", "UTC", DAY).is_err());
    }

    #[test]
    fn the_planner_fires_on_time_and_follows_the_missed_policy_when_late() {
        let job = |missed| Job {
            tenant: 1,
            name: "j".into(),
            schedule: "* * * * *".into(),
            timezone: "UTC".into(),
            target: CronTarget::Queue {
                queue: 1,
                body: "x".into(),
            },
            missed,
            paused: false,
            created_ms: 0,
            next_ms: DAY + MINUTE,
            last_fired_ms: None,
            fired: 0,
        };
        assert_eq!(
            plan(7, &job(Missed::Skip), DAY + MINUTE + 200),
            Some(CronCommand::Fire {
                id: 7,
                scheduled_ms: DAY + MINUTE,
                next_ms: DAY + 2 * MINUTE
            })
        );
        // Ten minutes down: skip to the next instant, or fire the first missed one once.
        let late = DAY + 11 * MINUTE + 5;
        assert_eq!(
            plan(7, &job(Missed::Skip), late),
            Some(CronCommand::Skip {
                id: 7,
                scheduled_ms: DAY + MINUTE,
                next_ms: DAY + 12 * MINUTE
            })
        );
        assert_eq!(
            plan(7, &job(Missed::FireOnce), late),
            Some(CronCommand::Fire {
                id: 7,
                scheduled_ms: DAY + MINUTE,
                next_ms: DAY + 12 * MINUTE
            })
        );
    }
}
