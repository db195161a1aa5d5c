//! The S3 operations over the bucket service and the data plane.
//!
//! Each mutation is one bucket-service command (atomic, with its chunk references); bytes
//! stream through the data plane with bounded memory. Small objects (up to
//! `GatewayOptions::inline_max`) skip chunkservers and live in the metadata itself.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cairn_master::bucket_policy::BucketPolicy;
use cairn_master::buckets::acl::{self, Grant as AclGrant};
use cairn_master::buckets::{
    BucketChange, BucketCommand, BucketEncryption, BucketQuery, BucketQueryResponse, BucketRecord,
    BucketRefusal, BucketResponse, Conditions, Content, CorsRule, DefaultRetention, DefaultSse,
    FilterForm, LifecycleFilter, LifecycleRule, ListPage, ListRequest, LockChange, LockConfig,
    LockMode, ObjectAcl, ObjectData, ObjectLock, ObjectMeta, PublicAccessBlock, Retention, Version,
    VersionRef, Versioning, parse_upload, upload_string, version_string,
};
use cairn_proto::dataplane::Extent;
use futures::StreamExt;
use s3s::crypto::{Checksum as _, Md5};
use s3s::dto::*;
use s3s::{S3, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, s3_error};

use crate::Gateway;
use crate::objects::{self, Who, custom_error};
use crate::set_sse;
use crate::sse::{self, SseHeaders, SseRequest};

#[derive(Debug, Clone)]
pub struct CairnS3 {
    g: Arc<Gateway>,
}

impl CairnS3 {
    pub fn new(g: Arc<Gateway>) -> CairnS3 {
        CairnS3 { g }
    }
}

fn ts(ms: u64) -> Timestamp {
    Timestamp::from(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
}

fn ms_of(t: &Timestamp) -> i64 {
    let odt: time::OffsetDateTime = t.clone().into();
    i64::try_from(odt.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

fn ts_signed(ms: i64) -> Timestamp {
    if ms >= 0 {
        ts(ms as u64)
    } else {
        Timestamp::from(SystemTime::UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs()))
    }
}

fn etag(s: &str) -> ETag {
    ETag::Strong(s.to_owned())
}

fn internal(e: impl std::fmt::Display) -> S3Error {
    S3Error::with_message(S3ErrorCode::InternalError, e.to_string())
}

fn parse_version(v: Option<&str>) -> S3Result<Option<VersionRef>> {
    match v {
        None => Ok(None),
        Some(s) => VersionRef::parse(s)
            .map(Some)
            .ok_or_else(|| s3_error!(InvalidArgument, "Invalid version id specified")),
    }
}

fn condition_strings(c: &Option<ETagCondition>) -> Option<Vec<String>> {
    c.as_ref().map(|c| match c {
        ETagCondition::Any => vec!["*".to_owned()],
        ETagCondition::ETag(e) => vec![e.value().to_owned()],
    })
}

fn write_conditions(
    if_match: &Option<ETagCondition>,
    if_none_match: &Option<ETagCondition>,
) -> S3Result<Conditions> {
    let if_none_match_any = match if_none_match {
        None => false,
        Some(ETagCondition::Any) => true,
        Some(ETagCondition::ETag(_)) => {
            return Err(s3_error!(
                NotImplemented,
                "If-None-Match on a write supports only *"
            ));
        }
    };
    Ok(Conditions {
        if_match: condition_strings(if_match),
        if_none_match_any,
    })
}

/// `k1=v1&k2=v2` (URL-encoded), as in `x-amz-tagging`.
fn parse_tagging(s: Option<&str>) -> S3Result<Vec<(String, String)>> {
    let Some(s) = s.filter(|s| !s.is_empty()) else {
        return Ok(Vec::new());
    };
    let dec = |x: &str| {
        urlencoding::decode(&x.replace('+', " "))
            .map(|c| c.into_owned())
            .map_err(|_| s3_error!(InvalidTag, "tags are not valid URL encoding"))
    };
    let tags: Vec<(String, String)> = s
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            Ok((dec(k)?, dec(v)?))
        })
        .collect::<S3Result<_>>()?;
    check_object_tags(&tags)?;
    Ok(tags)
}

/// Most tags one object carries (buckets carry up to 50).
const OBJECT_TAGS_MAX: usize = 10;

/// S3's limits on an object's tags, checked by the gateway (the bucket service keeps the
/// bucket limits it has always applied, so that older log entries replay the same).
fn check_object_tags(tags: &[(String, String)]) -> S3Result<()> {
    if tags.len() > OBJECT_TAGS_MAX {
        return Err(custom_status(
            "BadRequest",
            "Object tags cannot be greater than 10",
            http::StatusCode::BAD_REQUEST,
        ));
    }
    if let Some((k, _)) = tags
        .iter()
        .find(|(k, v)| k.is_empty() || k.chars().count() > 128 || v.chars().count() > 256)
    {
        return Err(S3Error::with_message(
            S3ErrorCode::InvalidTag,
            format!("The TagKey you have provided is invalid or its value is too long: {k:?}"),
        ));
    }
    let mut keys: Vec<&String> = tags.iter().map(|(k, _)| k).collect();
    keys.sort();
    keys.dedup();
    if keys.len() != tags.len() {
        return Err(s3_error!(
            InvalidTag,
            "Cannot provide multiple Tags with the same key"
        ));
    }
    Ok(())
}

fn tag_set(tags: &[(String, String)]) -> TagSet {
    tags.iter()
        .map(|(k, v)| Tag {
            key: Some(k.clone()),
            value: Some(v.clone()),
        })
        .collect()
}

fn tags_from(set: TagSet) -> S3Result<Vec<(String, String)>> {
    set.into_iter()
        .map(|t| match t.key {
            Some(k) => Ok((k, t.value.unwrap_or_default())),
            None => Err(s3_error!(InvalidTag, "a tag has no key")),
        })
        .collect()
}

fn enc(s: &str, url: bool) -> String {
    if url {
        urlencoding::encode(s).into_owned()
    } else {
        s.to_owned()
    }
}

fn wants_url(e: &Option<EncodingType>) -> S3Result<bool> {
    match e {
        None => Ok(false),
        Some(e) if e.as_str() == EncodingType::URL => Ok(true),
        Some(_) => Err(s3_error!(
            InvalidArgument,
            "Invalid Encoding Method specified in Request"
        )),
    }
}

fn max_keys(n: Option<i32>) -> S3Result<u32> {
    match n {
        None => Ok(1000),
        Some(n) if n < 0 => Err(s3_error!(InvalidArgument, "max-keys must be non-negative")),
        Some(n) => Ok((n as u32).min(1000)),
    }
}

fn hex_token(s: &str) -> String {
    cairn_master::buckets::hex(s.as_bytes())
}

fn unhex_token(s: &str) -> S3Result<String> {
    let bad = || {
        s3_error!(
            InvalidArgument,
            "The continuation token provided is incorrect"
        )
    };
    if !s.len().is_multiple_of(2) {
        return Err(bad());
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect();
    String::from_utf8(bytes.ok_or_else(bad)?).map_err(|_| bad())
}

/// The standard headers and user metadata of a write request.
#[allow(clippy::too_many_arguments)]
fn meta(
    content_type: Option<String>,
    content_encoding: Option<String>,
    content_disposition: Option<String>,
    content_language: Option<String>,
    cache_control: Option<String>,
    expires: Option<&Timestamp>,
    user: Option<Metadata>,
) -> S3Result<ObjectMeta> {
    let mut user: Vec<(String, String)> = user.unwrap_or_default().into_iter().collect();
    user.sort();
    let size: usize = user.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > 2048 {
        return Err(s3_error!(
            MetadataTooLarge,
            "user metadata is limited to 2 KB"
        ));
    }
    Ok(ObjectMeta {
        content_type,
        content_encoding: content_encoding.and_then(|e| stored_encoding(&e)),
        content_disposition,
        content_language,
        cache_control,
        expires_ms: expires.map(ms_of),
        user,
        checksum: None,
    })
}

/// The `Content-Encoding` an object keeps: the request's without `aws-chunked`, which only
/// says how this request's body travelled (`gzip, aws-chunked` is stored as `gzip`, as AWS
/// does); `None` when nothing else is left.
fn stored_encoding(e: &str) -> Option<String> {
    let kept: Vec<&str> = e
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case("aws-chunked"))
        .collect();
    (!kept.is_empty()).then(|| kept.join(", "))
}

fn user_metadata(m: &ObjectMeta) -> Option<Metadata> {
    (!m.user.is_empty()).then(|| m.user.iter().cloned().collect::<HashMap<_, _>>())
}

/// Sub-extents covering `len` bytes at `offset` of an object made of `extents`.
fn slice_extents(extents: &[Extent], offset: u64, len: u64) -> Vec<Extent> {
    let mut out = Vec::new();
    let mut at = 0u64;
    let end = offset + len;
    for e in extents {
        let (s, t) = (at, at + e.len);
        at = t;
        let lo = offset.max(s);
        let hi = end.min(t);
        if lo < hi {
            out.push(Extent {
                handle: e.handle,
                offset: e.offset + (lo - s),
                len: hi - lo,
            });
        }
    }
    out
}

/// An `AsyncWrite` that only hashes (for the MD5 of copied ranges).
/// The MD5 (and the checksum an upload asks for) of bytes copied through it.
struct DigestSink(Md5, s3s::checksum::ChecksumHasher);

impl tokio::io::AsyncWrite for DigestSink {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.0.update(buf);
        self.1.update(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// Evaluate the read preconditions (RFC 7232 order, as S3 does).
fn read_conditions(
    etag_now: &str,
    modified_ms: u64,
    if_match: &Option<ETagCondition>,
    if_none_match: &Option<ETagCondition>,
    if_modified_since: &Option<Timestamp>,
    if_unmodified_since: &Option<Timestamp>,
) -> S3Result<()> {
    let matches = |c: &ETagCondition| match c {
        ETagCondition::Any => true,
        ETagCondition::ETag(e) => e.value() == etag_now,
    };
    // HTTP dates have whole seconds.
    let modified_s = (modified_ms / 1000) as i64;
    if let Some(c) = if_match {
        if !matches(c) {
            return Err(s3_error!(
                PreconditionFailed,
                "At least one of the pre-conditions you specified did not hold"
            ));
        }
    } else if let Some(t) = if_unmodified_since
        && modified_s > ms_of(t) / 1000
    {
        return Err(s3_error!(
            PreconditionFailed,
            "At least one of the pre-conditions you specified did not hold"
        ));
    }
    if let Some(c) = if_none_match {
        if matches(c) {
            return Err(S3Error::new(S3ErrorCode::NotModified));
        }
    } else if let Some(t) = if_modified_since
        && modified_s <= ms_of(t) / 1000
    {
        return Err(S3Error::new(S3ErrorCode::NotModified));
    }
    Ok(())
}

fn not_found_marker(v: &Version, versioned_request: bool) -> S3Error {
    let mut e = if versioned_request {
        s3_error!(
            MethodNotAllowed,
            "The specified method is not allowed against this resource."
        )
    } else {
        s3_error!(NoSuchKey, "The specified key does not exist.")
    };
    let mut h = http::HeaderMap::new();
    h.insert(
        "x-amz-delete-marker",
        http::HeaderValue::from_static("true"),
    );
    if let Ok(val) = http::HeaderValue::from_str(&version_string(v.id)) {
        h.insert("x-amz-version-id", val);
    }
    e.set_headers(h);
    e
}

/// Put a kept checksum, `Option<(algorithm, value)>`, into the output field its algorithm
/// names (the put, part and get outputs share these field names).
/// `x-amz-checksum-type` of an object checksum: composite values end in `-N`.
fn checksum_type(sum: &Option<(String, String)>) -> Option<ChecksumType> {
    sum.as_ref().map(|(_, v)| {
        ChecksumType::from_static(if cairn_master::buckets::checksums::is_composite(v) {
            ChecksumType::COMPOSITE
        } else {
            ChecksumType::FULL_OBJECT
        })
    })
}

/// `x-amz-checksum-type` of an upload.
fn upload_checksum_type(c: &cairn_master::buckets::UploadChecksum) -> ChecksumType {
    ChecksumType::from_static(if c.full_object {
        ChecksumType::FULL_OBJECT
    } else {
        ChecksumType::COMPOSITE
    })
}

/// The checksum settings `CreateMultipartUpload` asks for, checked as S3 checks them.
fn upload_checksum(
    algorithm: Option<&ChecksumAlgorithm>,
    kind: Option<&ChecksumType>,
) -> S3Result<Option<cairn_master::buckets::UploadChecksum>> {
    let Some(algorithm) = algorithm else {
        if kind.is_some() {
            return Err(s3_error!(
                InvalidRequest,
                "The x-amz-checksum-type header can only be used with the x-amz-checksum-algorithm header."
            ));
        }
        return Ok(None);
    };
    let a = algorithm.as_str().to_ascii_uppercase();
    if !cairn_master::buckets::checksums::ALGORITHMS.contains(&a.as_str()) {
        return Err(s3_error!(
            InvalidRequest,
            "Checksum algorithm provided is unsupported. Please try again with any of the valid types: [CRC32, CRC32C, CRC64NVME, SHA1, SHA256]"
        ));
    }
    let mut c = cairn_master::buckets::UploadChecksum::default_for(&a);
    match kind.map(|k| k.as_str().to_ascii_uppercase()).as_deref() {
        None => {}
        Some("COMPOSITE") => c.full_object = false,
        Some("FULL_OBJECT") => c.full_object = true,
        Some(other) => {
            return Err(S3Error::with_message(
                S3ErrorCode::InvalidRequest,
                format!(
                    "Value for x-amz-checksum-type header is invalid: {other} (COMPOSITE or FULL_OBJECT)"
                ),
            ));
        }
    }
    c.check().map_err(|r| crate::rejection_error(&r))?;
    Ok(Some(c))
}

macro_rules! set_checksum {
    ($out:expr, $sum:expr) => {
        if let Some((alg, v)) = $sum {
            match alg.as_str() {
                "CRC32" => $out.checksum_crc32 = Some(v),
                "CRC32C" => $out.checksum_crc32c = Some(v),
                "CRC64NVME" => $out.checksum_crc64nvme = Some(v),
                "SHA1" => $out.checksum_sha1 = Some(v),
                _ => $out.checksum_sha256 = Some(v),
            }
        }
    };
}

/// The headers GET and HEAD share (stored values, or the request's `response-*` overrides).
macro_rules! read_output {
    ($ty:ident, $input:ident, $plan:ident, $($field:ident: $val:expr),* $(,)?) => {{
        let m = &$plan.data.meta;
        $ty {
            accept_ranges: Some("bytes".into()),
            cache_control: $input.response_cache_control.or_else(|| m.cache_control.clone()),
            content_disposition: $input
                .response_content_disposition
                .or_else(|| m.content_disposition.clone()),
            content_encoding: $input
                .response_content_encoding
                .or_else(|| m.content_encoding.clone()),
            content_language: $input
                .response_content_language
                .or_else(|| m.content_language.clone()),
            content_length: i64::try_from($plan.len).ok(),
            content_range: $plan.content_range.clone(),
            content_type: $input
                .response_content_type
                .or_else(|| m.content_type.clone())
                .or_else(|| Some("binary/octet-stream".into())),
            e_tag: Some(etag(&$plan.data.etag)),
            expires: $input.response_expires.or_else(|| m.expires_ms.map(ts_signed)),
            last_modified: Some(ts($plan.version.modified_ms)),
            metadata: user_metadata(m),
            parts_count: $plan.parts_count,
            version_id: $plan.version.id.map(|x| version_string(Some(x))),
            $($field: $val,)*
            ..Default::default()
        }
    }};
}

/// What a GET or HEAD answers, before any byte is read.
struct ReadPlan {
    version: Version,
    data: ObjectData,
    offset: u64,
    len: u64,
    content_range: Option<String>,
    parts_count: Option<i32>,
}

/// A read's preconditions: If-Match, If-None-Match, If-Modified-Since, If-Unmodified-Since.
type ReadConditions<'a> = (
    &'a Option<ETagCondition>,
    &'a Option<ETagCondition>,
    &'a Option<Timestamp>,
    &'a Option<Timestamp>,
);

/// The version a lookup found, or the S3 error for none.
fn found_version(found: Option<Version>, asked: Option<VersionRef>) -> S3Result<Version> {
    found.ok_or_else(|| {
        if asked.is_some() {
            s3_error!(NoSuchVersion, "The specified version does not exist.")
        } else {
            s3_error!(NoSuchKey, "The specified key does not exist.")
        }
    })
}

/// A version's object data; a delete marker answers as S3 does.
fn data_of(v: Version, asked: Option<VersionRef>) -> S3Result<(Version, ObjectData)> {
    match v.data().cloned() {
        Some(d) => Ok((v, d)),
        None => Err(not_found_marker(&v, asked.is_some())),
    }
}

fn who<T>(req: &S3Request<T>) -> Who {
    Who {
        actor: req
            .credentials
            .as_ref()
            .map_or_else(|| "anonymous".to_owned(), |c| c.access_key.clone()),
        ip: req
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip().to_string())
            .unwrap_or_default(),
        tenant: req
            .extensions
            .get::<crate::auth::BucketTenant>()
            .map(|t| t.0)
            .or_else(|| crate::auth::principal(req).map(|p| p.tenant)),
    }
}

impl CairnS3 {
    /// See [`objects::write`].
    pub(crate) async fn write(&self, who: &Who, c: BucketCommand) -> S3Result<BucketResponse> {
        objects::write(&self.g, who, c).await
    }

    async fn bucket(&self, name: &str) -> S3Result<BucketRecord> {
        objects::bucket_record(&self.g, name).await
    }

