//! Commands apply once: a proposal sent again (a client that lost its leader mid-call and
//! retried on the new one, or hedged to two masters) finds the outcome of its first
//! application instead of applying twice.
//!
//! A command is identified by a digest of its envelope bytes, which carry the proposer's random
//! id seed and clock: two different proposals never share it, and a retry sends the same bytes.
//! Only successful outcomes are kept (a refusal changes nothing; a retried refused command is
//! decided afresh). They are kept for [`ONCE_WINDOW_MS`] of the state's clock (the highest command time
//! applied so far), far longer than any client keeps retrying (its patience, 20 s by default).
//!
//! ```text
//! cairn.once         digest (16) -> version 1 (1) | clock u64 LE (8) | postcard(Outcome)
//! cairn.once_by_age  clock u64 BE (8) | digest (16) -> (empty)
//! cairn.meta         "once_clock" -> u64 LE, the highest command time applied
//! ```

use redb::{ReadableTable, WriteTransaction};

use super::registry::Outcome;
use super::{META, StateError, Table, read_u64};

/// How long (in command time) an outcome is remembered.
pub const ONCE_WINDOW_MS: u64 = 120_000;
/// Remembered outcomes forgotten at most per applied command: each command adds one, so
/// forgetting keeps pace without one command paying for a backlog.
const FORGET_PER_COMMAND: usize = 8;
const RECORD_VERSION: u8 = 1;

const ONCE: Table = Table::new("cairn.once");
const ONCE_BY_AGE: Table = Table::new("cairn.once_by_age");
const META_CLOCK: &[u8] = b"once_clock";

/// The identity of one proposal: a digest of its envelope bytes.
pub(crate) fn identity(envelope: &[u8]) -> [u8; 16] {
    let mut id = [0u8; 16];
    id.copy_from_slice(&blake3::hash(envelope).as_bytes()[..16]);
    id
}

/// The outcome `id` had when it was first applied, if that is still remembered.
pub(crate) fn remembered(
    txn: &WriteTransaction,
    id: &[u8; 16],
) -> Result<Option<Outcome>, StateError> {
    let table = txn.open_table(ONCE)?;
    let Some(v) = table.get(id.as_slice())? else {
        return Ok(None);
    };
    let v = v.value();
    if v.len() < 9 || v[0] != RECORD_VERSION {
        return Err(StateError::Corrupt(format!(
            "cairn.once record of {} bytes, version {:?}",
            v.len(),
            v.first()
        )));
    }
    postcard::from_bytes(&v[9..])
        .map(Some)
        .map_err(|e| StateError::Corrupt(format!("cairn.once outcome: {e}")))
}

/// Remember `outcome` for `id`, applied with command time `time_ms`, and forget outcomes older
/// than the window.
pub(crate) fn remember(
    txn: &WriteTransaction,
    id: &[u8; 16],
    time_ms: u64,
    outcome: &Outcome,
) -> Result<(), StateError> {
    let clock = {
        let mut meta = txn.open_table(META)?;
        let before = read_u64(meta.get(META_CLOCK)?.as_ref().map(|v| v.value()))?;
        let clock = before.max(time_ms);
        if clock != before {
            meta.insert(META_CLOCK, clock.to_le_bytes().as_slice())?;
        }
        clock
    };
    let encoded = postcard::to_stdvec(outcome).map_err(|e| StateError::Encode(e.to_string()))?;
    let mut record = Vec::with_capacity(9 + encoded.len());
    record.push(RECORD_VERSION);
    record.extend_from_slice(&clock.to_le_bytes());
    record.extend_from_slice(&encoded);
    let mut once = txn.open_table(ONCE)?;
    let mut by_age = txn.open_table(ONCE_BY_AGE)?;
    once.insert(id.as_slice(), record.as_slice())?;
    by_age.insert(age_key(clock, id).as_slice(), [].as_slice())?;

    let Some(cutoff) = clock.checked_sub(ONCE_WINDOW_MS) else {
        return Ok(());
    };
    let expired: Vec<Vec<u8>> = by_age
        .range(..age_key(cutoff, &[0; 16]).as_slice())?
        .take(FORGET_PER_COMMAND)
        .map(|e| e.map(|(k, _)| k.value().to_vec()))
        .collect::<Result<_, _>>()?;
    for key in expired {
        by_age.remove(key.as_slice())?;
        once.remove(&key[8..])?;
    }
    Ok(())
}

fn age_key(clock: u64, id: &[u8; 16]) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&clock.to_be_bytes());
    k[8..].copy_from_slice(id);
    k
}
