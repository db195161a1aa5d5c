//! The gateway: the S3 API (through s3s, with SigV4), health, readiness and metrics over HTTP.
//!
//! A gateway is stateless: bucket and object metadata live in the master group (the bucket
//! service, `cairn_master::buckets`), bytes on chunkservers (`cairn_client::DataClient`).
//! Any number of gateways can serve one cluster; `cairn serve` runs one in-process.
//!
//! Every surface is one module; what they share is the [`kernel`] (callers, errors, limits,
//! layers) and [`objects`] (the object storage path). [`router`] assembles them; no two
//! modules import each other.
//!
//! - [`kernel`]: authentication, the JSON error, rate limits, audit and JSON layers.
//! - [`objects`]: storing a request body, reading an object back, committing a write.
//! - [`auth`]: SigV4 secrets from the key service, and who may do what (S3 and REST alike).
//! - [`s3`]: the S3 operations (s3s).
//! - [`sessions`]: users and sessions under `/api/auth`.
//! - [`keys`]: S3 and API keys under `/api/s3-keys` and `/api/keys`.
//! - [`audit`]: the audit log under `/api/audit/logs`.
//! - [`tenants`]: tenants, members and IAM policies under `/api`.
//! - [`storage`]: the REST storage API under `/api/storage`.
//! - [`namespaces`]: namespaces, files and direct URLs under `/storage`.
//! - [`shares`]: signed, expiring, revocable share links (`/api/shares`, `/storage/share`).
//! - [`images`]: the image store under `/api/images`.
//! - [`body`]: request and response body streams (hashing on the way in, bounded on the way out).
//! - [`http`]: S3 behind the gateway's own routes; request ids, access logs, metrics, CORS.
//! - [`router`]: the one place every route and the OpenAPI document are assembled.

pub mod audit;
pub mod auth;
pub mod body;
pub mod checksums;
pub mod cron;
pub mod fuzzing;
pub mod http;
pub mod images;
pub mod kernel;
pub mod keys;
pub mod kms;
pub mod mail;
pub mod metrics;
pub mod namespaces;
pub mod objects;
pub mod queues;
pub mod router;
pub mod s3;
pub mod sessions;
pub mod shares;
pub mod sse;
pub mod storage;
pub mod tenants;
pub mod topics;

use std::sync::Arc;

use cairn_client::{DataClient, MasterClient};
use cairn_engine::state::{Rejection, TypedService};
use cairn_master::buckets::{
    BucketCommand, BucketQuery, BucketQueryResponse, BucketRefusal, BucketResponse, BucketService,
};
use cairn_master::dataplane::command;
use cairn_proto::SecretsKey;
use cairn_proto::{Consistency, ProposeError};
use s3s::{S3Error, S3ErrorCode};

pub use router::router;

/// Gateway settings.
#[derive(Clone, Debug)]
pub struct GatewayOptions {
    /// The region the gateway reports and SigV4 scopes name.
    pub region: String,
    /// Objects up to this size are stored inline in the metadata (one log entry, no chunk
    /// round trips); larger ones go to chunkservers.
    pub inline_max: usize,
    /// Largest single PUT (S3's limit is 5 GiB).
    pub put_max: u64,
    /// With a domain (e.g. `s3.example.com`), requests to `BUCKET.s3.example.com` address that
    /// bucket (virtual-hosted style); path style works on every host either way.
    pub domain: Option<String>,
    /// Requests per minute per client address on the credential routes (0: no limit).
    pub auth_rate_limit: u32,
    /// Authenticated `/api` requests per minute per API key or login session (0: no limit).
    pub api_rate_limit: u32,
    /// Lifetime of access tokens, in seconds.
    pub access_ttl_s: u64,
    /// Most unexpired share links one tenant may hold.
    pub share_links_max: u32,
    /// Longest a share link may live, in seconds.
    pub share_ttl_max_s: u64,
    /// Largest image the image store takes (upload or import).
    pub image_max: u64,
    /// Take SSE-C customer keys over plain HTTP from remote clients. Off by default: a key is
    /// taken only from a loopback client (a TLS-terminating proxy on this host, or a local
    /// program), as S3 takes them only over TLS.
    pub allow_sse_c_over_http: bool,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        GatewayOptions {
            region: "us-east-1".into(),
            inline_max: 16 * 1024,
            put_max: 5 << 30,
            domain: None,
            auth_rate_limit: 5,
            api_rate_limit: 600,
            access_ttl_s: kernel::ACCESS_TTL_S,
            share_links_max: 1000,
            share_ttl_max_s: 365 * 24 * 3600,
            image_max: 64 << 30,
            allow_sse_c_over_http: false,
        }
    }
}

