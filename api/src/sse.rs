//! Encryption at rest, on the gateway: what a request asks for (SSE-S3, SSE-KMS, SSE-C or the
//! bucket's default), data keys drawn and wrapped (by the cluster's SSE-S3 key, a key of the
//! key service, or the customer's key) and opened again, and the sealing and opening of object
//! bytes on their way to and from the data plane.
//!
//! The layout is `cairn_master::buckets::sse`'s: every stream (the object, or each part) is
//! cut into 64 KiB blocks, each sealed with AES-256-GCM under the stream key
//! HMAC-SHA256(data key, "cairn sse stream v1" ‖ salt) and the nonce of its index. Chunk
//! files, the log and the state store only ever see sealed bytes and wrapped keys; key material
//! is sealed under the cluster secrets key; a customer's key is never stored, only a keyed
//! digest of it.

use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_engine::state::{Rejection, TypedService};
use cairn_master::buckets::{
    BucketEncryption, Content, DefaultSse, Encrypted, ObjectData, SEAL_BLOCK, SEAL_TAG, Sse,
    sealed_len,
};
use cairn_master::dataplane::command;
use cairn_master::kms::{
    KmsCommand, KmsKey, KmsQuery, KmsQueryResponse, KmsResponse, KmsService, MATERIAL_PURPOSE,
    S3_KEY,
};
use cairn_proto::Consistency;
use futures::{Stream, StreamExt};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use s3s::dto::StreamingBlob;
use s3s::{S3Error, S3ErrorCode, S3Result};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::Gateway;

/// How long an opened key version is trusted before the key service is asked again (a
/// disabled key stops working within this).
const KEY_CACHE: Duration = Duration::from_secs(5);
/// The name of the key `aws:kms` without a key id uses, made in each tenant on first use.
pub const DEFAULT_KMS_KEY: &str = "aws/s3";

/// An object's data key, opened.
#[derive(Clone)]
pub struct DataKey([u8; 32]);

impl DataKey {
    /// A data key from its bytes (tests and benchmarks; objects draw theirs at random).
    pub fn from_bytes(b: [u8; 32]) -> DataKey {
        DataKey(b)
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

/// What a write asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SseRequest {
    S3,
    Kms {
        key: Option<String>,
        /// The encryption context as JSON text.
        context: Option<String>,
        bucket_key: bool,
    },
    Customer {
        key: [u8; 32],
    },
}

/// Opened key versions: (key id, version) → (when opened, enabled, material).
pub type KeyCache =
    parking_lot::Mutex<std::collections::HashMap<(u128, u32), (Instant, bool, [u8; 32])>>;

fn md5(b: &[u8]) -> [u8; 16] {
    use s3s::crypto::Checksum as _;
    s3s::crypto::Md5::checksum(b)
}

fn header<'a>(h: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

fn invalid(message: &str) -> S3Error {
    S3Error::with_message(S3ErrorCode::InvalidArgument, message.to_owned())
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn random<const N: usize>() -> S3Result<[u8; N]> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; N];
    ring::rand::SystemRandom::new().fill(&mut b).map_err(|_| {
        S3Error::with_message(S3ErrorCode::InternalError, "system randomness failed")
    })?;
    Ok(b)
}

/// A customer key given with `prefix` (`x-amz-server-side-encryption-customer-` for the
/// object, `x-amz-copy-source-server-side-encryption-customer-` for a copy's source): all
/// three headers, or none.
pub fn customer_key(h: &http::HeaderMap, prefix: &str) -> S3Result<Option<[u8; 32]>> {
    let alg = header(h, &format!("{prefix}algorithm"));
    let key = header(h, &format!("{prefix}key"));
    let key_md5 = header(h, &format!("{prefix}key-md5"));
    match (alg, key, key_md5) {
        (None, None, None) => Ok(None),
        (None, _, _) => Err(invalid(
            "Requests specifying Server Side Encryption with Customer provided keys must provide a valid encryption algorithm.",
        )),
        (Some(a), _, _) if a != "AES256" => Err(coded(
            "InvalidEncryptionAlgorithmError",
            "The encryption request you specified is not valid. The valid value is AES256.".into(),
        )),
        (Some(_), None, _) => Err(invalid(
            "Requests specifying Server Side Encryption with Customer provided keys must provide an appropriate secret key.",
        )),
        (Some(_), Some(_), None) => Err(invalid(
            "Requests specifying Server Side Encryption with Customer provided keys must provide the client calculated MD5 of the secret key.",
        )),
        (Some(_), Some(k), Some(m)) => {
            let key: [u8; 32] = base64_decode(k)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| {
                    invalid("The secret key was invalid for the specified algorithm.")
                })?;
            let sent = base64_decode(m).unwrap_or_default();
            if sent != md5(&key) {
                return Err(invalid(
                    "The calculated MD5 hash of the key did not match the hash that was provided.",
                ));
            }
            Ok(Some(key))
        }
    }
}

