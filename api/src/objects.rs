//! The object storage path every surface shares: a request body streamed into storage (inline
//! in the metadata when small, through the data plane otherwise) with its digests and
//! checksums verified on the way; an object's bytes read back as a stream; and a write
//! committed to the bucket service with its audit entry. S3, the REST storage API, namespaces
//! and the image store all store and read objects through here.
use std::sync::Arc;

use bytes::Bytes;
use cairn_master::buckets::{
    BucketCommand, BucketQuery, BucketQueryResponse, BucketRecord, BucketResponse, Content,
    Encrypted, ObjectData,
};
use s3s::dto::*;
use s3s::{S3Error, S3ErrorCode, S3Result, TrailingHeaders, s3_error};

use cairn_engine::state::Rejection;

use crate::Gateway;
use crate::body::{BodyError, Hashing, chain_prefix, object_stream, read_prefix};
use crate::sse::{Sealer, SseRequest};

/// An S3 error code s3s does not list, with its status.
pub(crate) fn custom_error(
    code: &'static str,
    status: http::StatusCode,
    message: &'static str,
) -> S3Error {
    let mut e = S3Error::with_message(S3ErrorCode::Custom(code.into()), message);
    e.set_status_code(status);
    e
}

fn header_str<'a>(h: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .ok()
}

/// What a stored body turned into.
pub(crate) struct Stored {
    /// Plaintext bytes.
    pub(crate) size: u64,
    pub(crate) md5: String,
    pub(crate) checksum: Option<(String, String)>,
    /// Where the bytes are: sealed when the body was stored encrypted.
    pub(crate) content: Content,
    /// The ETag (the MD5, except for SSE-KMS and SSE-C objects).
    pub(crate) etag: String,
}

/// Who made a request, for the audit log: the access key and the client address; and the
/// tenant its key acts in (writes check it atomically).
pub(crate) struct Who {
    pub(crate) actor: String,
    pub(crate) ip: String,
    pub(crate) tenant: Option<u128>,
}

/// An object write that records itself in the audit log (actor, action, `bucket/key`,
/// address), in the same log entry and transaction as the write.
pub(crate) async fn write(g: &Gateway, who: &Who, c: BucketCommand) -> S3Result<BucketResponse> {
    write_or_refusal(g, who, c)
        .await?
        .map_err(|r| crate::rejection_error(&r))
}

/// [`write`], with a refusal returned as the bucket service's rejection (its stable code).
pub(crate) async fn write_or_refusal(
    g: &Gateway,
    who: &Who,
    c: BucketCommand,
) -> S3Result<Result<BucketResponse, Rejection>> {
    let tenant = who
        .tenant
        .ok_or_else(|| s3_error!(AccessDenied, "sign the request"))?;
    g.command_or_refusal(&BucketCommand::Audited {
        actor: who.actor.clone(),
        ip: who.ip.clone(),
        tenant,
        command: Box::new(c),
    })
    .await
}

pub(crate) async fn bucket_record(g: &Gateway, name: &str) -> S3Result<BucketRecord> {
    match g
        .query(&BucketQuery::Bucket {
            name: name.to_owned(),
        })
        .await?
    {
        BucketQueryResponse::Bucket(Some(b)) => Ok(b),
        BucketQueryResponse::Bucket(None) => Err(s3_error!(
            NoSuchBucket,
            "The specified bucket does not exist"
        )),
        _ => Err(S3Error::with_message(
            S3ErrorCode::InternalError,
            "unexpected answer",
        )),
    }
}