/// What every request handler shares.
#[derive(Debug)]
pub struct Gateway {
    /// The master group: proposals and queries of every service.
    pub master: MasterClient,
    /// The chunkservers: object bytes.
    pub data: DataClient,
    pub secrets: Arc<SecretsKey>,
    pub options: GatewayOptions,
    pub metrics: metrics::Metrics,
    /// The access-token signing keys, opened from the replicated state and kept a minute.
    pub jwt_key: parking_lot::Mutex<Option<kernel::JwtKeys>>,
    pub auth_limiter: kernel::RateLimiter,
    /// Per API key or login session, for every authenticated `/api` request.
    pub caller_limiter: kernel::RateLimiter<String>,
    pub api_keys: kernel::ApiKeyCache,
    /// Sends password reset tokens by mail when SMTP is configured.
    pub mailer: Option<Arc<mail::Mailer>>,
    /// File uploads in flight on this gateway (for progress reports).
    pub uploads: namespaces::Uploads,
    /// Opened key versions of the key service (SSE-S3 and SSE-KMS), kept a few seconds.
    pub kms_cache: sse::KeyCache,
    /// Long polls of queues waiting here, woken by sends through this gateway.
    pub queue_waiters: queues::Waiters,
}

/// The S3 error for a refusal from the bucket service: each [`BucketRefusal`] maps here, once
/// (the JSON surfaces take the same mapping through `kernel::from_s3`).
pub fn rejection_error(r: &Rejection) -> S3Error {
    use BucketRefusal as B;
    let c = match r.kind::<BucketRefusal>() {
        Some(B::NoSuchBucket) => S3ErrorCode::NoSuchBucket,
        Some(B::BucketNotEmpty) => S3ErrorCode::BucketNotEmpty,
        Some(B::BucketExists) => S3ErrorCode::BucketAlreadyExists,
        Some(B::BucketOwnedByYou) => S3ErrorCode::BucketAlreadyOwnedByYou,
        Some(B::InvalidBucketName) => S3ErrorCode::InvalidBucketName,
        Some(B::InvalidKey) => S3ErrorCode::KeyTooLongError,
        Some(B::PreconditionFailed) => S3ErrorCode::PreconditionFailed,
        Some(B::NoSuchUpload) => S3ErrorCode::NoSuchUpload,
        Some(B::InvalidPart) => S3ErrorCode::InvalidPart,
        Some(B::InvalidPartOrder) => S3ErrorCode::InvalidPartOrder,
        Some(B::EntityTooSmall) => S3ErrorCode::EntityTooSmall,
        Some(B::MalformedXml) => S3ErrorCode::MalformedXML,
        Some(B::NoSuchKey) => S3ErrorCode::NoSuchKey,
        Some(B::NoSuchVersion) => S3ErrorCode::NoSuchVersion,
        Some(B::InvalidTag) => S3ErrorCode::InvalidTag,
        Some(B::MethodNotAllowed) => S3ErrorCode::MethodNotAllowed,
        Some(B::TooManyVersions) => S3ErrorCode::InvalidRequest,
        Some(B::ChunkGone) => S3ErrorCode::InternalError,
        Some(B::TooManyShares) => S3ErrorCode::Custom("TooManyShareLinks".into()),
        Some(B::NoSuchShare) => S3ErrorCode::Custom("NoSuchShareLink".into()),
        Some(B::InvalidArgument) => S3ErrorCode::InvalidArgument,
        Some(B::MalformedPolicy) => S3ErrorCode::MalformedPolicy,
        Some(B::PublicAccessBlocked) => S3ErrorCode::AccessDenied,
        Some(B::ObjectLocked) => S3ErrorCode::AccessDenied,
        Some(B::InvalidRequest) => S3ErrorCode::InvalidRequest,
        Some(B::InvalidBucketState) => S3ErrorCode::InvalidBucketState,
        Some(B::AclNotSupported) => S3ErrorCode::Custom("AccessControlListNotSupported".into()),
        Some(B::AclWithOwnership) => {
            S3ErrorCode::Custom("InvalidBucketAclWithObjectOwnership".into())
        }
        // The envelope's refusals (a command this build cannot read) and any code a newer
        // master sends: the request is what was refused.
        None => S3ErrorCode::InvalidArgument,
    };
    // Codes s3s does not know carry no status of their own (s3s would answer 500).
    let status = match r.kind::<BucketRefusal>() {
        Some(B::TooManyShares) => Some(::http::StatusCode::CONFLICT),
        Some(B::NoSuchShare) => Some(::http::StatusCode::NOT_FOUND),
        Some(B::AclNotSupported | B::AclWithOwnership) => Some(::http::StatusCode::BAD_REQUEST),
        _ => None,
    };
    let mut e = S3Error::with_message(c, r.message.clone());
    if let Some(s) = status {
        e.set_status_code(s);
    }
    e
}

