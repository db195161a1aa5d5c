//! The service trait: a platform service is a deterministic function of (state, command).
//!
//! `apply` sees only the write transaction, the [`ApplyContext`] (log index, the proposer's
//! time and id seed) and the command. No clock, no randomness, no I/O beyond the transaction:
//! every replica that applies the same log ends with the same bytes.

use std::cell::Cell;

use redb::{ReadTransaction, WriteTransaction};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::StateError;
use super::command::{Command, ServiceId};

/// What a service may know about the command being applied besides its payload.
#[derive(Debug)]
pub struct ApplyContext {
    /// Log index of the command.
    pub index: u64,
    /// Milliseconds since the Unix epoch, as stamped by the proposer. Services use this, never
    /// the local clock.
    pub time_ms: u64,
    id_seed: [u8; 16],
    ids_taken: Cell<u64>,
}

impl ApplyContext {
    pub fn new(index: u64, time_ms: u64, id_seed: [u8; 16]) -> ApplyContext {
        ApplyContext {
            index,
            time_ms,
            id_seed,
            ids_taken: Cell::new(0),
        }
    }

    /// A fresh 128-bit id, derived from the proposer's random seed and a counter: unique in
    /// practice, and the same on every replica.
    pub fn fresh_id(&self) -> u128 {
        let n = self.ids_taken.get();
        self.ids_taken.set(n + 1);
        let mut h = blake3::Hasher::new_derive_key("cairn 2026 apply-context fresh id");
        h.update(&self.id_seed);
        h.update(&n.to_le_bytes());
        let mut out = [0u8; 16];
        out.copy_from_slice(&h.finalize().as_bytes()[..16]);
        u128::from_le_bytes(out)
    }
}

/// A deterministic refusal of a command. It is part of the replicated outcome (every replica
/// refuses the same command the same way), unlike a [`StateError`], which aborts the batch.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Rejection {
    /// Stable machine-readable reason, e.g. `invalid_argument`, `not_found`.
    pub code: String,
    pub message: String,
}

impl Rejection {
    pub fn new<R: Refusal>(code: R, message: impl Into<String>) -> Rejection {
        Rejection {
            code: code.code().to_owned(),
            message: message.into(),
        }
    }

    /// The refusal this names, if it is one of `R` (or one of the [`Envelope`] refusals every
    /// service can answer, with `R = Envelope`).
    pub fn kind<R: Refusal>(&self) -> Option<R> {
        R::ALL.iter().copied().find(|r| r.code() == self.code)
    }
}

/// A service's reasons to refuse a command: an enum (made with [`refusals!`]) whose variants
/// each carry a stable code, the form a [`Rejection`] travels in. Callers decide on the variant
/// ([`Rejection::kind`]), never on the message.
pub trait Refusal: Copy + Eq + std::fmt::Debug + 'static {
    /// Every variant.
    const ALL: &'static [Self];
    /// The stable code (snake case).
    fn code(self) -> &'static str;

    /// This refusal with a message for the caller.
    fn with(self, message: impl Into<String>) -> Rejection {
        Rejection::new(self, message)
    }

    /// Refuse the command being applied with this.
    fn reject(self, message: impl Into<String>) -> ApplyError {
        ApplyError::Rejected(self.with(message))
    }
}

/// Define a refusal enum: `refusals! { pub enum Name { Variant = "code", ... } }`.
#[macro_export]
macro_rules! refusals {
    ($(#[$m:meta])* $vis:vis enum $name:ident {
        $($(#[$vm:meta])* $variant:ident = $code:literal,)*
    }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        $vis enum $name {
            $($(#[$vm])* $variant,)*
        }

        impl $crate::state::Refusal for $name {
            const ALL: &'static [Self] = &[$(Self::$variant,)*];
            fn code(self) -> &'static str {
                match self {
                    $(Self::$variant => $code,)*
                }
            }
        }
    };
}

refusals! {
    /// Refusals the registry and the typed-service envelope answer for any service, before the
    /// service sees the command.
    pub enum Envelope {
        /// The command or query does not decode.
        Malformed = "malformed",
        /// No service has that id.
        UnknownService = "unknown_service",
        /// The command's version is newer than this build applies.
        UnsupportedVersion = "unsupported_version",
    }
}

/// How `apply` fails.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The command is refused; the service has written nothing for it.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The state store failed; the whole batch is abandoned and nothing of it is committed.
    #[error(transparent)]
    Storage(#[from] StateError),
}

macro_rules! apply_error_from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for ApplyError {
            fn from(e: $t) -> Self {
                ApplyError::Storage(StateError::Redb(e.into()))
            }
        }
    )*};
}
apply_error_from_redb!(redb::Error, redb::TableError, redb::StorageError);