/// Stream a request body into storage as a new object of `bucket/key` (whose bucket belongs
/// to `tenant`), hashing it on the way and, when `sse` asks, encrypting it under a new data
/// key.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn store_object(
    g: &Gateway,
    body: Option<StreamingBlob>,
    headers: &http::HeaderMap,
    trailers: Option<TrailingHeaders>,
    (bucket, key): (&str, &str),
    tenant: u128,
    sse: Option<&SseRequest>,
) -> S3Result<Stored> {
    let Some(req) = sse else {
        return store_body(g, body, headers, trailers, bucket, BodyKind::Object, None).await;
    };
    let (kept, data) = crate::sse::new_data_key(g, tenant, bucket, key, req).await?;
    let salt = crate::sse::new_salt()?;
    let sealer = Sealer::new(&data, &salt);
    let mut s = store_body(
        g,
        body,
        headers,
        trailers,
        bucket,
        BodyKind::Object,
        Some(sealer),
    )
    .await?;
    s.etag = crate::sse::etag(&kept, &s.md5, &salt);
    g.metrics.sse(crate::sse::kind(&kept), "sealed");
    s.content = Content::Encrypted(Box::new(Encrypted {
        sse: kept,
        salts: vec![salt],
        body: s.content,
    }));
    Ok(s)
}

/// What a stored body becomes.
#[derive(Clone, Copy)]
pub(crate) enum BodyKind<'a> {
    /// An object: inline in its metadata when small.
    Object,
    /// A part of an upload: always in chunks, and checksummed with the upload's algorithm
    /// (when it has one) whether or not the client sent that checksum.
    Part { checksum: Option<&'a str> },
}

/// Stream a request body into storage, hashing it on the way (and sealing it with `seal`,
/// whose caller wraps the sealed content).
pub(crate) async fn store_body(
    g: &Gateway,
    body: Option<StreamingBlob>,
    headers: &http::HeaderMap,
    trailers: Option<TrailingHeaders>,
    bucket: &str,
    kind: BodyKind<'_>,
    seal: Option<Sealer>,
) -> S3Result<Stored> {
    let (allow_inline, also) = match kind {
        BodyKind::Object => (true, None),
        BodyKind::Part { checksum } => (false, checksum),
    };
    let inline_max = if allow_inline {
        g.options.inline_max
    } else {
        0
    };
    let plan = crate::checksums::plan(headers, also);
    let mut hashing = Hashing::new(body, plan, g.options.put_max);
    let body_error = |e: &std::io::Error| match BodyError::of_io(e) {
        Some(BodyError::TooLarge) => s3_error!(
            EntityTooLarge,
            "Your proposed upload exceeds the maximum allowed object size."
        ),
        Some(BodyError::Sha256Mismatch(_)) => custom_error(
            "XAmzContentSHA256Mismatch",
            http::StatusCode::BAD_REQUEST,
            "The provided 'x-amz-content-sha256' header does not match what was computed.",
        ),
        Some(BodyError::Signature(text)) => S3Error::with_message(
            S3ErrorCode::SignatureDoesNotMatch,
            format!("a chunk of the request body is not signed right: {text}"),
        ),
        Some(BodyError::Read(_)) | None => S3Error::with_message(
            S3ErrorCode::IncompleteBody,
            format!("reading the request body: {e}"),
        ),
    };
    let content = {
        let mut reader = tokio_util::io::StreamReader::new(&mut hashing);
        let prefix = match read_prefix(&mut reader, inline_max).await {
            Ok(p) => p,
            Err(e) => {
                drop(reader);
                return Err(body_error(&e));
            }
        };
        if allow_inline && prefix.len() <= inline_max {
            drop(reader);
            match &seal {
                Some(s) => Content::Inline(crate::sse::seal_all(s, &prefix)),
                None => Content::Inline(prefix),
            }
        } else {
            // Large body: the bucket must exist before any chunk is written (a small one
            // needs no lookup: the commit itself refuses a missing bucket).
            let replication = match bucket_record(g, bucket).await {
                Ok(b) => b.replication,
                Err(e) => {
                    drop(reader);
                    return Err(e);
                }
            };
            let src = chain_prefix(prefix, reader);
            let mut dc = g.data.clone();
            dc.replication = replication;
            let written = match seal {
                Some(s) => {
                    let mut sealed = crate::sse::sealing(src, s);
                    dc.put(&mut sealed).await
                }
                None => {
                    let mut src = src;
                    dc.put(&mut src).await
                }
            };
            match written {
                Ok(w) => Content::Chunks(w.extents),
                Err(cairn_client::DataError::Source(e)) => {
                    return Err(body_error(&e));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "storing a body failed");
                    return Err(S3Error::with_message(
                        S3ErrorCode::ServiceUnavailable,
                        format!("the data plane could not store the body: {e}"),
                    ));
                }
            }
        }
    };
    let size = hashing.len;
    let (md5, sums) = hashing.finish();
    if let Some(sent) = header_str(headers, "content-md5") {
        let raw = decode_base64(sent)
            .filter(|r| r.len() == 16)
            .ok_or_else(|| {
                s3_error!(InvalidDigest, "The Content-MD5 you specified was invalid.")
            })?;
        if cairn_master::buckets::hex(&raw) != md5 {
            return Err(s3_error!(
                BadDigest,
                "The Content-MD5 you specified did not match what we received."
            ));
        }
    }
    let trailer_map = trailers.and_then(|t| t.take());
    let checksum = crate::checksums::verify(&sums, headers, trailer_map.as_ref(), also)?;
    Ok(Stored {
        size,
        etag: md5.clone(),
        md5,
        checksum,
        content,
    })
}

