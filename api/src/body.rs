//! Bodies: request bytes hashed (MD5 for the ETag, the S3 checksums the client asked for) on
//! their way into the data plane, and object bytes streamed out of it with bounded memory.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use cairn_client::DataClient;
use cairn_proto::dataplane::Extent;
use futures::Stream;
use s3s::checksum::ChecksumHasher;
use s3s::crypto::{Checksum, Md5};
use s3s::dto::StreamingBlob;
use tokio::io::AsyncRead;

/// Why a request body could not be read: classified once, where the body stream fails, and
/// carried inside the `std::io::Error` the readers downstream pass on.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// More bytes came than the limit allows.
    #[error("body too large")]
    TooLarge,
    /// The body is not the one its `x-amz-content-sha256` names.
    #[error("{0}")]
    Sha256Mismatch(String),
    /// A chunk of an aws-chunked body is not signed right.
    #[error("{0}")]
    Signature(String),
    /// The client went away or sent something unreadable.
    #[error("{0}")]
    Read(String),
}

impl BodyError {
    /// s3s reports a body that fails its digest or chunk-signature checks through error types
    /// it does not export (`UploadStreamError::Sha256Mismatch`,
    /// `AwsChunkedStreamError::SignatureMismatch`): their text is all it exposes, so this is
    /// the one place that reads it.
    fn of_s3s(e: &(dyn std::error::Error + Send + Sync)) -> BodyError {
        let text = e.to_string();
        if text.contains("Sha256Mismatch") {
            BodyError::Sha256Mismatch(text)
        } else if text.contains("SignatureMismatch") || text.contains("signature") {
            BodyError::Signature(text)
        } else {
            BodyError::Read(text)
        }
    }

    /// The body error inside an I/O error that a reader of the body passed on, if it is one.
    pub fn of_io(e: &std::io::Error) -> Option<&BodyError> {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<BodyError>())
    }
}

/// Hashes and counts what flows through; fails the stream once more than `limit` bytes came.
pub struct Hashing {
    inner: Option<StreamingBlob>,
    pub md5: Md5,
    pub checksums: ChecksumHasher,
    pub len: u64,
    pub limit: u64,
}

impl std::fmt::Debug for Hashing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hashing").field("len", &self.len).finish()
    }
}

impl Hashing {
    pub fn new(body: Option<StreamingBlob>, checksums: ChecksumHasher, limit: u64) -> Hashing {
        Hashing {
            inner: body,
            md5: Md5::new(),
            checksums,
            len: 0,
            limit,
        }
    }

    /// The hex MD5 and the checksums of everything that passed.
    pub fn finish(self) -> (String, s3s::dto::Checksum) {
        (
            cairn_master::buckets::hex(&self.md5.finalize()),
            self.checksums.finalize(),
        )
    }
}

impl Stream for Hashing {
    type Item = std::io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_next(cx) {
            Poll::Ready(Some(Ok(b))) => {
                this.len += b.len() as u64;
                if this.len > this.limit {
                    this.inner = None;
                    return Poll::Ready(Some(Err(std::io::Error::other(BodyError::TooLarge))));
                }
                this.md5.update(&b);
                this.checksums.update(&b);
                Poll::Ready(Some(Ok(b)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.inner = None;
                Poll::Ready(Some(Err(std::io::Error::other(BodyError::of_s3s(&*e)))))
            }
            Poll::Ready(None) => {
                this.inner = None;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Read up to `max + 1` bytes from `src` into one buffer: the whole body if it is small.
pub async fn read_prefix(
    src: &mut (impl AsyncRead + Unpin),
    max: usize,
) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::with_capacity(max.min(64 * 1024) + 1);
    (&mut *src)
        .take(max as u64 + 1)
        .read_to_end(&mut buf)
        .await?;
    Ok(buf)
}

/// A reader over `prefix` then the rest of `rest`.
pub fn chain_prefix<R: AsyncRead + Unpin>(prefix: Vec<u8>, rest: R) -> impl AsyncRead + Unpin {
    use tokio::io::AsyncReadExt;
    std::io::Cursor::new(prefix).chain(rest)
}

/// Buffers queued per object stream between the data plane and the HTTP connection (each up
/// to a chunk piece).
const QUEUED: usize = 8;

/// Stream `len` bytes at `offset` of an object's extents. A reader task fetches from the data
/// plane (at most its few parallel spans in memory) and hands the replicas' buffers on without
/// copying; a failure mid-stream ends the body with an error instead of a silently short object.
pub fn object_stream(
    data: &DataClient,
    extents: Arc<Vec<Extent>>,
    offset: u64,
    len: u64,
) -> StreamingBlob {
    let (mut tx, rx) = tokio::sync::mpsc::channel::<Bytes>(QUEUED);
    let data = data.clone();
    let failed = Arc::new(parking_lot::Mutex::new(None::<String>));
    let failed_w = failed.clone();
    tokio::spawn(async move {
        if let Err(e) = data.read_into(&extents, offset, len, &mut tx).await {
            tracing::warn!(error = %e, "object read failed mid-stream");
            *failed_w.lock() = Some(e.to_string());
        }
    });
    StreamingBlob::wrap(ExactStream {
        rx,
        remaining: len,
        failed,
    })
}

struct ExactStream {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    remaining: u64,
    failed: Arc<parking_lot::Mutex<Option<String>>>,
}

impl Stream for ExactStream {
    type Item = std::io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        match this.rx.poll_recv(cx) {
            Poll::Ready(Some(b)) => {
                this.remaining = this.remaining.saturating_sub(b.len() as u64);
                Poll::Ready(Some(Ok(b)))
            }
            Poll::Ready(None) => {
                let why = this
                    .failed
                    .lock()
                    .clone()
                    .unwrap_or_else(|| "reader stopped".into());
                this.remaining = 0;
                Poll::Ready(Some(Err(std::io::Error::other(format!(
                    "object stream ended early: {why}"
                )))))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