    /// The tenant of a request's bucket and the encryption a write asks for (its headers,
    /// else the bucket's default).
    /// The checksum a GET or HEAD with `x-amz-checksum-mode: ENABLED` reports: the object's
    /// for the whole object (or part 1 of a single-part one), the part's for `partNumber` of
    /// a multipart object that kept its parts' checksums, none for a range.
    async fn read_checksum(
        &self,
        mode: Option<&ChecksumMode>,
        (bucket, key): (&str, &str),
        plan: &ReadPlan,
        part_number: Option<i32>,
    ) -> S3Result<Option<(String, String)>> {
        if mode.is_none_or(|c| c.as_str() != ChecksumMode::ENABLED) {
            return Ok(None);
        }
        let d = &plan.data;
        let Some((alg, _)) = &d.meta.checksum else {
            return Ok(None);
        };
        if plan.content_range.is_none() || (d.parts.is_empty() && part_number == Some(1)) {
            return Ok(d.meta.checksum.clone());
        }
        let Some(n) = part_number.and_then(|n| usize::try_from(n).ok()) else {
            return Ok(None);
        };
        let sums = match self
            .g
            .query(&BucketQuery::VersionPartSums {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
                version: Some(plan.version.id.map_or(VersionRef::Null, VersionRef::Id)),
            })
            .await?
        {
            BucketQueryResponse::VersionPartSums(s) => s,
            _ => return Err(internal("unexpected answer")),
        };
        Ok(sums
            .and_then(|s| s.0.get(n.wrapping_sub(1)).cloned())
            .map(|v| (alg.clone(), v)))
    }

    /// The checksums a completion gives its object, when the upload was begun with an
    /// algorithm: each named part's stored checksum (checked against the one the client
    /// lists, which a composite upload must list) and their combination (checked against the
    /// object checksum the client sends). Also checks `x-amz-mp-object-size`.
    async fn completion_checksums(
        &self,
        input: &CompleteMultipartUploadInput,
        upload: u128,
        listed: &[CompletedPart],
        named: &[(u32, String)],
    ) -> S3Result<(Option<cairn_master::buckets::ObjectChecksums>, u64)> {
        let (upload_sum, stored) = match self
            .g
            .query(&BucketQuery::UploadChecksums {
                bucket: input.bucket.clone(),
                key: input.key.clone(),
                upload,
            })
            .await?
        {
            BucketQueryResponse::UploadChecksums(Some(x)) => x,
            _ => {
                return Err(s3_error!(
                    NoSuchUpload,
                    "The specified upload does not exist."
                ));
            }
        };
        let stored: std::collections::BTreeMap<
            u32,
            (u64, Option<cairn_master::buckets::PartChecksum>),
        > = stored
            .into_iter()
            .map(|(n, size, c)| (n, (size, c)))
            .collect();
        let no_part = || {
            s3_error!(
                InvalidPart,
                "One or more of the specified parts could not be found. The part may not have been uploaded, or the specified entity tag may not have matched the part's entity tag."
            )
        };
        let mut total = 0u64;
        for (n, _) in named {
            total += stored.get(n).ok_or_else(no_part)?.0;
        }
        if let Some(want) = input.mpu_object_size
            && u64::try_from(want).ok() != Some(total)
        {
            return Err(S3Error::with_message(
                S3ErrorCode::InvalidRequest,
                format!(
                    "The provided 'x-amz-mp-object-size' header value {want} does not match what was computed: {total}"
                ),
            ));
        }
        let Some(u) = upload_sum else {
            return Ok((None, total));
        };
        let mode = if u.full_object {
            ChecksumType::FULL_OBJECT
        } else {
            ChecksumType::COMPOSITE
        };
        if let Some(t) = &input.checksum_type
            && !t.as_str().eq_ignore_ascii_case(mode)
        {
            return Err(S3Error::with_message(
                S3ErrorCode::InvalidRequest,
                format!(
                    "The upload was created using the {mode} checksum mode. The complete request must use the same checksum mode."
                ),
            ));
        }
        let alg = u.algorithm.as_str();
        let lower = alg.to_ascii_lowercase();
        let mut values = Vec::with_capacity(named.len());
        for (p, (n, _)) in listed.iter().zip(named) {
            let (size, c) = stored.get(n).ok_or_else(no_part)?;
            let have = c.as_ref().filter(|c| c.algorithm == alg).map(|c| &c.value);
            match crate::checksums::of_completed_part(p, alg) {
                Some(given) if Some(given.trim()) != have.map(String::as_str) => {
                    return Err(no_part());
                }
                None if !u.full_object => {
                    return Err(S3Error::with_message(
                        S3ErrorCode::InvalidRequest,
                        format!(
                            "The upload was created using a {lower} checksum. The complete request must include the checksum for each part. It was missing for part {n} in the request."
                        ),
                    ));
                }
                _ => {}
            }
            let have = have.ok_or_else(|| {
                S3Error::with_message(
                    S3ErrorCode::InvalidPart,
                    format!("part {n} has no {lower} checksum: upload it again"),
                )
            })?;
            values.push((have.clone(), *size));
        }
        let object = if u.full_object {
            let refs: Vec<(&str, u64)> = values.iter().map(|(v, n)| (v.as_str(), *n)).collect();
            crate::checksums::full_object(alg, &refs)
        } else {
            let refs: Vec<&str> = values.iter().map(|(v, _)| v.as_str()).collect();
            crate::checksums::composite(alg, &refs)
        }
        .ok_or_else(|| internal("a stored part checksum is not one of its algorithm"))?;
        let sent = match alg {
            "CRC32" => input.checksum_crc32.as_ref(),
            "CRC32C" => input.checksum_crc32c.as_ref(),
            "CRC64NVME" => input.checksum_crc64nvme.as_ref(),
            "SHA1" => input.checksum_sha1.as_ref(),
            _ => input.checksum_sha256.as_ref(),
        };
        if let Some(sent) = sent {
            // A composite value may be sent with or without its `-N`.
            let bare = object.split('-').next().unwrap_or(&object);
            if sent.trim() != object && sent.trim() != bare {
                return Err(S3Error::with_message(
                    S3ErrorCode::BadDigest,
                    format!("The {lower} you specified did not match the calculated checksum."),
                ));
            }
        }
        Ok((
            Some(cairn_master::buckets::ObjectChecksums {
                object: (u.algorithm.clone(), object),
                parts: values.into_iter().map(|(v, _)| Some(v)).collect(),
            }),
            total,
        ))
    }

    async fn write_sse<T>(
        &self,
        req: &S3Request<T>,
        bucket: &str,
    ) -> S3Result<(u128, Option<SseRequest>)> {
        match req.extensions.get::<crate::auth::BucketTenant>() {
            Some(t) => {
                let default = req.extensions.get::<crate::auth::BucketSse>().map(|d| &d.0);
                Ok((t.0, sse::write_request(&req.headers, default)?))
            }
            None => {
                let b = self.bucket(bucket).await?;
                Ok((
                    cairn_master::tenancy::bucket_tenant(&b.owner),
                    sse::write_request(&req.headers, b.encryption.as_ref())?,
                ))
            }
        }
    }

    /// Find the version, check the preconditions, resolve the range or part.
    async fn plan_read(
        &self,
        bucket: &str,
        key: &str,
        version_id: Option<&str>,
        conditions: ReadConditions<'_>,
        (range, part_number): (Option<Range>, Option<i32>),
        prefetched: Option<crate::auth::Prefetched>,
    ) -> S3Result<ReadPlan> {
        let r = parse_version(version_id)?;
        let (version, data) =
            match prefetched.filter(|p| p.bucket == bucket && p.key == key && p.version == r) {
                Some(p) => data_of(found_version(p.found, r)?, r)?,
                None => self.object(bucket, key, version_id).await?,
            };
        let (if_match, if_none_match, since, unmodified_since) = conditions;
        read_conditions(
            &data.etag,
            version.modified_ms,
            if_match,
            if_none_match,
            since,
            unmodified_since,
        )?;
        let (offset, len, content_range, parts_count) = Self::range_of(&data, range, part_number)?;
        Ok(ReadPlan {
            version,
            data,
            offset,
            len,
            content_range,
            parts_count,
        })
    }

    /// The source of a copy (version, data, bucket, key), its conditions checked: a failed
    /// condition answers 412, never 304, on a copy.
    async fn copy_source(
        &self,
        source: &CopySource,
        conditions: ReadConditions<'_>,
    ) -> S3Result<(Version, ObjectData, String, String)> {
        let CopySource::Bucket {
            bucket,
            key,
            version_id,
        } = source
        else {
            return Err(s3_error!(NotImplemented, "access points are not supported"));
        };
        let (version, data) = self.object(bucket, key, version_id.as_deref()).await?;
        let (if_match, if_none_match, since, unmodified_since) = conditions;
        read_conditions(
            &data.etag,
            version.modified_ms,
            if_match,
            if_none_match,
            since,
            unmodified_since,
        )
        .map_err(|e| {
            if *e.code() == S3ErrorCode::NotModified {
                s3_error!(
                    PreconditionFailed,
                    "At least one of the pre-conditions you specified did not hold"
                )
            } else {
                e
            }
        })?;
        Ok((version, data, bucket.to_string(), key.to_string()))
    }

    /// A key's version (the newest if `version` is `None`); delete markers included.
    async fn version(
        &self,
        bucket: &str,
        key: &str,
        version: Option<VersionRef>,
    ) -> S3Result<Version> {
        match self
            .g
            .query(&BucketQuery::Object {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
                version,
            })
            .await?
        {
            BucketQueryResponse::Object(None) => Err(s3_error!(
                NoSuchBucket,
                "The specified bucket does not exist"
            )),
            BucketQueryResponse::Object(Some(found)) => found_version(found, version),
            _ => Err(internal("unexpected answer")),
        }
    }

    /// The object data of a key's version; delete markers answer as S3 does.
    async fn object(
        &self,
        bucket: &str,
        key: &str,
        version_id: Option<&str>,
    ) -> S3Result<(Version, ObjectData)> {
        let r = parse_version(version_id)?;
        data_of(self.version(bucket, key, r).await?, r)
    }

    /// The byte range a GET/HEAD asks for: (offset, len, Content-Range, parts count).
    fn range_of(
        d: &ObjectData,
        range: Option<Range>,
        part_number: Option<i32>,
    ) -> S3Result<(u64, u64, Option<String>, Option<i32>)> {
        if let Some(n) = part_number {
            if range.is_some() {
                return Err(s3_error!(
                    InvalidRequest,
                    "Cannot specify both Range header and partNumber query parameter"
                ));
            }
            let sizes: Vec<u64> = if d.parts.is_empty() {
                vec![d.size]
            } else {
                d.parts.clone()
            };
            if !(1..=10_000).contains(&n) {
                return Err(s3_error!(
                    InvalidArgument,
                    "Part number must be an integer between 1 and 10000, inclusive"
                ));
            }
            let idx = usize::try_from(n)
                .ok()
                .filter(|&i| i >= 1 && i <= sizes.len())
                .ok_or_else(|| {
                    custom_error(
                        "InvalidPartNumber",
                        http::StatusCode::RANGE_NOT_SATISFIABLE,
                        "The requested partnumber is not satisfiable",
                    )
                })?;
            let offset: u64 = sizes[..idx - 1].iter().sum();
            let len = sizes[idx - 1];
            let cr = (len > 0).then(|| format!("bytes {}-{}/{}", offset, offset + len - 1, d.size));
            // S3 reports a parts count only for objects uploaded in parts.
            let count = (!d.parts.is_empty()).then_some(sizes.len() as i32);
            return Ok((offset, len, cr, count));
        }
        match range {
            None => Ok((0, d.size, None, None)),
            Some(r) => {
                let rr = r.check(d.size).map_err(|_| {
                    let mut e = s3_error!(InvalidRange, "The requested range is not satisfiable");
                    let mut h = http::HeaderMap::new();
                    if let Ok(v) = http::HeaderValue::from_str(&format!("bytes */{}", d.size)) {
                        h.insert(http::header::CONTENT_RANGE, v);
                    }
                    e.set_headers(h);
                    e
                })?;
                let cr = format!("bytes {}-{}/{}", rr.start, rr.end - 1, d.size);
                Ok((rr.start, rr.end - rr.start, Some(cr), None))
            }
        }
    }

    fn list_request(
        bucket: &str,
        prefix: Option<String>,
        delimiter: Option<String>,
        after: Option<String>,
        limit: u32,
    ) -> ListRequest {
        ListRequest {
            bucket: bucket.to_owned(),
            prefix: prefix.unwrap_or_default(),
            delimiter,
            after: after.filter(|a| !a.is_empty()),
            limit,
            ..ListRequest::default()
        }
    }

    async fn page(&self, q: BucketQuery) -> S3Result<ListPage> {
        match self.g.query(&q).await? {
            BucketQueryResponse::Page(p) => Ok(p),
            _ => Err(internal("unexpected answer")),
        }
    }

    /// The object lock of a version, as GET and HEAD report it (only on object-lock buckets).
    async fn lock_headers(
        &self,
        enabled: bool,
        bucket: &str,
        key: &str,
        version: &Version,
    ) -> S3Result<LockHeaders> {
        if !enabled {
            return Ok((None, None, None));
        }
        let (_, lock) = self
            .version_lock(bucket, key, Some(version.reference()))
            .await?;
        Ok((
            lock.retention
                .map(|r| ObjectLockMode::from(r.mode.as_str().to_owned())),
            lock.retention.map(|r| ts(r.until_ms)),
            Some(ObjectLockLegalHoldStatus::from(
                if lock.legal_hold { "ON" } else { "OFF" }.to_owned(),
            )),
        ))
    }

    /// The object lock of a version in a bucket that has object lock (`InvalidRequest` in one
    /// that does not, as S3 answers GetObjectRetention and GetObjectLegalHold there).
    async fn lock_in_lock_bucket(
        &self,
        bucket: &str,
        key: &str,
        version_id: Option<&str>,
    ) -> S3Result<ObjectLock> {
        if self.bucket(bucket).await?.object_lock.is_none() {
            return Err(s3_error!(
                InvalidRequest,
                "Bucket is missing Object Lock Configuration"
            ));
        }
        let version = parse_version(version_id)?;
        Ok(self.version_lock(bucket, key, version).await?.1)
    }

    /// A version's id and ACL (`None`: the newest), with S3's errors as [`Self::version_lock`].
    async fn version_acl(
        &self,
        bucket: &str,
        key: &str,
        version: Option<VersionRef>,
    ) -> S3Result<(Option<u128>, ObjectAcl)> {
        match self
            .g
            .query(&BucketQuery::ObjectAcl {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
                version,
            })
            .await?
        {
            BucketQueryResponse::ObjectAcl(found) => found_object(found, version.is_some()),
            _ => Err(internal("unexpected answer")),
        }
    }

    /// A version's id and object lock (`None`: the newest); S3's errors for a missing bucket,
    /// key or version.
    async fn version_lock(
        &self,
        bucket: &str,
        key: &str,
        version: Option<VersionRef>,
    ) -> S3Result<(Option<u128>, ObjectLock)> {
        match self
            .g
            .query(&BucketQuery::ObjectLock {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
                version,
            })
            .await?
        {
            BucketQueryResponse::ObjectLock(found) => found_object(found, version.is_some()),
            _ => Err(internal("unexpected answer")),
        }
    }

    /// Change a bucket's configuration and record the change in the audit log.
    async fn configure(
        &self,
        who: &Who,
        action: &str,
        bucket: &str,
        change: BucketChange,
    ) -> S3Result<()> {
        self.g
            .command(&BucketCommand::Configure {
                name: bucket.to_owned(),
                change,
            })
            .await?;
        self.audit(who, action, bucket).await;
        Ok(())
    }

    /// Record a bucket-level change in the audit log (object writes are in the access log).
    async fn audit(&self, who: &Who, action: &str, bucket: &str) {
        self.g
            .audit(&who.actor, action, bucket, &who.ip, "success")
            .await;
    }
}

/// `x-amz-expiration` for a current version of `key` (`size` bytes, `tags`) written at
/// `modified_ms`: when the bucket's lifecycle rules expire it, and by which rule.
fn expiration_header(
    rules: Option<&crate::auth::BucketLifecycle>,
    object: (&str, u64, &[(String, String)]),
    modified_ms: u64,
) -> Option<String> {
    let rules = rules?;
    let (at, id) = cairn_master::buckets::expiration(&rules.0, object, modified_ms)?;
    let date = httpdate::fmt_http_date(std::time::UNIX_EPOCH + Duration::from_millis(at));
    Some(match id {
        Some(id) => format!("expiry-date=\"{date}\", rule-id=\"{id}\""),
        None => format!("expiry-date=\"{date}\""),
    })
}

/// The canonical id of the owner of the bucket a request was authorised on (its tenant).
fn bucket_owner_of<T>(req: &S3Request<T>) -> String {
    req.extensions
        .get::<crate::auth::BucketTenant>()
        .map(|t| cairn_master::tenancy::tenant_hex(t.0))
        .unwrap_or_default()
}

/// The tenant of the bucket a request was authorised on (0, no tenant, when there is none).
fn bucket_tenant_of<T>(req: &S3Request<T>) -> u128 {
    req.extensions
        .get::<crate::auth::BucketTenant>()
        .map_or(0, |t| t.0)
}

/// What a query about one object version found (`None`: no bucket; `Some(None)`: no such
/// key, version, or a delete marker), with S3's errors.
fn found_object<T>(found: Option<Option<T>>, versioned: bool) -> S3Result<T> {
    match found {
        None => Err(s3_error!(
            NoSuchBucket,
            "The specified bucket does not exist"
        )),
        Some(None) if versioned => Err(s3_error!(
            NoSuchVersion,
            "The specified version does not exist."
        )),
        Some(None) => Err(s3_error!(NoSuchKey, "The specified key does not exist.")),
        Some(Some(f)) => Ok(f),
    }
}

/// What GET and HEAD say about a version's object lock: mode, retain-until date, legal hold.
type LockHeaders = (
    Option<ObjectLockMode>,
    Option<ObjectLockRetainUntilDate>,
    Option<ObjectLockLegalHoldStatus>,
);