/// Whether a request may carry a customer key: S3 takes them only over TLS. The gateway
/// speaks plain HTTP, so a key is taken from a loopback client (a program on this host, or a
/// TLS-terminating proxy here that did not say it received plain HTTP) unless the operator
/// allows plain HTTP (`gateway.allow_sse_c_over_http`).
pub fn customer_key_transport_ok(
    h: &http::HeaderMap,
    peer: Option<std::net::SocketAddr>,
    allow_plain: bool,
) -> bool {
    let carries = h.contains_key("x-amz-server-side-encryption-customer-key")
        || h.contains_key("x-amz-copy-source-server-side-encryption-customer-key");
    if !carries || allow_plain {
        return true;
    }
    peer.is_some_and(|p| p.ip().is_loopback())
        && header(h, "x-forwarded-proto").is_none_or(|p| p.eq_ignore_ascii_case("https"))
}

/// [`customer_key_transport_ok`] as S3's refusal.
pub fn refuse_insecure_customer_key(
    g: &Gateway,
    h: &http::HeaderMap,
    peer: Option<std::net::SocketAddr>,
) -> S3Result<()> {
    if customer_key_transport_ok(h, peer, g.options.allow_sse_c_over_http) {
        return Ok(());
    }
    Err(S3Error::with_message(
        S3ErrorCode::InvalidRequest,
        "Requests specifying Server Side Encryption with Customer provided keys must be made over a secure connection.",
    ))
}

/// The object customer key of a request (`x-amz-server-side-encryption-customer-*`).
pub fn object_customer_key(h: &http::HeaderMap) -> S3Result<Option<[u8; 32]>> {
    customer_key(h, "x-amz-server-side-encryption-customer-")
}

/// What encryption a write asks for: its headers, else the bucket's default.
pub fn write_request(
    h: &http::HeaderMap,
    default: Option<&BucketEncryption>,
) -> S3Result<Option<SseRequest>> {
    let sse = header(h, "x-amz-server-side-encryption");
    let kms_key = header(h, "x-amz-server-side-encryption-aws-kms-key-id");
    let context = header(h, "x-amz-server-side-encryption-context");
    let bucket_key = header(h, "x-amz-server-side-encryption-bucket-key-enabled")
        .map(|v| v.eq_ignore_ascii_case("true"));
    let customer = object_customer_key(h)?;
    if let Some(key) = customer {
        if sse.is_some() {
            return Err(invalid(
                "Server Side Encryption with Customer provided key is incompatible with the encryption method specified",
            ));
        }
        return Ok(Some(SseRequest::Customer { key }));
    }
    let is_kms = matches!(sse, Some("aws:kms" | "aws:kms:dsse"));
    if !is_kms && (kms_key.is_some() || context.is_some()) {
        return Err(invalid(
            "x-amz-server-side-encryption-aws-kms-key-id and x-amz-server-side-encryption-context require x-amz-server-side-encryption: aws:kms",
        ));
    }
    match sse {
        Some("AES256") => Ok(Some(SseRequest::S3)),
        Some(_) if is_kms => {
            let context = match context {
                None => None,
                Some(c) => Some(parse_context(c)?),
            };
            if kms_key.is_some_and(str::is_empty) {
                return Err(invalid("The KMS key id is empty."));
            }
            Ok(Some(SseRequest::Kms {
                key: kms_key.map(str::to_owned),
                context,
                bucket_key: bucket_key.unwrap_or(default.is_some_and(|d| d.bucket_key)),
            }))
        }
        Some(_) => Err(invalid(
            "The encryption method specified is not supported (AES256 or aws:kms)",
        )),
        None => Ok(default.map(|d| match &d.default {
            DefaultSse::S3 => SseRequest::S3,
            DefaultSse::Kms { key } => SseRequest::Kms {
                key: key.clone(),
                context: None,
                bucket_key: d.bucket_key,
            },
        })),
    }
}

/// GET and HEAD take no `x-amz-server-side-encryption` (S3 refuses them).
pub fn refuse_on_read(h: &http::HeaderMap) -> S3Result<()> {
    if h.contains_key("x-amz-server-side-encryption")
        || h.contains_key("x-amz-server-side-encryption-aws-kms-key-id")
    {
        return Err(invalid(
            "x-amz-server-side-encryption headers are not valid on reads (only the customer key headers of SSE-C are)",
        ));
    }
    Ok(())
}

/// An encryption context: base64 of a JSON object of strings; its JSON text.
fn parse_context(b64: &str) -> S3Result<String> {
    let bad =
        || invalid("The encryption context must be base64-encoded JSON of string keys and values.");
    let raw = base64_decode(b64).ok_or_else(bad)?;
    let v: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&raw).map_err(|_| bad())?;
    if !v.values().all(serde_json::Value::is_string) {
        return Err(bad());
    }
    String::from_utf8(raw).map_err(|_| bad())
}

// --- the key service, from the gateway ---

