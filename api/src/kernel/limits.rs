//! Rate limits: per client address on the credential routes, per API key or login session on
//! every authenticated route.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::Gateway;
use crate::kernel::error::{ApiError, ApiResult};
use crate::kernel::layers::RATE;

/// Fixed one-minute windows of requests per client: per address for the credential routes,
/// per API key or session for everything authenticated. At most 100,000 clients are tracked
/// (about 10 MiB); past that, windows that ended are dropped.
#[derive(Debug)]
pub struct RateLimiter<K = std::net::IpAddr> {
    pub(crate) windows: parking_lot::Mutex<std::collections::HashMap<K, (std::time::Instant, u32)>>,
}

impl<K> Default for RateLimiter<K> {
    fn default() -> Self {
        RateLimiter {
            windows: parking_lot::Mutex::new(std::collections::HashMap::new()),
        }
    }
}

impl<K: std::hash::Hash + Eq> RateLimiter<K> {
    /// Count a request from `ip`: the requests left in its window, or the seconds until it may
    /// try again.
    pub fn hit(&self, ip: K, limit: u32) -> Result<u32, u64> {
        const WINDOW: std::time::Duration = std::time::Duration::from_secs(60);
        let now = std::time::Instant::now();
        let mut w = self.windows.lock();
        if w.len() > 100_000 {
            w.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
        }
        let entry = w.entry(ip).or_insert((now, 0));
        if now.duration_since(entry.0) >= WINDOW {
            *entry = (now, 0);
        }
        if entry.1 >= limit {
            let left = WINDOW.saturating_sub(now.duration_since(entry.0));
            return Err(left.as_secs().max(1));
        }
        entry.1 += 1;
        Ok(limit - entry.1)
    }
}

/// Count an authenticated request against its API key's or session's window.
pub(crate) fn limit_caller(g: &Gateway, who: String) -> ApiResult<()> {
    let limit = g.options.api_rate_limit;
    if limit == 0 {
        return Ok(());
    }
    let hit = g.caller_limiter.hit(who, limit);
    let _ = RATE.try_with(|r| {
        *r.lock() = Some(match hit {
            Ok(left) => (limit, left, None),
            Err(retry) => (limit, 0, Some(retry)),
        });
    });
    match hit {
        Ok(_) => Ok(()),
        Err(retry) => Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("rate limit of {limit} requests per minute reached; retry in {retry} s"),
        )),
    }
}

/// The credential routes (setup, login, refresh, password change) take at most
/// `GatewayOptions::auth_rate_limit` requests per minute per client address.
pub(crate) async fn limit_auth(
    State(g): State<Arc<Gateway>>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let limit = g.options.auth_rate_limit;
    if limit == 0 {
        return next.run(req).await;
    }
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
    let limit_header = (
        header::HeaderName::from_static("x-ratelimit-limit"),
        header::HeaderValue::from(limit),
    );
    match g.auth_limiter.hit(ip, limit) {
        Ok(remaining) => {
            let mut resp = next.run(req).await;
            resp.headers_mut().insert(limit_header.0, limit_header.1);
            resp.headers_mut().insert(
                header::HeaderName::from_static("x-ratelimit-remaining"),
                header::HeaderValue::from(remaining),
            );
            resp
        }
        Err(retry) => {
            let mut resp = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("too many attempts from this address; retry in {retry} s"),
            )
            .into_response();
            let h = resp.headers_mut();
            h.insert(limit_header.0, limit_header.1);
            h.insert(
                header::HeaderName::from_static("x-ratelimit-remaining"),
                header::HeaderValue::from(0u32),
            );
            h.insert(header::RETRY_AFTER, header::HeaderValue::from(retry));
            resp
        }
    }
}
