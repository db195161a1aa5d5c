//! The image store under `/api/images`: VM and container images with their metadata, uploaded
//! or imported from a URL, kept as objects of the system bucket under the BLAKE3 of their
//! content (`cairn_master::images`).
//!
//! The content's header decides its format: qcow2 (magic `QFI\xfb`, virtual size from the
//! header), iso (`CD001` at 32,769) or raw (an MBR or GPT partition table, or an ext2/3/4
//! superblock); anything else is refused, and so is a content whose format is not the one
//! declared. Imports answer 202 at once and fetch in the background (http and https only,
//! size-capped, private and loopback addresses refused unless an admin allows them for that
//! import); the status goes from `PENDING` to `ACTIVE`, or to `FAILED` with the reason.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cairn_engine::state::TypedService;
use cairn_master::buckets::{
    BucketQuery, BucketQueryResponse, Content, ObjectData, ObjectMeta, SYSTEM_BUCKET, hex,
};
use cairn_master::dataplane::command;
use cairn_master::images::{
    Image, ImageCommand, ImageContent, ImageMeta, ImageQuery, ImageQueryResponse, ImageRefusal,
    ImageResponse, ImageService, ImageStatus, blob_key,
};
use cairn_master::policy::{ActionClass, Decision, Request as PolicyRequest, decide};
use cairn_proto::Consistency;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, ReadBuf};

use crate::Gateway;
use crate::auth::Principal;
use crate::kernel::from_s3;
use crate::kernel::{ApiError, ApiResult, Caller, authenticate, hex_id, json_body, rfc3339};
use crate::namespaces::serve;
use crate::storage::principal;

/// Bytes of a content's beginning kept to recognise its format (an ISO's descriptor is at
/// 32,769).
const HEAD_LEN: usize = 34 * 1024;
/// Redirects an import follows.
const REDIRECTS_MAX: usize = 5;

// ---------------------------------------------------------------------------------------------
// Formats (pure).

/// The format and virtual size of a content from its first bytes and its size.
pub fn sniff(head: &[u8], size: u64) -> Option<(&'static str, u64)> {
    if head.len() >= 32 && head[..4] == *b"QFI\xfb" {
        let version = u32::from_be_bytes(head[4..8].try_into().ok()?);
        let virtual_size = u64::from_be_bytes(head[24..32].try_into().ok()?);
        return matches!(version, 2 | 3).then_some(("qcow2", virtual_size));
    }
    if head.get(0x8001..0x8006) == Some(b"CD001".as_slice()) {
        return Some(("iso", size));
    }
    let mbr = head.get(510..512) == Some([0x55, 0xAA].as_slice());
    let gpt = head.get(512..520) == Some(b"EFI PART".as_slice());
    let ext = head.get(1080..1082) == Some([0x53, 0xEF].as_slice());
    (mbr || gpt || ext).then_some(("raw", size))
}

/// Whether an address is one an import may reach without an admin's leave: not loopback,
/// private, link-local, shared (CGNAT), unspecified, multicast, broadcast or documentation.
pub fn is_public_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_address(IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0x0db8))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The image service.

async fn image_command(g: &Gateway, c: &ImageCommand) -> ApiResult<ImageResponse> {
    let bytes = command::<ImageService>(c).map_err(|e| from_s3(crate::propose_error(&e)))?;
    let outcome = g
        .master
        .propose(bytes)
        .await
        .map_err(|e| from_s3(crate::propose_error(&e)))?;
    match outcome {
        Ok(b) => ImageService::response(&b).map_err(ApiError::internal),
        Err(r) => Err(match r.kind::<ImageRefusal>() {
            Some(ImageRefusal::NoSuchImage) => {
                ApiError::new(StatusCode::NOT_FOUND, "no such image")
            }
            Some(ImageRefusal::InvalidState) => ApiError::new(StatusCode::CONFLICT, r.message),
            Some(ImageRefusal::InvalidArgument | ImageRefusal::FormatMismatch) | None => {
                ApiError::bad(r.message)
            }
        }),
    }
}