pub(crate) async fn kms_command(
    g: &Gateway,
    c: &KmsCommand,
) -> S3Result<Result<KmsResponse, Rejection>> {
    let bytes = command::<KmsService>(c).map_err(|e| crate::propose_error(&e))?;
    match g
        .master
        .propose(bytes)
        .await
        .map_err(|e| crate::propose_error(&e))?
    {
        Ok(b) => KmsService::response(&b)
            .map(Ok)
            .map_err(|e| S3Error::with_message(S3ErrorCode::InternalError, e.to_string())),
        Err(r) => Ok(Err(r)),
    }
}

pub(crate) async fn kms_query(g: &Gateway, q: &KmsQuery) -> S3Result<KmsQueryResponse> {
    let payload = KmsService::encode_query(q)
        .map_err(|e| S3Error::with_message(S3ErrorCode::InternalError, e.to_string()))?;
    let bytes = g
        .master
        .query(KmsService::ID, payload, Consistency::Linearizable)
        .await
        .map_err(|e| crate::propose_error(&e))?
        .map_err(|r| S3Error::with_message(S3ErrorCode::InternalError, r.message))?;
    KmsService::query_response(&bytes)
        .map_err(|e| S3Error::with_message(S3ErrorCode::InternalError, e.to_string()))
}

/// Fresh key material, sealed for the key service.
pub(crate) fn new_material(g: &Gateway) -> S3Result<Vec<u8>> {
    let m = random::<32>()?;
    g.secrets
        .seal(MATERIAL_PURPOSE, &m)
        .map_err(|e| S3Error::with_message(S3ErrorCode::InternalError, e.to_string()))
}

/// An S3 error code s3s does not list, answered 400.
fn coded(code: &'static str, message: String) -> S3Error {
    let mut e = S3Error::with_message(S3ErrorCode::Custom(code.into()), message);
    e.set_status_code(http::StatusCode::BAD_REQUEST);
    e
}

/// The ARN a KMS key is reported by.
pub fn key_arn(g: &Gateway, tenant: u128, id: u128) -> String {
    format!(
        "arn:aws:kms:{}:{tenant:032x}:key/{id:032x}",
        g.options.region
    )
}

/// Version `version` of key `id` opened (from the cache when fresh).
async fn material(g: &Gateway, id: u128, version: u32) -> S3Result<[u8; 32]> {
    if let Some((at, enabled, m)) = g.kms_cache.lock().get(&(id, version)).copied()
        && at.elapsed() < KEY_CACHE
    {
        if !enabled {
            return Err(disabled(id));
        }
        return Ok(m);
    }
    let KmsQueryResponse::Key(Some(k)) = kms_query(g, &KmsQuery::Key { id }).await? else {
        return Err(coded(
            "KMS.NotFoundException",
            format!("key {id:032x} does not exist"),
        ));
    };
    let m = open_version(g, &k, version)?;
    let mut cache = g.kms_cache.lock();
    if cache.len() > 4096 {
        cache.clear();
    }
    cache.insert((id, version), (Instant::now(), k.enabled, m));
    if !k.enabled {
        return Err(disabled(id));
    }
    Ok(m)
}

fn disabled(id: u128) -> S3Error {
    coded(
        "KMS.DisabledException",
        format!("key {id:032x} is disabled"),
    )
}

fn open_version(g: &Gateway, k: &KmsKey, version: u32) -> S3Result<[u8; 32]> {
    let v = k.version(version).ok_or_else(|| {
        S3Error::with_message(S3ErrorCode::InternalError, "the key version is gone")
    })?;
    g.secrets
        .open(MATERIAL_PURPOSE, &v.sealed)
        .ok()
        .and_then(|m| m.try_into().ok())
        .ok_or_else(|| {
            S3Error::with_message(
                S3ErrorCode::InternalError,
                "key material does not open with this cluster's secrets key",
            )
        })
}

/// The cluster's SSE-S3 key: (version, its id), made on first use.
async fn s3_key(g: &Gateway) -> S3Result<KmsKey> {
    for _ in 0..2 {
        if let KmsQueryResponse::Key(Some(k)) = kms_query(g, &KmsQuery::Key { id: S3_KEY }).await? {
            return Ok(k);
        }
        let sealed = new_material(g)?;
        kms_command(g, &KmsCommand::EnsureS3Key { sealed })
            .await?
            .map_err(|r| S3Error::with_message(S3ErrorCode::InternalError, r.message))?;
    }
    Err(S3Error::with_message(
        S3ErrorCode::InternalError,
        "the SSE-S3 key could not be made",
    ))
}

