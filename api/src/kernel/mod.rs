//! The gateway's kernel: what every surface shares and no surface owns. Surfaces import the
//! kernel; the kernel imports no surface.
//!
//! - [`error`]: `ApiError`, the JSON error of every route.
//! - [`caller`]: authentication (access tokens, API keys) and the identity service calls.
//! - [`context`]: a request's condition keys, as bucket policies read them.
//! - [`limits`]: rate limits.
//! - [`layers`]: audit entries, rate-limit headers, JSON 404/405s, client addresses.
//! - [`crypto`], [`ids`], [`json`]: hashing and tokens, ids, JSON bodies.
//! - [`names`]: names the gateway keeps for itself.
//! - [`time`]: timestamps as RFC 3339.

pub mod caller;
pub mod context;
pub mod crypto;
pub mod error;
pub mod ids;
pub mod json;
pub mod layers;
pub mod limits;
pub mod names;
pub mod time;

pub(crate) use caller::{
    ACCESS_TTL_S, ApiKeyCache, Caller, JwtKeys, ask, authenticate, authenticate_optional, propose,
    service_command, service_query,
};
pub(crate) use error::{ApiError, ApiResult, from_s3, not_found};
pub(crate) use ids::{hex_id, parse_id};
pub(crate) use json::{json_body, json_body_max};
pub(crate) use layers::{client_ip, with_layers};
pub(crate) use limits::RateLimiter;
pub(crate) use time::rfc3339;
