//! The topic service (service 11): publish once, deliver to every subscription whose filter
//! policy matches the message's attributes.
//!
//! A queue subscription is delivered in the same command that publishes (and so in the same
//! transaction as the queue's own tables): a publish that commits has reached every matching
//! queue that takes it, and one that does not commit has reached none. A queue that is gone,
//! or whose message size limit the message breaks, misses it (the answer lists who got it). Filter policies follow SNS's attribute policies: per attribute, a list
//! of alternatives, each an exact string, a number, `{"prefix": ..}`, `{"suffix": ..}`,
//! `{"anything-but": ..}`, `{"exists": bool}` or `{"numeric": [op, n, (op, n)]}`; every attribute
//! named must match.
//!
//! Tables:
//! - `t.topics`: topic id (16 BE) → [`Topic`].
//! - `t.subs`: topic id ‖ subscription id (16 BE each) → [`Subscription`].

use cairn_engine::state::{
    ApplyContext, ApplyError, ServiceId, StateError, TypedService, TypedTable, reject,
};
use redb::{ReadTransaction, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::queues::{self, NewMessage};

cairn_engine::refusals! {
    /// Why the topic service refuses a command.
    pub enum TopicRefusal {
        /// No topic (or subscription) has that id in the caller's tenant.
        NoSuchTopic = "no_such_topic",
        NoSuchSubscription = "no_such_subscription",
        /// The tenant already has a topic of that name.
        AlreadyExists = "already_exists",
        /// A name, filter policy, message or target outside the limits.
        InvalidArgument = "invalid_argument",
        /// Too many topics per tenant or subscriptions per topic.
        LimitExceeded = "limit_exceeded",
    }
}

const TOPICS: TypedTable<u128, Topic> = TypedTable::new("t.topics");
const SUBS: TypedTable<Vec<u8>, Subscription> = TypedTable::new("t.subs");

/// Most topics per tenant, subscriptions per topic.
pub const TOPICS_MAX: usize = 1000;
pub const SUBSCRIPTIONS_MAX: usize = 100;
/// Most attributes a filter policy names, and alternatives per attribute.
pub const POLICY_KEYS_MAX: usize = 10;
pub const POLICY_VALUES_MAX: usize = 100;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topic {
    pub tenant: u128,
    pub name: String,
    pub created_ms: u64,
    /// Messages published.
    pub published: u64,
}

/// Where a subscription delivers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    /// A standard queue of the topic's tenant, in the publishing command.
    Queue { queue: u128 },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Subscription {
    pub target: Target,
    /// Attribute name → alternatives; `None` takes every message.
    pub filter: Option<Vec<(String, Vec<Matcher>)>>,
    pub created_ms: u64,
    /// Messages delivered to it.
    pub delivered: u64,
}

/// One alternative of a filter policy's attribute.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Matcher {
    Exact(String),
    Number(f64),
    Prefix(String),
    Suffix(String),
    AnythingBut(Vec<String>),
    Exists(bool),
    /// Each (operator, bound): `=`, `<`, `<=`, `>`, `>=`; all must hold.
    Numeric(Vec<(String, f64)>),
}

cairn_engine::records! {
    Topic = "topic",
    Subscription = "topic subscription",
}

impl Matcher {
    /// Whether an attribute's value (`None`: the message lacks it) matches.
    pub fn matches(&self, value: Option<&str>) -> bool {
        let number = || value.and_then(|v| v.trim().parse::<f64>().ok());
        match self {
            Matcher::Exists(want) => value.is_some() == *want,
            Matcher::Exact(s) => value == Some(s.as_str()),
            Matcher::Number(n) => number().is_some_and(|v| v == *n),
            Matcher::Prefix(p) => value.is_some_and(|v| v.starts_with(p.as_str())),
            Matcher::Suffix(p) => value.is_some_and(|v| v.ends_with(p.as_str())),
            Matcher::AnythingBut(not) => value.is_some_and(|v| !not.iter().any(|n| n == v)),
            Matcher::Numeric(bounds) => number().is_some_and(|v| {
                bounds.iter().all(|(op, b)| match op.as_str() {
                    "=" => v == *b,
                    "<" => v < *b,
                    "<=" => v <= *b,
                    ">" => v > *b,
                    ">=" => v >= *b,
                    _ => false,
                })
            }),
        }
    }
}

/// Whether a message with `attributes` passes a filter policy: every attribute it names
/// matches one of its alternatives.
pub fn passes(filter: &[(String, Vec<Matcher>)], attributes: &[(String, String)]) -> bool {
    filter.iter().all(|(name, alternatives)| {
        let value = attributes
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str());
        alternatives.iter().any(|m| m.matches(value))
    })
}