/// The object lock a write asks for with `x-amz-object-lock-*` (mode and date go together).
fn requested_lock(
    mode: &Option<ObjectLockMode>,
    until: &Option<ObjectLockRetainUntilDate>,
    hold: &Option<ObjectLockLegalHoldStatus>,
) -> S3Result<Option<ObjectLock>> {
    let retention = match (mode, until) {
        (None, None) => None,
        (Some(m), Some(u)) => Some(Retention {
            mode: lock_mode(m.as_str())?,
            until_ms: u64::try_from(ms_of(u)).unwrap_or(0),
        }),
        _ => {
            return Err(s3_error!(
                InvalidArgument,
                "x-amz-object-lock-retain-until-date and x-amz-object-lock-mode must both be supplied"
            ));
        }
    };
    let legal_hold = match hold.as_ref().map(ObjectLockLegalHoldStatus::as_str) {
        None => None,
        Some("ON") => Some(true),
        Some("OFF") => Some(false),
        Some(other) => {
            return Err(S3Error::with_message(
                S3ErrorCode::InvalidArgument,
                format!("Legal Hold must be either of 'ON' or 'OFF', not {other:?}"),
            ));
        }
    };
    if retention.is_none() && legal_hold.is_none() {
        return Ok(None);
    }
    Ok(Some(ObjectLock {
        retention,
        legal_hold: legal_hold.unwrap_or(false),
    }))
}

fn lock_mode(s: &str) -> S3Result<LockMode> {
    LockMode::parse(s).ok_or_else(|| {
        S3Error::with_message(
            S3ErrorCode::InvalidArgument,
            format!("Unknown wormMode directive {s:?}: GOVERNANCE or COMPLIANCE"),
        )
    })
}

/// The command for a delete: plain `DeleteObject` unless it overrides governance or is
/// conditional.
fn delete_command(
    bucket: String,
    key: String,
    version: Option<VersionRef>,
    bypass_governance: bool,
    if_match: Option<Vec<String>>,
) -> BucketCommand {
    if bypass_governance || if_match.is_some() {
        BucketCommand::DeleteObjectChecked {
            bucket,
            key,
            version,
            bypass_governance,
            if_match,
        }
    } else {
        BucketCommand::DeleteObject {
            bucket,
            key,
            version,
        }
    }
}

/// `c`, carrying `lock` for the version it makes when the write asks for one.
fn locked(lock: Option<ObjectLock>, c: BucketCommand) -> BucketCommand {
    match lock {
        Some(lock) => BucketCommand::Locked {
            lock,
            command: Box::new(c),
        },
        None => c,
    }
}

/// The `x-amz-grant-*` headers of a request.
struct GrantHeaders<'a> {
    full_control: Option<&'a str>,
    read: Option<&'a str>,
    read_acp: Option<&'a str>,
    write: Option<&'a str>,
    write_acp: Option<&'a str>,
}

impl GrantHeaders<'_> {
    fn any(&self) -> bool {
        [
            self.full_control,
            self.read,
            self.read_acp,
            self.write,
            self.write_acp,
        ]
        .iter()
        .any(Option::is_some)
    }

    /// The grants they make: `id="TENANT"`, `uri="http://acs.amazonaws.com/groups/..."`
    /// (`emailAddress=` grants are refused as AWS's newer regions do).
    fn grants(&self) -> S3Result<Vec<AclGrant>> {
        let mut out = Vec::new();
        for (header, permission) in [
            (self.full_control, acl::Permission::FullControl),
            (self.read, acl::Permission::Read),
            (self.read_acp, acl::Permission::ReadAcp),
            (self.write, acl::Permission::Write),
            (self.write_acp, acl::Permission::WriteAcp),
        ] {
            let Some(h) = header else { continue };
            for item in h.split(',').map(str::trim).filter(|i| !i.is_empty()) {
                let (kind, value) = item.split_once('=').ok_or_else(|| {
                    S3Error::with_message(
                        S3ErrorCode::InvalidArgument,
                        format!("a grant is id=\"...\", uri=\"...\" or emailAddress=\"...\", not {item:?}"),
                    )
                })?;
                let value = value.trim().trim_matches('"');
                let grantee = match kind.trim() {
                    "id" => tenant_grantee(value)?,
                    "uri" => group_grantee(value)?,
                    "emailAddress" => return Err(unresolvable_email(value)),
                    other => {
                        return Err(S3Error::with_message(
                            S3ErrorCode::InvalidArgument,
                            format!("unknown grantee type {other:?}"),
                        ));
                    }
                };
                out.push(AclGrant {
                    grantee,
                    permission,
                });
            }
        }
        Ok(out)
    }
}

fn tenant_grantee(id: &str) -> S3Result<acl::Grantee> {
    if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(acl::Grantee::Tenant(id.to_ascii_lowercase()))
    } else {
        Err(S3Error::with_message(
            S3ErrorCode::InvalidArgument,
            format!("Invalid id {id:?}: a canonical id is a tenant's 32 hex digits"),
        ))
    }
}

fn group_grantee(uri: &str) -> S3Result<acl::Grantee> {
    acl::Grantee::group(uri).ok_or_else(|| {
        S3Error::with_message(
            S3ErrorCode::InvalidArgument,
            format!("Invalid group uri {uri:?}"),
        )
    })
}

fn unresolvable_email(email: &str) -> S3Error {
    custom_status(
        "UnresolvableGrantByEmailAddress",
        &format!(
            "The e-mail address you provided ({email}) does not match any account on record: grant by canonical id"
        ),
        http::StatusCode::BAD_REQUEST,
    )
}

/// The grants of a canned ACL (`owner` owns the resource, `bucket_owner` its bucket).
fn canned_grants(name: &str, owner: &str, bucket_owner: &str) -> S3Result<Vec<AclGrant>> {
    let c = acl::Canned::parse(name).ok_or_else(|| {
        S3Error::with_message(
            S3ErrorCode::InvalidArgument,
            format!("{name:?} is not a canned ACL"),
        )
    })?;
    Ok(c.grants(owner, bucket_owner))
}

/// The grants of an `AccessControlPolicy` body.
fn policy_grants(policy: AccessControlPolicy) -> S3Result<Vec<AclGrant>> {
    let mut out = Vec::new();
    for g in policy.grants.unwrap_or_default() {
        let permission = g
            .permission
            .as_ref()
            .and_then(|p| acl::Permission::parse(p.as_str()))
            .ok_or_else(|| s3_error!(MalformedACLError, "a Grant needs a valid Permission"))?;
        let grantee = g
            .grantee
            .ok_or_else(|| s3_error!(MalformedACLError, "a Grant needs a Grantee"))?;
        let grantee = match grantee.type_.as_str() {
            Type::CANONICAL_USER => tenant_grantee(grantee.id.as_deref().unwrap_or(""))?,
            Type::GROUP => group_grantee(grantee.uri.as_deref().unwrap_or(""))?,
            Type::AMAZON_CUSTOMER_BY_EMAIL => {
                return Err(unresolvable_email(
                    grantee.email_address.as_deref().unwrap_or(""),
                ));
            }
            other => {
                return Err(S3Error::with_message(
                    S3ErrorCode::MalformedACLError,
                    format!("unknown Grantee type {other:?}"),
                ));
            }
        };
        out.push(AclGrant {
            grantee,
            permission,
        });
    }
    Ok(out)
}

/// The tenant a request writes for and the tenant of the bucket it writes into, as canonical
/// ids (an anonymous writer writes for the bucket's owner).
/// A browser form (POST object) carries its encryption as form fields, which s3s puts in the
/// input; the encryption rules read headers, so the fields become the headers they stand for.
fn sse_fields_as_headers(req: &mut S3Request<PutObjectInput>) {
    let i = &req.input;
    let fields = [
        (
            "x-amz-server-side-encryption",
            i.server_side_encryption
                .as_ref()
                .map(|v| v.as_str().to_owned()),
        ),
        (
            "x-amz-server-side-encryption-aws-kms-key-id",
            i.ssekms_key_id.clone(),
        ),
        (
            "x-amz-server-side-encryption-customer-algorithm",
            i.sse_customer_algorithm.clone(),
        ),
        (
            "x-amz-server-side-encryption-customer-key",
            i.sse_customer_key.clone(),
        ),
        (
            "x-amz-server-side-encryption-customer-key-md5",
            i.sse_customer_key_md5.clone(),
        ),
    ];
    for (name, value) in fields {
        if let Some(v) = value
            && !req.headers.contains_key(name)
            && let Ok(v) = http::HeaderValue::from_str(&v)
        {
            req.headers.insert(name, v);
        }
    }
}

fn writer_and_owner<T>(req: &S3Request<T>) -> (String, String) {
    let owner = bucket_owner_of(req);
    // `BucketOwnerPreferred`: an object written with `bucket-owner-full-control` belongs to
    // the bucket's owner, whoever wrote it.
    let preferred = req
        .extensions
        .get::<crate::auth::BucketOwnership>()
        .is_some_and(|o| o.0 == acl::Ownership::BucketOwnerPreferred)
        && req
            .headers
            .get("x-amz-acl")
            .is_some_and(|v| v.as_bytes() == b"bucket-owner-full-control");
    let writer = match crate::auth::principal(req) {
        Some(p) if !preferred => cairn_master::tenancy::tenant_hex(p.tenant),
        _ => owner.clone(),
    };
    (writer, owner)
}

/// The ACL of an object write's input fields (`x-amz-acl`, `x-amz-grant-*`).
macro_rules! input_acl {
    ($input:expr, $writer:expr, $owner:expr) => {
        requested_acl(
            $input.acl.as_ref().map(ObjectCannedACL::as_str),
            &GrantHeaders {
                full_control: $input.grant_full_control.as_deref(),
                read: $input.grant_read.as_deref(),
                read_acp: $input.grant_read_acp.as_deref(),
                write: None,
                write_acp: $input.grant_write_acp.as_deref(),
            },
            &$writer,
            &$owner,
        )
    };
}

/// An object ACL's grants as stored: the owner's FULL_CONTROL implicit, the rest listed.
fn object_grants(grants: Vec<AclGrant>, owner: &str) -> Vec<AclGrant> {
    acl::normalise(
        grants
            .into_iter()
            .filter(|g| {
                !(g.permission == acl::Permission::FullControl
                    && g.grantee == acl::Grantee::Tenant(owner.to_owned()))
            })
            .collect(),
    )
}

/// The ACL a write asks for with `x-amz-acl` or `x-amz-grant-*` (`None`: none, or one that
/// grants nothing, which every new version has anyway). The writer's tenant owns the object.
fn requested_acl(
    canned: Option<&str>,
    headers: &GrantHeaders<'_>,
    writer: &str,
    bucket_owner: &str,
) -> S3Result<Option<ObjectAcl>> {
    let grants = match (canned, headers.any()) {
        (Some(_), true) => {
            return Err(s3_error!(
                InvalidRequest,
                "Specifying both Canned ACLs and Header Grants is not allowed"
            ));
        }
        (Some(c), false) => canned_grants(c, writer, bucket_owner)?,
        (None, true) => headers.grants()?,
        (None, false) => return Ok(None),
    };
    let grants = object_grants(grants, writer);
    let owner = (writer != bucket_owner).then(|| writer.to_owned());
    let a = ObjectAcl { owner, grants };
    Ok((!a.is_empty()).then_some(a))
}

/// `c`, carrying `acl` for the version it makes when the write asks for one.
fn with_acl(acl: Option<ObjectAcl>, c: BucketCommand) -> BucketCommand {
    match acl {
        Some(acl) => BucketCommand::WithAcl {
            acl,
            command: Box::new(c),
        },
        None => c,
    }
}

/// A bucket ACL as the bucket record keeps it: AllUsers READ as `public_read`, the owner's
/// FULL_CONTROL implicit, every other grant listed.
fn split_acl(grants: Vec<AclGrant>, owner: &str) -> (bool, Vec<AclGrant>) {
    let mut public_read = false;
    let mut rest = Vec::new();
    for g in grants {
        match (&g.grantee, g.permission) {
            (acl::Grantee::AllUsers, acl::Permission::Read) => public_read = true,
            (acl::Grantee::Tenant(t), acl::Permission::FullControl) if t == owner => {}
            _ => rest.push(g),
        }
    }
    (public_read, rest)
}

fn s3_grant(g: &AclGrant) -> Grant {
    let grantee = match &g.grantee {
        acl::Grantee::Tenant(t) => Grantee {
            display_name: Some(t.clone()),
            email_address: None,
            id: Some(t.clone()),
            type_: Type::from_static(Type::CANONICAL_USER),
            uri: None,
        },
        group => Grantee {
            display_name: None,
            email_address: None,
            id: None,
            type_: Type::from_static(Type::GROUP),
            uri: group.uri().map(str::to_owned),
        },
    };
    Grant {
        grantee: Some(grantee),
        permission: Some(Permission::from(g.permission.as_str().to_owned())),
    }
}

fn ownership(s: &str) -> S3Result<acl::Ownership> {
    acl::Ownership::parse(s).ok_or_else(|| {
        S3Error::with_message(
            S3ErrorCode::MalformedXML,
            format!("{s:?} is not BucketOwnerEnforced, BucketOwnerPreferred or ObjectWriter"),
        )
    })
}

fn no_lock_configuration() -> S3Error {
    custom_status(
        "ObjectLockConfigurationNotFoundError",
        "Object Lock configuration does not exist for this bucket",
        http::StatusCode::NOT_FOUND,
    )
}

fn no_bucket_policy() -> S3Error {
    s3_error!(NoSuchBucketPolicy, "The bucket policy does not exist")
}

/// An error code s3s does not know, with its status.
fn custom_status(code: &'static str, message: &str, status: http::StatusCode) -> S3Error {
    let mut e = S3Error::with_message(S3ErrorCode::Custom(code.into()), message.to_owned());
    e.set_status_code(status);
    e
}

fn owner(id: &str) -> Owner {
    Owner {
        display_name: Some(id.to_owned()),
        id: Some(id.to_owned()),
    }
}

fn lifecycle_to_rules(cfg: BucketLifecycleConfiguration) -> S3Result<Vec<LifecycleRule>> {
    let mut out = Vec::new();
    let mut ids: Vec<String> = Vec::new();
    for r in cfg.rules {
        // S3's own checks of a rule's ID and Status.
        if !matches!(r.status.as_str(), "Enabled" | "Disabled") {
            return Err(s3_error!(
                MalformedXML,
                "a lifecycle rule's Status is Enabled or Disabled"
            ));
        }
        if let Some(id) = &r.id {
            if id.chars().count() > 255 {
                return Err(s3_error!(
                    InvalidArgument,
                    "ID length should not exceed allowed limit of 255"
                ));
            }
            if ids.contains(id) {
                return Err(s3_error!(
                    InvalidArgument,
                    "Rule ID must be unique. Found same ID for more than one rule"
                ));
            }
            ids.push(id.clone());
        }
        if r.transitions.as_ref().is_some_and(|t| !t.is_empty())
            || r.noncurrent_version_transitions
                .as_ref()
                .is_some_and(|t| !t.is_empty())
        {
            return Err(s3_error!(
                NotImplemented,
                "Cairn has one storage class: transitions are not supported"
            ));
        }
        let filter = lifecycle_filter(r.prefix.as_ref(), r.filter.as_ref())?;
        let days = |d: Option<i32>, what: &str| -> S3Result<Option<u32>> {
            match d {
                None => Ok(None),
                Some(d) if d > 0 => Ok(Some(d as u32)),
                Some(_) => Err(S3Error::with_message(
                    S3ErrorCode::InvalidArgument,
                    format!("{what} must be a positive number of days"),
                )),
            }
        };
        let exp = r.expiration.as_ref();
        let noncurrent = r.noncurrent_version_expiration.as_ref();
        let newer_noncurrent_versions = match noncurrent.and_then(|n| n.newer_noncurrent_versions) {
            None => None,
            Some(n) if (1..=100).contains(&n) => Some(n as u32),
            Some(_) => {
                return Err(s3_error!(
                    InvalidArgument,
                    "NewerNoncurrentVersions must be between 1 and 100"
                ));
            }
        };
        let rule = LifecycleRule {
            id: r.id.clone(),
            enabled: r.status.as_str() == ExpirationStatus::ENABLED,
            filter,
            newer_noncurrent_versions,
            expiration_days: days(exp.and_then(|e| e.days), "Expiration Days")?,
            expiration_date_ms: exp.and_then(|e| e.date.as_ref()).map(ms_of),
            expired_object_delete_marker: exp
                .and_then(|e| e.expired_object_delete_marker)
                .unwrap_or(false),
            noncurrent_days: days(noncurrent.and_then(|n| n.noncurrent_days), "NoncurrentDays")?,
            abort_incomplete_days: days(
                r.abort_incomplete_multipart_upload
                    .as_ref()
                    .and_then(|a| a.days_after_initiation),
                "DaysAfterInitiation",
            )?,
        };
        if rule.expiration_days.is_none()
            && rule.expiration_date_ms.is_none()
            && !rule.expired_object_delete_marker
            && rule.noncurrent_days.is_none()
            && rule.abort_incomplete_days.is_none()
        {
            return Err(s3_error!(
                MalformedXML,
                "a lifecycle rule needs at least one action"
            ));
        }
        if !rule.filter.tags.is_empty() {
            if rule.expired_object_delete_marker {
                return Err(s3_error!(
                    InvalidRequest,
                    "ExpiredObjectDeleteMarker cannot be specified with Tags."
                ));
            }
            if rule.abort_incomplete_days.is_some() {
                return Err(s3_error!(
                    InvalidRequest,
                    "AbortIncompleteMultipartUpload cannot be specified with Tags."
                ));
            }
        }
        out.push(rule);
    }
    Ok(out)
}