/// The key a request names, in `tenant`: a key id, `alias/NAME`, or either as an ARN. `None`
/// names the tenant's default key ([`DEFAULT_KMS_KEY`]), made on first use.
pub(crate) async fn resolve_key(
    g: &Gateway,
    tenant: u128,
    named: Option<&str>,
    create_default: bool,
) -> S3Result<(u128, KmsKey)> {
    let not_found = |what: &str| coded("KMS.NotFoundException", format!("Invalid keyId {what}"));
    let name = named.unwrap_or(DEFAULT_KMS_KEY);
    let tail = name
        .strip_prefix("arn:aws:kms:")
        .and_then(|rest| rest.splitn(3, ':').nth(2))
        .unwrap_or(name);
    if let Some(alias) = tail
        .strip_prefix("alias/")
        .or(named.is_none().then_some(name))
    {
        for attempt in 0..2 {
            if let KmsQueryResponse::Named(Some(found)) = kms_query(
                g,
                &KmsQuery::Named {
                    tenant,
                    name: alias.to_owned(),
                },
            )
            .await?
            {
                return Ok(found);
            }
            if attempt > 0 || !(create_default && alias == DEFAULT_KMS_KEY) {
                break;
            }
            let sealed = new_material(g)?;
            // A concurrent request may make it first: either way it exists after.
            let _ = kms_command(
                g,
                &KmsCommand::Create {
                    tenant,
                    name: DEFAULT_KMS_KEY.into(),
                    description: "the default key of aws:kms without a key id".into(),
                    created_by: "gateway".into(),
                    sealed,
                },
            )
            .await?;
        }
        return Err(not_found(name));
    }
    let id_text = tail.strip_prefix("key/").unwrap_or(tail);
    let id = u128::from_str_radix(id_text, 16)
        .ok()
        .filter(|_| id_text.len() == 32)
        .ok_or_else(|| not_found(name))?;
    match kms_query(g, &KmsQuery::Key { id }).await? {
        KmsQueryResponse::Key(Some(k)) if k.tenant == tenant => Ok((id, k)),
        _ => Err(not_found(name)),
    }
}

fn wrap(kek: &[u8; 32], aad: &[u8], data: &DataKey) -> S3Result<Vec<u8>> {
    let nonce = random::<12>()?;
    let key = LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, kek)
            .map_err(|_| S3Error::with_message(S3ErrorCode::InternalError, "bad key"))?,
    );
    let mut buf = data.0.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut buf,
    )
    .map_err(|_| S3Error::with_message(S3ErrorCode::InternalError, "sealing failed"))?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&buf);
    Ok(out)
}

fn unwrap(kek: &[u8; 32], aad: &[u8], wrapped: &[u8]) -> Option<DataKey> {
    let (nonce, ct) = wrapped.split_at_checked(12)?;
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, kek).ok()?);
    let mut buf = ct.to_vec();
    let plain = key
        .open_in_place(
            Nonce::try_assume_unique_for_key(nonce).ok()?,
            Aad::from(aad),
            &mut buf,
        )
        .ok()?;
    plain.try_into().ok().map(DataKey)
}

fn kms_aad(context: &str) -> Vec<u8> {
    let mut a = b"cairn sse-kms\0".to_vec();
    a.extend_from_slice(context.as_bytes());
    a
}

const S3_AAD: &[u8] = b"cairn sse-s3";
const C_AAD: &[u8] = b"cairn sse-c";
const C_DIGEST: &str = "sse-c key digest";

/// A new data key for a write to `bucket/key` (whose bucket belongs to `tenant`), and how the
/// object keeps it.
pub async fn new_data_key(
    g: &Gateway,
    tenant: u128,
    bucket: &str,
    key: &str,
    req: &SseRequest,
) -> S3Result<(Sse, DataKey)> {
    let data = DataKey(random::<32>()?);
    let sse = rewrap(g, tenant, bucket, key, req, &data).await?;
    Ok((sse, data))
}

/// How an object keeps `data` under what `req` asks for.
pub async fn rewrap(
    g: &Gateway,
    tenant: u128,
    bucket: &str,
    key: &str,
    req: &SseRequest,
    data: &DataKey,
) -> S3Result<Sse> {
    Ok(match req {
        SseRequest::S3 => {
            let k = s3_key(g).await?;
            let (version, _) = k.current().ok_or_else(|| {
                S3Error::with_message(S3ErrorCode::InternalError, "the SSE-S3 key has no version")
            })?;
            let kek = material(g, S3_KEY, version).await?;
            Sse::S3 {
                key_version: version,
                wrapped: wrap(&kek, S3_AAD, data)?,
            }
        }
        SseRequest::Kms {
            key: named,
            context,
            bucket_key,
        } => {
            let (id, k) = resolve_key(g, tenant, named.as_deref(), true).await?;
            if !k.enabled {
                return Err(disabled(id));
            }
            let (version, _) = k.current().ok_or_else(|| {
                S3Error::with_message(S3ErrorCode::InternalError, "the key has no version")
            })?;
            let kek = material(g, id, version).await?;
            let context = context.clone().unwrap_or_else(|| {
                serde_json::json!({ "aws:s3:arn": format!("arn:aws:s3:::{bucket}/{key}") })
                    .to_string()
            });
            Sse::Kms {
                key: id,
                key_version: version,
                wrapped: wrap(&kek, &kms_aad(&context), data)?,
                context,
                bucket_key: *bucket_key,
            }
        }
        SseRequest::Customer { key: ck } => Sse::Customer {
            wrapped: wrap(ck, C_AAD, data)?,
            key_digest: g.secrets.mac(C_DIGEST, ck),
        },
    })
}

