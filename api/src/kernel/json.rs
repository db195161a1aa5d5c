//! JSON request bodies: bounded, and every failure a 400 that says why.

use axum::extract::Request;
use axum::http::StatusCode;

use crate::kernel::error::{ApiError, ApiResult};

/// Largest JSON body the auth routes read.
pub(crate) const BODY_MAX: usize = 64 * 1024;

/// Read a JSON body (at most 64 KiB) into `T`; every failure is a 400 that says why.
pub(crate) async fn json_body<T: serde::de::DeserializeOwned>(req: Request) -> ApiResult<T> {
    json_body_max(req, BODY_MAX).await
}

/// [`json_body`] for a route that takes bodies up to `max` bytes.
pub(crate) async fn json_body_max<T: serde::de::DeserializeOwned>(
    req: Request,
    max: usize,
) -> ApiResult<T> {
    let bytes = axum::body::to_bytes(req.into_body(), max)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is larger than {max} bytes"),
            )
        })?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad(format!("invalid JSON body: {e}")))
}