/// A rule's filter from its `Prefix` (S3's older form) or `Filter` (exactly one of `Prefix`,
/// `Tag`, `ObjectSizeGreaterThan`, `ObjectSizeLessThan` or `And`), checked as S3 checks it.
fn lifecycle_filter(
    rule_prefix: Option<&String>,
    filter: Option<&LifecycleRuleFilter>,
) -> S3Result<LifecycleFilter> {
    let malformed = || {
        s3_error!(
            MalformedXML,
            "The XML you provided was not well-formed or did not validate against our published schema"
        )
    };
    let size = |v: Option<i64>, what: &str| -> S3Result<Option<u64>> {
        v.map(|n| {
            u64::try_from(n).map_err(|_| {
                S3Error::with_message(
                    S3ErrorCode::InvalidArgument,
                    format!("{what} must be a non-negative number of bytes"),
                )
            })
        })
        .transpose()
    };
    let tag = |t: &Tag| -> S3Result<(String, String)> {
        let k = t
            .key
            .clone()
            .filter(|k| !k.is_empty())
            .ok_or_else(malformed)?;
        let v = t.value.clone().unwrap_or_default();
        if k.chars().count() > 128 || v.chars().count() > 256 {
            return Err(s3_error!(
                InvalidTag,
                "A tag key is at most 128 characters and a value at most 256"
            ));
        }
        Ok((k, v))
    };
    let f = match (rule_prefix, filter) {
        (Some(_), Some(_)) => return Err(malformed()),
        (Some(p), None) => LifecycleFilter {
            prefix: p.clone(),
            form: FilterForm::RulePrefix,
            ..LifecycleFilter::default()
        },
        (None, None) => LifecycleFilter::default(),
        (None, Some(f)) => {
            let given = [
                f.prefix.is_some(),
                f.tag.is_some(),
                f.object_size_greater_than.is_some(),
                f.object_size_less_than.is_some(),
                f.and.is_some(),
            ];
            if given.iter().filter(|g| **g).count() > 1 {
                return Err(malformed());
            }
            match &f.and {
                Some(a) => {
                    let tags = a
                        .tags
                        .iter()
                        .flatten()
                        .map(tag)
                        .collect::<S3Result<Vec<_>>>()?;
                    let mut keys: Vec<&String> = tags.iter().map(|(k, _)| k).collect();
                    keys.sort();
                    if keys.windows(2).any(|w| w[0] == w[1]) {
                        return Err(s3_error!(
                            InvalidRequest,
                            "Duplicate Tag Keys are not allowed."
                        ));
                    }
                    LifecycleFilter {
                        prefix: a.prefix.clone().unwrap_or_default(),
                        tags,
                        size_greater_than: size(
                            a.object_size_greater_than,
                            "ObjectSizeGreaterThan",
                        )?,
                        size_less_than: size(a.object_size_less_than, "ObjectSizeLessThan")?,
                        form: FilterForm::And,
                    }
                }
                None => LifecycleFilter {
                    prefix: f.prefix.clone().unwrap_or_default(),
                    tags: f.tag.as_ref().map(tag).transpose()?.into_iter().collect(),
                    size_greater_than: size(f.object_size_greater_than, "ObjectSizeGreaterThan")?,
                    size_less_than: size(f.object_size_less_than, "ObjectSizeLessThan")?,
                    form: FilterForm::Filter,
                },
            }
        }
    };
    if f.prefix.len() > cairn_master::buckets::KEY_LEN_MAX {
        return Err(s3_error!(
            InvalidArgument,
            "The prefix is longer than a key may be"
        ));
    }
    if let (Some(gt), Some(lt)) = (f.size_greater_than, f.size_less_than)
        && gt >= lt
    {
        return Err(s3_error!(
            InvalidRequest,
            "ObjectSizeLessThan must be greater than ObjectSizeGreaterThan"
        ));
    }
    Ok(f)
}

/// A rule's filter as it was written.
fn filter_to_lifecycle(f: &LifecycleFilter) -> (Option<String>, Option<LifecycleRuleFilter>) {
    let tag = |(k, v): &(String, String)| Tag {
        key: Some(k.clone()),
        value: Some(v.clone()),
    };
    match f.form {
        FilterForm::RulePrefix => (Some(f.prefix.clone()), None),
        FilterForm::And => (
            None,
            Some(LifecycleRuleFilter {
                and: Some(LifecycleRuleAndOperator {
                    prefix: (!f.prefix.is_empty()).then(|| f.prefix.clone()),
                    tags: (!f.tags.is_empty()).then(|| f.tags.iter().map(tag).collect()),
                    object_size_greater_than: f.size_greater_than.map(|n| n as i64),
                    object_size_less_than: f.size_less_than.map(|n| n as i64),
                }),
                ..Default::default()
            }),
        ),
        FilterForm::Filter => {
            let mut out = LifecycleRuleFilter::default();
            if let Some(t) = f.tags.first() {
                out.tag = Some(tag(t));
            } else if let Some(n) = f.size_greater_than {
                out.object_size_greater_than = Some(n as i64);
            } else if let Some(n) = f.size_less_than {
                out.object_size_less_than = Some(n as i64);
            } else {
                out.prefix = Some(f.prefix.clone());
            }
            (None, Some(out))
        }
    }
}

fn rules_to_lifecycle(rules: &[LifecycleRule]) -> Vec<s3s::dto::LifecycleRule> {
    rules
        .iter()
        .map(|r| {
            let expiration = (r.expiration_days.is_some()
                || r.expiration_date_ms.is_some()
                || r.expired_object_delete_marker)
                .then(|| LifecycleExpiration {
                    date: r.expiration_date_ms.map(ts_signed),
                    days: r.expiration_days.map(|d| d as i32),
                    expired_object_delete_marker: r.expired_object_delete_marker.then_some(true),
                });
            let (prefix, filter) = filter_to_lifecycle(&r.filter);
            s3s::dto::LifecycleRule {
                abort_incomplete_multipart_upload: r.abort_incomplete_days.map(|d| {
                    AbortIncompleteMultipartUpload {
                        days_after_initiation: Some(d as i32),
                    }
                }),
                expiration,
                filter,
                id: r.id.clone(),
                noncurrent_version_expiration: r.noncurrent_days.map(|d| {
                    NoncurrentVersionExpiration {
                        newer_noncurrent_versions: r.newer_noncurrent_versions.map(|n| n as i32),
                        noncurrent_days: Some(d as i32),
                    }
                }),
                noncurrent_version_transitions: None,
                prefix,
                status: ExpirationStatus::from_static(if r.enabled {
                    ExpirationStatus::ENABLED
                } else {
                    ExpirationStatus::DISABLED
                }),
                transitions: None,
            }
        })
        .collect()
}