/// `len` bytes at `offset` of an object's plaintext, opened with its data key when it is
/// encrypted (`customer`: the SSE-C key the request gave).
pub(crate) async fn read_body(
    g: &Gateway,
    d: &ObjectData,
    customer: Option<&[u8; 32]>,
    offset: u64,
    len: u64,
) -> S3Result<StreamingBlob> {
    crate::sse::check_read(g, d, customer)?;
    match &d.content {
        Content::Encrypted(e) => {
            let key = crate::sse::open_data_key(g, &e.sse, customer).await?;
            g.metrics.sse(crate::sse::kind(&e.sse), "opened");
            Ok(crate::sse::open_stream(g, d, e, &key, offset, len))
        }
        _ => Ok(body_of(g, d, offset, len)),
    }
}

/// `len` bytes at `offset` of an unencrypted object (see [`read_body`]).
fn body_of(g: &Gateway, d: &ObjectData, offset: u64, len: u64) -> StreamingBlob {
    match &d.content {
        Content::Inline(b) => {
            let lo = usize::try_from(offset).unwrap_or(usize::MAX).min(b.len());
            let hi = usize::try_from(offset + len)
                .unwrap_or(usize::MAX)
                .min(b.len());
            let bytes = Bytes::copy_from_slice(&b[lo..hi]);
            StreamingBlob::wrap(futures::stream::once(async move {
                Ok::<_, std::io::Error>(bytes)
            }))
        }
        Content::Chunks(e) => object_stream(&g.data, Arc::new(e.clone()), offset, len),
        Content::Encrypted(_) => StreamingBlob::wrap(futures::stream::once(async {
            Err::<Bytes, _>(std::io::Error::other("the object is encrypted"))
        })),
    }
}

/// What encryption a write to `bucket` gets without asking: the bucket's default; and the
/// bucket's tenant.
pub(crate) async fn default_sse(g: &Gateway, bucket: &str) -> S3Result<(u128, Option<SseRequest>)> {
    let b = bucket_record(g, bucket).await?;
    let tenant = cairn_master::tenancy::bucket_tenant(&b.owner);
    Ok((
        tenant,
        crate::sse::write_request(&http::HeaderMap::new(), b.encryption.as_ref())?,
    ))
}

