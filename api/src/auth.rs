//! Authentication and authorisation of S3 requests.
//!
//! SigV4 (headers, presigned URLs, streaming `aws-chunked`) is checked by s3s against the secret
//! [`KeyAuth`] returns: the access key's record comes from the key service, its secret is opened
//! with the cluster secrets key, and kept for a few seconds so a busy client costs no master
//! round trip per request (a deleted key stops working within that time).
//!
//! [`Access`] decides what a request may do: a signed request with a known key may do anything
//! (users, tenants and policies come with the identity issue); an anonymous one may only read
//! from a bucket whose ACL is `public-read`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_engine::state::TypedService;
use cairn_master::buckets::{BucketQuery, BucketQueryResponse};
use cairn_master::dataplane::command;
use cairn_master::keys::{KeyCommand, KeyQuery, KeyQueryResponse, KeyService};
use cairn_raft::Consistency;
use parking_lot::Mutex;
use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::{S3Auth, SecretKey};
use s3s::path::S3Path;
use s3s::{S3Error, S3ErrorCode, S3Result};

use crate::{Gateway, propose_error};

/// The purpose S3 secrets are sealed under.
pub const S3_SECRET: &str = "cairn s3 secret key";
/// How long an opened secret is reused.
const CACHE_FOR: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct KeyAuth {
    gateway: Arc<Gateway>,
    cache: Mutex<HashMap<String, (SecretKey, Instant)>>,
}

impl KeyAuth {
    pub fn new(gateway: Arc<Gateway>) -> KeyAuth {
        KeyAuth {
            gateway,
            cache: Mutex::new(HashMap::new()),
        }
    }
}

fn internal(e: impl std::fmt::Display) -> S3Error {
    S3Error::with_message(S3ErrorCode::InternalError, e.to_string())
}

#[async_trait::async_trait]
impl S3Auth for KeyAuth {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        if let Some((k, at)) = self.cache.lock().get(access_key)
            && at.elapsed() < CACHE_FOR
        {
            return Ok(k.clone());
        }
        if cairn_master::keys::check_access_key(access_key).is_err() {
            return Err(S3Error::new(S3ErrorCode::InvalidAccessKeyId));
        }
        let q = KeyService::encode_query(&KeyQuery::Get {
            access_key: access_key.to_owned(),
        })
        .map_err(internal)?;
        let bytes = self
            .gateway
            .data
            .master()
            .query(KeyService::ID, q, Consistency::Stale)
            .await
            .map_err(|e| propose_error(&e))?
            .map_err(|r| internal(r.message))?;
        let rec = match KeyService::query_response(&bytes).map_err(internal)? {
            KeyQueryResponse::Key(Some(rec)) => rec,
            _ => return Err(S3Error::new(S3ErrorCode::InvalidAccessKeyId)),
        };
        let secret = self
            .gateway
            .secrets
            .open(S3_SECRET, &rec.sealed_secret)
            .map_err(|e| {
                tracing::error!(error = %e, access_key, "cannot open an S3 secret: is this gateway's tls/secrets.key the cluster's?");
                internal("cannot open the secret of this access key")
            })?;
        let secret = String::from_utf8(secret).map_err(internal)?;
        let key = SecretKey::from(secret);
        let mut cache = self.cache.lock();
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(access_key.to_owned(), (key.clone(), Instant::now()));
        Ok(key)
    }
}

/// Operations an anonymous caller may run on a `public-read` bucket.
const PUBLIC_READS: &[&str] = &[
    "GetObject",
    "HeadObject",
    "ListObjects",
    "ListObjectsV2",
    "HeadBucket",
];

#[derive(Debug)]
pub struct Access {
    gateway: Arc<Gateway>,
}

impl Access {
    pub fn new(gateway: Arc<Gateway>) -> Access {
        Access { gateway }
    }
}

#[async_trait::async_trait]
impl S3Access for Access {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        if cx.credentials().is_some() {
            return Ok(());
        }
        let bucket = match cx.s3_path() {
            S3Path::Bucket { bucket } | S3Path::Object { bucket, .. } => bucket.to_string(),
            S3Path::Root => String::new(),
        };
        let op = cx.s3_op().name().to_owned();
        let denied = || {
            S3Error::with_message(
                S3ErrorCode::AccessDenied,
                "anonymous access is not allowed here: sign the request",
            )
        };
        if bucket.is_empty() || !PUBLIC_READS.contains(&op.as_str()) {
            return Err(denied());
        }
        match self
            .gateway
            .query(&BucketQuery::Bucket { name: bucket })
            .await?
        {
            BucketQueryResponse::Bucket(Some(b)) if b.public_read => Ok(()),
            _ => Err(denied()),
        }
    }
}

/// Store an S3 access key (the secret sealed with the cluster secrets key).
pub async fn create_key(
    gateway: &Gateway,
    access_key: &str,
    secret: &str,
    owner: &str,
) -> Result<(), String> {
    let sealed = gateway
        .secrets
        .seal(S3_SECRET, secret.as_bytes())
        .map_err(|e| e.to_string())?;
    let c = KeyCommand::Create {
        access_key: access_key.to_owned(),
        sealed_secret: sealed,
        owner: owner.to_owned(),
    };
    let bytes = command::<KeyService>(&c).map_err(|e| e.to_string())?;
    gateway
        .data
        .master()
        .propose(bytes)
        .await
        .map_err(|e| e.to_string())?
        .map_err(|r| r.to_string())?;
    Ok(())
}

/// A linearizable key-service query.
pub async fn key_query(gateway: &Gateway, q: &KeyQuery) -> Result<KeyQueryResponse, String> {
    let q = KeyService::encode_query(q).map_err(|e| e.to_string())?;
    let bytes = gateway
        .data
        .master()
        .query(KeyService::ID, q, Consistency::Linearizable)
        .await
        .map_err(|e| e.to_string())?
        .map_err(|r| r.to_string())?;
    KeyService::query_response(&bytes).map_err(|e| e.to_string())
}

/// Whether an access key exists.
pub async fn key_exists(gateway: &Gateway, access_key: &str) -> Result<bool, String> {
    let q = KeyQuery::Get {
        access_key: access_key.to_owned(),
    };
    match key_query(gateway, &q).await? {
        KeyQueryResponse::Key(k) => Ok(k.is_some()),
        _ => Err("unexpected answer".into()),
    }
}

/// How many access keys exist.
pub async fn key_count(gateway: &Gateway) -> Result<u64, String> {
    match key_query(gateway, &KeyQuery::Count).await? {
        KeyQueryResponse::Count(n) => Ok(n),
        _ => Err("unexpected answer".into()),
    }
}