#[async_trait::async_trait]
impl S3 for CairnS3 {
    async fn list_buckets(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        // Only the buckets of the key's tenant: other tenants' names never show.
        let tenant = crate::auth::principal(&req)
            .map(|p| p.tenant)
            .ok_or_else(|| s3_error!(AccessDenied, "sign the request"))?;
        let input = req.input;
        // Paging as AWS: up to `max-buckets` (1 to 10,000) in name order, then a token.
        let limit = match input.max_buckets {
            None => usize::MAX,
            Some(n) if (1..=10_000).contains(&n) => n as usize,
            Some(n) => {
                return Err(S3Error::with_message(
                    S3ErrorCode::InvalidArgument,
                    format!("max-buckets must be between 1 and 10000, not {n}"),
                ));
            }
        };
        let after = match input.continuation_token.as_deref() {
            None | Some("") => None,
            Some(t) => Some(unhex_token(t)?),
        };
        let all = match self.g.query(&BucketQuery::Buckets).await? {
            BucketQueryResponse::Buckets(b) => b,
            _ => return Err(internal("unexpected answer")),
        };
        let prefix = input.prefix.unwrap_or_default();
        let mut mine = all.into_iter().filter(|(n, b)| {
            cairn_master::tenancy::bucket_tenant(&b.owner) == tenant
                && n.starts_with(&prefix)
                && after.as_ref().is_none_or(|a| n > a)
        });
        let page: Vec<(String, BucketRecord)> = mine.by_ref().take(limit).collect();
        let more = mine.next().is_some();
        let next = page.last().filter(|_| more).map(|(n, _)| hex_token(n));
        let buckets = page
            .into_iter()
            .map(|(name, b)| Bucket {
                bucket_region: Some(self.g.options.region.clone()),
                creation_date: Some(ts(b.created_ms)),
                name: Some(name),
            })
            .collect();
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(buckets),
            continuation_token: next,
            owner: Some(owner(&cairn_master::tenancy::tenant_hex(tenant))),
            prefix: (!prefix.is_empty()).then_some(prefix),
        }))
    }

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        // The bucket belongs to the tenant the key acts in.
        let tenant = crate::auth::principal(&req)
            .map(|p| p.tenant)
            .ok_or_else(|| s3_error!(AccessDenied, "sign the request"))?;
        let audit_who = who(&req);
        let audited = req.input.bucket.clone();
        let input = req.input;
        if crate::kernel::names::RESERVED.contains(&input.bucket.as_str()) {
            return Err(s3_error!(
                InvalidBucketName,
                "this bucket name is reserved by the gateway"
            ));
        }
        if let Some(lc) = input
            .create_bucket_configuration
            .as_ref()
            .and_then(|c| c.location_constraint.as_ref())
            && lc.as_str() != self.g.options.region
            && !lc.as_str().is_empty()
        {
            return Err(S3Error::with_message(
                S3ErrorCode::IllegalLocationConstraintException,
                format!("this endpoint serves region {}", self.g.options.region),
            ));
        }
        let owner = cairn_master::tenancy::tenant_hex(tenant);
        let headers = GrantHeaders {
            full_control: input.grant_full_control.as_deref(),
            read: input.grant_read.as_deref(),
            read_acp: input.grant_read_acp.as_deref(),
            write: input.grant_write.as_deref(),
            write_acp: input.grant_write_acp.as_deref(),
        };
        let grants = match (
            input.acl.as_ref().map(BucketCannedACL::as_str),
            headers.any(),
        ) {
            (Some(_), true) => {
                return Err(s3_error!(
                    InvalidRequest,
                    "Specifying both Canned ACLs and Header Grants is not allowed"
                ));
            }
            (Some(c), false) => canned_grants(c, &owner, &owner)?,
            (None, true) => headers.grants()?,
            (None, false) => Vec::new(),
        };
        let (public_read, grants) = split_acl(grants, &owner);
        let object_ownership = input
            .object_ownership
            .as_ref()
            .map(|o| ownership(o.as_str()))
            .transpose()?;
        if object_ownership == Some(acl::Ownership::BucketOwnerEnforced)
            && (public_read || !grants.is_empty())
        {
            return Err(custom_status(
                "InvalidBucketAclWithObjectOwnership",
                "Bucket cannot have ACLs set with ObjectOwnership's BucketOwnerEnforced setting",
                http::StatusCode::BAD_REQUEST,
            ));
        }
        let c = if input.object_lock_enabled_for_bucket == Some(true) {
            BucketCommand::CreateLockedBucket {
                name: input.bucket.clone(),
                owner,
                public_read,
            }
        } else {
            BucketCommand::CreateBucket {
                name: input.bucket.clone(),
                owner,
                public_read,
            }
        };
        match self.g.command(&c).await {
            Ok(_) => {}
            // us-east-1, AWS's legacy region, answers 200 to creating a bucket you already
            // own (every other region says BucketAlreadyOwnedByYou); nothing changes.
            Err(e)
                if *e.code() == S3ErrorCode::BucketAlreadyOwnedByYou
                    && self.g.options.region == "us-east-1" =>
            {
                return Ok(S3Response::new(CreateBucketOutput {
                    location: Some(format!("/{}", input.bucket)),
                }));
            }
            Err(e) => return Err(e),
        }
        // What CreateBucket cannot carry goes in right after, as S3 applies it with the bucket.
        if !grants.is_empty() {
            self.g
                .command(&BucketCommand::Configure {
                    name: input.bucket.clone(),
                    change: BucketChange::Acl {
                        public_read,
                        grants,
                    },
                })
                .await?;
        }
        if let Some(o) = object_ownership {
            self.g
                .command(&BucketCommand::Configure {
                    name: input.bucket.clone(),
                    change: BucketChange::Ownership(Some(o)),
                })
                .await?;
        }
        self.audit(&audit_who, "s3:CreateBucket", &audited).await;
        Ok(S3Response::new(CreateBucketOutput {
            location: Some(format!("/{}", input.bucket)),
        }))
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.bucket(&req.input.bucket).await?;
        Ok(S3Response::new(HeadBucketOutput {
            bucket_region: Some(self.g.options.region.clone()),
            ..Default::default()
        }))
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        let audit_who = who(&req);
        let audited = req.input.bucket.clone();
        self.g
            .command(&BucketCommand::DeleteBucket {
                name: req.input.bucket,
            })
            .await?;
        self.audit(&audit_who, "s3:DeleteBucket", &audited).await;
        Ok(S3Response::new(DeleteBucketOutput {}))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.bucket(&req.input.bucket).await?;
        // us-east-1 answers with an empty LocationConstraint, as S3 does.
        let region = &self.g.options.region;
        Ok(S3Response::new(GetBucketLocationOutput {
            location_constraint: (region != "us-east-1")
                .then(|| BucketLocationConstraint::from(region.clone())),
        }))
    }

    async fn get_bucket_versioning(
        &self,
        req: S3Request<GetBucketVersioningInput>,
    ) -> S3Result<S3Response<GetBucketVersioningOutput>> {
        let b = self.bucket(&req.input.bucket).await?;
        let status = match b.versioning {
            Versioning::Unversioned => None,
            Versioning::Enabled => Some(BucketVersioningStatus::from_static(
                BucketVersioningStatus::ENABLED,
            )),
            Versioning::Suspended => Some(BucketVersioningStatus::from_static(
                BucketVersioningStatus::SUSPENDED,
            )),
        };
        Ok(S3Response::new(GetBucketVersioningOutput {
            mfa_delete: None,
            status,
        }))
    }

    async fn put_bucket_versioning(
        &self,
        req: S3Request<PutBucketVersioningInput>,
    ) -> S3Result<S3Response<PutBucketVersioningOutput>> {
        let audit_who = who(&req);
        let input = req.input;
        let v = match input
            .versioning_configuration
            .status
            .as_ref()
            .map(BucketVersioningStatus::as_str)
        {
            Some(BucketVersioningStatus::ENABLED) => Versioning::Enabled,
            Some(BucketVersioningStatus::SUSPENDED) => Versioning::Suspended,
            _ => {
                return Err(s3_error!(
                    MalformedXML,
                    "Status must be Enabled or Suspended"
                ));
            }
        };
        self.configure(
            &audit_who,
            "s3:PutBucketVersioning",
            &input.bucket,
            BucketChange::Versioning(v),
        )
        .await?;
        Ok(S3Response::new(PutBucketVersioningOutput {}))
    }

    async fn get_bucket_lifecycle_configuration(
        &self,
        req: S3Request<GetBucketLifecycleConfigurationInput>,
    ) -> S3Result<S3Response<GetBucketLifecycleConfigurationOutput>> {
        let b = self.bucket(&req.input.bucket).await?;
        let rules = b.lifecycle.ok_or_else(|| {
            s3_error!(
                NoSuchLifecycleConfiguration,
                "The lifecycle configuration does not exist"
            )
        })?;
        Ok(S3Response::new(GetBucketLifecycleConfigurationOutput {
            rules: Some(rules_to_lifecycle(&rules)),
            transition_default_minimum_object_size: None,
        }))
    }

    async fn put_bucket_lifecycle_configuration(
        &self,
        req: S3Request<PutBucketLifecycleConfigurationInput>,
    ) -> S3Result<S3Response<PutBucketLifecycleConfigurationOutput>> {
        let audit_who = who(&req);
        let input = req.input;
        let cfg = input
            .lifecycle_configuration
            .ok_or_else(|| s3_error!(MalformedXML, "no lifecycle configuration"))?;
        let rules = lifecycle_to_rules(cfg)?;
        self.configure(
            &audit_who,
            "s3:PutBucketLifecycle",
            &input.bucket,
            BucketChange::LifecycleRules(Some(rules)),
        )
        .await?;
        Ok(S3Response::new(
            PutBucketLifecycleConfigurationOutput::default(),
        ))
    }

    async fn delete_bucket_lifecycle(
        &self,
        req: S3Request<DeleteBucketLifecycleInput>,
    ) -> S3Result<S3Response<DeleteBucketLifecycleOutput>> {
        let audit_who = who(&req);
        self.configure(
            &audit_who,
            "s3:DeleteBucketLifecycle",
            &req.input.bucket,
            BucketChange::LifecycleRules(None),
        )
        .await?;
        Ok(S3Response::new(DeleteBucketLifecycleOutput {}))
    }

    async fn get_bucket_cors(
        &self,
        req: S3Request<GetBucketCorsInput>,
    ) -> S3Result<S3Response<GetBucketCorsOutput>> {
        let b = self.bucket(&req.input.bucket).await?;
        let rules = b.cors.ok_or_else(|| {
            s3_error!(
                NoSuchCORSConfiguration,
                "The CORS configuration does not exist"
            )
        })?;
        Ok(S3Response::new(GetBucketCorsOutput {
            cors_rules: Some(
                rules
                    .into_iter()
                    .map(|r| CORSRule {
                        allowed_headers: (!r.allowed_headers.is_empty())
                            .then_some(r.allowed_headers),
                        allowed_methods: r.allowed_methods,
                        allowed_origins: r.allowed_origins,
                        expose_headers: (!r.expose_headers.is_empty()).then_some(r.expose_headers),
                        id: r.id,
                        max_age_seconds: r.max_age_seconds,
                    })
                    .collect(),
            ),
        }))
    }

    async fn put_bucket_cors(
        &self,
        req: S3Request<PutBucketCorsInput>,
    ) -> S3Result<S3Response<PutBucketCorsOutput>> {
        let audit_who = who(&req);
        let input = req.input;
        let mut rules = Vec::new();
        for r in input.cors_configuration.cors_rules {
            for m in &r.allowed_methods {
                if !["GET", "PUT", "POST", "DELETE", "HEAD"].contains(&m.as_str()) {
                    return Err(S3Error::with_message(
                        S3ErrorCode::InvalidRequest,
                        format!(
                            "Found unsupported HTTP method in CORS config. Unsupported method is {m}"
                        ),
                    ));
                }
            }
            rules.push(CorsRule {
                id: r.id,
                allowed_origins: r.allowed_origins,
                allowed_methods: r.allowed_methods,
                allowed_headers: r.allowed_headers.unwrap_or_default(),
                expose_headers: r.expose_headers.unwrap_or_default(),
                max_age_seconds: r.max_age_seconds,
            });
        }
        self.configure(
            &audit_who,
            "s3:PutBucketCors",
            &input.bucket,
            BucketChange::Cors(Some(rules)),
        )
        .await?;
        Ok(S3Response::new(PutBucketCorsOutput {}))
    }

    async fn delete_bucket_cors(
        &self,
        req: S3Request<DeleteBucketCorsInput>,
    ) -> S3Result<S3Response<DeleteBucketCorsOutput>> {
        let audit_who = who(&req);
        self.configure(
            &audit_who,
            "s3:DeleteBucketCors",
            &req.input.bucket,
            BucketChange::Cors(None),
        )
        .await?;
        Ok(S3Response::new(DeleteBucketCorsOutput {}))
    }

    async fn get_bucket_tagging(
        &self,
        req: S3Request<GetBucketTaggingInput>,
    ) -> S3Result<S3Response<GetBucketTaggingOutput>> {
        let b = self.bucket(&req.input.bucket).await?;
        let tags = b
            .tags
            .ok_or_else(|| s3_error!(NoSuchTagSet, "The TagSet does not exist"))?;
        Ok(S3Response::new(GetBucketTaggingOutput {
            tag_set: tag_set(&tags),
        }))
    }

    async fn put_bucket_tagging(
        &self,
        req: S3Request<PutBucketTaggingInput>,
    ) -> S3Result<S3Response<PutBucketTaggingOutput>> {
        let audit_who = who(&req);
        let input = req.input;
        let tags = tags_from(input.tagging.tag_set)?;
        self.configure(
            &audit_who,
            "s3:PutBucketTagging",
            &input.bucket,
            BucketChange::Tags(Some(tags)),
        )
        .await?;
        Ok(S3Response::new(PutBucketTaggingOutput {}))
    }

    async fn delete_bucket_tagging(
        &self,
        req: S3Request<DeleteBucketTaggingInput>,
    ) -> S3Result<S3Response<DeleteBucketTaggingOutput>> {
        let audit_who = who(&req);
        self.configure(
            &audit_who,
            "s3:DeleteBucketTagging",
            &req.input.bucket,
            BucketChange::Tags(None),
        )
        .await?;
        Ok(S3Response::new(DeleteBucketTaggingOutput {}))
    }

    async fn put_bucket_policy(
        &self,
        req: S3Request<PutBucketPolicyInput>,
    ) -> S3Result<S3Response<PutBucketPolicyOutput>> {
        let audit_who = who(&req);
        let input = req.input;
        // Checked here too, for the message; the bucket service checks again when it applies
        // (with the public access block in force at that moment).
        if let Err(why) = BucketPolicy::parse(&input.policy, &input.bucket) {
            return Err(S3Error::with_message(S3ErrorCode::MalformedPolicy, why));
        }
        self.configure(
            &audit_who,
            "s3:PutBucketPolicy",
            &input.bucket,
            BucketChange::Policy(Some(input.policy)),
        )
        .await?;
        Ok(S3Response::new(PutBucketPolicyOutput {}))
    }

    async fn get_bucket_policy(
        &self,
        req: S3Request<GetBucketPolicyInput>,
    ) -> S3Result<S3Response<GetBucketPolicyOutput>> {
        let b = self.bucket(&req.input.bucket).await?;
        let policy = b.policy.ok_or_else(no_bucket_policy)?;
        Ok(S3Response::new(GetBucketPolicyOutput {
            policy: Some(policy),
        }))
    }

    async fn delete_bucket_policy(
        &self,
        req: S3Request<DeleteBucketPolicyInput>,
    ) -> S3Result<S3Response<DeleteBucketPolicyOutput>> {
        let audit_who = who(&req);
        self.configure(
            &audit_who,
            "s3:DeleteBucketPolicy",
            &req.input.bucket,
            BucketChange::Policy(None),
        )
        .await?;
        Ok(S3Response::new(DeleteBucketPolicyOutput {}))
    }

    async fn get_bucket_policy_status(
        &self,
        req: S3Request<GetBucketPolicyStatusInput>,
    ) -> S3Result<S3Response<GetBucketPolicyStatusOutput>> {
        let b = self.bucket(&req.input.bucket).await?;
        let text = b.policy.ok_or_else(no_bucket_policy)?;
        let is_public = BucketPolicy::parse(&text, &req.input.bucket)
            .map(|p| p.is_public())
            .map_err(internal)?;
        Ok(S3Response::new(GetBucketPolicyStatusOutput {
            policy_status: Some(PolicyStatus {
                is_public: Some(is_public),
            }),
        }))
    }

    async fn put_public_access_block(
        &self,
        req: S3Request<PutPublicAccessBlockInput>,
    ) -> S3Result<S3Response<PutPublicAccessBlockOutput>> {
        let audit_who = who(&req);
        let input = req.input;
        let c = input.public_access_block_configuration;
        let block = PublicAccessBlock {
            block_public_acls: c.block_public_acls.unwrap_or(false),
            ignore_public_acls: c.ignore_public_acls.unwrap_or(false),
            block_public_policy: c.block_public_policy.unwrap_or(false),
            restrict_public_buckets: c.restrict_public_buckets.unwrap_or(false),
        };
        self.configure(
            &audit_who,
            "s3:PutBucketPublicAccessBlock",
            &input.bucket,
            BucketChange::PublicAccessBlock(Some(block)),
        )
        .await?;
        Ok(S3Response::new(PutPublicAccessBlockOutput {}))
    }

    async fn get_public_access_block(
        &self,
        req: S3Request<GetPublicAccessBlockInput>,
    ) -> S3Result<S3Response<GetPublicAccessBlockOutput>> {
        let b = self.bucket(&req.input.bucket).await?;
        let block = b.public_access_block.ok_or_else(|| {
            custom_status(
                "NoSuchPublicAccessBlockConfiguration",
                "The public access block configuration was not found",
                http::StatusCode::NOT_FOUND,
            )
        })?;
        Ok(S3Response::new(GetPublicAccessBlockOutput {
            public_access_block_configuration: Some(PublicAccessBlockConfiguration {
                block_public_acls: Some(block.block_public_acls),
                ignore_public_acls: Some(block.ignore_public_acls),
                block_public_policy: Some(block.block_public_policy),
                restrict_public_buckets: Some(block.restrict_public_buckets),
            }),
        }))
    }

    async fn delete_public_access_block(
        &self,
        req: S3Request<DeletePublicAccessBlockInput>,
    ) -> S3Result<S3Response<DeletePublicAccessBlockOutput>> {
        let audit_who = who(&req);
        self.configure(
            &audit_who,
            "s3:DeleteBucketPublicAccessBlock",
            &req.input.bucket,
            BucketChange::PublicAccessBlock(None),
        )
        .await?;
        Ok(S3Response::new(DeletePublicAccessBlockOutput {}))
    }

    async fn put_object_lock_configuration(
        &self,
        req: S3Request<PutObjectLockConfigurationInput>,
    ) -> S3Result<S3Response<PutObjectLockConfigurationOutput>> {
        let audit_who = who(&req);
        let input = req.input;
        let cfg = input.object_lock_configuration.ok_or_else(|| {
            s3_error!(
                MalformedXML,
                "the request carries no ObjectLockConfiguration"
            )
        })?;
        if cfg
            .object_lock_enabled
            .as_ref()
            .map(ObjectLockEnabled::as_str)
            != Some("Enabled")
        {
            return Err(s3_error!(
                MalformedXML,
                "ObjectLockEnabled must be Enabled (object lock cannot be turned off)"
            ));
        }
        let default = match cfg.rule.and_then(|r| r.default_retention) {
            None => None,
            Some(d) => {
                let mode = d
                    .mode
                    .as_ref()
                    .ok_or_else(|| s3_error!(MalformedXML, "DefaultRetention needs a Mode"))
                    .and_then(|m| lock_mode(m.as_str()))?;
                let (period, years) = match (d.days, d.years) {
                    (Some(n), None) => (n, false),
                    (None, Some(n)) => (n, true),
                    _ => {
                        return Err(s3_error!(
                            MalformedXML,
                            "DefaultRetention takes either Days or Years"
                        ));
                    }
                };
                let period = u32::try_from(period)
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| {
                        s3_error!(
                            InvalidArgument,
                            "Default retention period must be a positive integer value"
                        )
                    })?;
                Some(DefaultRetention {
                    mode,
                    period,
                    years,
                })
            }
        };
        self.configure(
            &audit_who,
            "s3:PutBucketObjectLockConfiguration",
            &input.bucket,
            BucketChange::ObjectLock(LockConfig { default }),
        )
        .await?;
        Ok(S3Response::new(PutObjectLockConfigurationOutput::default()))
    }

    async fn get_object_lock_configuration(
        &self,
        req: S3Request<GetObjectLockConfigurationInput>,
    ) -> S3Result<S3Response<GetObjectLockConfigurationOutput>> {
        let b = self.bucket(&req.input.bucket).await?;
        let cfg = b.object_lock.ok_or_else(no_lock_configuration)?;
        let rule = cfg.default.map(|d| ObjectLockRule {
            default_retention: Some(s3s::dto::DefaultRetention {
                mode: Some(ObjectLockRetentionMode::from(d.mode.as_str().to_owned())),
                days: (!d.years).then(|| i32::try_from(d.period).unwrap_or(i32::MAX)),
                years: d.years.then(|| i32::try_from(d.period).unwrap_or(i32::MAX)),
            }),
        });
        Ok(S3Response::new(GetObjectLockConfigurationOutput {
            object_lock_configuration: Some(ObjectLockConfiguration {
                object_lock_enabled: Some(ObjectLockEnabled::from("Enabled".to_owned())),
                rule,
            }),
        }))
    }

    async fn put_object_retention(
        &self,
        req: S3Request<PutObjectRetentionInput>,
    ) -> S3Result<S3Response<PutObjectRetentionOutput>> {
        let who = who(&req);
        let input = req.input;
        let version = parse_version(input.version_id.as_deref())?;
        let retention = match input.retention {
            None => None,
            Some(r) => match (r.mode, r.retain_until_date) {
                (None, None) => None,
                (Some(m), Some(u)) => Some(Retention {
                    mode: lock_mode(m.as_str())?,
                    until_ms: u64::try_from(ms_of(&u)).unwrap_or(0),
                }),
                _ => {
                    return Err(s3_error!(
                        MalformedXML,
                        "Retention takes both Mode and RetainUntilDate"
                    ));
                }
            },
        };
        self.write(
            &who,
            BucketCommand::SetObjectLock {
                bucket: input.bucket,
                key: input.key,
                version,
                change: LockChange::Retention(retention),
                bypass_governance: input.bypass_governance_retention == Some(true),
            },
        )
        .await?;
        Ok(S3Response::new(PutObjectRetentionOutput::default()))
    }

    async fn get_object_retention(
        &self,
        req: S3Request<GetObjectRetentionInput>,
    ) -> S3Result<S3Response<GetObjectRetentionOutput>> {
        let input = req.input;
        let lock = self
            .lock_in_lock_bucket(&input.bucket, &input.key, input.version_id.as_deref())
            .await?;
        let r = lock.retention.ok_or_else(|| {
            custom_status(
                "NoSuchObjectLockConfiguration",
                "The specified object does not have a ObjectLock configuration",
                http::StatusCode::NOT_FOUND,
            )
        })?;
        Ok(S3Response::new(GetObjectRetentionOutput {
            retention: Some(ObjectLockRetention {
                mode: Some(ObjectLockRetentionMode::from(r.mode.as_str().to_owned())),
                retain_until_date: Some(ts(r.until_ms)),
            }),
        }))
    }

    async fn put_object_legal_hold(
        &self,
        req: S3Request<PutObjectLegalHoldInput>,
    ) -> S3Result<S3Response<PutObjectLegalHoldOutput>> {
        let who = who(&req);
        let input = req.input;
        let version = parse_version(input.version_id.as_deref())?;
        let on = match input
            .legal_hold
            .and_then(|h| h.status)
            .as_ref()
            .map(ObjectLockLegalHoldStatus::as_str)
        {
            Some("ON") => true,
            Some("OFF") => false,
            _ => {
                return Err(s3_error!(
                    MalformedXML,
                    "LegalHold takes a Status of ON or OFF"
                ));
            }
        };
        self.write(
            &who,
            BucketCommand::SetObjectLock {
                bucket: input.bucket,
                key: input.key,
                version,
                change: LockChange::LegalHold(on),
                bypass_governance: false,
            },
        )
        .await?;
        Ok(S3Response::new(PutObjectLegalHoldOutput::default()))
    }

    async fn get_object_legal_hold(
        &self,
        req: S3Request<GetObjectLegalHoldInput>,
    ) -> S3Result<S3Response<GetObjectLegalHoldOutput>> {
        let input = req.input;
        let lock = self
            .lock_in_lock_bucket(&input.bucket, &input.key, input.version_id.as_deref())
            .await?;
        Ok(S3Response::new(GetObjectLegalHoldOutput {
            legal_hold: Some(ObjectLockLegalHold {
                status: Some(ObjectLockLegalHoldStatus::from(
                    if lock.legal_hold { "ON" } else { "OFF" }.to_owned(),
                )),
            }),
        }))
    }

    async fn get_object_attributes(
        &self,
        req: S3Request<GetObjectAttributesInput>,
    ) -> S3Result<S3Response<GetObjectAttributesOutput>> {
        let input = req.input;
        let wants = |a: &str| input.object_attributes.iter().any(|x| x.as_str() == a);
        if input.object_attributes.is_empty()
            || input.object_attributes.iter().any(|a| {
                ![
                    ObjectAttributes::CHECKSUM,
                    ObjectAttributes::ETAG,
                    ObjectAttributes::OBJECT_PARTS,
                    ObjectAttributes::OBJECT_SIZE,
                    ObjectAttributes::STORAGE_CLASS,
                ]
                .contains(&a.as_str())
            })
        {
            return Err(s3_error!(
                InvalidArgument,
                "Invalid attribute name specified: x-amz-object-attributes takes ETag, Checksum, ObjectParts, StorageClass, ObjectSize"
            ));
        }
        let (v, d) = self
            .object(&input.bucket, &input.key, input.version_id.as_deref())
            .await?;
        let mut out = GetObjectAttributesOutput {
            last_modified: Some(ts(v.modified_ms)),
            version_id: v.id.map(|x| version_string(Some(x))),
            ..Default::default()
        };
        if wants(ObjectAttributes::ETAG) {
            out.e_tag = Some(etag(&d.etag));
        }
        if wants(ObjectAttributes::OBJECT_SIZE) {
            out.object_size = i64::try_from(d.size).ok();
        }
        if wants(ObjectAttributes::STORAGE_CLASS) {
            out.storage_class = Some(StorageClass::from_static(StorageClass::STANDARD));
        }
        if wants(ObjectAttributes::CHECKSUM) && d.meta.checksum.is_some() {
            let mut c = Checksum {
                checksum_type: checksum_type(&d.meta.checksum),
                ..Default::default()
            };
            set_checksum!(c, d.meta.checksum.clone());
            out.checksum = Some(c);
        }
        if wants(ObjectAttributes::OBJECT_PARTS) && !d.parts.is_empty() {
            let max = match input.max_parts {
                None => 1000,
                Some(n) if (0..=1000).contains(&n) => n as usize,
                Some(_) => {
                    return Err(s3_error!(
                        InvalidArgument,
                        "max-parts must be between 0 and 1000"
                    ));
                }
            };
            let marker = match input.part_number_marker {
                None => 0,
                Some(n) if n >= 0 => n as usize,
                Some(_) => {
                    return Err(s3_error!(
                        InvalidArgument,
                        "part-number-marker must not be negative"
                    ));
                }
            };
            let rest: Vec<(usize, u64)> = d
                .parts
                .iter()
                .enumerate()
                .map(|(i, size)| (i + 1, *size))
                .filter(|(n, _)| *n > marker)
                .collect();
            let shown = &rest[..rest.len().min(max)];
            let truncated = rest.len() > shown.len();
            let part_sums = match (&d.meta.checksum, shown.is_empty()) {
                (Some((alg, _)), false) => match self
                    .g
                    .query(&BucketQuery::VersionPartSums {
                        bucket: input.bucket.clone(),
                        key: input.key.clone(),
                        version: Some(v.id.map_or(VersionRef::Null, VersionRef::Id)),
                    })
                    .await?
                {
                    BucketQueryResponse::VersionPartSums(Some(s)) => Some((alg.clone(), s.0)),
                    _ => None,
                },
                _ => None,
            };
            out.object_parts = Some(GetObjectAttributesParts {
                is_truncated: Some(truncated),
                max_parts: Some(max as i32),
                part_number_marker: Some(marker as i32),
                next_part_number_marker: shown.last().map(|(n, _)| *n as i32),
                total_parts_count: i32::try_from(d.parts.len()).ok(),
                parts: Some(
                    shown
                        .iter()
                        .map(|(n, size)| {
                            let mut part = ObjectPart {
                                part_number: Some(*n as i32),
                                size: i64::try_from(*size).ok(),
                                ..Default::default()
                            };
                            if let Some((alg, sums)) = &part_sums {
                                set_checksum!(
                                    part,
                                    sums.get(n - 1).map(|v| (alg.clone(), v.clone()))
                                );
                            }
                            part
                        })
                        .collect(),
                ),
            });
        }
        Ok(S3Response::new(out))
    }

    async fn put_bucket_acl(
        &self,
        req: S3Request<PutBucketAclInput>,
    ) -> S3Result<S3Response<PutBucketAclOutput>> {
        let audit_who = who(&req);
        let input = req.input;
        let b = self.bucket(&input.bucket).await?;
        let headers = GrantHeaders {
            full_control: input.grant_full_control.as_deref(),
            read: input.grant_read.as_deref(),
            read_acp: input.grant_read_acp.as_deref(),
            write: input.grant_write.as_deref(),
            write_acp: input.grant_write_acp.as_deref(),
        };
        let canned = input.acl.as_ref().map(BucketCannedACL::as_str);
        let sources = usize::from(canned.is_some())
            + usize::from(headers.any())
            + usize::from(input.access_control_policy.is_some());
        if sources > 1 {
            return Err(s3_error!(
                InvalidRequest,
                "Specifying more than one of a canned ACL, x-amz-grant-* headers and an AccessControlPolicy body is not allowed"
            ));
        }
        let grants = if let Some(c) = canned {
            canned_grants(c, &b.owner, &b.owner)?
        } else if headers.any() {
            headers.grants()?
        } else if let Some(policy) = input.access_control_policy {
            policy_grants(policy)?
        } else {
            return Err(s3_error!(
                MissingSecurityHeader,
                "PutBucketAcl takes a canned ACL, x-amz-grant-* headers or an AccessControlPolicy body"
            ));
        };
        let (public_read, grants) = split_acl(grants, &b.owner);
        self.configure(
            &audit_who,
            "s3:PutBucketAcl",
            &input.bucket,
            BucketChange::Acl {
                public_read,
                grants,
            },
        )
        .await?;
        Ok(S3Response::new(PutBucketAclOutput {}))
    }

    async fn get_bucket_acl(
        &self,
        req: S3Request<GetBucketAclInput>,
    ) -> S3Result<S3Response<GetBucketAclOutput>> {
        let b = self.bucket(&req.input.bucket).await?;
        let mut grants = vec![AclGrant {
            grantee: acl::Grantee::Tenant(b.owner.clone()),
            permission: acl::Permission::FullControl,
        }];
        if b.public_read {
            grants.push(AclGrant {
                grantee: acl::Grantee::AllUsers,
                permission: acl::Permission::Read,
            });
        }
        grants.extend(b.acl.iter().flatten().cloned());
        Ok(S3Response::new(GetBucketAclOutput {
            grants: Some(grants.iter().map(s3_grant).collect()),
            owner: Some(owner(&b.owner)),
        }))
    }

    async fn get_object_acl(
        &self,
        req: S3Request<GetObjectAclInput>,
    ) -> S3Result<S3Response<GetObjectAclOutput>> {
        let input = req.input;
        let b = self.bucket(&input.bucket).await?;
        let version = parse_version(input.version_id.as_deref())?;
        let (_, a) = self.version_acl(&input.bucket, &input.key, version).await?;
        let owner_id = a.owner.clone().unwrap_or_else(|| b.owner.clone());
        let mut grants = vec![AclGrant {
            grantee: acl::Grantee::Tenant(owner_id.clone()),
            permission: acl::Permission::FullControl,
        }];
        grants.extend(a.grants);
        Ok(S3Response::new(GetObjectAclOutput {
            grants: Some(grants.iter().map(s3_grant).collect()),
            owner: Some(owner(&owner_id)),
            request_charged: None,
        }))
    }

    async fn put_object_acl(
        &self,
        req: S3Request<PutObjectAclInput>,
    ) -> S3Result<S3Response<PutObjectAclOutput>> {
        let who = who(&req);
        let input = req.input;
        let b = self.bucket(&input.bucket).await?;
        let version = parse_version(input.version_id.as_deref())?;
        let (_, current) = self.version_acl(&input.bucket, &input.key, version).await?;
        let owner_id = current.owner.clone().unwrap_or_else(|| b.owner.clone());
        let headers = GrantHeaders {
            full_control: input.grant_full_control.as_deref(),
            read: input.grant_read.as_deref(),
            read_acp: input.grant_read_acp.as_deref(),
            write: input.grant_write.as_deref(),
            write_acp: input.grant_write_acp.as_deref(),
        };
        let canned = input.acl.as_ref().map(ObjectCannedACL::as_str);
        let sources = usize::from(canned.is_some())
            + usize::from(headers.any())
            + usize::from(input.access_control_policy.is_some());
        if sources > 1 {
            return Err(s3_error!(
                InvalidRequest,
                "Specifying more than one of a canned ACL, x-amz-grant-* headers and an AccessControlPolicy body is not allowed"
            ));
        }
        let grants = if let Some(c) = canned {
            canned_grants(c, &owner_id, &b.owner)?
        } else if headers.any() {
            headers.grants()?
        } else if let Some(policy) = input.access_control_policy {
            policy_grants(policy)?
        } else {
            return Err(s3_error!(
                MissingSecurityHeader,
                "PutObjectAcl takes a canned ACL, x-amz-grant-* headers or an AccessControlPolicy body"
            ));
        };
        let grants = object_grants(grants, &owner_id);
        self.write(
            &who,
            BucketCommand::SetObjectAcl {
                bucket: input.bucket,
                key: input.key,
                version,
                acl: ObjectAcl {
                    owner: current.owner,
                    grants,
                },
            },
        )
        .await?;
        Ok(S3Response::new(PutObjectAclOutput::default()))
    }

    async fn put_bucket_ownership_controls(
        &self,
        req: S3Request<PutBucketOwnershipControlsInput>,
    ) -> S3Result<S3Response<PutBucketOwnershipControlsOutput>> {
        let audit_who = who(&req);
        let input = req.input;
        let [rule] = input.ownership_controls.rules.as_slice() else {
            return Err(s3_error!(
                MalformedXML,
                "OwnershipControls takes exactly one Rule"
            ));
        };
        let o = ownership(rule.object_ownership.as_str())?;
        self.configure(
            &audit_who,
            "s3:PutBucketOwnershipControls",
            &input.bucket,
            BucketChange::Ownership(Some(o)),
        )
        .await?;
        Ok(S3Response::new(PutBucketOwnershipControlsOutput {}))
    }

    async fn get_bucket_ownership_controls(
        &self,
        req: S3Request<GetBucketOwnershipControlsInput>,
    ) -> S3Result<S3Response<GetBucketOwnershipControlsOutput>> {
        let b = self.bucket(&req.input.bucket).await?;
        let o = b.ownership.ok_or_else(|| {
            custom_status(
                "OwnershipControlsNotFoundError",
                "The bucket ownership controls were not found",
                http::StatusCode::NOT_FOUND,
            )
        })?;
        Ok(S3Response::new(GetBucketOwnershipControlsOutput {
            ownership_controls: Some(OwnershipControls {
                rules: vec![OwnershipControlsRule {
                    object_ownership: ObjectOwnership::from(o.as_str().to_owned()),
                }],
            }),
        }))
    }

    async fn put_bucket_encryption(
        &self,
        req: S3Request<PutBucketEncryptionInput>,
    ) -> S3Result<S3Response<PutBucketEncryptionOutput>> {
        let audit_who = who(&req);
        let tenant = bucket_tenant_of(&req);
        let input = req.input;
        let rules = input.server_side_encryption_configuration.rules;
        let [rule] = rules.as_slice() else {
            return Err(s3_error!(
                MalformedXML,
                "A server-side encryption configuration has exactly one rule."
            ));
        };
        let Some(by_default) = &rule.apply_server_side_encryption_by_default else {
            return Err(s3_error!(
                MalformedXML,
                "The rule has no ApplyServerSideEncryptionByDefault."
            ));
        };
        let default = match by_default.sse_algorithm.as_str() {
            "AES256" => {
                if by_default.kms_master_key_id.is_some() {
                    return Err(s3_error!(
                        InvalidArgument,
                        "a KMSMasterKeyID is only valid with SSEAlgorithm aws:kms"
                    ));
                }
                DefaultSse::S3
            }
            "aws:kms" | "aws:kms:dsse" => {
                if let Some(k) = &by_default.kms_master_key_id {
                    // The key must be one of the bucket's tenant (or its default, made later).
                    sse::resolve_key(&self.g, tenant, Some(k), false).await?;
                }
                DefaultSse::Kms {
                    key: by_default.kms_master_key_id.clone(),
                }
            }
            _ => {
                return Err(s3_error!(
                    InvalidArgument,
                    "SSEAlgorithm must be AES256 or aws:kms"
                ));
            }
        };
        self.configure(
            &audit_who,
            "s3:PutEncryptionConfiguration",
            &input.bucket,
            BucketChange::Encryption(Some(BucketEncryption {
                default,
                bucket_key: rule.bucket_key_enabled == Some(true),
            })),
        )
        .await?;
        Ok(S3Response::new(PutBucketEncryptionOutput {}))
    }

    async fn get_bucket_encryption(
        &self,
        req: S3Request<GetBucketEncryptionInput>,
    ) -> S3Result<S3Response<GetBucketEncryptionOutput>> {
        let b = self.bucket(&req.input.bucket).await?;
        let e = b.encryption.ok_or_else(|| {
            custom_status(
                "ServerSideEncryptionConfigurationNotFoundError",
                "The server side encryption configuration was not found",
                http::StatusCode::NOT_FOUND,
            )
        })?;
        let (alg, key) = match e.default {
            DefaultSse::S3 => ("AES256", None),
            DefaultSse::Kms { key } => ("aws:kms", key),
        };
        Ok(S3Response::new(GetBucketEncryptionOutput {
            server_side_encryption_configuration: Some(ServerSideEncryptionConfiguration {
                rules: vec![ServerSideEncryptionRule {
                    apply_server_side_encryption_by_default: Some(ServerSideEncryptionByDefault {
                        kms_master_key_id: key,
                        sse_algorithm: ServerSideEncryption::from(alg.to_owned()),
                    }),
                    bucket_key_enabled: Some(e.bucket_key),
                }],
            }),
        }))
    }

    async fn delete_bucket_encryption(
        &self,
        req: S3Request<DeleteBucketEncryptionInput>,
    ) -> S3Result<S3Response<DeleteBucketEncryptionOutput>> {
        let audit_who = who(&req);
        self.configure(
            &audit_who,
            "s3:PutEncryptionConfiguration",
            &req.input.bucket,
            BucketChange::Encryption(None),
        )
        .await?;
        Ok(S3Response::new(DeleteBucketEncryptionOutput {}))
    }

    async fn delete_bucket_ownership_controls(
        &self,
        req: S3Request<DeleteBucketOwnershipControlsInput>,
    ) -> S3Result<S3Response<DeleteBucketOwnershipControlsOutput>> {
        let audit_who = who(&req);
        self.configure(
            &audit_who,
            "s3:PutBucketOwnershipControls",
            &req.input.bucket,
            BucketChange::Ownership(None),
        )
        .await?;
        Ok(S3Response::new(DeleteBucketOwnershipControlsOutput {}))
    }

    async fn put_object(
        &self,
        mut req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        sse_fields_as_headers(&mut req);
        // (again: a browser form's key fields became headers only now)
        let peer = crate::auth::peer_of(&req.extensions);
        sse::refuse_insecure_customer_key(&self.g, &req.headers, peer)?;
        let who = who(&req);
        let lifecycle = req
            .extensions
            .get::<crate::auth::BucketLifecycle>()
            .cloned();
        let now = crate_now_ms();
        let (writer, bucket_owner) = writer_and_owner(&req);
        let (tenant, sse_req) = self.write_sse(&req, &req.input.bucket).await?;
        let customer = match &sse_req {
            Some(SseRequest::Customer { key }) => Some(*key),
            _ => None,
        };
        let headers = req.headers;
        let trailers = req.trailing_headers;
        let input = req.input;
        if let Some(len) = input.content_length
            && u64::try_from(len).is_ok_and(|l| l > self.g.options.put_max)
        {
            return Err(s3_error!(
                EntityTooLarge,
                "Your proposed upload exceeds the maximum allowed object size."
            ));
        }
        let conditions = write_conditions(&input.if_match, &input.if_none_match)?;
        if conditions.if_none_match_any {
            // Cheap early refusal; the command checks again atomically.
            if let Ok(v) = self.version(&input.bucket, &input.key, None).await
                && v.data().is_some()
            {
                return Err(s3_error!(
                    PreconditionFailed,
                    "At least one of the pre-conditions you specified did not hold"
                ));
            }
        }
        let mut m = meta(
            input.content_type.clone(),
            input.content_encoding.clone(),
            input.content_disposition.clone(),
            input.content_language.clone(),
            input.cache_control.clone(),
            input.expires.as_ref(),
            input.metadata.clone(),
        )?;
        let tags = parse_tagging(input.tagging.as_deref())?;
        // Checked before the body is stored: a refused request leaves nothing behind.
        let acl = input_acl!(input, writer, bucket_owner)?;
        let lock = requested_lock(
            &input.object_lock_mode,
            &input.object_lock_retain_until_date,
            &input.object_lock_legal_hold_status,
        )?;
        let stored = objects::store_object(
            &self.g,
            input.body,
            &headers,
            trailers,
            (&input.bucket, &input.key),
            tenant,
            sse_req.as_ref(),
        )
        .await?;
        m.checksum = stored.checksum.clone();
        let expiration =
            expiration_header(lifecycle.as_ref(), (&input.key, stored.size, &tags), now);
        let sse_out = SseHeaders::of(&self.g, tenant, stored.content.sse(), customer.as_ref());
        let resp = self
            .write(
                &who,
                with_acl(
                    acl,
                    locked(
                        lock,
                        BucketCommand::PutObject {
                            bucket: input.bucket.clone(),
                            key: input.key.clone(),
                            data: ObjectData {
                                size: stored.size,
                                etag: stored.etag.clone(),
                                parts: Vec::new(),
                                content: stored.content,
                                meta: m,
                                tags,
                            },
                            conditions,
                        },
                    ),
                ),
            )
            .await?;
        let version = match resp {
            BucketResponse::Put { version, .. } => version,
            _ => None,
        };
        let mut out = PutObjectOutput {
            e_tag: Some(etag(&stored.etag)),
            version_id: version.map(|v| version_string(Some(v))),
            size: i64::try_from(stored.size).ok(),
            expiration,
            ssekms_encryption_context: sse_out.context.clone(),
            ..Default::default()
        };
        set_sse!(out, sse_out);
        out.checksum_type = checksum_type(&stored.checksum);
        set_checksum!(out, stored.checksum);
        Ok(S3Response::new(out))
    }

    async fn get_object(
        &self,
        mut req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let prefetched = req.extensions.remove::<crate::auth::Prefetched>();
        let lock_enabled = prefetched.as_ref().is_some_and(|p| p.lock_enabled);
        let customer = sse::object_customer_key(&req.headers)?;
        sse::refuse_on_read(&req.headers)?;
        let tenant = bucket_tenant_of(&req);
        let input = req.input;
        let plan = self
            .plan_read(
                &input.bucket,
                &input.key,
                input.version_id.as_deref(),
                (
                    &input.if_match,
                    &input.if_none_match,
                    &input.if_modified_since,
                    &input.if_unmodified_since,
                ),
                (input.range, input.part_number),
                prefetched,
            )
            .await?;
        let body = objects::read_body(
            &self.g,
            &plan.data,
            customer.as_ref(),
            plan.offset,
            plan.len,
        )
        .await?;
        let sse_out = SseHeaders::of(&self.g, tenant, plan.data.content.sse(), customer.as_ref());
        let whole = plan.content_range.is_none();
        let checksum = self
            .read_checksum(
                input.checksum_mode.as_ref(),
                (&input.bucket, &input.key),
                &plan,
                input.part_number,
            )
            .await?;
        let kind = checksum_type(&plan.data.meta.checksum);
        let lock = self
            .lock_headers(lock_enabled, &input.bucket, &input.key, &plan.version)
            .await?;
        let expiration = expiration_header(
            req.extensions.get(),
            (&input.key, plan.data.size, &plan.data.tags),
            plan.version.modified_ms,
        );
        let mut out = read_output!(GetObjectOutput, input, plan,
            body: Some(body),
            tag_count: (!plan.data.tags.is_empty()).then_some(plan.data.tags.len() as i32),
        );
        out.expiration = expiration;
        set_sse!(out, sse_out);
        (
            out.object_lock_mode,
            out.object_lock_retain_until_date,
            out.object_lock_legal_hold_status,
        ) = lock;
        if checksum.is_some() {
            out.checksum_type = kind;
        }
        set_checksum!(out, checksum);
        let mut resp = S3Response::new(out);
        if !whole {
            resp.status = Some(http::StatusCode::PARTIAL_CONTENT);
        }
        Ok(resp)
    }

    async fn head_object(
        &self,
        mut req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let prefetched = req.extensions.remove::<crate::auth::Prefetched>();
        let lock_enabled = prefetched.as_ref().is_some_and(|p| p.lock_enabled);
        let customer = sse::object_customer_key(&req.headers)?;
        sse::refuse_on_read(&req.headers)?;
        let tenant = bucket_tenant_of(&req);
        let input = req.input;
        let plan = self
            .plan_read(
                &input.bucket,
                &input.key,
                input.version_id.as_deref(),
                (
                    &input.if_match,
                    &input.if_none_match,
                    &input.if_modified_since,
                    &input.if_unmodified_since,
                ),
                (input.range, input.part_number),
                prefetched,
            )
            .await?;
        let partial = plan.content_range.is_some();
        sse::check_read(&self.g, &plan.data, customer.as_ref())?;
        let sse_out = SseHeaders::of(&self.g, tenant, plan.data.content.sse(), customer.as_ref());
        let lock = self
            .lock_headers(lock_enabled, &input.bucket, &input.key, &plan.version)
            .await?;
        let expiration = expiration_header(
            req.extensions.get(),
            (&input.key, plan.data.size, &plan.data.tags),
            plan.version.modified_ms,
        );
        let checksum = self
            .read_checksum(
                input.checksum_mode.as_ref(),
                (&input.bucket, &input.key),
                &plan,
                input.part_number,
            )
            .await?;
        let kind = checksum_type(&plan.data.meta.checksum);
        let mut out = read_output!(HeadObjectOutput, input, plan,);
        if checksum.is_some() {
            out.checksum_type = kind;
        }
        set_checksum!(out, checksum);
        out.expiration = expiration;
        set_sse!(out, sse_out);
        (
            out.object_lock_mode,
            out.object_lock_retain_until_date,
            out.object_lock_legal_hold_status,
        ) = lock;
        let mut resp = S3Response::new(out);
        if partial {
            resp.status = Some(http::StatusCode::PARTIAL_CONTENT);
        }
        Ok(resp)
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let who = who(&req);
        let input = req.input;
        let version = parse_version(input.version_id.as_deref())?;
        let if_match = condition_strings(&input.if_match);
        let c = delete_command(
            input.bucket,
            input.key,
            version,
            input.bypass_governance_retention == Some(true),
            if_match,
        );
        let r = self.write(&who, c).await?;
        let out = match r {
            BucketResponse::Deleted { version, marker } => DeleteObjectOutput {
                delete_marker: marker.then_some(true),
                version_id: version.map(version_string),
                ..Default::default()
            },
            _ => DeleteObjectOutput::default(),
        };
        Ok(S3Response::new(out))
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let who = who(&req);
        let input = req.input;
        if input.delete.objects.len() > 1000 {
            return Err(s3_error!(
                MalformedXML,
                "at most 1000 keys per DeleteObjects request"
            ));
        }
        self.bucket(&input.bucket).await?;
        let quiet = input.delete.quiet.unwrap_or(false);
        let bucket = input.bucket.clone();
        let bypass = input.bypass_governance_retention == Some(true);
        let who = &who;
        let results: Vec<(ObjectIdentifier, S3Result<BucketResponse>)> =
            futures::stream::iter(input.delete.objects.into_iter().map(|o| {
                let bucket = bucket.clone();
                async move {
                    let r = match parse_version(o.version_id.as_deref()) {
                        Ok(version) => {
                            let if_match = o.e_tag.as_ref().map(|e| vec![e.value().to_owned()]);
                            let c =
                                delete_command(bucket, o.key.clone(), version, bypass, if_match);
                            self.write(who, c).await
                        }
                        Err(e) => Err(e),
                    };
                    (o, r)
                }
            }))
            .buffered(32)
            .collect()
            .await;
        let mut deleted = Vec::new();
        let mut errors = Vec::new();
        for (o, r) in results {
            match r {
                Ok(BucketResponse::Deleted { version, marker }) => {
                    if !quiet {
                        deleted.push(DeletedObject {
                            delete_marker: marker.then_some(true),
                            delete_marker_version_id: if marker {
                                version.map(version_string)
                            } else {
                                None
                            },
                            key: Some(o.key),
                            version_id: if marker { None } else { o.version_id },
                        });
                    }
                }
                Ok(_) => {}
                Err(e) => errors.push(s3s::dto::Error {
                    code: Some(e.code().as_str().to_owned()),
                    key: Some(o.key),
                    message: e.message().map(str::to_owned),
                    version_id: o.version_id,
                }),
            }
        }
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: Some(deleted),
            errors: (!errors.is_empty()).then_some(errors),
            request_charged: None,
        }))
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        let who = who(&req);
        let (writer, bucket_owner) = writer_and_owner(&req);
        let (tenant, sse_req) = self.write_sse(&req, &req.input.bucket).await?;
        let asks_sse = req.headers.contains_key("x-amz-server-side-encryption")
            || req
                .headers
                .contains_key("x-amz-server-side-encryption-customer-algorithm");
        let source_customer = sse::customer_key(
            &req.headers,
            "x-amz-copy-source-server-side-encryption-customer-",
        )?;
        let customer = match &sse_req {
            Some(SseRequest::Customer { key }) => Some(*key),
            _ => None,
        };
        let input = req.input;
        let acl = input_acl!(input, writer, bucket_owner)?;
        let (sv, sd, src_bucket, src_key) = self
            .copy_source(
                &input.copy_source,
                (
                    &input.copy_source_if_match,
                    &input.copy_source_if_none_match,
                    &input.copy_source_if_modified_since,
                    &input.copy_source_if_unmodified_since,
                ),
            )
            .await?;
        let replace_meta = input
            .metadata_directive
            .as_ref()
            .is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
        let replace_tags = input
            .tagging_directive
            .as_ref()
            .is_some_and(|d| d.as_str() == TaggingDirective::REPLACE);
        if src_bucket == input.bucket
            && src_key == input.key
            && matches!(
                &input.copy_source,
                CopySource::Bucket {
                    version_id: None,
                    ..
                }
            )
            && !replace_meta
            && !replace_tags
            && !asks_sse
        {
            return Err(s3_error!(
                InvalidRequest,
                "This copy request is illegal because it is trying to copy an object to itself without changing the object's metadata, storage class, website redirect location or encryption attributes."
            ));
        }
        let dest = self.bucket(&input.bucket).await?;
        let mut m = if replace_meta {
            meta(
                input.content_type.clone(),
                input.content_encoding.clone(),
                input.content_disposition.clone(),
                input.content_language.clone(),
                input.cache_control.clone(),
                input.expires.as_ref(),
                input.metadata.clone(),
            )?
        } else {
            sd.meta.clone()
        };
        m.checksum = sd.meta.checksum.clone();
        let tags = if replace_tags {
            parse_tagging(input.tagging.as_deref())?
        } else {
            sd.tags.clone()
        };
        let lock = requested_lock(
            &input.object_lock_mode,
            &input.object_lock_retain_until_date,
            &input.object_lock_legal_hold_status,
        )?;
        sse::check_read(&self.g, &sd, source_customer.as_ref())?;
        let (size, new_etag, parts, content) = match (&sd.content, &sse_req) {
            // Neither side encrypted: the copy shares the source's chunks.
            (Content::Inline(_) | Content::Chunks(_), None) => (
                sd.size,
                sd.etag.clone(),
                sd.parts.clone(),
                sd.content.clone(),
            ),
            // Both encrypted: the data key is wrapped again for the destination; the sealed
            // bytes are shared, no byte moves.
            (Content::Encrypted(e), Some(r)) => {
                let data = sse::open_data_key(&self.g, &e.sse, source_customer.as_ref()).await?;
                let kept =
                    sse::rewrap(&self.g, tenant, &input.bucket, &input.key, r, &data).await?;
                (
                    sd.size,
                    sd.etag.clone(),
                    sd.parts.clone(),
                    Content::Encrypted(Box::new(cairn_master::buckets::Encrypted {
                        sse: kept,
                        salts: e.salts.clone(),
                        body: e.body.clone(),
                    })),
                )
            }
            // One side encrypted: the bytes are opened or sealed on their way through.
            _ => {
                let body =
                    objects::read_body(&self.g, &sd, source_customer.as_ref(), 0, sd.size).await?;
                let stored = objects::store_object(
                    &self.g,
                    Some(body),
                    &http::HeaderMap::new(),
                    None,
                    (&input.bucket, &input.key),
                    tenant,
                    sse_req.as_ref(),
                )
                .await?;
                (stored.size, stored.etag, Vec::new(), stored.content)
            }
        };
        if parts.is_empty()
            && m.checksum
                .as_ref()
                .is_some_and(|(_, v)| cairn_master::buckets::checksums::is_composite(v))
        {
            // A composite checksum describes parts; a copy stored whole has none.
            m.checksum = None;
        }
        let sse_out = SseHeaders::of(&self.g, tenant, content.sse(), customer.as_ref());
        let r = objects::write_or_refusal(
            &self.g,
            &who,
            with_acl(
                acl,
                locked(
                    lock,
                    BucketCommand::PutObject {
                        bucket: input.bucket.clone(),
                        key: input.key.clone(),
                        data: ObjectData {
                            size,
                            etag: new_etag.clone(),
                            parts,
                            content,
                            meta: m,
                            tags,
                        },
                        conditions: Conditions::default(),
                    },
                ),
            ),
        )
        .await?
        .map_err(|r| {
            // The source's chunks were released between reading it and committing the copy.
            if r.kind() == Some(BucketRefusal::ChunkGone) {
                s3_error!(NoSuchKey, "the source object was deleted during the copy")
            } else {
                crate::rejection_error(&r)
            }
        })?;
        let (version, modified) = match r {
            BucketResponse::Put { version, .. } => (version, crate_now_ms()),
            _ => (None, crate_now_ms()),
        };
        let mut out = CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(etag(&new_etag)),
                last_modified: Some(ts(modified)),
                ..Default::default()
            }),
            copy_source_version_id: sv.id.map(|x| version_string(Some(x))),
            version_id: if dest.versioning == Versioning::Enabled {
                version.map(|v| version_string(Some(v)))
            } else {
                None
            },
            ssekms_encryption_context: sse_out.context.clone(),
            ..Default::default()
        };
        set_sse!(out, sse_out);
        Ok(S3Response::new(out))
    }

    async fn get_object_tagging(
        &self,
        req: S3Request<GetObjectTaggingInput>,
    ) -> S3Result<S3Response<GetObjectTaggingOutput>> {
        let input = req.input;
        let (v, d) = self
            .object(&input.bucket, &input.key, input.version_id.as_deref())
            .await?;
        Ok(S3Response::new(GetObjectTaggingOutput {
            tag_set: tag_set(&d.tags),
            version_id: v.id.map(|x| version_string(Some(x))),
        }))
    }

    async fn put_object_tagging(
        &self,
        req: S3Request<PutObjectTaggingInput>,
    ) -> S3Result<S3Response<PutObjectTaggingOutput>> {
        let who = who(&req);
        let input = req.input;
        let version = parse_version(input.version_id.as_deref())?;
        let tags = tags_from(input.tagging.tag_set)?;
        check_object_tags(&tags)?;
        self.write(
            &who,
            BucketCommand::SetObjectTags {
                bucket: input.bucket,
                key: input.key,
                version,
                tags,
            },
        )
        .await?;
        Ok(S3Response::new(PutObjectTaggingOutput {
            version_id: input.version_id,
        }))
    }

    async fn delete_object_tagging(
        &self,
        req: S3Request<DeleteObjectTaggingInput>,
    ) -> S3Result<S3Response<DeleteObjectTaggingOutput>> {
        let who = who(&req);
        let input = req.input;
        let version = parse_version(input.version_id.as_deref())?;
        self.write(
            &who,
            BucketCommand::SetObjectTags {
                bucket: input.bucket,
                key: input.key,
                version,
                tags: Vec::new(),
            },
        )
        .await?;
        Ok(S3Response::new(DeleteObjectTaggingOutput {
            version_id: input.version_id,
        }))
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        let mut input = req.input;
        // An empty delimiter is no delimiter, and is not echoed (as AWS answers).
        input.delimiter = input.delimiter.filter(|d| !d.is_empty());
        let url = wants_url(&input.encoding_type)?;
        let limit = max_keys(input.max_keys)?;
        let page = self
            .page(BucketQuery::List(Self::list_request(
                &input.bucket,
                input.prefix.clone(),
                input.delimiter.clone(),
                input.marker.clone(),
                limit,
            )))
            .await?;
        let contents: Vec<Object> = page
            .objects
            .iter()
            .filter_map(|o| {
                let d = o.version.data()?;
                Some(Object {
                    e_tag: Some(etag(&d.etag)),
                    key: Some(enc(&o.key, url)),
                    last_modified: Some(ts(o.version.modified_ms)),
                    size: i64::try_from(d.size).ok(),
                    storage_class: Some(ObjectStorageClass::from_static(
                        ObjectStorageClass::STANDARD,
                    )),
                    ..Default::default()
                })
            })
            .collect();
        let prefixes: Vec<CommonPrefix> = page
            .prefixes
            .iter()
            .map(|p| CommonPrefix {
                prefix: Some(enc(p, url)),
            })
            .collect();
        Ok(S3Response::new(ListObjectsOutput {
            name: Some(input.bucket),
            prefix: Some(enc(&input.prefix.unwrap_or_default(), url)),
            marker: Some(enc(&input.marker.unwrap_or_default(), url)),
            max_keys: Some(limit as i32),
            is_truncated: Some(page.truncated),
            contents: (!contents.is_empty()).then_some(contents),
            common_prefixes: (!prefixes.is_empty()).then_some(prefixes),
            delimiter: input.delimiter.map(|d| enc(&d, url)),
            next_marker: page.next.map(|n| enc(&n, url)),
            encoding_type: input.encoding_type,
            request_charged: None,
        }))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let bucket_owner = bucket_owner_of(&req);
        let mut input = req.input;
        // An empty delimiter is no delimiter, and is not echoed (as AWS answers).
        input.delimiter = input.delimiter.filter(|d| !d.is_empty());
        let url = wants_url(&input.encoding_type)?;
        let limit = max_keys(input.max_keys)?;
        let after = match &input.continuation_token {
            Some(t) => Some(unhex_token(t)?),
            None => input.start_after.clone(),
        };
        let page = self
            .page(BucketQuery::List(Self::list_request(
                &input.bucket,
                input.prefix.clone(),
                input.delimiter.clone(),
                after,
                limit,
            )))
            .await?;
        let fetch_owner = input.fetch_owner.unwrap_or(false);
        let contents: Vec<Object> = page
            .objects
            .iter()
            .filter_map(|o| {
                let d = o.version.data()?;
                Some(Object {
                    e_tag: Some(etag(&d.etag)),
                    key: Some(enc(&o.key, url)),
                    last_modified: Some(ts(o.version.modified_ms)),
                    size: i64::try_from(d.size).ok(),
                    storage_class: Some(ObjectStorageClass::from_static(
                        ObjectStorageClass::STANDARD,
                    )),
                    owner: fetch_owner.then(|| owner(&bucket_owner)),
                    ..Default::default()
                })
            })
            .collect();
        let prefixes: Vec<CommonPrefix> = page
            .prefixes
            .iter()
            .map(|p| CommonPrefix {
                prefix: Some(enc(p, url)),
            })
            .collect();
        let key_count = (contents.len() + prefixes.len()) as i32;
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(input.bucket),
            prefix: Some(enc(&input.prefix.unwrap_or_default(), url)),
            max_keys: Some(limit as i32),
            key_count: Some(key_count),
            continuation_token: input.continuation_token,
            is_truncated: Some(page.truncated),
            next_continuation_token: page.next.as_deref().map(hex_token),
            contents: (!contents.is_empty()).then_some(contents),
            common_prefixes: (!prefixes.is_empty()).then_some(prefixes),
            delimiter: input.delimiter.map(|d| enc(&d, url)),
            encoding_type: input.encoding_type,
            start_after: input.start_after.map(|s| enc(&s, url)),
            request_charged: None,
        }))
    }

    async fn list_object_versions(
        &self,
        req: S3Request<ListObjectVersionsInput>,
    ) -> S3Result<S3Response<ListObjectVersionsOutput>> {
        let bucket_owner = bucket_owner_of(&req);
        let mut input = req.input;
        // An empty delimiter is no delimiter, and is not echoed (as AWS answers).
        input.delimiter = input.delimiter.filter(|d| !d.is_empty());
        let url = wants_url(&input.encoding_type)?;
        let limit = max_keys(input.max_keys)?;
        let mut lr = Self::list_request(
            &input.bucket,
            input.prefix.clone(),
            input.delimiter.clone(),
            input.key_marker.clone(),
            limit,
        );
        if let Some(vm) = input.version_id_marker.as_deref().filter(|s| !s.is_empty()) {
            if lr.after.is_none() {
                return Err(s3_error!(
                    InvalidArgument,
                    "A version-id marker cannot be specified without a key marker."
                ));
            }
            lr.version_after = Some(
                VersionRef::parse(vm)
                    .ok_or_else(|| s3_error!(InvalidArgument, "Invalid version id specified"))?,
            );
        }
        let page = self.page(BucketQuery::Versions(lr)).await?;
        let mut versions = Vec::new();
        let mut markers = Vec::new();
        for o in &page.objects {
            let vid = Some(version_string(o.version.id));
            match o.version.data() {
                Some(d) => versions.push(ObjectVersion {
                    e_tag: Some(etag(&d.etag)),
                    is_latest: Some(o.latest),
                    key: Some(enc(&o.key, url)),
                    last_modified: Some(ts(o.version.modified_ms)),
                    owner: Some(owner(&bucket_owner)),
                    size: i64::try_from(d.size).ok(),
                    storage_class: Some(ObjectVersionStorageClass::from_static(
                        ObjectVersionStorageClass::STANDARD,
                    )),
                    version_id: vid,
                    ..Default::default()
                }),
                None => markers.push(DeleteMarkerEntry {
                    is_latest: Some(o.latest),
                    key: Some(enc(&o.key, url)),
                    last_modified: Some(ts(o.version.modified_ms)),
                    owner: Some(owner(&bucket_owner)),
                    version_id: vid,
                }),
            }
        }
        let prefixes: Vec<CommonPrefix> = page
            .prefixes
            .iter()
            .map(|p| CommonPrefix {
                prefix: Some(enc(p, url)),
            })
            .collect();
        Ok(S3Response::new(ListObjectVersionsOutput {
            common_prefixes: (!prefixes.is_empty()).then_some(prefixes),
            delete_markers: (!markers.is_empty()).then_some(markers),
            delimiter: input.delimiter.map(|d| enc(&d, url)),
            encoding_type: input.encoding_type,
            is_truncated: Some(page.truncated),
            key_marker: Some(enc(&input.key_marker.unwrap_or_default(), url)),
            max_keys: Some(limit as i32),
            name: Some(input.bucket),
            next_key_marker: page.next.map(|n| enc(&n, url)),
            next_version_id_marker: page.next_version.map(|v| match v {
                VersionRef::Null => "null".to_owned(),
                VersionRef::Id(x) => version_string(Some(x)),
            }),
            prefix: Some(enc(&input.prefix.unwrap_or_default(), url)),
            request_charged: None,
            version_id_marker: input.version_id_marker,
            versions: (!versions.is_empty()).then_some(versions),
        }))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let who = who(&req);
        let (writer, bucket_owner) = writer_and_owner(&req);
        let (tenant, sse_req) = self.write_sse(&req, &req.input.bucket).await?;
        let owner = req.credentials.map(|c| c.access_key).unwrap_or_default();
        let input = req.input;
        let acl = input_acl!(input, writer, bucket_owner)?;
        let m = meta(
            input.content_type.clone(),
            input.content_encoding.clone(),
            input.content_disposition.clone(),
            input.content_language.clone(),
            input.cache_control.clone(),
            input.expires.as_ref(),
            input.metadata.clone(),
        )?;
        let tags = parse_tagging(input.tagging.as_deref())?;
        let checksum = upload_checksum(
            input.checksum_algorithm.as_ref(),
            input.checksum_type.as_ref(),
        )?;
        let lock = requested_lock(
            &input.object_lock_mode,
            &input.object_lock_retain_until_date,
            &input.object_lock_legal_hold_status,
        )?;
        let create = with_acl(
            acl,
            locked(
                lock,
                BucketCommand::CreateUpload {
                    bucket: input.bucket.clone(),
                    key: input.key.clone(),
                    owner,
                    meta: m,
                    tags,
                },
            ),
        );
        let (create, sse_out) = match &sse_req {
            None => (create, SseHeaders::default()),
            Some(r) => {
                let (kept, _) =
                    sse::new_data_key(&self.g, tenant, &input.bucket, &input.key, r).await?;
                let customer = match r {
                    SseRequest::Customer { key } => Some(*key),
                    _ => None,
                };
                let h = SseHeaders::of(&self.g, tenant, Some(&kept), customer.as_ref());
                (
                    BucketCommand::Sealed {
                        sse: kept,
                        command: Box::new(create),
                    },
                    h,
                )
            }
        };
        let create = match &checksum {
            None => create,
            Some(c) => BucketCommand::Checksummed {
                checksum: c.clone(),
                command: Box::new(create),
            },
        };
        let r = self.write(&who, create).await?;
        let BucketResponse::Upload { id } = r else {
            return Err(internal("unexpected answer"));
        };
        let mut out = CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(upload_string(id)),
            ssekms_encryption_context: sse_out.context.clone(),
            checksum_algorithm: checksum
                .as_ref()
                .map(|c| ChecksumAlgorithm::from(c.algorithm.clone())),
            checksum_type: checksum.as_ref().map(upload_checksum_type),
            ..Default::default()
        };
        set_sse!(out, sse_out);
        Ok(S3Response::new(out))
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let tenant = bucket_tenant_of(&req);
        let headers = req.headers;
        let trailers = req.trailing_headers;
        let input = req.input;
        let upload = parse_upload(&input.upload_id)
            .ok_or_else(|| s3_error!(NoSuchUpload, "The specified upload does not exist."))?;
        let number = u32::try_from(input.part_number)
            .ok()
            .filter(|n| (1..=cairn_master::buckets::PART_NUMBER_MAX).contains(n))
            .ok_or_else(|| {
                s3_error!(
                    InvalidArgument,
                    "Part number must be an integer between 1 and 10000, inclusive"
                )
            })?;
        // The upload must exist (and its encryption be known) before any byte is stored.
        let customer = sse::object_customer_key(&headers)?;
        let (stored, c, kept) = objects::store_part(
            &self.g,
            input.body,
            &headers,
            trailers,
            (&input.bucket, &input.key, upload, number),
            customer.as_ref(),
            false,
        )
        .await?;
        self.g.command(&c).await?;
        let mut out = UploadPartOutput {
            e_tag: Some(etag(&stored.etag)),
            ..Default::default()
        };
        set_sse!(
            out,
            SseHeaders::of(&self.g, tenant, kept.as_ref(), customer.as_ref())
        );
        set_checksum!(out, stored.checksum);
        Ok(S3Response::new(out))
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        let tenant = bucket_tenant_of(&req);
        let source_customer = sse::customer_key(
            &req.headers,
            "x-amz-copy-source-server-side-encryption-customer-",
        )?;
        let customer = sse::object_customer_key(&req.headers)?;
        let input = req.input;
        let upload = parse_upload(&input.upload_id)
            .ok_or_else(|| s3_error!(NoSuchUpload, "The specified upload does not exist."))?;
        let number = u32::try_from(input.part_number)
            .ok()
            .filter(|n| (1..=cairn_master::buckets::PART_NUMBER_MAX).contains(n))
            .ok_or_else(|| {
                s3_error!(
                    InvalidArgument,
                    "Part number must be an integer between 1 and 10000, inclusive"
                )
            })?;
        let (sv, sd, _, _) = self
            .copy_source(
                &input.copy_source,
                (
                    &input.copy_source_if_match,
                    &input.copy_source_if_none_match,
                    &input.copy_source_if_modified_since,
                    &input.copy_source_if_unmodified_since,
                ),
            )
            .await?;
        let (offset, len) = match input.copy_source_range.as_deref() {
            None => (0, sd.size),
            Some(r) => {
                let bad = || {
                    s3_error!(
                        InvalidArgument,
                        "The x-amz-copy-source-range value must be of the form bytes=first-last where first and last are the zero-based offsets of the first and last bytes to copy"
                    )
                };
                let (a, b) = r
                    .strip_prefix("bytes=")
                    .and_then(|s| s.split_once('-'))
                    .ok_or_else(bad)?;
                let a: u64 = a.parse().map_err(|_| bad())?;
                let b: u64 = b.parse().map_err(|_| bad())?;
                if a > b || b >= sd.size {
                    return Err(S3Error::with_message(
                        S3ErrorCode::InvalidRange,
                        format!(
                            "Range specified is not valid for source object of size: {}",
                            sd.size
                        ),
                    ));
                }
                (a, b - a + 1)
            }
        };
        sse::check_read(&self.g, &sd, source_customer.as_ref())?;
        let state = objects::upload_state(&self.g, &input.bucket, &input.key, upload).await?;
        if state.sse.is_some() || sd.content.sse().is_some() {
            // Encrypted on either side: the bytes are opened and sealed again on their way.
            let body =
                objects::read_body(&self.g, &sd, source_customer.as_ref(), offset, len).await?;
            let (stored, c, kept) = objects::store_part(
                &self.g,
                Some(body),
                &http::HeaderMap::new(),
                None,
                (&input.bucket, &input.key, upload, number),
                customer.as_ref(),
                true,
            )
            .await?;
            self.g.command(&c).await?;
            let mut result = CopyPartResult {
                e_tag: Some(etag(&stored.etag)),
                last_modified: Some(ts(crate_now_ms())),
                ..Default::default()
            };
            set_checksum!(result, stored.checksum);
            let mut out = UploadPartCopyOutput {
                copy_part_result: Some(result),
                copy_source_version_id: sv.id.map(|x| version_string(Some(x))),
                ..Default::default()
            };
            set_sse!(
                out,
                SseHeaders::of(&self.g, tenant, kept.as_ref(), customer.as_ref())
            );
            return Ok(S3Response::new(out));
        }
        if customer.is_some() {
            return Err(s3_error!(
                InvalidRequest,
                "The encryption parameters are not applicable to this upload: it was not begun with a customer key."
            ));
        }
        // The part shares the source's chunks; its ETag is the MD5 of the copied bytes, and
        // its checksum the upload's algorithm over them.
        let algorithm = state.checksum.as_ref().map(|c| c.algorithm.clone());
        let mut sums = algorithm
            .as_deref()
            .map(crate::checksums::hasher)
            .unwrap_or_default();
        let (md5, extents) = match &sd.content {
            Content::Inline(b) => {
                let lo = offset as usize;
                let bytes = b.get(lo..lo + len as usize).unwrap_or(&[]).to_vec();
                let md5 = cairn_master::buckets::hex(&Md5::checksum(&bytes));
                sums.update(&bytes);
                let extents = if bytes.is_empty() {
                    Vec::new()
                } else {
                    let dest = self.bucket(&input.bucket).await?;
                    let mut dc = self.g.data.clone();
                    dc.replication = dest.replication;
                    dc.put(&mut std::io::Cursor::new(bytes))
                        .await
                        .map_err(|e| {
                            S3Error::with_message(S3ErrorCode::ServiceUnavailable, e.to_string())
                        })?
                        .extents
                };
                (md5, extents)
            }
            Content::Chunks(e) => {
                let mut sink = DigestSink(Md5::new(), sums);
                if len > 0 {
                    self.g
                        .data
                        .read(e, offset, len, &mut sink)
                        .await
                        .map_err(|e| {
                            S3Error::with_message(S3ErrorCode::ServiceUnavailable, e.to_string())
                        })?;
                }
                sums = sink.1;
                (
                    cairn_master::buckets::hex(&sink.0.finalize()),
                    slice_extents(e, offset, len),
                )
            }
            Content::Encrypted(_) => {
                return Err(internal("an encrypted source took the plain path"));
            }
        };
        let checksum = algorithm.and_then(|a| {
            crate::checksums::value(&sums.finalize(), &a)
                .cloned()
                .map(|v| (a, v))
        });
        self.g
            .command(&objects::checked_part(
                BucketCommand::PutPart {
                    bucket: input.bucket,
                    key: input.key,
                    upload,
                    number,
                    etag: md5.clone(),
                    size: len,
                    extents,
                },
                checksum.clone(),
            ))
            .await?;
        let mut result = CopyPartResult {
            e_tag: Some(etag(&md5)),
            last_modified: Some(ts(crate_now_ms())),
            ..Default::default()
        };
        set_checksum!(result, checksum);
        Ok(S3Response::new(UploadPartCopyOutput {
            copy_part_result: Some(result),
            copy_source_version_id: sv.id.map(|x| version_string(Some(x))),
            ..Default::default()
        }))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let who = who(&req);
        let lifecycle = req
            .extensions
            .get::<crate::auth::BucketLifecycle>()
            .cloned();
        let now = crate_now_ms();
        let tenant = bucket_tenant_of(&req);
        let mut input = req.input;
        let upload = parse_upload(&input.upload_id)
            .ok_or_else(|| s3_error!(NoSuchUpload, "The specified upload does not exist."))?;
        let listed = input
            .multipart_upload
            .take()
            .and_then(|m| m.parts)
            .ok_or_else(|| s3_error!(MalformedXML, "The XML you provided was not well-formed or did not validate against our published schema."))?;
        let mut parts = Vec::with_capacity(listed.len());
        for p in &listed {
            let n = p
                .part_number
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| s3_error!(InvalidPart, "a part has no valid part number"))?;
            let e = p
                .e_tag
                .as_ref()
                .map(|e| e.value().to_owned())
                .ok_or_else(|| s3_error!(InvalidPart, "a part has no ETag"))?;
            parts.push((n, e));
        }
        let conditions = write_conditions(&input.if_match, &input.if_none_match)?;
        let state = objects::upload_state(&self.g, &input.bucket, &input.key, upload).await?;
        let sse_out = SseHeaders::of(&self.g, tenant, state.sse.as_ref(), None);
        let (sums, size) = self
            .completion_checksums(&input, upload, &listed, &parts)
            .await?;
        let expiration = expiration_header(
            lifecycle.as_ref(),
            (&input.key, size, &state.upload.tags),
            now,
        );
        let object_sum = sums.as_ref().map(|s| s.object.clone());
        let complete = BucketCommand::CompleteUpload {
            bucket: input.bucket.clone(),
            key: input.key.clone(),
            upload,
            parts,
            conditions,
        };
        let command = match sums {
            None => complete,
            Some(sums) => BucketCommand::CheckedComplete {
                sums,
                command: Box::new(complete),
            },
        };
        let r = self.write(&who, command).await?;
        let BucketResponse::Put { version, etag: tag } = r else {
            return Err(internal("unexpected answer"));
        };
        let mut out = CompleteMultipartUploadOutput {
            expiration,
            bucket: Some(input.bucket.clone()),
            e_tag: Some(etag(&tag)),
            key: Some(input.key.clone()),
            location: Some(format!("/{}/{}", input.bucket, input.key)),
            version_id: version.map(|v| version_string(Some(v))),
            ..Default::default()
        };
        out.server_side_encryption = sse_out.algorithm.map(s3s::dto::ServerSideEncryption::from);
        out.ssekms_key_id = sse_out.kms_key_id;
        out.bucket_key_enabled = sse_out.bucket_key;
        out.checksum_type = checksum_type(&object_sum);
        set_checksum!(out, object_sum);
        Ok(S3Response::new(out))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let who = who(&req);
        let input = req.input;
        let upload = parse_upload(&input.upload_id)
            .ok_or_else(|| s3_error!(NoSuchUpload, "The specified upload does not exist."))?;
        self.write(
            &who,
            BucketCommand::AbortUpload {
                bucket: input.bucket,
                key: input.key,
                upload,
            },
        )
        .await?;
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        let bucket_owner = bucket_owner_of(&req);
        let initiator = req
            .credentials
            .as_ref()
            .map(|c| c.access_key.clone())
            .unwrap_or_else(|| bucket_owner.clone());
        let input = req.input;
        let upload = parse_upload(&input.upload_id)
            .ok_or_else(|| s3_error!(NoSuchUpload, "The specified upload does not exist."))?;
        let limit = match input.max_parts {
            None => 1000,
            Some(n) if n < 0 => {
                return Err(s3_error!(InvalidArgument, "max-parts must be non-negative"));
            }
            Some(n) => (n as u32).min(1000),
        };
        let after = input
            .part_number_marker
            .and_then(|m| u32::try_from(m).ok())
            .unwrap_or(0);
        self.bucket(&input.bucket).await?;
        let parts = match self
            .g
            .query(&BucketQuery::Parts {
                bucket: input.bucket.clone(),
                key: input.key.clone(),
                upload,
                after,
                limit,
            })
            .await?
        {
            BucketQueryResponse::Parts(Some(p)) => p,
            _ => {
                return Err(s3_error!(
                    NoSuchUpload,
                    "The specified upload does not exist."
                ));
            }
        };
        // The upload's checksum settings and its parts' checksums, for the parts shown.
        let (upload_sum, mut part_sums) = match self
            .g
            .query(&BucketQuery::UploadChecksums {
                bucket: input.bucket.clone(),
                key: input.key.clone(),
                upload,
            })
            .await?
        {
            BucketQueryResponse::UploadChecksums(Some((u, all))) => (
                u,
                all.into_iter()
                    .filter_map(|(n, _, c)| Some((n, c?)))
                    .collect::<std::collections::BTreeMap<_, _>>(),
            ),
            _ => (None, Default::default()),
        };
        let truncated = parts.len() > limit as usize;
        let shown: Vec<_> = parts.into_iter().take(limit as usize).collect();
        let next = if truncated {
            shown.last().map(|(n, _)| *n as i32)
        } else {
            None
        };
        Ok(S3Response::new(ListPartsOutput {
            bucket: Some(input.bucket),
            is_truncated: Some(truncated),
            key: Some(input.key),
            max_parts: Some(limit as i32),
            next_part_number_marker: next,
            part_number_marker: input.part_number_marker,
            parts: Some(
                shown
                    .into_iter()
                    .map(|(n, p)| {
                        let mut part = Part {
                            e_tag: Some(etag(&p.etag)),
                            last_modified: Some(ts(p.modified_ms)),
                            part_number: Some(n as i32),
                            size: i64::try_from(p.size).ok(),
                            ..Default::default()
                        };
                        set_checksum!(part, part_sums.remove(&n).map(|c| (c.algorithm, c.value)));
                        part
                    })
                    .collect(),
            ),
            upload_id: Some(input.upload_id),
            checksum_algorithm: upload_sum
                .as_ref()
                .map(|c| ChecksumAlgorithm::from(c.algorithm.clone())),
            checksum_type: upload_sum.as_ref().map(upload_checksum_type),
            storage_class: Some(StorageClass::from_static(StorageClass::STANDARD)),
            owner: Some(owner(&bucket_owner)),
            initiator: Some(Initiator {
                display_name: Some(initiator.clone()),
                id: Some(initiator),
            }),
            ..Default::default()
        }))
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let bucket_owner = bucket_owner_of(&req);
        let mut input = req.input;
        // An empty delimiter is no delimiter, and is not echoed (as AWS answers).
        input.delimiter = input.delimiter.filter(|d| !d.is_empty());
        let url = wants_url(&input.encoding_type)?;
        let limit = match input.max_uploads {
            None => 1000,
            Some(n) if n < 0 => {
                return Err(s3_error!(
                    InvalidArgument,
                    "max-uploads must be non-negative"
                ));
            }
            Some(n) => (n as u32).min(1000),
        };
        let mut lr = Self::list_request(
            &input.bucket,
            input.prefix.clone(),
            input.delimiter.clone(),
            input.key_marker.clone(),
            limit,
        );
        lr.upload_after = input.upload_id_marker.as_deref().and_then(parse_upload);
        let page = self.page(BucketQuery::Uploads(lr)).await?;
        let uploads: Vec<MultipartUpload> = page
            .uploads
            .iter()
            .map(|u| MultipartUpload {
                initiated: Some(ts(u.upload.initiated_ms)),
                initiator: Some(Initiator {
                    display_name: Some(u.upload.owner.clone()),
                    id: Some(u.upload.owner.clone()),
                }),
                key: Some(enc(&u.key, url)),
                owner: Some(owner(&bucket_owner)),
                storage_class: Some(StorageClass::from_static(StorageClass::STANDARD)),
                upload_id: Some(upload_string(u.id)),
                checksum_algorithm: u
                    .checksum
                    .as_ref()
                    .map(|c| ChecksumAlgorithm::from(c.algorithm.clone())),
                checksum_type: u.checksum.as_ref().map(upload_checksum_type),
            })
            .collect();
        let prefixes: Vec<CommonPrefix> = page
            .prefixes
            .iter()
            .map(|p| CommonPrefix {
                prefix: Some(enc(p, url)),
            })
            .collect();
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(input.bucket),
            common_prefixes: (!prefixes.is_empty()).then_some(prefixes),
            delimiter: input.delimiter,
            encoding_type: input.encoding_type,
            is_truncated: Some(page.truncated),
            key_marker: input.key_marker,
            max_uploads: Some(limit as i32),
            next_key_marker: page.next.map(|n| enc(&n, url)),
            next_upload_id_marker: page.next_upload.map(upload_string),
            prefix: input.prefix,
            request_charged: None,
            upload_id_marker: input.upload_id_marker,
            uploads: (!uploads.is_empty()).then_some(uploads),
        }))
    }
}

fn crate_now_ms() -> u64 {
    cairn_master::dataplane::wall_ms()
}