/// A service over raw bytes, as the registry sees it.
///
/// Contract: `apply` must be deterministic, and must check everything that can reject a command
/// *before* it writes, so a rejection leaves no trace (redb has no savepoints inside a dirty
/// transaction, and a batch shares one transaction).
pub trait Service: Send + Sync {
    fn id(&self) -> ServiceId;
    fn name(&self) -> &'static str;
    /// Create the service's tables (every table is `&[u8] -> &[u8]`).
    fn init(&self, txn: &WriteTransaction) -> Result<(), StateError>;
    fn apply(
        &self,
        txn: &WriteTransaction,
        ctx: &ApplyContext,
        version: u16,
        payload: &[u8],
    ) -> Result<Vec<u8>, ApplyError>;
    /// Answer a read-only query from a read transaction.
    fn query(&self, txn: &ReadTransaction, payload: &[u8]) -> Result<Vec<u8>, ApplyError>;
}

/// A service with typed commands and responses, encoded with postcard.
pub trait TypedService: Send + Sync + 'static {
    const ID: ServiceId;
    const NAME: &'static str;
    /// The command schema version this build writes; older versions must still be read.
    const VERSION: u16;
    type Command: Serialize + DeserializeOwned;
    type Response: Serialize + DeserializeOwned;
    type Query: Serialize + DeserializeOwned;
    type QueryResponse: Serialize + DeserializeOwned;

    fn init(&self, txn: &WriteTransaction) -> Result<(), StateError>;
    fn apply(
        &self,
        txn: &WriteTransaction,
        ctx: &ApplyContext,
        command: Self::Command,
    ) -> Result<Self::Response, ApplyError>;
    fn query(
        &self,
        txn: &ReadTransaction,
        query: Self::Query,
    ) -> Result<Self::QueryResponse, ApplyError>;

    /// Decode a payload written at `version`. The default reads only the current version.
    fn decode(version: u16, payload: &[u8]) -> Result<Self::Command, Rejection> {
        if version != Self::VERSION {
            return Err(Rejection::new(
                Envelope::UnsupportedVersion,
                format!(
                    "{} reads command version {}, got {version}",
                    Self::NAME,
                    Self::VERSION
                ),
            ));
        }
        postcard::from_bytes(payload).map_err(|e| {
            Rejection::new(Envelope::Malformed, format!("{} command: {e}", Self::NAME))
        })
    }

    /// Frame a command for the log: the proposer supplies the time and a random id seed.
    fn command(
        command: &Self::Command,
        time_ms: u64,
        id_seed: [u8; 16],
    ) -> Result<Command, StateError> {
        Ok(Command {
            service: Self::ID,
            version: Self::VERSION,
            time_ms,
            id_seed,
            payload: postcard::to_stdvec(command).map_err(|e| StateError::Encode(e.to_string()))?,
        })
    }

    /// Encode a query for [`crate::state::Registry::query`].
    fn encode_query(query: &Self::Query) -> Result<Vec<u8>, StateError> {
        postcard::to_stdvec(query).map_err(|e| StateError::Encode(e.to_string()))
    }

    /// Decode the bytes a successful query returned.
    fn query_response(bytes: &[u8]) -> Result<Self::QueryResponse, StateError> {
        postcard::from_bytes(bytes).map_err(|e| StateError::Encode(e.to_string()))
    }

    /// Decode the bytes a successful `apply` returned.
    fn response(bytes: &[u8]) -> Result<Self::Response, StateError> {
        postcard::from_bytes(bytes).map_err(|e| StateError::Encode(e.to_string()))
    }
}

/// Adapts a [`TypedService`] to the byte-level [`Service`] the registry routes to.
#[derive(Debug)]
pub struct Typed<T>(pub T);

impl<T: TypedService> Service for Typed<T> {
    fn id(&self) -> ServiceId {
        T::ID
    }

    fn name(&self) -> &'static str {
        T::NAME
    }

    fn init(&self, txn: &WriteTransaction) -> Result<(), StateError> {
        self.0.init(txn)
    }

    fn apply(
        &self,
        txn: &WriteTransaction,
        ctx: &ApplyContext,
        version: u16,
        payload: &[u8],
    ) -> Result<Vec<u8>, ApplyError> {
        let command = T::decode(version, payload)?;
        let response = self.0.apply(txn, ctx, command)?;
        postcard::to_stdvec(&response)
            .map_err(|e| ApplyError::Storage(StateError::Encode(e.to_string())))
    }

    fn query(&self, txn: &ReadTransaction, payload: &[u8]) -> Result<Vec<u8>, ApplyError> {
        let query: T::Query = postcard::from_bytes(payload)
            .map_err(|e| Rejection::new(Envelope::Malformed, format!("{} query: {e}", T::NAME)))?;
        let response = self.0.query(txn, query)?;
        postcard::to_stdvec(&response)
            .map_err(|e| ApplyError::Storage(StateError::Encode(e.to_string())))
    }
}