/// The answer to a read of an SSE-C object without its key, or with another.
fn check_customer(g: &Gateway, sse: Option<&Sse>, given: Option<&[u8; 32]>) -> S3Result<()> {
    match (sse, given) {
        (Some(Sse::Customer { key_digest, .. }), Some(k)) => {
            let mac = g.secrets.mac(C_DIGEST, k);
            if mac
                .iter()
                .zip(key_digest)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                != 0
            {
                return Err(S3Error::with_message(
                    S3ErrorCode::AccessDenied,
                    "The provided customer key does not match the key the object was encrypted with.",
                ));
            }
            Ok(())
        }
        (Some(Sse::Customer { .. }), None) => Err(S3Error::with_message(
            S3ErrorCode::InvalidRequest,
            "The object was stored using a form of Server Side Encryption. The correct parameters must be provided to retrieve the object.",
        )),
        (_, Some(_)) => Err(S3Error::with_message(
            S3ErrorCode::InvalidRequest,
            "The encryption parameters are not applicable to this object.",
        )),
        (_, None) => Ok(()),
    }
}

/// Whether a read of an object (HEAD, or before a GET opens the key) brings what its
/// encryption needs.
pub fn check_read(g: &Gateway, d: &ObjectData, given: Option<&[u8; 32]>) -> S3Result<()> {
    check_customer(g, d.content.sse(), given)
}

/// Open an object's data key.
pub async fn open_data_key(g: &Gateway, sse: &Sse, given: Option<&[u8; 32]>) -> S3Result<DataKey> {
    check_customer(g, Some(sse), given)?;
    let damaged = || {
        S3Error::with_message(
            S3ErrorCode::InternalError,
            "the object's data key does not open: its metadata is damaged",
        )
    };
    match sse {
        Sse::S3 {
            key_version,
            wrapped,
        } => {
            let kek = material(g, S3_KEY, *key_version).await?;
            unwrap(&kek, S3_AAD, wrapped).ok_or_else(damaged)
        }
        Sse::Kms {
            key,
            key_version,
            wrapped,
            context,
            ..
        } => {
            let kek = material(g, *key, *key_version).await?;
            unwrap(&kek, &kms_aad(context), wrapped).ok_or_else(damaged)
        }
        Sse::Customer { wrapped, .. } => {
            let ck = given.ok_or_else(damaged)?;
            unwrap(ck, C_AAD, wrapped).ok_or_else(damaged)
        }
    }
}

/// The name metrics count an encryption type by.
pub fn kind(sse: &Sse) -> &'static str {
    match sse {
        Sse::S3 { .. } => "SSE-S3",
        Sse::Kms { .. } => "SSE-KMS",
        Sse::Customer { .. } => "SSE-C",
    }
}

/// The ETag of an encrypted stream: the MD5 of its plaintext for SSE-S3 (as S3 gives), and for
/// SSE-KMS and SSE-C a digest that is not the plaintext's MD5 (as S3's is not).
pub fn etag(sse: &Sse, md5_hex: &str, salt: &[u8; 16]) -> String {
    match sse {
        Sse::S3 { .. } => md5_hex.to_owned(),
        Sse::Kms { .. } | Sse::Customer { .. } => {
            let mut input = md5_hex.as_bytes().to_vec();
            input.extend_from_slice(salt);
            cairn_master::buckets::hex(&md5(&input))
        }
    }
}

// --- streams ---

/// The cipher of one stream.
pub struct Sealer(LessSafeKey);

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    pub fn new(data: &DataKey, salt: &[u8; 16]) -> Sealer {
        let mut input = b"cairn sse stream v1".to_vec();
        input.extend_from_slice(salt);
        let tag = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &data.0),
            &input,
        );
        // A 32-byte key always makes an AES-256 key.
        #[allow(clippy::expect_used)]
        let key = UnboundKey::new(&AES_256_GCM, tag.as_ref()).expect("32-byte AES-256 key");
        Sealer(LessSafeKey::new(key))
    }

    fn nonce(index: u64) -> Nonce {
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&index.to_be_bytes());
        Nonce::assume_unique_for_key(n)
    }

    /// Seal block `index` in place (its tag appended).
    pub fn seal(&self, index: u64, block: &mut Vec<u8>) {
        // Sealing fails only past GCM's length limit, far above a block.
        let _ = self
            .0
            .seal_in_place_append_tag(Self::nonce(index), Aad::empty(), block);
    }

    /// Open block `index` (its tag last); `None` if it fails authentication.
    pub fn open<'a>(&self, index: u64, block: &'a mut [u8]) -> Option<&'a mut [u8]> {
        self.0
            .open_in_place(Self::nonce(index), Aad::empty(), block)
            .ok()
    }
}

/// Seal a whole small body.
pub fn seal_all(sealer: &Sealer, plain: &[u8]) -> Vec<u8> {
    let block = usize::try_from(SEAL_BLOCK).unwrap_or(usize::MAX);
    let mut out = Vec::with_capacity(plain.len() + 16 * plain.len().div_ceil(block));
    for (i, piece) in plain.chunks(block).enumerate() {
        let mut b = piece.to_vec();
        sealer.seal(i as u64, &mut b);
        out.extend_from_slice(&b);
    }
    out
}

