//! The queue service (service 10): message queues in the manner of SQS, on the log.
//!
//! A message is committed on a majority when `Send` applies, or it was never sent. Receiving
//! is a command too: it hands each message out with a fresh receipt (a nonce drawn from the
//! command's id source) and hides it until its visibility timeout passes, so a leader change
//! neither loses a receipt nor hands a message out twice within its timeout. A message that is
//! not acked in time is delivered again; one received `max_receives` times goes to the
//! dead-letter queue on its next receive. FIFO queues hand out a message group's messages in
//! order, one batch of a group in flight at a time, and drop a resend of a deduplication id
//! within [`DEDUP_WINDOW_MS`].
//!
//! Every time is the command's stamp (`ctx.time_ms`), so every replica decides alike.
//!
//! Tables:
//! - `q.queues`: queue id (16 BE) → [`Queue`].
//! - `q.messages`: queue id ‖ sequence number (8 BE) → [`Message`]; sequence numbers grow with
//!   each send, so a range scan is the queue in send order.
//! - `q.visible`: queue id ‖ visible-from ms (8 BE) ‖ sequence number → [`Due`]: standard
//!   queues' messages in the order they become receivable, so a receive reads exactly the due
//!   ones.
//! - `q.dedup`: queue id ‖ deduplication id → [`Dedup`] (FIFO queues).

use std::collections::BTreeSet;

use cairn_engine::state::{
    ApplyContext, ApplyError, ServiceId, StateError, TypedService, TypedTable, reject,
};
use redb::{ReadTransaction, WriteTransaction};
use serde::{Deserialize, Serialize};

cairn_engine::refusals! {
    /// Why the queue service refuses a command.
    pub enum QueueRefusal {
        /// No queue has that id in the caller's tenant (or it is being deleted).
        NoSuchQueue = "no_such_queue",
        /// The tenant already has a queue of that name.
        AlreadyExists = "already_exists",
        /// A name, setting, message or batch outside the limits.
        InvalidArgument = "invalid_argument",
        /// The receipt is not the latest one of a message of this queue.
        InvalidReceipt = "invalid_receipt",
        /// The message's visibility timeout has passed (change visibility).
        NotInFlight = "not_in_flight",
        /// The tenant has [`QUEUES_MAX`] queues.
        LimitExceeded = "limit_exceeded",
    }
}

const QUEUES: TypedTable<u128, Queue> = TypedTable::new("q.queues");
const MESSAGES: TypedTable<Vec<u8>, Message> = TypedTable::new("q.messages");
const VISIBLE: TypedTable<Vec<u8>, Due> = TypedTable::new("q.visible");
const DEDUP: TypedTable<Vec<u8>, Dedup> = TypedTable::new("q.dedup");

/// Most queues per tenant.
pub const QUEUES_MAX: usize = 1000;
/// Longest queue name (SQS's), `.fifo` included.
pub const NAME_MAX: usize = 80;
/// Largest message (body and attributes), and the default limit.
pub const MESSAGE_MAX: u32 = 256 * 1024;
/// Most messages one send or ack names, and one receive returns.
pub const BATCH_MAX: usize = 10;
/// Most attributes per message.
pub const ATTRIBUTES_MAX: usize = 10;
/// Longest visibility timeout: 12 hours.
pub const VISIBILITY_MAX_MS: u64 = 12 * 3_600_000;
/// Longest delay: 15 minutes.
pub const DELAY_MAX_MS: u64 = 15 * 60_000;
/// Retention bounds: 1 minute to 14 days.
pub const RETENTION_MIN_MS: u64 = 60_000;
pub const RETENTION_MAX_MS: u64 = 14 * 86_400_000;
/// How long a FIFO queue remembers a deduplication id.
pub const DEDUP_WINDOW_MS: u64 = 5 * 60_000;
/// Messages one receive examines at most (due ones on a standard queue; on a FIFO queue, in
/// send order, the ones before a receivable one).
pub const SCAN_MAX: usize = 10_000;
/// Messages (or stale deduplication ids) one purge, delete or sweep removes at most; the
/// caller repeats while the answer says more remain.
pub const REMOVE_BATCH: usize = 10_000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSettings {
    pub visibility_timeout_ms: u64,
    pub retention_ms: u64,
    /// Receives after which a message goes to `dead_letter` instead.
    pub max_receives: Option<u32>,
    /// A queue of the same tenant and kind.
    pub dead_letter: Option<u128>,
    pub max_message_bytes: u32,
    pub delay_ms: u64,
    /// FIFO: a send without a deduplication id is deduplicated by its body's digest (which
    /// the gateway computes).
    pub content_dedup: bool,
}

