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
use s3s::checksum::ChecksumHasher;
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

const CHECKSUMS: [(&str, &str); 5] = [
    ("CRC32", "x-amz-checksum-crc32"),
    ("CRC32C", "x-amz-checksum-crc32c"),
    ("CRC64NVME", "x-amz-checksum-crc64nvme"),
    ("SHA1", "x-amz-checksum-sha1"),
    ("SHA256", "x-amz-checksum-sha256"),
];

fn header_str<'a>(h: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// The checksums a write asks for: a value header, the SDK's algorithm header, or a trailer.
fn checksum_plan(h: &http::HeaderMap) -> ChecksumHasher {
    let mut c = ChecksumHasher::default();
    let algo = header_str(h, "x-amz-sdk-checksum-algorithm").map(str::to_ascii_uppercase);
    let trailer = header_str(h, "x-amz-trailer").map(str::to_ascii_lowercase);
    for (alg, name) in CHECKSUMS {
        let on = h.contains_key(name)
            || algo.as_deref() == Some(alg)
            || trailer
                .as_deref()
                .is_some_and(|t| t.split(',').any(|x| x.trim() == name));
        if on {
            match alg {
                "CRC32" => c.crc32 = Some(Default::default()),
                "CRC32C" => c.crc32c = Some(Default::default()),
                "CRC64NVME" => c.crc64nvme = Some(Default::default()),
                "SHA1" => c.sha1 = Some(Default::default()),
                _ => c.sha256 = Some(Default::default()),
            }
        }
    }
    c
}

fn computed<'a>(c: &'a s3s::dto::Checksum, alg: &str) -> Option<&'a String> {
    match alg {
        "CRC32" => c.checksum_crc32.as_ref(),
        "CRC32C" => c.checksum_crc32c.as_ref(),
        "CRC64NVME" => c.checksum_crc64nvme.as_ref(),
        "SHA1" => c.checksum_sha1.as_ref(),
        _ => c.checksum_sha256.as_ref(),
    }
}

/// Check every checksum the client sent (header or trailer) against the bytes received;
/// returns the one to keep with the object.
fn verify_checksums(
    sums: &s3s::dto::Checksum,
    h: &http::HeaderMap,
    trailers: Option<&http::HeaderMap>,
) -> S3Result<Option<(String, String)>> {
    let mut keep = None;
    for (alg, name) in CHECKSUMS {
        let sent = trailers
            .and_then(|t| header_str(t, name))
            .or_else(|| header_str(h, name));
        let got = computed(sums, alg);
        if let Some(sent) = sent
            && got.map(String::as_str) != Some(sent.trim())
        {
            return Err(S3Error::with_message(
                S3ErrorCode::BadDigest,
                format!("The {alg} you specified did not match the calculated checksum."),
            ));
        }
        if keep.is_none()
            && let Some(g) = got
        {
            keep = Some((alg.to_owned(), g.clone()));
        }
    }
    Ok(keep)
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
        return store_body(g, body, headers, trailers, bucket, true, None).await;
    };
    let (kept, data) = crate::sse::new_data_key(g, tenant, bucket, key, req).await?;
    let salt = crate::sse::new_salt()?;
    let sealer = Sealer::new(&data, &salt);
    let mut s = store_body(g, body, headers, trailers, bucket, true, Some(sealer)).await?;
    s.etag = crate::sse::etag(&kept, &s.md5, &salt);
    g.metrics.sse(crate::sse::kind(&kept), "sealed");
    s.content = Content::Encrypted(Box::new(Encrypted {
        sse: kept,
        salts: vec![salt],
        body: s.content,
    }));
    Ok(s)
}

/// Stream a request body into storage, hashing it on the way (and sealing it with `seal`,
/// whose caller wraps the sealed content).
pub(crate) async fn store_body(
    g: &Gateway,
    body: Option<StreamingBlob>,
    headers: &http::HeaderMap,
    trailers: Option<TrailingHeaders>,
    bucket: &str,
    allow_inline: bool,
    seal: Option<Sealer>,
) -> S3Result<Stored> {
    let inline_max = if allow_inline {
        g.options.inline_max
    } else {
        0
    };
    let mut hashing = Hashing::new(body, checksum_plan(headers), g.options.put_max);
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
    let checksum = verify_checksums(&sums, headers, trailer_map.as_ref())?;
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
/// key the request gave, for SSE-C uploads) when the upload was begun encrypted. Returns what
/// was stored and the command that commits the part; the upload must exist.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn store_part(
    g: &Gateway,
    body: Option<StreamingBlob>,
    headers: &http::HeaderMap,
    trailers: Option<TrailingHeaders>,
    (bucket, key, upload, number): (&str, &str, u128, u32),
    customer: Option<&[u8; 32]>,
) -> S3Result<(Stored, BucketCommand, Option<cairn_master::buckets::Sse>)> {
    let sse = upload_sse(g, bucket, key, upload).await?;
    let (stored, salt) = match &sse {
        None => {
            if customer.is_some() {
                return Err(s3_error!(
                    InvalidRequest,
                    "The encryption parameters are not applicable to this upload: it was not begun with a customer key."
                ));
            }
            (
                store_body(g, body, headers, trailers, bucket, false, None).await?,
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
                false,
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
    Ok((stored, c, sse))
}

/// How an upload's data key is kept (`None`: not encrypted); `NoSuchUpload` without it.
pub(crate) async fn upload_sse(
    g: &Gateway,
    bucket: &str,
    key: &str,
    upload: u128,
) -> S3Result<Option<cairn_master::buckets::Sse>> {
    match g
        .query(&BucketQuery::UploadSse {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            upload,
        })
        .await?
    {
        BucketQueryResponse::UploadSse(Some((_, sse))) => Ok(sse),
        _ => Err(s3_error!(
            NoSuchUpload,
            "The specified upload does not exist."
        )),
    }
}
