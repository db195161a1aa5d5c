//! Listings: objects, versions and incomplete uploads under a prefix, a page at a time, rolled
//! up into common prefixes at a delimiter. The pagination (the limit, the scan budget, common
//! prefixes, where the next page starts) is [`walk`], written once; each listing says only how
//! it reads one record.

use cairn_engine::state::{ApplyError, Record, StateError, TypedTable};
use redb::ReadTransaction;
use serde::{Deserialize, Serialize};

use super::checksums::{self, UploadChecksum};
use super::keys::{after_prefix, object_key, split_upload_key};
use super::multipart::{UPLOADS, Upload};
use super::settings;
use super::versions::{OBJECTS, Version, VersionRef};

/// Most entries one list query returns.
pub const LIST_MAX: usize = 1000;
/// Most records one list query examines (delete markers and skipped keys included) before it
/// returns a truncated page, so one query never walks a whole bucket.
const SCAN_MAX: usize = 20_000;

/// A listing request: keys under `prefix`, after a marker, rolled up at `delimiter`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ListRequest {
    pub bucket: String,
    pub prefix: String,
    pub delimiter: Option<String>,
    /// Start after this key (exclusive); for versions with `version_after`, after that version
    /// of this key; for uploads with `upload_after`, after that upload of this key.
    pub after: Option<String>,
    pub version_after: Option<VersionRef>,
    pub upload_after: Option<u128>,
    pub limit: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListedObject {
    pub key: String,
    pub version: Version,
    /// This is the key's newest version.
    pub latest: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListedUpload {
    pub key: String,
    pub id: u128,
    pub upload: Upload,
    /// How its checksums are made, when it was begun with an algorithm.
    pub checksum: Option<UploadChecksum>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ListPage {
    pub objects: Vec<ListedObject>,
    pub uploads: Vec<ListedUpload>,
    pub prefixes: Vec<String>,
    pub truncated: bool,
    /// Where the next page starts: the last key (or common prefix) this page covered, and for
    /// versions/uploads the last version/upload of it.
    pub next: Option<String>,
    pub next_version: Option<VersionRef>,
    pub next_upload: Option<u128>,
}

/// What a listing does after one record.
enum Flow {
    /// Go on to the next record.
    Next,
    /// Skip ahead to this table key (past a common prefix).
    SkipTo(Vec<u8>),
    /// The page is done.
    Stop,
}

/// A page being filled.
struct Pager<'a> {
    req: &'a ListRequest,
    delimiter: Option<&'a str>,
    limit: usize,
    page: ListPage,
    count: usize,
}

impl Pager<'_> {
    /// Whether one more entry fits; when none does, the page is truncated.
    fn room(&mut self) -> bool {
        if self.count >= self.limit {
            self.page.truncated = true;
            return false;
        }
        true
    }

    /// Count one entry (`room` said yes) that ends at `key`.
    fn took(&mut self, key: &str, version: Option<VersionRef>, upload: Option<u128>) {
        self.page.next = Some(key.to_owned());
        self.page.next_version = version;
        self.page.next_upload = upload;
        self.count += 1;
    }

    /// Whether `key` is past the request's marker (`at_marker` decides the marker key itself).
    fn past_marker(&self, key: &str, at_marker: impl FnOnce() -> bool) -> bool {
        match self.req.after.as_deref() {
            None => true,
            Some(a) => key > a || (key == a && at_marker()),
        }
    }

    /// Roll `key` up into its common prefix under the delimiter: `None` when it has none (list
    /// it as itself); else what to do, the prefix listed now or on an earlier page.
    fn roll_up(&mut self, key: &str) -> Option<Flow> {
        let d = self.delimiter?;
        let at = self.req.prefix.len() + key.get(self.req.prefix.len()..)?.find(d)?;
        let prefix = &key[..at + d.len()];
        let past = after_prefix(&object_key(&self.req.bucket, prefix));
        if self.req.after.as_deref().is_some_and(|a| prefix <= a) {
            // The marker is inside or at this prefix: already returned.
            return Some(Flow::SkipTo(past));
        }
        if !self.room() {
            return Some(Flow::Stop);
        }
        self.page.prefixes.push(prefix.to_owned());
        self.took(prefix, None, None);
        Some(Flow::SkipTo(past))
    }

    fn finish(mut self) -> ListPage {
        if !self.page.truncated {
            self.page.next = None;
            self.page.next_version = None;
            self.page.next_upload = None;
        }
        self.page
    }
}