async fn image_query(g: &Gateway, q: &ImageQuery) -> ApiResult<ImageQueryResponse> {
    let payload = ImageService::encode_query(q).map_err(ApiError::internal)?;
    let outcome = g
        .master
        .query(ImageService::ID, payload, Consistency::Linearizable)
        .await
        .map_err(|e| from_s3(crate::propose_error(&e)))?;
    let bytes = outcome.map_err(|r| ApiError::bad(r.message))?;
    ImageService::query_response(&bytes).map_err(ApiError::internal)
}

fn image_json(id: u128, i: &Image) -> Value {
    let (status, reason) = match &i.status {
        ImageStatus::Pending => ("PENDING", None),
        ImageStatus::Active => ("ACTIVE", None),
        ImageStatus::Failed(r) => ("FAILED", Some(r.clone())),
    };
    json!({
        "id": hex_id(id),
        "name": i.meta.name,
        "description": i.meta.description,
        "os": i.meta.os,
        "version": i.meta.version,
        "is_public": i.meta.is_public,
        "declared_format": i.meta.format,
        "format": i.content.as_ref().map(|c| c.format.clone()),
        "size_bytes": i.content.as_ref().map(|c| c.size),
        "virtual_size": i.content.as_ref().map(|c| c.virtual_size),
        "checksum": i.content.as_ref().map(|c| json!({"blake3": hex(&c.blake3)})),
        "status": status,
        "reason": reason,
        "source_url": i.source,
        "tenant_id": hex_id(i.tenant),
        "owner_id": hex_id(i.owner),
        "created_at": rfc3339(i.created_ms),
        "updated_at": rfc3339(i.updated_ms),
    })
}

/// Whether the principal may do `class` to images of its tenant (role and policies; actions
/// `images:Read` / `images:Write` on `images/ID`).
fn may(p: &Principal, class: ActionClass, resource: &str) -> ApiResult<()> {
    let action = if class == ActionClass::Read {
        "images:Read"
    } else {
        "images:Write"
    };
    let req = PolicyRequest {
        action,
        class,
        resource,
    };
    match decide(p.role, p.statements.iter(), &req) {
        Decision::Allow => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("your role or policies do not allow {action} here"),
        )),
    }
}

/// An image the caller may see: its tenant's, or a public one; anything else is "no such".
async fn visible(g: &Gateway, p: &Principal, id: &str) -> ApiResult<(u128, Image)> {
    let missing = || ApiError::new(StatusCode::NOT_FOUND, "no such image");
    let id = u128::from_str_radix(id, 16).map_err(|_| missing())?;
    let ImageQueryResponse::Image(found) = image_query(g, &ImageQuery::Get { id }).await? else {
        return Err(ApiError::internal("unexpected answer"));
    };
    let img = found.ok_or_else(missing)?;
    if img.tenant == p.tenant {
        may(p, ActionClass::Read, &format!("images/{}", hex_id(id)))?;
    } else if !img.meta.is_public {
        return Err(missing());
    }
    Ok((id, img))
}

/// An image of the caller's tenant that they may change.
async fn writable(g: &Gateway, caller: &Caller, id: &str) -> ApiResult<(Principal, u128, Image)> {
    let p = principal(g, caller, "PutObject").await?;
    let (id, img) = visible(g, &p, id).await?;
    if img.tenant != p.tenant {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "a public image of another tenant can be read, not changed",
        ));
    }
    may(&p, ActionClass::Write, &format!("images/{}", hex_id(id)))?;
    Ok((p, id, img))
}

// ---------------------------------------------------------------------------------------------
// Routes.

#[derive(Deserialize, utoipa::ToSchema)]
struct NewImage {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    is_public: bool,
    /// `qcow2`, `raw` or `iso`: the content must then be of this format.
    format: Option<String>,
}