/// Store part `number` of an upload: sealed with the upload's data key (opened with the SSE-C
/// key the request gave, for SSE-C uploads) when the upload was begun encrypted, and
/// checksummed with the upload's algorithm. A part must not name another algorithm than the
/// upload's; one that names none is refused for a composite upload unless
/// `compute_missing` (copies and REST uploads, whose clients cannot send one). Returns what
/// was stored and the command that commits the part; the upload must exist.
pub(crate) async fn store_part(
    g: &Gateway,
    body: Option<StreamingBlob>,
    headers: &http::HeaderMap,
    trailers: Option<TrailingHeaders>,
    (bucket, key, upload, number): (&str, &str, u128, u32),
    customer: Option<&[u8; 32]>,
    compute_missing: bool,
) -> S3Result<(Stored, BucketCommand, Option<cairn_master::buckets::Sse>)> {
    let state = upload_state(g, bucket, key, upload).await?;
    let algorithm = state.checksum.as_ref().map(|c| c.algorithm.as_str());
    if let Some(u) = &state.checksum {
        let named = crate::checksums::requested(headers);
        let other = named.iter().find(|a| **a != u.algorithm);
        if other.is_some() || (named.is_empty() && !u.full_object && !compute_missing) {
            return Err(S3Error::with_message(
                S3ErrorCode::InvalidRequest,
                format!(
                    "Checksum Type mismatch occurred, expected checksum Type: {}, actual checksum Type: {}",
                    u.algorithm.to_ascii_lowercase(),
                    other.map_or("null".to_owned(), |a| a.to_ascii_lowercase())
                ),
            ));
        }
    }
    let kind = BodyKind::Part {
        checksum: algorithm,
    };
    let (stored, salt) = match &state.sse {
        None => {
            if customer.is_some() {
                return Err(s3_error!(
                    InvalidRequest,
                    "The encryption parameters are not applicable to this upload: it was not begun with a customer key."
                ));
            }
            (
                store_body(g, body, headers, trailers, bucket, kind, None).await?,
                None,
            )
        }
        Some(s) => {
            let data = crate::sse::open_data_key(g, s, customer).await?;
            let salt = crate::sse::new_salt()?;
            let mut st = store_body(
                g,
                body,
                headers,
                trailers,
                bucket,
                kind,
                Some(Sealer::new(&data, &salt)),
            )
            .await?;
            st.etag = crate::sse::etag(s, &st.md5, &salt);
            g.metrics.sse(crate::sse::kind(s), "sealed");
            (st, Some(salt))
        }
    };
    let extents = match &stored.content {
        Content::Chunks(e) => e.clone(),
        _ => Vec::new(),
    };
    let (bucket, key) = (bucket.to_owned(), key.to_owned());
    let c = match salt {
        None => BucketCommand::PutPart {
            bucket,
            key,
            upload,
            number,
            etag: stored.etag.clone(),
            size: stored.size,
            extents,
        },
        Some(salt) => BucketCommand::PutSealedPart {
            bucket,
            key,
            upload,
            number,
            etag: stored.etag.clone(),
            size: stored.size,
            extents,
            salt,
        },
    };
    let c = checked_part(c, stored.checksum.clone());
    Ok((stored, c, state.sse))
}

/// A part write that records the part's checksum, when it has one.
pub(crate) fn checked_part(c: BucketCommand, checksum: Option<(String, String)>) -> BucketCommand {
    match checksum {
        None => c,
        Some((algorithm, value)) => BucketCommand::CheckedPart {
            checksum: cairn_master::buckets::PartChecksum { algorithm, value },
            command: Box::new(c),
        },
    }
}

/// What a gateway needs to store a part of an upload; `NoSuchUpload` without it.
pub(crate) async fn upload_state(
    g: &Gateway,
    bucket: &str,
    key: &str,
    upload: u128,
) -> S3Result<cairn_master::buckets::UploadState> {
    match g
        .query(&BucketQuery::UploadState {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            upload,
        })
        .await?
    {
        BucketQueryResponse::UploadState(Some(s)) => Ok(s),
        _ => Err(s3_error!(
            NoSuchUpload,
            "The specified upload does not exist."
        )),
    }
}