/// A reader of `src` sealed block by block.
pub fn sealing<'a, R: AsyncRead + Unpin + Send + 'a>(
    src: R,
    sealer: Sealer,
) -> impl AsyncRead + Unpin + Send + 'a {
    let blocks = futures::stream::try_unfold(
        (src, sealer, 0u64, false),
        |(mut src, sealer, index, done)| async move {
            if done {
                return Ok::<_, std::io::Error>(None);
            }
            let mut buf = Vec::with_capacity(usize::try_from(SEAL_BLOCK + SEAL_TAG).unwrap_or(0));
            (&mut src).take(SEAL_BLOCK).read_to_end(&mut buf).await?;
            if buf.is_empty() {
                return Ok(None);
            }
            let last = (buf.len() as u64) < SEAL_BLOCK;
            sealer.seal(index, &mut buf);
            Ok(Some((Bytes::from(buf), (src, sealer, index + 1, last))))
        },
    );
    tokio_util::io::StreamReader::new(Box::pin(blocks))
}

/// One stream's share of a read: blocks `first..=last`, and the plaintext `from..to` (offsets
/// in the stream) wanted of them.
struct Segment {
    sealer: Sealer,
    len: u64,
    first: u64,
    last: u64,
    from: u64,
    to: u64,
}

/// Which sealed bytes a read of plaintext `offset..offset + len` needs (`span`, offsets in
/// the stored bytes), and which blocks of which streams they hold.
fn plan(
    sizes: &[u64],
    salts: &[[u8; 16]],
    key: &DataKey,
    offset: u64,
    len: u64,
) -> (Option<(u64, u64)>, Vec<Segment>) {
    let end = offset + len;
    let mut segments = Vec::new();
    let (mut plain_at, mut stored_at) = (0u64, 0u64);
    let mut span: Option<(u64, u64)> = None;
    for (n, salt) in sizes.iter().copied().zip(salts) {
        let (a, b) = (offset.max(plain_at), end.min(plain_at + n));
        if a < b {
            let (from, to) = (a - plain_at, b - plain_at);
            let (first, last) = (from / SEAL_BLOCK, (to - 1) / SEAL_BLOCK);
            let s0 = stored_at + first * (SEAL_BLOCK + SEAL_TAG);
            let s1 = stored_at + sealed_len(n).min((last + 1) * (SEAL_BLOCK + SEAL_TAG));
            span = Some((span.map_or(s0, |s| s.0), s1));
            segments.push(Segment {
                sealer: Sealer::new(key, salt),
                len: n,
                first,
                last,
                from,
                to,
            });
        }
        plain_at += n;
        stored_at += sealed_len(n);
    }
    (span, segments)
}

type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send + Sync>>;

/// The plaintext `offset..offset + len` of an encrypted object, opened from its sealed bytes.
pub fn open_stream(
    g: &Gateway,
    d: &ObjectData,
    e: &Encrypted,
    key: &DataKey,
    offset: u64,
    len: u64,
) -> StreamingBlob {
    let sizes = if d.parts.is_empty() {
        vec![d.size]
    } else {
        d.parts.clone()
    };
    let (span, segments) = plan(&sizes, &e.salts, key, offset, len);
    let Some((s0, s1)) = span else {
        return StreamingBlob::wrap(futures::stream::empty::<std::io::Result<Bytes>>());
    };
    let raw: ByteStream = match &e.body {
        Content::Chunks(x) => {
            let blob =
                crate::body::object_stream(&g.data, std::sync::Arc::new(x.clone()), s0, s1 - s0);
            Box::pin(blob.map(|r| r.map_err(std::io::Error::other)))
        }
        Content::Inline(b) => {
            let lo = usize::try_from(s0).unwrap_or(usize::MAX).min(b.len());
            let hi = usize::try_from(s1).unwrap_or(usize::MAX).min(b.len());
            let bytes = Bytes::copy_from_slice(&b[lo..hi]);
            Box::pin(futures::stream::once(async move { Ok(bytes) }))
        }
        Content::Encrypted(_) => Box::pin(futures::stream::once(async {
            Err(std::io::Error::other(
                "an encrypted body inside an encrypted body",
            ))
        })),
    };
    StreamingBlob::wrap(open_blocks(raw, segments))
}