impl NewImage {
    fn meta(self) -> ApiResult<ImageMeta> {
        let m = ImageMeta {
            name: self.name,
            description: self.description,
            os: self.os,
            version: self.version,
            is_public: self.is_public,
            format: self.format.map(|f| f.to_ascii_lowercase()),
        };
        cairn_master::images::check_meta(&m).map_err(|r| ApiError::bad(r.message))?;
        Ok(m)
    }
}

async fn register(
    g: &Gateway,
    p: &Principal,
    caller: &Caller,
    meta: ImageMeta,
    source: Option<String>,
) -> ApiResult<(u128, Image)> {
    may(p, ActionClass::Write, "images")?;
    let ImageResponse::Registered { id } = image_command(
        g,
        &ImageCommand::Register {
            tenant: p.tenant,
            owner: caller.user,
            meta,
            source,
        },
    )
    .await?
    else {
        return Err(ApiError::internal("unexpected answer"));
    };
    let ImageQueryResponse::Image(Some(img)) = image_query(g, &ImageQuery::Get { id }).await?
    else {
        return Err(ApiError::internal("the new image is missing"));
    };
    Ok((id, img))
}

/// `POST /api/images`: register an image (its content comes with `/upload` or `/import`).
#[utoipa::path(post, path = "/api/images", request_body = NewImage, responses((status = 201, description = "The image, PENDING")))]
async fn create(State(g): State<Arc<Gateway>>, req: Request) -> ApiResult<Response> {
    let caller = authenticate(&g, req.headers()).await?;
    let body: NewImage = json_body(req).await?;
    let p = principal(&g, &caller, "PutObject").await?;
    let (id, img) = register(&g, &p, &caller, body.meta()?, None).await?;
    Ok((StatusCode::CREATED, axum::Json(image_json(id, &img))).into_response())
}

/// `GET /api/images`: the images of the caller's tenant and the public ones.
#[utoipa::path(get, path = "/api/images", responses((status = 200, description = "Images, oldest first")))]
async fn list(State(g): State<Arc<Gateway>>, headers: HeaderMap) -> ApiResult<Response> {
    let caller = authenticate(&g, &headers).await?;
    let p = principal(&g, &caller, "GetObject").await?;
    let ImageQueryResponse::Images(all) =
        image_query(&g, &ImageQuery::List { tenant: p.tenant }).await?
    else {
        return Err(ApiError::internal("unexpected answer"));
    };
    let items: Vec<Value> = all
        .iter()
        .filter(|(id, i)| {
            i.tenant != p.tenant
                || may(&p, ActionClass::Read, &format!("images/{}", hex_id(*id))).is_ok()
        })
        .map(|(id, i)| image_json(*id, i))
        .collect();
    Ok(axum::Json(json!({"images": items})).into_response())
}

/// `GET /api/images/{id}`.
#[utoipa::path(get, path = "/api/images/{id}", params(("id" = String, Path, description = "The image")), responses((status = 200, description = "The image"), (status = 404, description = "No such image")))]
async fn show(
    State(g): State<Arc<Gateway>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let caller = authenticate(&g, &headers).await?;
    let p = principal(&g, &caller, "GetObject").await?;
    let (id, img) = visible(&g, &p, &id).await?;
    Ok(axum::Json(image_json(id, &img)).into_response())
}

/// `DELETE /api/images/{id}`: its content goes when no other image holds the same bytes.
#[utoipa::path(delete, path = "/api/images/{id}", params(("id" = String, Path, description = "The image")), responses((status = 200, description = "Deleted")))]
async fn remove(
    State(g): State<Arc<Gateway>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let caller = authenticate(&g, &headers).await?;
    let (p, id, _) = writable(&g, &caller, &id).await?;
    image_command(
        &g,
        &ImageCommand::Delete {
            id,
            tenant: p.tenant,
        },
    )
    .await?;
    Ok(axum::Json(json!({"status": "deleted"})).into_response())
}