fn check_filter(filter: &[(String, Vec<Matcher>)]) -> Result<(), ApplyError> {
    let bad = |m: &str| reject(TopicRefusal::InvalidArgument, m.to_owned());
    if filter.is_empty() || filter.len() > POLICY_KEYS_MAX {
        return Err(bad("a filter policy names 1 to 10 attributes"));
    }
    for (name, alternatives) in filter {
        if name.is_empty() || name.len() > 256 {
            return Err(bad("an attribute name is 1 to 256 bytes"));
        }
        if alternatives.is_empty() || alternatives.len() > POLICY_VALUES_MAX {
            return Err(bad(
                "an attribute of a filter policy has 1 to 100 alternatives",
            ));
        }
        for m in alternatives {
            if let Matcher::Numeric(bounds) = m
                && (bounds.is_empty()
                    || bounds.len() > 2
                    || bounds.iter().any(|(op, b)| {
                        !["=", "<", "<=", ">", ">="].contains(&op.as_str()) || !b.is_finite()
                    }))
            {
                return Err(bad(
                    "numeric matching is one or two (operator, number) pairs with =, <, <=, > or >=",
                ));
            }
        }
    }
    Ok(())
}

/// Topic names: 1..=256 letters, digits, `-` or `_` (SNS's).
pub fn check_name(name: &str) -> Result<(), ApplyError> {
    if name.is_empty()
        || name.len() > 256
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(reject(
            TopicRefusal::InvalidArgument,
            "a topic name is 1 to 256 letters, digits, '-' or '_'",
        ));
    }
    Ok(())
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum TopicCommand {
    Create {
        tenant: u128,
        name: String,
    },
    /// The topic and its subscriptions.
    Delete {
        tenant: u128,
        id: u128,
    },
    Subscribe {
        tenant: u128,
        topic: u128,
        target: Target,
        filter: Option<Vec<(String, Vec<Matcher>)>>,
    },
    Unsubscribe {
        tenant: u128,
        topic: u128,
        id: u128,
    },
    /// Deliver to every matching subscription, in this command.
    Publish {
        tenant: u128,
        topic: u128,
        body: String,
        attributes: Vec<(String, String)>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TopicResponse {
    Created {
        id: u128,
    },
    Done,
    /// The message's number on the topic, and per subscription it went to: (subscription,
    /// queue, the queue's sequence number).
    Published {
        number: u64,
        delivered: Vec<(u128, u128, u64)>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TopicQuery {
    Topic { id: u128 },
    Topics { tenant: u128 },
    Subscriptions { topic: u128 },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum TopicQueryResponse {
    Topic(Option<Topic>),
    Topics(Vec<(u128, Topic)>),
    Subscriptions(Vec<(u128, Subscription)>),
}

#[derive(Clone, Copy, Debug, Default)]
pub struct TopicService;

fn sub_key(topic: u128, id: u128) -> Vec<u8> {
    let mut k = topic.to_be_bytes().to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn topic_of(k: &[u8]) -> Option<u128> {
    Some(u128::from_be_bytes(k.get(..16)?.try_into().ok()?))
}

fn sub_id(k: &[u8]) -> Option<u128> {
    Some(u128::from_be_bytes(k.get(16..32)?.try_into().ok()?))
}

/// A topic of `tenant`, for the services that publish to topics (cron).
pub(crate) fn topic_of_tenant(
    txn: &WriteTransaction,
    tenant: u128,
    id: u128,
) -> Result<Topic, ApplyError> {
    tenant_topic(txn, tenant, id)
}

/// Publish inside another service's command: the message's number on the topic and how many
/// subscriptions got it, or `None` when the topic is gone or refuses the message (nothing is
/// written then).
pub(crate) fn publish(
    txn: &WriteTransaction,
    now: u64,
    tenant: u128,
    topic: u128,
    body: String,
    attributes: Vec<(String, String)>,
) -> Result<Option<(u64, usize)>, ApplyError> {
    match fan_out(txn, now, tenant, topic, body, attributes) {
        Ok(TopicResponse::Published { number, delivered }) => Ok(Some((number, delivered.len()))),
        Ok(_) | Err(ApplyError::Rejected(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Deliver a message to every subscription of `topic` whose filter it passes.
fn fan_out(
    txn: &WriteTransaction,
    now: u64,
    tenant: u128,
    topic: u128,
    body: String,
    attributes: Vec<(String, String)>,
) -> Result<TopicResponse, ApplyError> {
    let mut t = tenant_topic(txn, tenant, topic)?;
    let message = NewMessage {
        body,
        attributes,
        delay_ms: None,
        group: None,
        dedup: None,
    };
    if message.body.is_empty() || queues::message_size(&message) > queues::MESSAGE_MAX as usize {
        return Err(reject(
            TopicRefusal::InvalidArgument,
            "a message is 1 byte to 256 KiB (body and attributes)",
        ));
    }
    let subs = subscriptions(SUBS.open(txn)?.range_from(&sub_key(topic, 0))?, topic)?;
    let mut delivered = Vec::new();
    for (sid, mut s) in subs {
        if !s
            .filter
            .as_deref()
            .is_none_or(|f| passes(f, &message.attributes))
        {
            continue;
        }
        let Target::Queue { queue } = s.target;
        // A queue that went, or whose limits the message breaks, misses it; the others
        // still get it.
        if let Some(seq) = queues::deliver(txn, now, tenant, queue, message.clone())? {
            s.delivered += 1;
            SUBS.open(txn)?.insert(&sub_key(topic, sid), &s)?;
            delivered.push((sid, queue, seq));
        }
    }
    t.published += 1;
    let number = t.published;
    TOPICS.open(txn)?.insert(&topic, &t)?;
    Ok(TopicResponse::Published { number, delivered })
}

fn tenant_topic(txn: &WriteTransaction, tenant: u128, id: u128) -> Result<Topic, ApplyError> {
    match TOPICS.open(txn)?.get(&id)? {
        Some(t) if t.tenant == tenant => Ok(t),
        _ => Err(reject(TopicRefusal::NoSuchTopic, "no such topic")),
    }
}

fn subscriptions(
    items: impl Iterator<Item = Result<(Vec<u8>, Subscription), StateError>>,
    topic: u128,
) -> Result<Vec<(u128, Subscription)>, StateError> {
    let mut out = Vec::new();
    for item in items {
        let (k, s) = item?;
        if topic_of(&k) != Some(topic) {
            break;
        }
        if let Some(id) = sub_id(&k) {
            out.push((id, s));
        }
    }
    Ok(out)
}

impl TypedService for TopicService {
    const ID: ServiceId = ServiceId(11);
    const NAME: &'static str = "topics";
    const VERSION: u16 = 1;
    type Command = TopicCommand;
    type Response = TopicResponse;
    type Query = TopicQuery;
    type QueryResponse = TopicQueryResponse;

    fn init(&self, txn: &WriteTransaction) -> Result<(), StateError> {
        TOPICS.init(txn)?;
        SUBS.init(txn)
    }

    fn apply(
        &self,
        txn: &WriteTransaction,
        ctx: &ApplyContext,
        command: TopicCommand,
    ) -> Result<TopicResponse, ApplyError> {
        let now = ctx.time_ms;
        match command {
            TopicCommand::Create { tenant, name } => {
                check_name(&name)?;
                let all = TOPICS.open(txn)?.all()?;
                let mine: Vec<&Topic> = all
                    .iter()
                    .map(|(_, t)| t)
                    .filter(|t| t.tenant == tenant)
                    .collect();
                if mine.iter().any(|t| t.name == name) {
                    return Err(reject(
                        TopicRefusal::AlreadyExists,
                        format!("a topic named {name} exists"),
                    ));
                }
                if mine.len() >= TOPICS_MAX {
                    return Err(reject(
                        TopicRefusal::LimitExceeded,
                        format!("a tenant has at most {TOPICS_MAX} topics"),
                    ));
                }
                let id = ctx.fresh_id();
                TOPICS.open(txn)?.insert(
                    &id,
                    &Topic {
                        tenant,
                        name,
                        created_ms: now,
                        published: 0,
                    },
                )?;
                Ok(TopicResponse::Created { id })
            }
            TopicCommand::Delete { tenant, id } => {
                tenant_topic(txn, tenant, id)?;
                let subs = subscriptions(SUBS.open(txn)?.range_from(&sub_key(id, 0))?, id)?;
                let mut t = SUBS.open(txn)?;
                for (sid, _) in subs {
                    t.remove(&sub_key(id, sid))?;
                }
                TOPICS.open(txn)?.remove(&id)?;
                Ok(TopicResponse::Done)
            }
            TopicCommand::Subscribe {
                tenant,
                topic,
                target,
                filter,
            } => {
                tenant_topic(txn, tenant, topic)?;
                if let Some(f) = &filter {
                    check_filter(f)?;
                }
                let Target::Queue { queue } = &target;
                let q = queues::queue_of_tenant(txn, tenant, *queue).map_err(|_| {
                    reject(
                        TopicRefusal::InvalidArgument,
                        "the target is not a queue of this tenant",
                    )
                })?;
                if q.fifo {
                    return Err(reject(
                        TopicRefusal::InvalidArgument,
                        "a topic delivers to standard queues (a FIFO queue needs a message group per message)",
                    ));
                }
                let subs = subscriptions(SUBS.open(txn)?.range_from(&sub_key(topic, 0))?, topic)?;
                if subs.len() >= SUBSCRIPTIONS_MAX {
                    return Err(reject(
                        TopicRefusal::LimitExceeded,
                        format!("a topic has at most {SUBSCRIPTIONS_MAX} subscriptions"),
                    ));
                }
                if subs
                    .iter()
                    .any(|(_, s)| s.target == target && s.filter == filter)
                {
                    return Err(reject(
                        TopicRefusal::AlreadyExists,
                        "that subscription exists",
                    ));
                }
                let id = ctx.fresh_id();
                SUBS.open(txn)?.insert(
                    &sub_key(topic, id),
                    &Subscription {
                        target,
                        filter,
                        created_ms: now,
                        delivered: 0,
                    },
                )?;
                Ok(TopicResponse::Created { id })
            }
            TopicCommand::Unsubscribe { tenant, topic, id } => {
                tenant_topic(txn, tenant, topic)?;
                if !SUBS.open(txn)?.remove(&sub_key(topic, id))? {
                    return Err(reject(
                        TopicRefusal::NoSuchSubscription,
                        "no such subscription",
                    ));
                }
                Ok(TopicResponse::Done)
            }
            TopicCommand::Publish {
                tenant,
                topic,
                body,
                attributes,
            } => fan_out(txn, now, tenant, topic, body, attributes),
        }
    }

    fn query(
        &self,
        txn: &ReadTransaction,
        query: TopicQuery,
    ) -> Result<TopicQueryResponse, ApplyError> {
        Ok(match query {
            TopicQuery::Topic { id } => TopicQueryResponse::Topic(TOPICS.read(txn)?.get(&id)?),
            TopicQuery::Topics { tenant } => {
                let mut out = Vec::new();
                for item in TOPICS.read(txn)?.iter()? {
                    let (id, t) = item?;
                    if t.tenant == tenant {
                        out.push((id, t));
                    }
                }
                TopicQueryResponse::Topics(out)
            }
            TopicQuery::Subscriptions { topic } => TopicQueryResponse::Subscriptions(
                subscriptions(SUBS.read(txn)?.range_from(&sub_key(topic, 0))?, topic)?,
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn filter_policies_match_as_sns_documents() {
        let policy = vec![
            (
                "kind".to_owned(),
                vec![
                    Matcher::Exact("order".into()),
                    Matcher::Prefix("refund-".into()),
                ],
            ),
            (
                "amount".to_owned(),
                vec![Matcher::Numeric(vec![
                    (">".into(), 10.0),
                    ("<=".into(), 100.0),
                ])],
            ),
            ("test".to_owned(), vec![Matcher::Exists(false)]),
        ];
        assert!(passes(
            &policy,
            &attrs(&[("kind", "order"), ("amount", "50")])
        ));
        assert!(passes(
            &policy,
            &attrs(&[("kind", "refund-7"), ("amount", "100")])
        ));
        assert!(!passes(
            &policy,
            &attrs(&[("kind", "order"), ("amount", "10")])
        ));
        assert!(!passes(
            &policy,
            &attrs(&[("kind", "other"), ("amount", "50")])
        ));
        assert!(!passes(&policy, &attrs(&[("kind", "order")])));
        assert!(!passes(
            &policy,
            &attrs(&[("kind", "order"), ("amount", "50"), ("test", "1")])
        ));
        let but = vec![(
            "colour".to_owned(),
            vec![Matcher::AnythingBut(vec!["red".into()])],
        )];
        assert!(passes(&but, &attrs(&[("colour", "blue")])));
        assert!(!passes(&but, &attrs(&[("colour", "red")])));
        assert!(!passes(&but, &attrs(&[])));
        let n = vec![(
            "n".to_owned(),
            vec![Matcher::Number(5.0), Matcher::Suffix(".jpg".into())],
        )];
        assert!(passes(&n, &attrs(&[("n", "5.0")])));
        assert!(passes(&n, &attrs(&[("n", "a.jpg")])));
        assert!(!passes(&n, &attrs(&[("n", "6")])));
    }
}
