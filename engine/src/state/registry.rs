//! The registry: routes each command of a log batch to its service and applies the whole batch
//! in one redb write transaction, with the last applied index.

use std::collections::BTreeMap;

use redb::{ReadableDatabase, ReadableTable};

use super::command::{Command, ServiceId};
use super::once;
use super::service::{ApplyContext, ApplyError, Envelope, Rejection, Service};
use super::{META, META_LAST_APPLIED, StateError, StateStore, read_u64};

/// The result of one command: the service's response bytes, or its deterministic rejection.
pub type Outcome = Result<Vec<u8>, Rejection>;

/// Every service known to this build, by id.
#[derive(Default)]
pub struct Registry {
    services: BTreeMap<ServiceId, Box<dyn Service>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.services.iter().map(|(id, s)| (id.0, s.name())))
            .finish()
    }
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    pub fn register(&mut self, service: impl Service + 'static) -> Result<(), StateError> {
        let id = service.id();
        if self.services.contains_key(&id) {
            return Err(StateError::DuplicateService(id));
        }
        self.services.insert(id, Box::new(service));
        Ok(())
    }

    /// Create every registered service's tables (idempotent).
    pub fn init(&self, store: &StateStore) -> Result<(), StateError> {
        let txn = store.db().begin_write()?;
        for s in self.services.values() {
            s.init(&txn)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Apply log entries `(index, envelope bytes)` in one transaction. Indexes must increase and
    /// follow the last applied one. Returns one outcome per entry; a storage failure returns
    /// `Err` and commits nothing.
    pub fn apply_batch<'a>(
        &self,
        store: &StateStore,
        entries: impl IntoIterator<Item = (u64, &'a [u8])>,
    ) -> Result<Vec<Outcome>, StateError> {
        let txn = store.db().begin_write()?;
        let outcomes = self.apply_in(&txn, entries)?;
        txn.commit()?;
        Ok(outcomes)
    }

    /// Apply entries inside the caller's transaction (the Raft state machine adds its own
    /// bookkeeping to the same transaction), recording the last applied index. Nothing is
    /// committed here.
    pub fn apply_in<'a>(
        &self,
        txn: &redb::WriteTransaction,
        entries: impl IntoIterator<Item = (u64, &'a [u8])>,
    ) -> Result<Vec<Outcome>, StateError> {
        let mut last = {
            let meta = txn.open_table(META)?;
            read_u64(meta.get(META_LAST_APPLIED)?.as_ref().map(|v| v.value()))?
        };
        let mut outcomes = Vec::new();
        for (index, bytes) in entries {
            if index <= last {
                return Err(StateError::IndexNotAfter {
                    index,
                    last_applied: last,
                });
            }
            last = index;
            outcomes.push(self.apply_one(txn, index, bytes)?);
        }
        txn.open_table(META)?
            .insert(META_LAST_APPLIED, last.to_le_bytes().as_slice())?;
        Ok(outcomes)
    }

    /// Apply the commands of one log entry (a group of client commands committed together) in
    /// the caller's transaction. They share the entry's log index, which must follow the last
    /// applied one; each gets its own outcome.
    pub fn apply_group_in<C: AsRef<[u8]>>(
        &self,
        txn: &redb::WriteTransaction,
        index: u64,
        commands: &[C],
    ) -> Result<Vec<Outcome>, StateError> {
        let last = {
            let meta = txn.open_table(META)?;
            read_u64(meta.get(META_LAST_APPLIED)?.as_ref().map(|v| v.value()))?
        };
        if index <= last {
            return Err(StateError::IndexNotAfter {
                index,
                last_applied: last,
            });
        }
        let mut outcomes = Vec::with_capacity(commands.len());
        for c in commands {
            outcomes.push(self.apply_one(txn, index, c.as_ref())?);
        }
        txn.open_table(META)?
            .insert(META_LAST_APPLIED, index.to_le_bytes().as_slice())?;
        Ok(outcomes)
    }

    /// Answer a read-only query for `service` from the store's current state.
    pub fn query(
        &self,
        store: &StateStore,
        service: ServiceId,
        payload: &[u8],
    ) -> Result<Outcome, StateError> {
        let Some(s) = self.services.get(&service) else {
            return Ok(Err(Rejection::new(
                Envelope::UnknownService,
                format!("no {service} in this build"),
            )));
        };
        let txn = store.db().begin_read()?;
        match s.query(&txn, payload) {
            Ok(r) => Ok(Ok(r)),
            Err(ApplyError::Rejected(r)) => Ok(Err(r)),
            Err(ApplyError::Storage(e)) => Err(e),
        }
    }

    fn apply_one(
        &self,
        txn: &redb::WriteTransaction,
        index: u64,
        bytes: &[u8],
    ) -> Result<Outcome, StateError> {
        let command = match Command::decode(bytes) {
            Ok(c) => c,
            Err(e) => return Ok(Err(Rejection::new(Envelope::Malformed, e.to_string()))),
        };
        let Some(service) = self.services.get(&command.service) else {
            return Ok(Err(Rejection::new(
                Envelope::UnknownService,
                format!("no {} in this build", command.service),
            )));
        };
        // A proposal sent again (after a leader change) gets its first outcome back.
        let id = once::identity(bytes);
        if let Some(outcome) = once::remembered(txn, &id)? {
            return Ok(outcome);
        }
        let ctx = ApplyContext::new(index, command.time_ms, command.id_seed);
        let outcome = match service.apply(txn, &ctx, command.version, &command.payload) {
            Ok(response) => Ok(response),
            Err(ApplyError::Rejected(r)) => Err(r),
            Err(ApplyError::Storage(e)) => return Err(e),
        };
        // Only what changed the state is remembered: a refusal leaves no trace, and a retried
        // refused command is decided afresh, as if it had only arrived then.
        if outcome.is_ok() {
            once::remember(txn, &id, command.time_ms, &outcome)?;
        }
        Ok(outcome)
    }
}
