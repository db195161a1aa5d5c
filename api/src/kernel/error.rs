//! The one error every JSON route answers with: a status and a message, as
//! `{"error": "..."}`; a precise 4xx for the caller's mistakes, never a 5xx for them.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use cairn_proto::ProposeError;
use serde_json::json;

/// A REST error: a status and a message, answered as `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
    pub(crate) fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
    pub(crate) fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, message)
    }
    pub(crate) fn internal(e: impl std::fmt::Display) -> ApiError {
        tracing::warn!(error = %e, "REST request failed");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    }
}

impl From<ProposeError> for ApiError {
    fn from(e: ProposeError) -> ApiError {
        match e {
            ProposeError::Unavailable(_) | ProposeError::NotLeader { .. } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the metadata quorum is unavailable; retry",
            ),
            ProposeError::TryLater(m) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, m),
            ProposeError::Failed(m) => ApiError::internal(m),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(json!({"error": self.message}))).into_response()
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

pub(crate) async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such route")
}

/// An S3 error from the shared authorisation or the bucket service, as a REST error.
pub fn from_s3(e: s3s::S3Error) -> ApiError {
    let status = e.status_code().unwrap_or(StatusCode::BAD_REQUEST);
    let message = e.message().unwrap_or("refused").to_owned();
    if status.is_server_error() {
        return ApiError::internal(message);
    }
    match e.code().as_str() {
        "NoSuchBucket" => ApiError::new(StatusCode::NOT_FOUND, "no such bucket"),
        "BucketAlreadyExists" | "BucketAlreadyOwnedByYou" | "BucketNotEmpty" => {
            ApiError::new(StatusCode::CONFLICT, message)
        }
        "AccessDenied" => ApiError::new(StatusCode::FORBIDDEN, message),
        _ => ApiError::new(status, message),
    }
}