/// `GET /api/images/{id}/download`: an active image's bytes (ranges and validators work).
#[utoipa::path(get, path = "/api/images/{id}/download", params(("id" = String, Path, description = "The image")), responses((status = 200, description = "The bytes"), (status = 409, description = "No content yet")))]
async fn download(
    State(g): State<Arc<Gateway>>,
    Path(id): Path<String>,
    req: Request,
) -> ApiResult<Response> {
    let caller = authenticate(&g, req.headers()).await?;
    let p = principal(&g, &caller, "GetObject").await?;
    let (_, img) = visible(&g, &p, &id).await?;
    let (Some(key), ImageStatus::Active) = (img.object_key(), &img.status) else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "the image has no content yet",
        ));
    };
    let version = match g
        .query(&BucketQuery::Object {
            bucket: SYSTEM_BUCKET.into(),
            key,
            version: None,
        })
        .await
        .map_err(from_s3)?
    {
        BucketQueryResponse::Object(v) => v.flatten(),
        _ => return Err(ApiError::internal("unexpected answer")),
    };
    let ext = img.content.as_ref().map_or("img", |c| c.format.as_str());
    let name = format!("{}.{ext}", img.meta.name.replace(['/', '\\'], "_"));
    serve(&g, req.method(), req.headers(), &name, version, true).await
}

/// Counts what passes, keeps the first [`HEAD_LEN`] bytes, takes the BLAKE3 digest that names
/// the content, and fails past `max`.
struct Capture<R> {
    inner: R,
    head: Vec<u8>,
    len: u64,
    max: u64,
    digest: blake3::Hasher,
}

impl<R: AsyncRead + Unpin> AsyncRead for Capture<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &r {
            let new = &buf.filled()[before..];
            self.digest.update(new);
            let room = HEAD_LEN.saturating_sub(self.head.len()).min(new.len());
            let keep = new[..room].to_vec();
            self.head.extend_from_slice(&keep);
            self.len += new.len() as u64;
            if self.len > self.max {
                return Poll::Ready(Err(std::io::Error::other(format!(
                    "the image is larger than the {} bytes allowed",
                    self.max
                ))));
            }
        }
        r
    }
}

/// Store a content stream, recognise it, and make it the image's content.
async fn store_content<S>(
    g: &Gateway,
    tenant: u128,
    id: u128,
    declared: Option<&str>,
    stream: S,
) -> ApiResult<ImageContent>
where
    S: futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Unpin + Send,
{
    let mut src = Capture {
        inner: tokio_util::io::StreamReader::new(stream),
        head: Vec::with_capacity(HEAD_LEN),
        len: 0,
        max: g.options.image_max,
        digest: blake3::Hasher::new(),
    };
    let written = match g.data.put(&mut src).await {
        Ok(w) => w,
        Err(cairn_client::DataError::Source(e)) => {
            return Err(if src.len > src.max {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, e.to_string())
            } else {
                ApiError::bad(format!("reading the image: {e}"))
            });
        }
        Err(e) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the data plane could not store the image: {e}"),
            ));
        }
    };
    let Some((format, virtual_size)) = sniff(&src.head, written.size) else {
        return Err(ApiError::bad(
            "this is not a disk image: neither qcow2, iso nor raw (an MBR or GPT partition table, or an ext file system)",
        ));
    };
    if let Some(d) = declared
        && d != format
    {
        return Err(ApiError::bad(format!(
            "the image was declared {d} but its content is {format}"
        )));
    }
    let blake3 = *src.digest.finalize().as_bytes();
    let content = ImageContent {
        blake3,
        size: written.size,
        format: format.into(),
        virtual_size,
    };
    let data = ObjectData {
        size: written.size,
        etag: blob_key(&blake3)[..32].to_owned(),
        parts: Vec::new(),
        content: Content::Chunks(written.extents),
        meta: ObjectMeta {
            content_type: Some("application/octet-stream".into()),
            ..ObjectMeta::default()
        },
        tags: Vec::new(),
    };
    image_command(
        g,
        &ImageCommand::SetContent {
            id,
            tenant,
            content: content.clone(),
            data,
        },
    )
    .await?;
    Ok(content)
}