/// Open the sealed blocks `raw` brings (the span [`plan`] chose) into the plaintext wanted of
/// them.
fn open_blocks(
    raw: ByteStream,
    segments: Vec<Segment>,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + Sync {
    futures::stream::try_unfold(
        (
            raw,
            Bytes::new(),
            segments.into_iter(),
            None::<(Segment, u64)>,
        ),
        |(mut raw, mut pending, mut rest, mut at)| async move {
            loop {
                let (seg, index) = match at.take() {
                    Some(x) => x,
                    None => match rest.next() {
                        Some(s) => {
                            let first = s.first;
                            (s, first)
                        }
                        None => return Ok(None),
                    },
                };
                if index > seg.last {
                    continue;
                }
                let start = index * SEAL_BLOCK;
                let plain = SEAL_BLOCK.min(seg.len - start);
                let sealed = usize::try_from(plain + SEAL_TAG).unwrap_or(usize::MAX);
                // The one copy: out of the data plane's (shared, read-only) buffers into a
                // block of its own, opened in place and handed on without another.
                let mut block = Vec::with_capacity(sealed);
                while block.len() < sealed {
                    if pending.is_empty() {
                        pending = match raw.next().await {
                            Some(Ok(b)) => b,
                            Some(Err(e)) => return Err(e),
                            None => {
                                return Err(std::io::Error::other(
                                    "object stream ended early: sealed bytes missing",
                                ));
                            }
                        };
                    }
                    let take = (sealed - block.len()).min(pending.len());
                    block.extend_from_slice(&pending[..take]);
                    pending = pending.slice(take..);
                }
                let Some(opened) = seg.sealer.open(index, &mut block).map(|p| p.len()) else {
                    return Err(std::io::Error::other(
                        "a sealed block of the object failed authentication (damaged data)",
                    ));
                };
                block.truncate(opened);
                let lo = usize::try_from(seg.from.max(start) - start).unwrap_or(0);
                let hi = usize::try_from(seg.to.min(start + plain) - start).unwrap_or(0);
                let out = Bytes::from(block).slice(lo..hi);
                return Ok(Some((out, (raw, pending, rest, Some((seg, index + 1))))));
            }
        },
    )
}

/// The headers S3 reports an object's encryption by.
#[derive(Clone, Debug, Default)]
pub struct SseHeaders {
    pub algorithm: Option<String>,
    pub kms_key_id: Option<String>,
    pub context: Option<String>,
    pub bucket_key: Option<bool>,
    pub customer_algorithm: Option<String>,
    pub customer_key_md5: Option<String>,
}

impl SseHeaders {
    /// For an object kept as `sse` in a bucket of `tenant`; `customer` is the key the request
    /// gave (SSE-C answers with its MD5).
    pub fn of(g: &Gateway, tenant: u128, sse: Option<&Sse>, customer: Option<&[u8; 32]>) -> Self {
        match sse {
            None => SseHeaders::default(),
            Some(Sse::S3 { .. }) => SseHeaders {
                algorithm: Some("AES256".into()),
                ..Default::default()
            },
            Some(Sse::Kms {
                key,
                context,
                bucket_key,
                ..
            }) => SseHeaders {
                algorithm: Some("aws:kms".into()),
                kms_key_id: Some(key_arn(g, tenant, *key)),
                context: Some(base64_encode(context.as_bytes())),
                bucket_key: bucket_key.then_some(true),
                ..Default::default()
            },
            Some(Sse::Customer { .. }) => SseHeaders {
                customer_algorithm: Some("AES256".into()),
                customer_key_md5: customer.map(|k| base64_encode(&md5(k))),
                ..Default::default()
            },
        }
    }
}

/// Fill an S3 output's encryption fields from [`SseHeaders`].
#[macro_export]
macro_rules! set_sse {
    ($out:expr, $h:expr) => {{
        let h: $crate::sse::SseHeaders = $h;
        $out.server_side_encryption = h.algorithm.map(s3s::dto::ServerSideEncryption::from);
        $out.ssekms_key_id = h.kms_key_id;
        $out.bucket_key_enabled = h.bucket_key;
        $out.sse_customer_algorithm = h.customer_algorithm;
        $out.sse_customer_key_md5 = h.customer_key_md5;
    }};
}

/// A fresh stream salt.
pub fn new_salt() -> S3Result<[u8; 16]> {
    random::<16>()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// Seal `streams` as an object stores them; the stored bytes.
    fn sealed(key: &DataKey, streams: &[Vec<u8>], salts: &[[u8; 16]]) -> Vec<u8> {
        streams
            .iter()
            .zip(salts)
            .flat_map(|(s, salt)| seal_all(&Sealer::new(key, salt), s))
            .collect()
    }

    /// Read plaintext `offset..offset+len` from the stored bytes, handed over in pieces of
    /// `piece` bytes as the data plane would.
    fn read(
        key: &DataKey,
        stored: &[u8],
        sizes: &[u64],
        salts: &[[u8; 16]],
        offset: u64,
        len: u64,
        piece: usize,
    ) -> std::io::Result<Vec<u8>> {
        let (span, segments) = plan(sizes, salts, key, offset, len);
        let Some((s0, s1)) = span else {
            return Ok(Vec::new());
        };
        let bytes = stored[s0 as usize..s1 as usize].to_vec();
        let pieces: Vec<std::io::Result<Bytes>> = bytes
            .chunks(piece.max(1))
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let raw: ByteStream = Box::pin(futures::stream::iter(pieces));
        run(async move {
            let mut out = Vec::new();
            let mut s = Box::pin(open_blocks(raw, segments));
            while let Some(b) = s.next().await {
                out.extend_from_slice(&b?);
            }
            Ok(out)
        })
    }

    #[test]
    fn a_sealing_reader_seals_as_seal_all_does() {
        let key = DataKey([3; 32]);
        let salt = [4; 16];
        for n in [0usize, 1, 65_535, 65_536, 65_537, 200_000] {
            let plain: Vec<u8> = (0..n).map(|i| (i * 7) as u8).collect();
            let mut reader = sealing(
                std::io::Cursor::new(plain.clone()),
                Sealer::new(&key, &salt),
            );
            let mut out = Vec::new();
            run(async { reader.read_to_end(&mut out).await.unwrap() });
            assert_eq!(out, seal_all(&Sealer::new(&key, &salt), &plain), "{n}");
            assert_eq!(out.len() as u64, sealed_len(n as u64));
        }
    }

    #[test]
    fn customer_keys_travel_only_where_they_stay_private() {
        let peer = |ip: &str| Some(std::net::SocketAddr::new(ip.parse().unwrap(), 5000));
        let with = |pairs: &[(&'static str, &'static str)]| {
            let mut h = http::HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, http::HeaderValue::from_static(v));
            }
            h
        };
        let key = with(&[("x-amz-server-side-encryption-customer-key", "k")]);
        let source = with(&[("x-amz-copy-source-server-side-encryption-customer-key", "k")]);
        // No key: nothing to protect.
        assert!(customer_key_transport_ok(
            &with(&[]),
            peer("203.0.113.9"),
            false
        ));
        // A key from a remote client over plain HTTP is refused, unless allowed.
        assert!(!customer_key_transport_ok(&key, peer("203.0.113.9"), false));
        assert!(!customer_key_transport_ok(&source, peer("10.1.2.3"), false));
        assert!(!customer_key_transport_ok(&key, None, false));
        assert!(customer_key_transport_ok(&key, peer("203.0.113.9"), true));
        // From this host, or a local TLS proxy; not a local proxy that received plain HTTP.
        assert!(customer_key_transport_ok(&key, peer("127.0.0.1"), false));
        assert!(customer_key_transport_ok(&key, peer("::1"), false));
        let mut proxied = key.clone();
        proxied.insert("x-forwarded-proto", http::HeaderValue::from_static("https"));
        assert!(customer_key_transport_ok(
            &proxied,
            peer("127.0.0.1"),
            false
        ));
        proxied.insert("x-forwarded-proto", http::HeaderValue::from_static("http"));
        assert!(!customer_key_transport_ok(
            &proxied,
            peer("127.0.0.1"),
            false
        ));
        // A remote client cannot claim TLS with the header.
        assert!(!customer_key_transport_ok(
            &proxied,
            peer("203.0.113.9"),
            false
        ));
    }

    #[test]
    fn a_wrapped_key_opens_only_with_its_key_and_context() {
        let data = DataKey([5; 32]);
        let w = wrap(&[1; 32], b"ctx", &data).unwrap();
        assert_eq!(unwrap(&[1; 32], b"ctx", &w).map(|k| k.0), Some(data.0));
        assert!(unwrap(&[2; 32], b"ctx", &w).is_none());
        assert!(unwrap(&[1; 32], b"other", &w).is_none());
        assert!(unwrap(&[1; 32], b"ctx", &w[..20]).is_none());
    }

    #[test]
    fn a_damaged_block_fails_the_read_instead_of_answering_wrong_bytes() {
        let key = DataKey([6; 32]);
        let plain = vec![9u8; 100_000];
        let salts = [[1; 16]];
        let mut stored = sealed(&key, std::slice::from_ref(&plain), &salts);
        stored[70_000] ^= 1;
        assert!(read(&key, &stored, &[100_000], &salts, 0, 100_000, 4096).is_err());
        // The first block is whole and still reads.
        assert_eq!(
            read(&key, &stored, &[100_000], &salts, 0, 1000, 4096).unwrap(),
            plain[..1000]
        );
        // Another key opens nothing.
        assert!(read(&DataKey([7; 32]), &stored, &[100_000], &salts, 0, 10, 4096).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn any_range_of_any_multipart_layout_reads_back(
            sizes in proptest::collection::vec(0u64..200_000, 1..4),
            a in 0.0f64..1.0,
            b in 0.0f64..1.0,
            piece in 1usize..100_000,
        ) {
            let key = DataKey([8; 32]);
            let streams: Vec<Vec<u8>> = sizes
                .iter()
                .enumerate()
                .map(|(i, n)| (0..*n).map(|j| (j as u8).wrapping_mul(31).wrapping_add(i as u8)).collect())
                .collect();
            let salts: Vec<[u8; 16]> = (0..sizes.len()).map(|i| [i as u8; 16]).collect();
            let stored = sealed(&key, &streams, &salts);
            let whole: Vec<u8> = streams.concat();
            let total = whole.len() as u64;
            let (mut lo, mut hi) = ((a * total as f64) as u64, (b * total as f64) as u64);
            if lo > hi {
                std::mem::swap(&mut lo, &mut hi);
            }
            let got = read(&key, &stored, &sizes, &salts, lo, hi - lo, piece).unwrap();
            prop_assert_eq!(got, whole[lo as usize..hi as usize].to_vec());
        }
    }
}