impl Default for QueueSettings {
    fn default() -> Self {
        QueueSettings {
            visibility_timeout_ms: 30_000,
            retention_ms: 4 * 86_400_000,
            max_receives: None,
            dead_letter: None,
            max_message_bytes: MESSAGE_MAX,
            delay_ms: 0,
            content_dedup: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queue {
    pub tenant: u128,
    pub name: String,
    pub fifo: bool,
    pub settings: QueueSettings,
    pub created_ms: u64,
    /// The next message's sequence number.
    pub next_seq: u64,
    /// Messages stored (in flight, delayed and receivable).
    pub depth: u64,
    /// Being deleted: hidden, refusing everything; its messages go in batches.
    pub deleting: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub body: String,
    pub attributes: Vec<(String, String)>,
    pub sent_ms: u64,
    /// When it may next be received (after a delay, or when its visibility timeout ends).
    pub visible_ms: u64,
    pub receive_count: u32,
    pub first_received_ms: Option<u64>,
    /// The nonce of its latest receipt (0: never received).
    pub nonce: u64,
    /// FIFO: its message group.
    pub group: Option<String>,
}

/// An entry of the `q.visible` index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Due;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dedup {
    pub seq: u64,
    pub sent_ms: u64,
}

cairn_engine::records! {
    Queue = "queue",
    Message = "queue message",
    Due = "queue due",
    Dedup = "queue dedup",
}

/// A message to send.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewMessage {
    pub body: String,
    pub attributes: Vec<(String, String)>,
    /// Overrides the queue's delay (standard queues only, as SQS).
    pub delay_ms: Option<u64>,
    /// FIFO: required.
    pub group: Option<String>,
    /// FIFO: required unless the queue deduplicates by content (then the gateway gives the
    /// body's digest).
    pub dedup: Option<String>,
}

/// A receipt: which message, and which receive of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub seq: u64,
    pub nonce: u64,
}

impl Receipt {
    /// As clients see it: 32 hex digits.
    pub fn encode(self) -> String {
        format!("{:016x}{:016x}", self.seq, self.nonce)
    }