/// `POST /api/images/{id}/upload`: the multipart form field `file` becomes the image's content.
#[utoipa::path(post, path = "/api/images/{id}/upload", params(("id" = String, Path, description = "The image")), responses((status = 200, description = "The image, ACTIVE"), (status = 400, description = "Not an image, or not the declared format")))]
async fn upload(
    State(g): State<Arc<Gateway>>,
    Path(id): Path<String>,
    req: Request,
) -> ApiResult<Response> {
    let caller = authenticate(&g, req.headers()).await?;
    let (p, id, img) = writable(&g, &caller, &id).await?;
    let mut form = axum::extract::Multipart::from_request(req, &())
        .await
        .map_err(|e| ApiError::bad(format!("expected a multipart/form-data body: {e}")))?;
    let mut field = crate::namespaces::file_field!(form);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    let pump = crate::namespaces::pump_field(&mut field, tx, |_| {});
    let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let store = store_content(&g, p.tenant, id, img.meta.format.as_deref(), stream);
    let ((), stored) = tokio::join!(pump, store);
    stored?;
    drop(form);
    let ImageQueryResponse::Image(Some(img)) = image_query(&g, &ImageQuery::Get { id }).await?
    else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no such image"));
    };
    Ok(axum::Json(image_json(id, &img)).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
struct ImportRequest {
    url: String,
    #[serde(flatten)]
    #[schema(inline)]
    image: NewImage,
    /// Admins only: let this import reach private and loopback addresses.
    #[serde(default)]
    allow_private: bool,
}

/// `POST /api/images/import`: register an image and fetch its content from `url` in the
/// background (202 at once; poll `GET /api/images/{id}` for `ACTIVE` or `FAILED`).
#[utoipa::path(post, path = "/api/images/import", request_body = ImportRequest, responses((status = 202, description = "The image, PENDING"), (status = 400, description = "Not an http(s) URL")))]
async fn import(State(g): State<Arc<Gateway>>, req: Request) -> ApiResult<Response> {
    let caller = authenticate(&g, req.headers()).await?;
    let body: ImportRequest = json_body(req).await?;
    let url: axum::http::Uri = body
        .url
        .parse()
        .map_err(|e| ApiError::bad(format!("invalid url: {e}")))?;
    match url.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(ApiError::bad("only http and https URLs can be imported")),
    }
    if url.host().is_none_or(str::is_empty) {
        return Err(ApiError::bad("the url names no host"));
    }
    if body.allow_private {
        caller.admin().map_err(|_| {
            ApiError::new(
                StatusCode::FORBIDDEN,
                "only admins may import from private addresses",
            )
        })?;
    }
    let p = principal(&g, &caller, "PutObject").await?;
    let meta = body.image.meta()?;
    let declared = meta.format.clone();
    let (id, img) = register(&g, &p, &caller, meta, Some(body.url.clone())).await?;
    let g2 = Arc::clone(&g);
    let tenant = p.tenant;
    let allow_private = body.allow_private;
    tokio::spawn(async move {
        let outcome = fetch(&g2, url, allow_private, tenant, id, declared.as_deref()).await;
        if let Err(e) = outcome {
            tracing::info!(image = %hex_id(id), error = %e.message, "image import failed");
            let fail = ImageCommand::Fail {
                id,
                reason: e.message,
            };
            if let Err(e) = image_command(&g2, &fail).await {
                tracing::warn!(image = %hex_id(id), error = %e.message, "could not mark an import failed");
            }
        }
    });
    Ok((StatusCode::ACCEPTED, axum::Json(image_json(id, &img))).into_response())
}