/// The one pagination walk: `table`'s records under the request's bucket and prefix, from its
/// marker on, in key order, each handed to `each` (which decides to list it, roll it up or end
/// the page), at most [`SCAN_MAX`] examined once the page holds something.
fn walk<V: Record>(
    txn: &ReadTransaction,
    table: TypedTable<Vec<u8>, V>,
    req: &ListRequest,
    mut each: impl FnMut(&mut Pager, &[u8], V) -> Result<Flow, ApplyError>,
) -> Result<ListPage, ApplyError> {
    settings::require(txn, &req.bucket)?;
    let mut pager = Pager {
        req,
        delimiter: req.delimiter.as_deref().filter(|d| !d.is_empty()),
        limit: (req.limit as usize).min(LIST_MAX),
        page: ListPage::default(),
        count: 0,
    };
    if pager.limit == 0 {
        return Ok(pager.page);
    }
    let t = table.read(txn)?;
    let prefix = object_key(&req.bucket, &req.prefix);
    let mut cursor = match &req.after {
        Some(a) if object_key(&req.bucket, a) > prefix => object_key(&req.bucket, a),
        _ => prefix.clone(),
    };
    let mut examined = 0usize;
    'pages: loop {
        let mut skip_to = None;
        for item in t.range_from(&cursor)? {
            let (k, v) = item?;
            if !k.starts_with(&prefix) {
                break 'pages;
            }
            examined += 1;
            if examined > SCAN_MAX && pager.count > 0 {
                pager.page.truncated = true;
                break 'pages;
            }
            match each(&mut pager, &k, v)? {
                Flow::Next => {}
                Flow::SkipTo(c) => {
                    skip_to = Some(c);
                    break;
                }
                Flow::Stop => break 'pages,
            }
        }
        match skip_to {
            Some(c) => cursor = c,
            None => break,
        }
    }
    Ok(pager.finish())
}

fn key_text<'k>(k: &'k [u8], base: usize, what: &str) -> Result<&'k str, StateError> {
    k.get(base..)
        .and_then(|b| std::str::from_utf8(b).ok())
        .ok_or_else(|| StateError::Corrupt(format!("{what} key is not UTF-8")))
}

/// The latest version of each key that is not a delete marker (`versions` false), or every
/// version of each key, newest first (`versions` true).
pub(super) fn objects(
    txn: &ReadTransaction,
    req: &ListRequest,
    versions: bool,
) -> Result<ListPage, ApplyError> {
    let base = object_key(&req.bucket, "").len();
    walk(txn, OBJECTS, req, |pager, k, history| {
        let key = key_text(k, base, "object")?;
        // Versions resume inside the marker key, after its marker version.
        let resume_after = req.version_after.filter(|_| versions);
        if !pager.past_marker(key, || resume_after.is_some()) {
            return Ok(Flow::Next);
        }
        let resume_after = resume_after.filter(|_| req.after.as_deref() == Some(key));
        if let Some(flow) = pager.roll_up(key) {
            return Ok(flow);
        }
        if versions {
            let mut started = resume_after.is_none();
            for (i, v) in history.0.into_iter().enumerate() {
                if !started {
                    started = resume_after.is_some_and(|r| r.matches(v.id));
                    continue;
                }
                if !pager.room() {
                    return Ok(Flow::Stop);
                }
                let at = v.reference();
                pager.page.objects.push(ListedObject {
                    key: key.to_owned(),
                    version: v,
                    latest: i == 0,
                });
                pager.took(key, Some(at), None);
            }
        } else {
            let Some(latest) = history.0.into_iter().next() else {
                return Ok(Flow::Next);
            };
            if latest.is_marker() {
                return Ok(Flow::Next);
            }
            if !pager.room() {
                return Ok(Flow::Stop);
            }
            pager.page.objects.push(ListedObject {
                key: key.to_owned(),
                version: latest,
                latest: true,
            });
            pager.took(key, None, None);
        }
        Ok(Flow::Next)
    })
}

/// Incomplete uploads, by key and then upload id.
pub(super) fn uploads(txn: &ReadTransaction, req: &ListRequest) -> Result<ListPage, ApplyError> {
    let base = object_key(&req.bucket, "").len();
    walk(txn, UPLOADS, req, |pager, k, upload| {
        let Some((object, id)) = split_upload_key(k).filter(|(o, _)| o.len() >= base) else {
            return Ok(Flow::Stop);
        };
        let key = key_text(object, base, "upload")?;
        if !pager.past_marker(key, || req.upload_after.is_some_and(|u| id > u)) {
            return Ok(Flow::Next);
        }
        if let Some(flow) = pager.roll_up(key) {
            return Ok(flow);
        }
        if !pager.room() {
            return Ok(Flow::Stop);
        }
        pager.page.uploads.push(ListedUpload {
            key: key.to_owned(),
            id,
            upload,
            checksum: checksums::of_upload_in(txn, k)?,
        });
        pager.took(key, None, Some(id));
        Ok(Flow::Next)
    })
}
