//! The image service (service 8): VM and container images, their metadata and status, with
//! their bytes stored as objects of the system bucket ([`SYSTEM_BUCKET`]) under the BLAKE3 of
//! their content, so the same image uploaded twice is stored once.
//!
//! Content changes write through the bucket service in the same transaction: the first image
//! with a given content puts its object, the last one to let go of it deletes it, and the
//! reference count between the two can never disagree with what is stored. A second upload of
//! content already stored leaves its freshly written chunks unreferenced; chunk garbage
//! collection removes them after its grace period.
//!
//! Tables:
//! - `img.images`: id (16 BE) → [`Image`].
//! - `img.blobs`: BLAKE3 (32) → reference count (u64 BE).

use cairn_engine::state::{
    ApplyContext, ApplyError, Rejection, ServiceId, StateError, Table, TypedService, TypedTable,
    reject,
};
use redb::{ReadTransaction, ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::buckets::{
    BucketCommand, BucketRefusal, BucketService, Conditions, ObjectData, SYSTEM_BUCKET,
    SYSTEM_OWNER, hex,
};

cairn_engine::refusals! {
    /// Why the image service refuses a command.
    pub enum ImageRefusal {
        /// The content is not in the format the image claims.
        FormatMismatch = "format_mismatch",
        /// Metadata outside the limits.
        InvalidArgument = "invalid_argument",
        /// The image is not in a state that allows this.
        InvalidState = "invalid_state",
        /// No image has that id.
        NoSuchImage = "no_such_image",
    }
}

const IMAGES: TypedTable<u128, Image> = TypedTable::new("img.images");
const BLOBS: Table = Table::new("img.blobs");

/// Most images one listing returns.
pub const LIST_MAX: usize = 10_000;
/// Longest name; descriptions and other text fields take up to [`TEXT_MAX`].
pub const NAME_MAX: usize = 128;
pub const TEXT_MAX: usize = 1024;
/// The formats the store recognises.
pub const FORMATS: &[&str] = &["qcow2", "raw", "iso"];

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ImageMeta {
    pub name: String,
    pub description: String,
    pub os: String,
    pub version: String,
    /// Every signed-in user may see and download it.
    pub is_public: bool,
    /// The format the owner declared (checked against the content's header), if any.
    pub format: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImageStatus {
    /// Registered, waiting for its content (an upload, or an import under way).
    Pending,
    Active,
    Failed(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageContent {
    pub blake3: [u8; 32],
    pub size: u64,
    /// `qcow2`, `raw` or `iso`, as read from the header.
    pub format: String,
    /// The size of the disk it describes: a qcow2's header field, else its size.
    pub virtual_size: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    pub tenant: u128,
    pub owner: u128,
    pub meta: ImageMeta,
    pub status: ImageStatus,
    /// Where an import fetches it from.
    pub source: Option<String>,
    pub content: Option<ImageContent>,
    pub created_ms: u64,
    pub updated_ms: u64,
}

impl Image {
    /// The key of its content in the system bucket.
    pub fn object_key(&self) -> Option<String> {
        self.content.as_ref().map(|c| blob_key(&c.blake3))
    }
}

/// The system bucket key of content with this BLAKE3.
pub fn blob_key(blake3: &[u8; 32]) -> String {
    hex(blake3)
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)] // one command at a time, decoded and applied at once
pub enum ImageCommand {
    Register {
        tenant: u128,
        owner: u128,
        meta: ImageMeta,
        source: Option<String>,
    },
    /// Give the image of `tenant` its content. `data` is the system bucket object for it,
    /// written only if no image holds this content yet.
    SetContent {
        id: u128,
        tenant: u128,
        content: ImageContent,
        data: ObjectData,
    },
    /// A pending image's import failed.
    Fail {
        id: u128,
        reason: String,
    },
    Delete {
        id: u128,
        tenant: u128,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImageResponse {
    Registered { id: u128 },
    Done,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImageQuery {
    Get {
        id: u128,
    },
    /// The images of `tenant` and the public ones, oldest first.
    List {
        tenant: u128,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)] // one answer at a time
pub enum ImageQueryResponse {
    Image(Option<Image>),
    Images(Vec<(u128, Image)>),
}

#[derive(Clone, Copy, Debug, Default)]
pub struct ImageService;

cairn_engine::records! { Image = "image record" }

/// Field rules for registered metadata.
pub fn check_meta(m: &ImageMeta) -> Result<(), Rejection> {
    let bad = |what: &str| Rejection::new(ImageRefusal::InvalidArgument, what.to_owned());
    if m.name.trim().is_empty() || m.name.chars().count() > NAME_MAX {
        return Err(bad("name must be 1-128 characters"));
    }
    for (field, v) in [
        ("description", &m.description),
        ("os", &m.os),
        ("version", &m.version),
    ] {
        if v.chars().count() > TEXT_MAX {
            return Err(bad(&format!(
                "{field} is longer than {TEXT_MAX} characters"
            )));
        }
    }
    if [&m.name, &m.description, &m.os, &m.version]
        .iter()
        .any(|v| v.chars().any(char::is_control))
    {
        return Err(bad("text fields may not hold control characters"));
    }
    if let Some(f) = &m.format
        && !FORMATS.contains(&f.as_str())
    {
        return Err(bad("format must be qcow2, raw or iso"));
    }
    Ok(())
}

fn image(txn: &WriteTransaction, id: u128) -> Result<Image, ApplyError> {
    match IMAGES.open(txn)?.get(&id)? {
        Some(i) => Ok(i),
        None => Err(reject(ImageRefusal::NoSuchImage, "no such image")),
    }
}

fn put_image(txn: &WriteTransaction, id: u128, i: &Image) -> Result<(), ApplyError> {
    IMAGES.open(txn)?.insert(&id, i)?;
    Ok(())
}

fn refs(txn: &WriteTransaction, blake3: &[u8; 32]) -> Result<u64, ApplyError> {
    let t = txn.open_table(BLOBS)?;
    let v = t.get(blake3.as_slice())?;
    Ok(match v {
        Some(v) => {
            let b: [u8; 8] = v
                .value()
                .try_into()
                .map_err(|_| StateError::Corrupt("blob count is not 8 bytes".into()))?;
            u64::from_be_bytes(b)
        }
        None => 0,
    })
}

fn set_refs(txn: &WriteTransaction, blake3: &[u8; 32], n: u64) -> Result<(), ApplyError> {
    let mut t = txn.open_table(BLOBS)?;
    if n == 0 {
        t.remove(blake3.as_slice())?;
    } else {
        t.insert(blake3.as_slice(), n.to_be_bytes().as_slice())?;
    }
    Ok(())
}

/// Let go of content: the last holder deletes its object.
fn release(txn: &WriteTransaction, ctx: &ApplyContext, c: &ImageContent) -> Result<(), ApplyError> {
    let n = refs(txn, &c.blake3)?;
    if n <= 1 {
        BucketService.apply(
            txn,
            ctx,
            BucketCommand::DeleteObject {
                bucket: SYSTEM_BUCKET.into(),
                key: blob_key(&c.blake3),
                version: None,
            },
        )?;
    }
    set_refs(txn, &c.blake3, n.saturating_sub(1))
}

impl TypedService for ImageService {
    const ID: ServiceId = ServiceId(8);
    const NAME: &'static str = "images";
    const VERSION: u16 = 1;
    type Command = ImageCommand;
    type Response = ImageResponse;
    type Query = ImageQuery;
    type QueryResponse = ImageQueryResponse;

    fn init(&self, txn: &WriteTransaction) -> Result<(), StateError> {
        IMAGES.init(txn)?;
        txn.open_table(BLOBS)?;
        Ok(())
    }

    fn apply(
        &self,
        txn: &WriteTransaction,
        ctx: &ApplyContext,
        command: ImageCommand,
    ) -> Result<ImageResponse, ApplyError> {
        let now = ctx.time_ms;
        match command {
            ImageCommand::Register {
                tenant,
                owner,
                meta,
                source,
            } => {
                check_meta(&meta)?;
                let id = ctx.fresh_id();
                put_image(
                    txn,
                    id,
                    &Image {
                        tenant,
                        owner,
                        meta,
                        status: ImageStatus::Pending,
                        source,
                        content: None,
                        created_ms: now,
                        updated_ms: now,
                    },
                )?;
                Ok(ImageResponse::Registered { id })
            }
            ImageCommand::SetContent {
                id,
                tenant,
                content,
                data,
            } => {
                let mut img = image(txn, id)?;
                if img.tenant != tenant {
                    return Err(reject(ImageRefusal::NoSuchImage, "no such image"));
                }
                if !FORMATS.contains(&content.format.as_str()) || data.size != content.size {
                    return Err(reject(
                        ImageRefusal::InvalidArgument,
                        "the content does not add up",
                    ));
                }
                if let Some(declared) = &img.meta.format
                    && *declared != content.format
                {
                    return Err(reject(
                        ImageRefusal::FormatMismatch,
                        format!(
                            "the image was declared {declared} but its content is {}",
                            content.format
                        ),
                    ));
                }
                let n = refs(txn, &content.blake3)?;
                if n == 0 {
                    match BucketService.apply(
                        txn,
                        ctx,
                        BucketCommand::CreateBucket {
                            name: SYSTEM_BUCKET.into(),
                            owner: SYSTEM_OWNER.into(),
                            public_read: false,
                        },
                    ) {
                        Ok(_) => {}
                        Err(ApplyError::Rejected(r))
                            if r.kind() == Some(BucketRefusal::BucketOwnedByYou) => {}
                        Err(e) => return Err(e),
                    }
                    BucketService.apply(
                        txn,
                        ctx,
                        BucketCommand::PutObject {
                            bucket: SYSTEM_BUCKET.into(),
                            key: blob_key(&content.blake3),
                            data,
                            conditions: Conditions::default(),
                        },
                    )?;
                }
                set_refs(txn, &content.blake3, n + 1)?;
                if let Some(old) = img.content.take() {
                    release(txn, ctx, &old)?;
                }
                img.content = Some(content);
                img.status = ImageStatus::Active;
                img.updated_ms = now;
                put_image(txn, id, &img)?;
                Ok(ImageResponse::Done)
            }
            ImageCommand::Fail { id, reason } => {
                let mut img = image(txn, id)?;
                if img.status != ImageStatus::Pending {
                    return Err(reject(
                        ImageRefusal::InvalidState,
                        "the image is not pending",
                    ));
                }
                img.status = ImageStatus::Failed(reason.chars().take(TEXT_MAX).collect());
                img.updated_ms = now;
                put_image(txn, id, &img)?;
                Ok(ImageResponse::Done)
            }
            ImageCommand::Delete { id, tenant } => {
                let img = image(txn, id)?;
                if img.tenant != tenant {
                    return Err(reject(ImageRefusal::NoSuchImage, "no such image"));
                }
                if let Some(c) = &img.content {
                    release(txn, ctx, c)?;
                }
                IMAGES.open(txn)?.remove(&id)?;
                Ok(ImageResponse::Done)
            }
        }
    }

    fn query(
        &self,
        txn: &ReadTransaction,
        query: ImageQuery,
    ) -> Result<ImageQueryResponse, ApplyError> {
        let t = IMAGES.read(txn)?;
        Ok(match query {
            ImageQuery::Get { id } => ImageQueryResponse::Image(t.get(&id)?),
            ImageQuery::List { tenant } => {
                let mut out = Vec::new();
                for item in t.iter()? {
                    let (id, img) = item?;
                    if img.tenant != tenant && !img.meta.is_public {
                        continue;
                    }
                    out.push((id, img));
                    if out.len() >= LIST_MAX {
                        break;
                    }
                }
                out.sort_by_key(|(_, i)| i.created_ms);
                ImageQueryResponse::Images(out)
            }
        })
    }
}