/// Resolve `host:port` and keep the addresses an import may reach.
async fn vetted(host: &str, port: u16, allow_private: bool) -> ApiResult<SocketAddr> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| ApiError::bad(format!("cannot resolve {host}: {e}")))?
        .collect();
    let ok: Vec<SocketAddr> = addrs
        .iter()
        .copied()
        .filter(|a| allow_private || is_public_address(a.ip()))
        .collect();
    match ok.first() {
        Some(a) => Ok(*a),
        None if addrs.is_empty() => Err(ApiError::bad(format!("{host} has no address"))),
        None => Err(ApiError::bad(format!(
            "{host} resolves to a private or loopback address, which imports may not reach"
        ))),
    }
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

fn tls_config() -> ApiResult<Arc<rustls::ClientConfig>> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(ApiError::internal)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Download `url` (following up to [`REDIRECTS_MAX`] redirects, each target vetted again) into
/// the image's content.
async fn fetch(
    g: &Gateway,
    mut url: axum::http::Uri,
    allow_private: bool,
    tenant: u128,
    id: u128,
    declared: Option<&str>,
) -> ApiResult<()> {
    use http_body_util::BodyExt;
    for _ in 0..=REDIRECTS_MAX {
        let https = match url.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(ApiError::bad("a redirect left http and https")),
        };
        let host = url
            .host()
            .ok_or_else(|| ApiError::bad("the url names no host"))?
            .to_owned();
        let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
        let addr = vetted(&host, port, allow_private).await?;
        let tcp = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        .map_err(|_| ApiError::bad(format!("connecting to {host}:{port} timed out")))?
        .map_err(|e| ApiError::bad(format!("cannot connect to {host}:{port}: {e}")))?;
        let io: Box<dyn Io> = if https {
            let name = rustls::pki_types::ServerName::try_from(
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned(),
            )
            .map_err(|e| ApiError::bad(format!("invalid host name: {e}")))?;
            let tls = tokio_rustls::TlsConnector::from(tls_config()?)
                .connect(name, tcp)
                .await
                .map_err(|e| ApiError::bad(format!("TLS with {host} failed: {e}")))?;
            Box::new(tls)
        } else {
            Box::new(tcp)
        };
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
                .await
                .map_err(|e| ApiError::bad(format!("HTTP with {host} failed: {e}")))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let path = url
            .path_and_query()
            .map_or("/", axum::http::uri::PathAndQuery::as_str)
            .to_owned();
        let host_header = match url.port_u16() {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        };
        let request = axum::http::Request::get(path)
            .header(axum::http::header::HOST, host_header)
            .header(axum::http::header::USER_AGENT, "cairn-image-import")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(ApiError::internal)?;
        let resp = sender
            .send_request(request)
            .await
            .map_err(|e| ApiError::bad(format!("the request to {host} failed: {e}")))?;
        let status = resp.status();
        if status.is_redirection() {
            let next = resp
                .headers()
                .get(axum::http::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .ok_or_else(|| ApiError::bad(format!("{status} without a Location")))?;
            url = resolve(&url, next)?;
            continue;
        }
        if !status.is_success() {
            return Err(ApiError::bad(format!("the server answered {status}")));
        }
        if let Some(len) = resp
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|l| l.to_str().ok())
            .and_then(|l| l.parse::<u64>().ok())
            && len > g.options.image_max
        {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the image is {len} bytes, more than the {} allowed",
                    g.options.image_max
                ),
            ));
        }
        let stream = resp.into_body().into_data_stream().map_err_io();
        store_content(g, tenant, id, declared, Box::pin(stream)).await?;
        return Ok(());
    }
    Err(ApiError::bad(format!(
        "more than {REDIRECTS_MAX} redirects"
    )))
}