    pub fn parse(s: &str) -> Option<Receipt> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some(Receipt {
            seq: u64::from_str_radix(&s[..16], 16).ok()?,
            nonce: u64::from_str_radix(&s[16..], 16).ok()?,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueueCommand {
    Create {
        tenant: u128,
        name: String,
        fifo: bool,
        settings: QueueSettings,
    },
    Update {
        tenant: u128,
        id: u128,
        settings: QueueSettings,
    },
    /// Hide the queue and remove up to [`REMOVE_BATCH`] of its messages; the record goes with
    /// the last of them (repeat while `more`).
    Delete { tenant: u128, id: u128 },
    Send {
        tenant: u128,
        queue: u128,
        messages: Vec<NewMessage>,
    },
    /// Up to `max` receivable messages, hidden for `visibility_ms` (else the queue's).
    Receive {
        tenant: u128,
        queue: u128,
        max: u32,
        visibility_ms: Option<u64>,
    },
    Ack {
        tenant: u128,
        queue: u128,
        receipts: Vec<Receipt>,
    },
    /// Hide an in-flight message for `timeout_ms` from now (0: receivable at once).
    ChangeVisibility {
        tenant: u128,
        queue: u128,
        receipt: Receipt,
        timeout_ms: u64,
    },
    /// Remove up to [`REMOVE_BATCH`] messages (repeat while `more`).
    Purge { tenant: u128, queue: u128 },
    /// The leader's housekeeping: messages past their retention, stale deduplication ids, and
    /// the rest of queues being deleted, up to [`REMOVE_BATCH`] removals in all.
    Sweep,
}

/// What a receive hands out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivered {
    pub seq: u64,
    pub receipt: Receipt,
    pub message: Message,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueueResponse {
    Created {
        id: u128,
    },
    Done,
    /// Per message: its sequence number, and whether it repeated a deduplication id (then
    /// the number is the first send's, and nothing was stored).
    Sent(Vec<(u64, bool)>),
    Received(Vec<Delivered>),
    /// Per receipt: acked, or why not.
    Acked(Vec<Result<(), String>>),
    Removed {
        removed: u64,
        more: bool,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueueQuery {
    /// A queue by id (any tenant: the gateway checks the tenant; deleting ones too).
    Queue { id: u128 },
    /// A tenant's queues (not being deleted), by id.
    Queues { tenant: u128 },
    /// Whether a receive at `now_ms` would find a message (long polling asks before it
    /// proposes a receive).
    Ready { queue: u128, now_ms: u64 },
    /// Every queue's depth and oldest message's send time, for `/metrics`.
    Stats,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueueQueryResponse {
    Queue(Option<Queue>),
    Queues(Vec<(u128, Queue)>),
    Ready(bool),
    /// (id, queue, oldest message's `sent_ms`).
    Stats(Vec<(u128, Queue, Option<u64>)>),
}

#[derive(Clone, Copy, Debug, Default)]
pub struct QueueService;

fn invalid(message: impl Into<String>) -> ApplyError {
    reject(QueueRefusal::InvalidArgument, message)
}

fn message_key(queue: u128, seq: u64) -> Vec<u8> {
    let mut k = queue.to_be_bytes().to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn due_key(queue: u128, visible_ms: u64, seq: u64) -> Vec<u8> {
    let mut k = queue.to_be_bytes().to_vec();
    k.extend_from_slice(&visible_ms.to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn dedup_key(queue: u128, id: &str) -> Vec<u8> {
    let mut k = queue.to_be_bytes().to_vec();
    k.extend_from_slice(id.as_bytes());
    k
}

fn queue_of(k: &[u8]) -> Option<u128> {
    Some(u128::from_be_bytes(k.get(..16)?.try_into().ok()?))
}

fn u64_at(k: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(k.get(at..at + 8)?.try_into().ok()?))
}

/// Queue names: 1..=80 letters, digits, `-` or `_`; a FIFO queue's ends in `.fifo`, and only
/// a FIFO queue's does.
pub fn check_name(name: &str, fifo: bool) -> Result<(), ApplyError> {
    let stem = if fifo {
        name.strip_suffix(".fifo")
            .ok_or_else(|| invalid("a FIFO queue's name ends in .fifo"))?
    } else {
        if name.ends_with(".fifo") {
            return Err(invalid("only a FIFO queue's name ends in .fifo"));
        }
        name
    };
    if stem.is_empty()
        || name.len() > NAME_MAX
        || !stem
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(invalid(format!(
            "a queue name is 1 to {NAME_MAX} letters, digits, '-' or '_'"
        )));
    }
    Ok(())
}

/// The settings' bounds (the dead-letter queue is checked against the table).
pub fn check_settings(s: &QueueSettings) -> Result<(), ApplyError> {
    if s.visibility_timeout_ms > VISIBILITY_MAX_MS {
        return Err(invalid("the visibility timeout is at most 12 hours"));
    }
    if !(RETENTION_MIN_MS..=RETENTION_MAX_MS).contains(&s.retention_ms) {
        return Err(invalid("retention is 1 minute to 14 days"));
    }
    if s.delay_ms > DELAY_MAX_MS {
        return Err(invalid("the delay is at most 15 minutes"));
    }
    if !(1024..=MESSAGE_MAX).contains(&s.max_message_bytes) {
        return Err(invalid("the largest message is 1 KiB to 256 KiB"));
    }
    if s.max_receives.is_some() != s.dead_letter.is_some() {
        return Err(invalid(
            "a dead-letter queue and a maximum receive count go together",
        ));
    }
    if s.max_receives.is_some_and(|n| !(1..=1000).contains(&n)) {
        return Err(invalid("the maximum receive count is 1 to 1000"));
    }
    Ok(())
}

/// A message's size as its limit counts it: body and attribute names and values.
pub fn message_size(m: &NewMessage) -> usize {
    m.body.len()
        + m.attributes
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
}

fn check_message(q: &Queue, m: &NewMessage) -> Result<(), ApplyError> {
    if m.body.is_empty() {
        return Err(invalid("a message body is not empty"));
    }
    if message_size(m) > q.settings.max_message_bytes as usize {
        return Err(invalid(format!(
            "a message (body and attributes) is at most {} bytes here",
            q.settings.max_message_bytes
        )));
    }
    if m.attributes.len() > ATTRIBUTES_MAX {
        return Err(invalid(format!(
            "a message has at most {ATTRIBUTES_MAX} attributes"
        )));
    }
    for (k, _) in &m.attributes {
        if k.is_empty()
            || k.len() > 256
            || !k
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(invalid(
                "an attribute name is 1 to 256 letters, digits, '-', '_' or '.'",
            ));
        }
    }
    let token = |s: &Option<String>, what: &str| -> Result<(), ApplyError> {
        match s {
            Some(v)
                if v.is_empty() || v.len() > 128 || !v.bytes().all(|b| b.is_ascii_graphic()) =>
            {
                Err(invalid(format!(
                    "a {what} is 1 to 128 printable ASCII characters"
                )))
            }
            _ => Ok(()),
        }
    };
    token(&m.group, "message group id")?;
    token(&m.dedup, "deduplication id")?;
    if q.fifo {
        if m.group.is_none() {
            return Err(invalid("a FIFO queue's message names its message group"));
        }
        if m.dedup.is_none() {
            return Err(invalid(
                "a FIFO queue's message has a deduplication id (or the queue deduplicates by content)",
            ));
        }
        if m.delay_ms.is_some() {
            return Err(invalid(
                "a FIFO queue's messages take the queue's delay, not their own",
            ));
        }
    } else if m.group.is_some() || m.dedup.is_some() {
        return Err(invalid(
            "message groups and deduplication ids are for FIFO queues",
        ));
    }
    if m.delay_ms.is_some_and(|d| d > DELAY_MAX_MS) {
        return Err(invalid("the delay is at most 15 minutes"));
    }
    Ok(())
}

/// A queue of `tenant` (not being deleted), for the services that deliver into queues.
pub(crate) fn queue_of_tenant(
    txn: &WriteTransaction,
    tenant: u128,
    id: u128,
) -> Result<Queue, ApplyError> {
    tenant_queue(txn, tenant, id)
}

/// Send one message to a queue of `tenant` inside another service's command (a topic's
/// fan-out): its sequence number, or `None` when the queue is gone or refuses it (nothing is
/// written then). Storage errors still fail the command.
pub(crate) fn deliver(
    txn: &WriteTransaction,
    now: u64,
    tenant: u128,
    queue: u128,
    message: NewMessage,
) -> Result<Option<u64>, ApplyError> {
    match send(txn, now, (tenant, queue), vec![message]) {
        Ok(QueueResponse::Sent(s)) => Ok(s.first().map(|(seq, _)| *seq)),
        Ok(_) | Err(ApplyError::Rejected(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

fn tenant_queue(txn: &WriteTransaction, tenant: u128, id: u128) -> Result<Queue, ApplyError> {
    match QUEUES.open(txn)?.get(&id)? {
        Some(q) if q.tenant == tenant && !q.deleting => Ok(q),
        _ => Err(reject(QueueRefusal::NoSuchQueue, "no such queue")),
    }
}

fn check_dead_letter(
    txn: &WriteTransaction,
    id: Option<u128>,
    q: &Queue,
) -> Result<(), ApplyError> {
    let Some(d) = q.settings.dead_letter else {
        return Ok(());
    };
    if Some(d) == id {
        return Err(invalid("a queue is not its own dead-letter queue"));
    }
    let dl = tenant_queue(txn, q.tenant, d)
        .map_err(|_| invalid("the dead-letter queue is not a queue of this tenant"))?;
    if dl.fifo != q.fifo {
        return Err(invalid(
            "a dead-letter queue is of the same kind (FIFO or standard) as its queue",
        ));
    }
    Ok(())
}

/// Store a message at the end of queue `id` (its visibility in the index for standard
/// queues); its sequence number.
fn append(
    txn: &WriteTransaction,
    id: u128,
    q: &mut Queue,
    message: Message,
) -> Result<u64, ApplyError> {
    let seq = q.next_seq;
    q.next_seq += 1;
    q.depth += 1;
    if !q.fifo {
        VISIBLE
            .open(txn)?
            .insert(&due_key(id, message.visible_ms, seq), &Due)?;
    }
    MESSAGES
        .open(txn)?
        .insert(&message_key(id, seq), &message)?;
    Ok(seq)
}

/// Remove a message (and its index entry).
fn remove(
    txn: &WriteTransaction,
    id: u128,
    q: &mut Queue,
    seq: u64,
    m: &Message,
) -> Result<(), ApplyError> {
    MESSAGES.open(txn)?.remove(&message_key(id, seq))?;
    if !q.fifo {
        VISIBLE.open(txn)?.remove(&due_key(id, m.visible_ms, seq))?;
    }
    q.depth = q.depth.saturating_sub(1);
    Ok(())
}

fn set_visible(
    txn: &WriteTransaction,
    id: u128,
    q: &Queue,
    seq: u64,
    m: &mut Message,
    visible_ms: u64,
) -> Result<(), ApplyError> {
    if !q.fifo {
        let mut t = VISIBLE.open(txn)?;
        t.remove(&due_key(id, m.visible_ms, seq))?;
        t.insert(&due_key(id, visible_ms, seq), &Due)?;
    }
    m.visible_ms = visible_ms;
    Ok(())
}

fn send(
    txn: &WriteTransaction,
    now: u64,
    (tenant, id): (u128, u128),
    messages: Vec<NewMessage>,
) -> Result<QueueResponse, ApplyError> {
    if messages.is_empty() || messages.len() > BATCH_MAX {
        return Err(invalid(format!("a send holds 1 to {BATCH_MAX} messages")));
    }
    let mut q = tenant_queue(txn, tenant, id)?;
    for m in &messages {
        check_message(&q, m)?;
    }
    let mut out = Vec::with_capacity(messages.len());
    for m in messages {
        if let Some(d) = &m.dedup {
            let k = dedup_key(id, d);
            let seen = DEDUP.open(txn)?.get(&k)?;
            if let Some(seen) = seen.filter(|s| s.sent_ms + DEDUP_WINDOW_MS > now) {
                out.push((seen.seq, true));
                continue;
            }
        }
        let delay = m.delay_ms.unwrap_or(q.settings.delay_ms);
        let seq = append(
            txn,
            id,
            &mut q,
            Message {
                body: m.body,
                attributes: m.attributes,
                sent_ms: now,
                visible_ms: now + delay,
                receive_count: 0,
                first_received_ms: None,
                nonce: 0,
                group: m.group,
            },
        )?;
        if let Some(d) = &m.dedup {
            DEDUP
                .open(txn)?
                .insert(&dedup_key(id, d), &Dedup { seq, sent_ms: now })?;
        }
        out.push((seq, false));
    }
    QUEUES.open(txn)?.insert(&id, &q)?;
    Ok(QueueResponse::Sent(out))
}

/// Whether a message is one a receive hands out (not past its retention, not due for the
/// dead-letter queue).
fn counts(q: &Queue, m: &Message, now: u64) -> bool {
    m.sent_ms + q.settings.retention_ms > now
        && q.settings.max_receives.is_none_or(|n| m.receive_count < n)
}

/// The messages a receive at `now` may take, in the order it takes them (at most `max`
/// receivable ones, plus the expired and dead-lettered ones met on the way).
fn candidates(
    txn: &WriteTransaction,
    id: u128,
    q: &Queue,
    now: u64,
    max: usize,
) -> Result<Vec<(u64, Message)>, ApplyError> {
    let messages = MESSAGES.open(txn)?;
    let mut out = Vec::new();
    let mut usable = 0;
    if !q.fifo {
        let seqs: Vec<u64> = {
            let t = VISIBLE.open(txn)?;
            let mut seqs = Vec::new();
            for (examined, item) in t.range_from(&due_key(id, 0, 0))?.enumerate() {
                let (k, _) = item?;
                if queue_of(&k) != Some(id) || examined >= SCAN_MAX {
                    break;
                }
                match (u64_at(&k, 16), u64_at(&k, 24)) {
                    (Some(at), Some(seq)) if at <= now => seqs.push(seq),
                    _ => break,
                }
                if seqs.len() >= SCAN_MAX {
                    break;
                }
            }
            seqs
        };
        for seq in seqs {
            if usable >= max {
                break;
            }
            if let Some(m) = messages.get(&message_key(id, seq))? {
                if counts(q, &m, now) {
                    usable += 1;
                }
                out.push((seq, m));
            }
        }
        return Ok(out);
    }
    Ok(fifo_pick(
        messages.range_from(&message_key(id, 0))?,
        (id, q),
        now,
        max,
    )?)
}

/// A FIFO queue's messages a receive at `now` takes, in send order: a group with a message
/// in flight (or delayed) is blocked behind it, so its messages go out in order, one batch at
/// a time. Stops after `max` that [`counts`] (the expired and dead-lettered ones met before
/// come too, for the receive to remove).
fn fifo_pick(
    items: impl Iterator<Item = Result<(Vec<u8>, Message), StateError>>,
    (id, q): (u128, &Queue),
    now: u64,
    max: usize,
) -> Result<Vec<(u64, Message)>, StateError> {
    let mut blocked: BTreeSet<String> = BTreeSet::new();
    let mut out = Vec::new();
    let mut usable = 0;
    for (examined, item) in items.enumerate() {
        let (k, m) = item?;
        if queue_of(&k) != Some(id) || examined >= SCAN_MAX || usable >= max {
            break;
        }
        let Some(seq) = u64_at(&k, 16) else { break };
        let group = m.group.clone().unwrap_or_default();
        if blocked.contains(&group) {
            continue;
        }
        let expired = m.sent_ms + q.settings.retention_ms <= now;
        if m.visible_ms > now && !expired {
            blocked.insert(group);
            continue;
        }
        if counts(q, &m, now) {
            usable += 1;
        }
        out.push((seq, m));
    }
    Ok(out)
}

fn receive(
    txn: &WriteTransaction,
    ctx: &ApplyContext,
    (tenant, id): (u128, u128),
    max: u32,
    visibility_ms: Option<u64>,
) -> Result<QueueResponse, ApplyError> {
    if !(1..=BATCH_MAX as u32).contains(&max) {
        return Err(invalid(format!(
            "a receive takes 1 to {BATCH_MAX} messages"
        )));
    }
    if visibility_ms.is_some_and(|v| v > VISIBILITY_MAX_MS) {
        return Err(invalid("the visibility timeout is at most 12 hours"));
    }
    let now = ctx.time_ms;
    let mut q = tenant_queue(txn, tenant, id)?;
    let hide = visibility_ms.unwrap_or(q.settings.visibility_timeout_ms);
    let mut out = Vec::new();
    // The queue's record changes only when a message leaves it here.
    let mut removed = false;
    for (seq, mut m) in candidates(txn, id, &q, now, max as usize)? {
        if m.sent_ms + q.settings.retention_ms <= now {
            remove(txn, id, &mut q, seq, &m)?;
            removed = true;
            continue;
        }
        if let (Some(n), Some(dl)) = (q.settings.max_receives, q.settings.dead_letter)
            && m.receive_count >= n
        {
            remove(txn, id, &mut q, seq, &m)?;
            removed = true;
            // The dead-letter queue may have gone meanwhile: then the message goes with it.
            if let Ok(mut d) = tenant_queue(txn, tenant, dl) {
                let moved = Message {
                    visible_ms: now,
                    nonce: 0,
                    ..m
                };
                append(txn, dl, &mut d, moved)?;
                QUEUES.open(txn)?.insert(&dl, &d)?;
            }
            continue;
        }
        if out.len() >= max as usize {
            break;
        }
        let receipt = Receipt {
            seq,
            // Never 0, which means "never received".
            nonce: (ctx.fresh_id() as u64) | 1,
        };
        m.receive_count += 1;
        m.first_received_ms.get_or_insert(now);
        m.nonce = receipt.nonce;
        set_visible(txn, id, &q, seq, &mut m, now + hide)?;
        MESSAGES.open(txn)?.insert(&message_key(id, seq), &m)?;
        out.push(Delivered {
            seq,
            receipt,
            message: m,
        });
    }
    if removed {
        QUEUES.open(txn)?.insert(&id, &q)?;
    }
    Ok(QueueResponse::Received(out))
}

/// The message a receipt names, if it is still that receipt's.
fn by_receipt(
    txn: &WriteTransaction,
    id: u128,
    r: Receipt,
) -> Result<Result<Message, &'static str>, ApplyError> {
    Ok(match MESSAGES.open(txn)?.get(&message_key(id, r.seq))? {
        Some(m) if m.nonce == r.nonce && r.nonce != 0 => Ok(m),
        Some(_) => Err("the receipt is not this message's latest (it was received again)"),
        None => Err("no message of this queue has that receipt (acked, expired or never sent)"),
    })
}

fn ack(
    txn: &WriteTransaction,
    (tenant, id): (u128, u128),
    receipts: Vec<Receipt>,
) -> Result<QueueResponse, ApplyError> {
    if receipts.is_empty() || receipts.len() > BATCH_MAX {
        return Err(invalid(format!("an ack names 1 to {BATCH_MAX} receipts")));
    }
    let mut q = tenant_queue(txn, tenant, id)?;
    let mut out = Vec::with_capacity(receipts.len());
    for r in receipts {
        match by_receipt(txn, id, r)? {
            Ok(m) => {
                remove(txn, id, &mut q, r.seq, &m)?;
                out.push(Ok(()));
            }
            Err(why) => out.push(Err(why.to_owned())),
        }
    }
    QUEUES.open(txn)?.insert(&id, &q)?;
    Ok(QueueResponse::Acked(out))
}

fn change_visibility(
    txn: &WriteTransaction,
    now: u64,
    (tenant, id): (u128, u128),
    r: Receipt,
    timeout_ms: u64,
) -> Result<QueueResponse, ApplyError> {
    if timeout_ms > VISIBILITY_MAX_MS {
        return Err(invalid("the visibility timeout is at most 12 hours"));
    }
    let q = tenant_queue(txn, tenant, id)?;
    let mut m = by_receipt(txn, id, r)?.map_err(|why| reject(QueueRefusal::InvalidReceipt, why))?;
    if m.visible_ms <= now {
        return Err(reject(
            QueueRefusal::NotInFlight,
            "the message's visibility timeout has passed: receive it again",
        ));
    }
    set_visible(txn, id, &q, r.seq, &mut m, now + timeout_ms)?;
    MESSAGES.open(txn)?.insert(&message_key(id, r.seq), &m)?;
    Ok(QueueResponse::Done)
}

/// Remove up to `budget` messages of queue `id` for which `due` holds (all when `None`).
fn remove_messages(
    txn: &WriteTransaction,
    id: u128,
    q: &mut Queue,
    budget: usize,
    due: Option<u64>,
) -> Result<(u64, bool), ApplyError> {
    let found: Vec<(u64, Message)> = {
        let t = MESSAGES.open(txn)?;
        let mut found = Vec::new();
        for item in t.range_from(&message_key(id, 0))? {
            let (k, m) = item?;
            if queue_of(&k) != Some(id) {
                break;
            }
            if found.len() > budget {
                break;
            }
            if due.is_none_or(|now| m.sent_ms + q.settings.retention_ms <= now) {
                if let Some(seq) = u64_at(&k, 16) {
                    found.push((seq, m));
                }
            } else if due.is_some() {
                // Send order is age order: nothing younger has expired.
                break;
            }
        }
        found
    };
    let more = found.len() > budget;
    let mut removed = 0;
    for (seq, m) in found.into_iter().take(budget) {
        remove(txn, id, q, seq, &m)?;
        removed += 1;
    }
    Ok((removed, more))
}

fn purge(txn: &WriteTransaction, (tenant, id): (u128, u128)) -> Result<QueueResponse, ApplyError> {
    let mut q = tenant_queue(txn, tenant, id)?;
    let (removed, more) = remove_messages(txn, id, &mut q, REMOVE_BATCH, None)?;
    QUEUES.open(txn)?.insert(&id, &q)?;
    Ok(QueueResponse::Removed { removed, more })
}

/// Remove up to `budget` deduplication ids of queue `id` older than the window.
fn forget_dedup(
    txn: &WriteTransaction,
    id: u128,
    now: u64,
    budget: usize,
) -> Result<(u64, bool), ApplyError> {
    let stale: Vec<Vec<u8>> = {
        let t = DEDUP.open(txn)?;
        let mut stale = Vec::new();
        for item in t.range_from(&id.to_be_bytes().to_vec())? {
            let (k, d) = item?;
            if queue_of(&k) != Some(id) || stale.len() > budget {
                break;
            }
            if d.sent_ms + DEDUP_WINDOW_MS <= now {
                stale.push(k);
            }
        }
        stale
    };
    let more = stale.len() > budget;
    let mut t = DEDUP.open(txn)?;
    let mut removed = 0;
    for k in stale.into_iter().take(budget) {
        t.remove(&k)?;
        removed += 1;
    }
    Ok((removed, more))
}

/// Delete a queue: hide it, remove a batch of its messages and deduplication ids, and the
/// record once none remain.
fn delete_batch(
    txn: &WriteTransaction,
    id: u128,
    mut q: Queue,
    budget: usize,
) -> Result<(u64, bool), ApplyError> {
    q.deleting = true;
    let (a, more_messages) = remove_messages(txn, id, &mut q, budget, None)?;
    let (b, more_dedup) = forget_dedup(txn, id, u64::MAX, budget.saturating_sub(a as usize))?;
    let more = more_messages || more_dedup || (a as usize + b as usize) >= budget;
    if more {
        QUEUES.open(txn)?.insert(&id, &q)?;
    } else {
        QUEUES.open(txn)?.remove(&id)?;
    }
    Ok((a + b, more))
}

fn sweep(txn: &WriteTransaction, now: u64) -> Result<QueueResponse, ApplyError> {
    let queues = QUEUES.open(txn)?.all()?;
    let mut budget = REMOVE_BATCH;
    let mut removed = 0;
    let mut more = false;
    for (id, mut q) in queues {
        if budget == 0 {
            more = true;
            break;
        }
        let (n, m) = if q.deleting {
            delete_batch(txn, id, q, budget)?
        } else {
            let (a, more_a) = remove_messages(txn, id, &mut q, budget, Some(now))?;
            let (b, more_b) = forget_dedup(txn, id, now, budget - a as usize)?;
            if a > 0 {
                QUEUES.open(txn)?.insert(&id, &q)?;
            }
            (a + b, more_a || more_b)
        };
        removed += n;
        budget = budget.saturating_sub(n as usize);
        more |= m;
    }
    Ok(QueueResponse::Removed { removed, more })
}

impl TypedService for QueueService {
    const ID: ServiceId = ServiceId(10);
    const NAME: &'static str = "queues";
    const VERSION: u16 = 1;
    type Command = QueueCommand;
    type Response = QueueResponse;
    type Query = QueueQuery;
    type QueryResponse = QueueQueryResponse;

    fn init(&self, txn: &WriteTransaction) -> Result<(), StateError> {
        QUEUES.init(txn)?;
        MESSAGES.init(txn)?;
        VISIBLE.init(txn)?;
        DEDUP.init(txn)
    }

    fn apply(
        &self,
        txn: &WriteTransaction,
        ctx: &ApplyContext,
        command: QueueCommand,
    ) -> Result<QueueResponse, ApplyError> {
        let now = ctx.time_ms;
        match command {
            QueueCommand::Create {
                tenant,
                name,
                fifo,
                settings,
            } => {
                check_name(&name, fifo)?;
                check_settings(&settings)?;
                let all = QUEUES.open(txn)?.all()?;
                let mine: Vec<&Queue> = all
                    .iter()
                    .map(|(_, q)| q)
                    .filter(|q| q.tenant == tenant && !q.deleting)
                    .collect();
                if mine.iter().any(|q| q.name == name) {
                    return Err(reject(
                        QueueRefusal::AlreadyExists,
                        format!("a queue named {name} exists"),
                    ));
                }
                if mine.len() >= QUEUES_MAX {
                    return Err(reject(
                        QueueRefusal::LimitExceeded,
                        format!("a tenant has at most {QUEUES_MAX} queues"),
                    ));
                }
                let q = Queue {
                    tenant,
                    name,
                    fifo,
                    settings,
                    created_ms: now,
                    next_seq: 1,
                    depth: 0,
                    deleting: false,
                };
                check_dead_letter(txn, None, &q)?;
                let id = ctx.fresh_id();
                QUEUES.open(txn)?.insert(&id, &q)?;
                Ok(QueueResponse::Created { id })
            }
            QueueCommand::Update {
                tenant,
                id,
                settings,
            } => {
                let mut q = tenant_queue(txn, tenant, id)?;
                check_settings(&settings)?;
                q.settings = settings;
                check_dead_letter(txn, Some(id), &q)?;
                QUEUES.open(txn)?.insert(&id, &q)?;
                Ok(QueueResponse::Done)
            }
            QueueCommand::Delete { tenant, id } => {
                let q = match QUEUES.open(txn)?.get(&id)? {
                    Some(q) if q.tenant == tenant => q,
                    _ => return Err(reject(QueueRefusal::NoSuchQueue, "no such queue")),
                };
                let (removed, more) = delete_batch(txn, id, q, REMOVE_BATCH)?;
                Ok(QueueResponse::Removed { removed, more })
            }
            QueueCommand::Send {
                tenant,
                queue,
                messages,
            } => send(txn, now, (tenant, queue), messages),
            QueueCommand::Receive {
                tenant,
                queue,
                max,
                visibility_ms,
            } => receive(txn, ctx, (tenant, queue), max, visibility_ms),
            QueueCommand::Ack {
                tenant,
                queue,
                receipts,
            } => ack(txn, (tenant, queue), receipts),
            QueueCommand::ChangeVisibility {
                tenant,
                queue,
                receipt,
                timeout_ms,
            } => change_visibility(txn, now, (tenant, queue), receipt, timeout_ms),
            QueueCommand::Purge { tenant, queue } => purge(txn, (tenant, queue)),
            QueueCommand::Sweep => sweep(txn, now),
        }
    }

    fn query(
        &self,
        txn: &ReadTransaction,
        query: QueueQuery,
    ) -> Result<QueueQueryResponse, ApplyError> {
        Ok(match query {
            QueueQuery::Queue { id } => QueueQueryResponse::Queue(QUEUES.read(txn)?.get(&id)?),
            QueueQuery::Queues { tenant } => {
                let mut out = Vec::new();
                for item in QUEUES.read(txn)?.iter()? {
                    let (id, q) = item?;
                    if q.tenant == tenant && !q.deleting {
                        out.push((id, q));
                    }
                }
                QueueQueryResponse::Queues(out)
            }
            QueueQuery::Ready { queue, now_ms } => {
                let Some(q) = QUEUES.read(txn)?.get(&queue)? else {
                    return Ok(QueueQueryResponse::Ready(false));
                };
                let ready = if q.fifo {
                    let messages = MESSAGES.read(txn)?;
                    let picked = fifo_pick(
                        messages.range_from(&message_key(queue, 0))?,
                        (queue, &q),
                        now_ms,
                        1,
                    )?;
                    picked.iter().any(|(_, m)| counts(&q, m, now_ms))
                } else {
                    let t = VISIBLE.read(txn)?;
                    let first = t.range_from(&due_key(queue, 0, 0))?.next().transpose()?;
                    first.is_some_and(|(k, _)| {
                        queue_of(&k) == Some(queue) && u64_at(&k, 16).is_some_and(|at| at <= now_ms)
                    })
                };
                QueueQueryResponse::Ready(ready)
            }
            QueueQuery::Stats => {
                let messages = MESSAGES.read(txn)?;
                let mut out = Vec::new();
                for item in QUEUES.read(txn)?.iter()? {
                    let (id, q) = item?;
                    if q.deleting {
                        continue;
                    }
                    let oldest = match messages.range_from(&message_key(id, 0))?.next() {
                        Some(Ok((k, m))) if queue_of(&k) == Some(id) => Some(m.sent_ms),
                        Some(Err(e)) => return Err(e.into()),
                        _ => None,
                    };
                    out.push((id, q, oldest));
                }
                QueueQueryResponse::Stats(out)
            }
        })
    }
}
