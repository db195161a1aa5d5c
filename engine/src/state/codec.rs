//! The encoding every service's records use in their tables (postcard), and the rejection a
//! service answers a command it refuses with: one definition instead of one per service.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{ApplyError, Refusal, StateError};

/// A record's bytes.
pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StateError> {
    postcard::to_stdvec(v).map_err(|e| StateError::Encode(e.to_string()))
}

/// A record from its bytes; bytes that do not decode are corrupt state (`what` names the
/// record in the error).
pub fn decode<T: DeserializeOwned>(what: &str, b: &[u8]) -> Result<T, StateError> {
    postcard::from_bytes(b).map_err(|e| StateError::Corrupt(format!("{what}: {e}")))
}

/// Refuse a command: the caller gets `code` and `message`, and nothing is changed.
pub fn reject<R: Refusal>(code: R, message: impl Into<String>) -> ApplyError {
    code.reject(message)
}
