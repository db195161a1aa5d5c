//! A state store with every service registered, applying commands one log entry at a time as
//! the replicated log does: what the service tests drive.
// Each test binary uses part of it.
#![allow(dead_code)]

use cairn_engine::state::{Registry, Rejection, StateStore, TypedService};

pub struct Log {
    store: StateStore,
    registry: Registry,
    index: u64,
    _dir: tempfile::TempDir,
}

impl Log {
    pub fn new() -> Log {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path().join("state.redb")).unwrap();
        let registry = cairn_master::registry().unwrap();
        registry.init(&store).unwrap();
        Log {
            store,
            registry,
            index: 0,
            _dir: dir,
        }
    }

    /// The index the next entry gets.
    pub fn next_index(&self) -> u64 {
        self.index + 1
    }

    /// Apply `c` as the next log entry, stamped `time_ms`, with an id seed of its index.
    pub fn run<S: TypedService>(
        &mut self,
        c: &S::Command,
        time_ms: u64,
    ) -> Result<S::Response, Rejection> {
        self.index += 1;
        let mut id_seed = [0u8; 16];
        id_seed[..8].copy_from_slice(&self.index.to_le_bytes());
        let bytes = S::command(c, time_ms, id_seed).unwrap().encode();
        self.registry
            .apply_batch(&self.store, [(self.index, bytes.as_slice())])
            .unwrap()
            .remove(0)
            .map(|b| S::response(&b).unwrap())
    }

    pub fn ask<S: TypedService>(&self, q: &S::Query) -> S::QueryResponse {
        let payload = S::encode_query(q).unwrap();
        let b = self
            .registry
            .query(&self.store, S::ID, &payload)
            .unwrap()
            .unwrap();
        S::query_response(&b).unwrap()
    }
}