/// The S3 error for a control-plane failure: no quorum or leader right now is a 503 the client
/// retries; anything else is a 500.
pub fn propose_error(e: &ProposeError) -> S3Error {
    match e {
        ProposeError::Unavailable(m) => S3Error::with_message(
            S3ErrorCode::ServiceUnavailable,
            format!("metadata quorum unavailable: {m}"),
        ),
        ProposeError::NotLeader { .. } => S3Error::with_message(
            S3ErrorCode::ServiceUnavailable,
            "no master leader reachable right now",
        ),
        ProposeError::TryLater(m) => {
            S3Error::with_message(S3ErrorCode::ServiceUnavailable, m.clone())
        }
        ProposeError::Failed(m) => {
            tracing::warn!(error = %m, "metadata request failed");
            S3Error::with_message(S3ErrorCode::InternalError, "metadata request failed")
        }
    }
}

impl Gateway {
    pub fn new(
        master: MasterClient,
        data: DataClient,
        secrets: Arc<SecretsKey>,
        options: GatewayOptions,
    ) -> Gateway {
        Gateway {
            master,
            data,
            secrets,
            options,
            metrics: metrics::Metrics::default(),
            jwt_key: parking_lot::Mutex::new(None),
            auth_limiter: kernel::RateLimiter::default(),
            caller_limiter: kernel::RateLimiter::default(),
            api_keys: kernel::ApiKeyCache::default(),
            mailer: None,
            uploads: namespaces::Uploads::default(),
            kms_cache: Default::default(),
            queue_waiters: Default::default(),
        }
    }

    /// Commit one bucket-service command; a refusal is its S3 error.
    pub async fn command(&self, c: &BucketCommand) -> Result<BucketResponse, S3Error> {
        self.command_or_refusal(c)
            .await?
            .map_err(|r| rejection_error(&r))
    }

    /// Commit one bucket-service command; a refusal comes back as the service's rejection, for
    /// callers that decide on its stable code.
    pub async fn command_or_refusal(
        &self,
        c: &BucketCommand,
    ) -> Result<Result<BucketResponse, Rejection>, S3Error> {
        let bytes = command::<BucketService>(c).map_err(|e| propose_error(&e))?;
        let outcome = self
            .master
            .propose(bytes)
            .await
            .map_err(|e| propose_error(&e))?;
        match outcome {
            Ok(bytes) => BucketService::response(&bytes)
                .map(Ok)
                .map_err(|e| S3Error::with_message(S3ErrorCode::InternalError, e.to_string())),
            Err(r) => Ok(Err(r)),
        }
    }

    /// Append one entry to the audit log (a failure to do so is logged, not returned: the
    /// action itself has happened).
    pub async fn audit(&self, actor: &str, action: &str, resource: &str, ip: &str, outcome: &str) {
        let cmd = cairn_master::audit::AuditCommand::Append(vec![cairn_master::audit::NewEntry {
            actor: actor.to_owned(),
            action: action.to_owned(),
            resource: resource.to_owned(),
            ip: ip.to_owned(),
            outcome: outcome.to_owned(),
        }]);
        match command::<cairn_master::audit::AuditService>(&cmd) {
            Ok(bytes) => {
                if let Err(e) = self.master.propose(bytes).await {
                    tracing::error!(error = %e, "could not append to the audit log");
                }
            }
            Err(e) => tracing::error!(error = %e, "could not encode an audit entry"),
        }
    }

    /// A linearizable bucket-service query.
    pub async fn query(&self, q: &BucketQuery) -> Result<BucketQueryResponse, S3Error> {
        self.query_with(q, Consistency::Linearizable).await
    }

    /// A bucket-service query at the given consistency.
    pub async fn query_with(
        &self,
        q: &BucketQuery,
        consistency: Consistency,
    ) -> Result<BucketQueryResponse, S3Error> {
        let payload = BucketService::encode_query(q)
            .map_err(|e| S3Error::with_message(S3ErrorCode::InternalError, e.to_string()))?;
        let outcome = self
            .master
            .query(BucketService::ID, payload, consistency)
            .await
            .map_err(|e| propose_error(&e))?;
        let bytes = outcome.map_err(|r| rejection_error(&r))?;
        BucketService::query_response(&bytes)
            .map_err(|e| S3Error::with_message(S3ErrorCode::InternalError, e.to_string()))
    }
}