/// A redirect's target against the URL that answered it.
fn resolve(base: &axum::http::Uri, location: &str) -> ApiResult<axum::http::Uri> {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location
            .parse()
            .map_err(|e| ApiError::bad(format!("invalid redirect: {e}")));
    }
    if !location.starts_with('/') {
        return Err(ApiError::bad("relative redirects are not followed"));
    }
    let authority = base
        .authority()
        .ok_or_else(|| ApiError::bad("the url names no host"))?;
    format!(
        "{}://{authority}{location}",
        base.scheme_str().unwrap_or("http")
    )
    .parse()
    .map_err(|e| ApiError::bad(format!("invalid redirect: {e}")))
}

/// Body stream errors as I/O errors.
trait MapErrIo: Sized {
    fn map_err_io(
        self,
    ) -> futures::stream::BoxStream<'static, Result<bytes::Bytes, std::io::Error>>;
}

impl<S> MapErrIo for S
where
    S: futures::Stream<Item = Result<bytes::Bytes, hyper::Error>> + Send + 'static,
{
    fn map_err_io(
        self,
    ) -> futures::stream::BoxStream<'static, Result<bytes::Bytes, std::io::Error>> {
        use futures::StreamExt;
        self.map(|r| r.map_err(std::io::Error::other)).boxed()
    }
}

/// The routes, to merge into the `/api` router.
pub fn routes() -> Router<Arc<Gateway>> {
    Router::new()
        .route("/images", get(list).post(create))
        .route("/images/import", post(import))
        .route("/images/{id}", get(show).delete(remove))
        .route(
            "/images/{id}/upload",
            post(upload).layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/images/{id}/download", get(download))
}

/// The OpenAPI paths of these routes.
#[derive(utoipa::OpenApi)]
#[openapi(paths(create, list, show, remove, download, upload, import))]
pub(crate) struct ImagesDoc;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_from_headers() {
        let mut q = vec![0u8; 512];
        q[..4].copy_from_slice(b"QFI\xfb");
        q[4..8].copy_from_slice(&3u32.to_be_bytes());
        q[24..32].copy_from_slice(&(10u64 << 30).to_be_bytes());
        assert_eq!(sniff(&q, 196_616), Some(("qcow2", 10 << 30)));
        q[4..8].copy_from_slice(&9u32.to_be_bytes());
        assert_eq!(sniff(&q, 196_616), None);

        let mut iso = vec![0u8; HEAD_LEN];
        iso[0x8001..0x8006].copy_from_slice(b"CD001");
        iso[510] = 0x55;
        iso[511] = 0xAA;
        assert_eq!(sniff(&iso, 1 << 20), Some(("iso", 1 << 20)));

        let mut mbr = vec![0u8; 1024];
        mbr[510] = 0x55;
        mbr[511] = 0xAA;
        assert_eq!(sniff(&mbr, 4096), Some(("raw", 4096)));
        let mut gpt = vec![0u8; 1024];
        gpt[512..520].copy_from_slice(b"EFI PART");
        assert_eq!(sniff(&gpt, 4096), Some(("raw", 4096)));

        assert_eq!(sniff(b"hello, I am a text file", 23), None);
        assert_eq!(sniff(&[], 0), None);
        assert!(cairn_master::images::FORMATS.contains(&"qcow2"));
    }

    #[test]
    fn import_addresses() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::",
        ] {
            assert!(!is_public_address(private.parse().unwrap()), "{private}");
        }
        for public in ["1.1.1.1", "8.8.8.8", "2606:4700::1111", "::ffff:1.1.1.1"] {
            assert!(is_public_address(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn redirects_resolve() {
        let base: axum::http::Uri = "http://example.com:8080/a/b?c".parse().unwrap();
        assert_eq!(
            resolve(&base, "/x.img").unwrap().to_string(),
            "http://example.com:8080/x.img"
        );
        assert_eq!(
            resolve(&base, "https://other.org/y").unwrap().to_string(),
            "https://other.org/y"
        );
        assert!(resolve(&base, "y.img").is_err());
    }
}
