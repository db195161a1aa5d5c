#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::lifecycle::DAY_MS;
use super::*;
use crate::chunks::ChunkService;
use crate::chunks::{ChunkCommand, ChunkRecord, ChunkResponse, ChunkState};
use cairn_proto::ChunkHandle;
use redb::ReadableDatabase;

struct Db {
    db: redb::Database,
    _dir: tempfile::TempDir,
    clock: u64,
}

impl Db {
    fn new() -> Db {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("s.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        ChunkService.init(&txn).unwrap();
        BucketService.init(&txn).unwrap();
        txn.commit().unwrap();
        Db {
            db,
            _dir: dir,
            clock: 1_000_000,
        }
    }

    fn run(&mut self, c: BucketCommand) -> Result<BucketResponse, ApplyError> {
        self.clock += 1;
        let ctx = ApplyContext::new(self.clock, self.clock, rand_seed(self.clock));
        let txn = self.db.begin_write().unwrap();
        let r = BucketService.apply(&txn, &ctx, c);
        txn.commit().unwrap();
        r
    }

    fn ok(&mut self, c: BucketCommand) -> BucketResponse {
        self.run(c).unwrap()
    }

    fn code(&mut self, c: BucketCommand) -> String {
        match self.run(c) {
            Err(ApplyError::Rejected(r)) => r.code,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    fn q(&self, q: BucketQuery) -> BucketQueryResponse {
        let txn = self.db.begin_read().unwrap();
        BucketService.query(&txn, q).unwrap()
    }

    fn chunk(&self, h: ChunkHandle) -> ChunkRecord {
        let txn = self.db.begin_read().unwrap();
        ChunkService::get(&txn, h).unwrap().unwrap()
    }

    fn alloc(&mut self) -> ChunkHandle {
        let ctx = ApplyContext::new(1, self.clock, [0; 16]);
        let txn = self.db.begin_write().unwrap();
        let r = ChunkService
            .apply(
                &txn,
                &ctx,
                ChunkCommand::Allocate {
                    count: 1,
                    replication: 1,
                },
            )
            .unwrap();
        txn.commit().unwrap();
        match r {
            ChunkResponse::Allocated { handles, .. } => handles[0],
            other => panic!("{other:?}"),
        }
    }
}

fn rand_seed(n: u64) -> [u8; 16] {
    let mut s = [0u8; 16];
    s[..8].copy_from_slice(&n.to_le_bytes());
    s
}

fn inline(bytes: &[u8]) -> ObjectData {
    ObjectData {
        size: bytes.len() as u64,
        etag: "e".into(),
        parts: Vec::new(),
        content: Content::Inline(bytes.to_vec()),
        meta: ObjectMeta::default(),
        tags: Vec::new(),
    }
}

fn put(db: &mut Db, bucket: &str, key: &str) -> BucketResponse {
    db.ok(BucketCommand::PutObject {
        bucket: bucket.into(),
        key: key.into(),
        data: inline(key.as_bytes()),
        conditions: Conditions::default(),
    })
}

fn create(db: &mut Db, name: &str) {
    db.ok(BucketCommand::CreateBucket {
        name: name.into(),
        owner: "me".into(),
        public_read: false,
    });
}

fn list(db: &Db, req: ListRequest, versions: bool) -> ListPage {
    let q = if versions {
        BucketQuery::Versions(req)
    } else {
        BucketQuery::List(req)
    };
    match db.q(q) {
        BucketQueryResponse::Page(p) => p,
        other => panic!("{other:?}"),
    }
}

/// Every entry (keys and common prefixes) of a listing, page by page.
fn walk(db: &Db, prefix: &str, delimiter: Option<&str>, limit: u32) -> Vec<String> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = list(
            db,
            ListRequest {
                bucket: "bkt".into(),
                prefix: prefix.into(),
                delimiter: delimiter.map(str::to_owned),
                after: after.clone(),
                limit,
                ..ListRequest::default()
            },
            false,
        );
        assert!(page.objects.len() + page.prefixes.len() <= limit as usize);
        let mut items: Vec<String> = page.objects.iter().map(|o| o.key.clone()).collect();
        items.extend(page.prefixes.iter().cloned());
        items.sort();
        out.extend(items);
        if !page.truncated {
            return out;
        }
        after = page.next.clone();
        assert!(after.is_some());
    }
}

#[test]
fn listing_pages_prefixes_and_delimiters_agree_with_a_model() {
    let mut db = Db::new();
    create(&mut db, "bkt");
    create(&mut db, "bkt2");
    let keys = [
        "a", "a/1", "a/2", "a/b/1", "a/b/2", "ab", "b/x", "b/y/z", "c", "dir/", "dir/x", "zz",
        "ü/1", "ü2",
    ];
    for k in keys {
        put(&mut db, "bkt", k);
    }
    put(&mut db, "bkt2", "a/1"); // another bucket never leaks in
    for limit in [1, 2, 3, 5, 1000] {
        assert_eq!(walk(&db, "", None, limit), keys.to_vec(), "limit {limit}");
        for (prefix, delim) in [("", "/"), ("a/", "/"), ("a", "/"), ("", "b"), ("a/b/", "/")] {
            // The model: keys under the prefix, rolled up at the first delimiter after it.
            let mut model: Vec<String> = keys
                .iter()
                .filter(|k| k.starts_with(prefix))
                .map(|k| match k[prefix.len()..].find(delim) {
                    Some(i) => k[..prefix.len() + i + delim.len()].to_owned(),
                    None => (*k).to_owned(),
                })
                .collect();
            model.dedup();
            let mut got = walk(&db, prefix, Some(delim), limit);
            got.sort();
            model.sort();
            assert_eq!(
                got, model,
                "prefix {prefix:?} delimiter {delim:?} limit {limit}"
            );
        }
    }
    // Deleting in an unversioned bucket removes the key entirely.
    db.ok(BucketCommand::DeleteObject {
        bucket: "bkt".into(),
        key: "a".into(),
        version: None,
    });
    assert!(!walk(&db, "", None, 1000).contains(&"a".to_owned()));
    assert_eq!(
        db.code(BucketCommand::DeleteBucket {
            name: "bkt2".into()
        }),
        "bucket_not_empty"
    );
    assert_eq!(
        db.code(BucketCommand::PutObject {
            bucket: "nope".into(),
            key: "k".into(),
            data: inline(b"x"),
            conditions: Conditions::default()
        }),
        "no_such_bucket"
    );
}

#[test]
fn versions_markers_and_version_paging() {
    let mut db = Db::new();
    create(&mut db, "bkt");
    db.ok(BucketCommand::Configure {
        name: "bkt".into(),
        change: BucketChange::Versioning(Versioning::Enabled),
    });
    let mut ids = Vec::new();
    for _ in 0..3 {
        match put(&mut db, "bkt", "k") {
            BucketResponse::Put {
                version: Some(v), ..
            } => ids.push(v),
            other => panic!("{other:?}"),
        }
    }
    put(&mut db, "bkt", "j");
    let d = db.ok(BucketCommand::DeleteObject {
        bucket: "bkt".into(),
        key: "k".into(),
        version: None,
    });
    assert!(matches!(d, BucketResponse::Deleted { marker: true, .. }));
    // Hidden from the plain listing, all there in the versions listing, newest first.
    assert_eq!(walk(&db, "", None, 10), vec!["j".to_owned()]);
    let mut seen = Vec::new();
    let (mut after, mut vafter) = (None, None);
    loop {
        let p = list(
            &db,
            ListRequest {
                bucket: "bkt".into(),
                after: after.clone(),
                version_after: vafter,
                limit: 2,
                ..ListRequest::default()
            },
            true,
        );
        seen.extend(
            p.objects
                .iter()
                .map(|o| (o.key.clone(), o.version.id, o.latest)),
        );
        if !p.truncated {
            break;
        }
        after = p.next.clone();
        vafter = p.next_version;
    }
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert_eq!(seen[0].0, "j");
    assert!(seen[1].2, "the marker is the latest of k");
    assert_eq!(seen[2].1, Some(ids[2]));
    assert_eq!(seen[4].1, Some(ids[0]));
}

#[test]
fn chunk_references_follow_parts_objects_and_copies() {
    let mut db = Db::new();
    create(&mut db, "bkt");
    let h1 = db.alloc();
    let h2 = db.alloc();
    let up = match db.ok(BucketCommand::CreateUpload {
        bucket: "bkt".into(),
        key: "k".into(),
        owner: "me".into(),
        meta: ObjectMeta::default(),
        tags: Vec::new(),
    }) {
        BucketResponse::Upload { id } => id,
        other => panic!("{other:?}"),
    };
    let part = |n: u32, h: ChunkHandle, len: u64| BucketCommand::PutPart {
        bucket: "bkt".into(),
        key: "k".into(),
        upload: up,
        number: n,
        etag: format!("{:032x}", n),
        size: len,
        extents: vec![Extent {
            handle: h,
            offset: 0,
            len,
        }],
    };
    db.ok(part(1, h1, PART_SIZE_MIN));
    db.ok(part(2, h2, 10));
    assert_eq!(db.chunk(h1).state, ChunkState::Live { refs: 1 });
    // Completing with part 1 only: part 2's chunk is released, part 1's moves to the object.
    db.ok(BucketCommand::CompleteUpload {
        bucket: "bkt".into(),
        key: "k".into(),
        upload: up,
        parts: vec![(1, format!("\"{:032x}\"", 1))],
        conditions: Conditions::default(),
    });
    assert_eq!(db.chunk(h1).state, ChunkState::Live { refs: 1 });
    assert!(matches!(db.chunk(h2).state, ChunkState::Released { .. }));
    // A copy shares the chunk; deleting one copy keeps it live.
    let obj = match db.q(BucketQuery::Object {
        bucket: "bkt".into(),
        key: "k".into(),
        version: None,
    }) {
        BucketQueryResponse::Object(Some(Some(v))) => v.data().unwrap().clone(),
        other => panic!("{other:?}"),
    };
    assert!(obj.etag.ends_with("-1"));
    db.ok(BucketCommand::PutObject {
        bucket: "bkt".into(),
        key: "copy".into(),
        data: obj,
        conditions: Conditions::default(),
    });
    assert_eq!(db.chunk(h1).state, ChunkState::Live { refs: 2 });
    db.ok(BucketCommand::DeleteObject {
        bucket: "bkt".into(),
        key: "k".into(),
        version: None,
    });
    assert_eq!(db.chunk(h1).state, ChunkState::Live { refs: 1 });
    db.ok(BucketCommand::DeleteObject {
        bucket: "bkt".into(),
        key: "copy".into(),
        version: None,
    });
    assert!(matches!(db.chunk(h1).state, ChunkState::Released { .. }));
    // The upload is gone.
    assert_eq!(
        db.code(BucketCommand::AbortUpload {
            bucket: "bkt".into(),
            key: "k".into(),
            upload: up
        }),
        "no_such_upload"
    );
}

#[test]
fn lifecycle_expires_noncurrent_versions_markers_and_stale_uploads() {
    let mut db = Db::new();
    create(&mut db, "bkt");
    db.ok(BucketCommand::Configure {
        name: "bkt".into(),
        change: BucketChange::Versioning(Versioning::Enabled),
    });
    put(&mut db, "bkt", "logs/1");
    put(&mut db, "bkt", "logs/1");
    put(&mut db, "bkt", "keep/1");
    put(&mut db, "bkt", "keep/1");
    db.ok(BucketCommand::DeleteObject {
        bucket: "bkt".into(),
        key: "logs/2".into(),
        version: None,
    });
    let h = db.alloc();
    let up = match db.ok(BucketCommand::CreateUpload {
        bucket: "bkt".into(),
        key: "logs/big".into(),
        owner: "me".into(),
        meta: ObjectMeta::default(),
        tags: Vec::new(),
    }) {
        BucketResponse::Upload { id } => id,
        other => panic!("{other:?}"),
    };
    db.ok(BucketCommand::PutPart {
        bucket: "bkt".into(),
        key: "logs/big".into(),
        upload: up,
        number: 1,
        etag: "00".repeat(16),
        size: 5,
        extents: vec![Extent {
            handle: h,
            offset: 0,
            len: 5,
        }],
    });
    db.ok(BucketCommand::Configure {
        name: "bkt".into(),
        change: BucketChange::Lifecycle(Some(vec![LifecycleRuleV1 {
            id: Some("r".into()),
            enabled: true,
            prefix: "logs/".into(),
            noncurrent_days: Some(1),
            expired_object_delete_marker: true,
            abort_incomplete_days: Some(2),
            ..LifecycleRuleV1::default()
        }])),
    });
    // At once: only the lone delete marker (nothing beneath it) is due.
    assert_eq!(
        db.ok(BucketCommand::Expire {
            bucket: "bkt".into()
        }),
        BucketResponse::Expired {
            removed: 1,
            more: false
        }
    );
    assert_eq!(
        db.ok(BucketCommand::Expire {
            bucket: "bkt".into()
        }),
        BucketResponse::Expired {
            removed: 0,
            more: false
        }
    );
    // Three days later: the noncurrent logs version and the stale upload go; keep/ is
    // untouched.
    db.clock += 3 * DAY_MS;
    match db.ok(BucketCommand::Expire {
        bucket: "bkt".into(),
    }) {
        BucketResponse::Expired {
            removed,
            more: false,
        } => assert_eq!(removed, 2),
        other => panic!("{other:?}"),
    }
    let page = list(
        &db,
        ListRequest {
            bucket: "bkt".into(),
            limit: 100,
            ..ListRequest::default()
        },
        true,
    );
    let keys: Vec<&str> = page.objects.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(keys, vec!["keep/1", "keep/1", "logs/1"]);
    assert!(matches!(db.chunk(h).state, ChunkState::Released { .. }));
}

fn version_of(r: BucketResponse) -> Option<u128> {
    match r {
        BucketResponse::Put { version, .. } => version,
        other => panic!("{other:?}"),
    }
}

fn delete_version(bucket: &str, key: &str, v: Option<u128>, bypass: bool) -> BucketCommand {
    let version = Some(v.map_or(VersionRef::Null, VersionRef::Id));
    if bypass {
        BucketCommand::DeleteObjectChecked {
            bucket: bucket.into(),
            key: key.into(),
            version,
            bypass_governance: true,
            if_match: None,
        }
    } else {
        BucketCommand::DeleteObject {
            bucket: bucket.into(),
            key: key.into(),
            version,
        }
    }
}

#[test]
fn object_lock_keeps_versions_from_deletes_and_lifecycle() {
    let mut db = Db::new();
    db.ok(BucketCommand::CreateLockedBucket {
        name: "vault".into(),
        owner: "me".into(),
        public_read: false,
    });
    create(&mut db, "plain");
    // Versioning is on and stays on.
    assert_eq!(
        db.code(BucketCommand::Configure {
            name: "vault".into(),
            change: BucketChange::Versioning(Versioning::Suspended),
        }),
        "invalid_bucket_state"
    );
    let lock = |mode, until_ms| ObjectLock {
        retention: Some(Retention { mode, until_ms }),
        legal_hold: false,
    };
    let locked_put = |bucket: &str, key: &str, l: ObjectLock| BucketCommand::Locked {
        lock: l,
        command: Box::new(BucketCommand::PutObject {
            bucket: bucket.into(),
            key: key.into(),
            data: inline(b"x"),
            conditions: Conditions::default(),
        }),
    };
    let day = db.clock + DAY_MS;
    // A lock needs an object-lock bucket and a date to come.
    assert_eq!(
        db.code(locked_put("plain", "k", lock(LockMode::Governance, day))),
        "invalid_request"
    );
    assert_eq!(
        db.code(locked_put("vault", "k", lock(LockMode::Governance, 5))),
        "invalid_argument"
    );
    // COMPLIANCE: nobody deletes the version, bypass or not; the key may get a marker.
    let c = version_of(db.ok(locked_put("vault", "c", lock(LockMode::Compliance, day))));
    assert_eq!(
        db.code(delete_version("vault", "c", c, false)),
        "object_locked"
    );
    assert_eq!(
        db.code(delete_version("vault", "c", c, true)),
        "object_locked"
    );
    db.ok(BucketCommand::DeleteObject {
        bucket: "vault".into(),
        key: "c".into(),
        version: None,
    });
    let set = |key: &str, v: Option<u128>, change, bypass| BucketCommand::SetObjectLock {
        bucket: "vault".into(),
        key: key.into(),
        version: Some(v.map_or(VersionRef::Null, VersionRef::Id)),
        change,
        bypass_governance: bypass,
    };
    let shorter = LockChange::Retention(Some(Retention {
        mode: LockMode::Compliance,
        until_ms: day - 1,
    }));
    assert_eq!(db.code(set("c", c, shorter, true)), "object_locked");
    let longer = LockChange::Retention(Some(Retention {
        mode: LockMode::Compliance,
        until_ms: day + DAY_MS,
    }));
    db.ok(set("c", c, longer, false));
    // GOVERNANCE: deleting takes the bypass.
    let g = version_of(db.ok(locked_put("vault", "g", lock(LockMode::Governance, day))));
    assert_eq!(
        db.code(delete_version("vault", "g", g, false)),
        "object_locked"
    );
    db.ok(delete_version("vault", "g", g, true));
    // A legal hold holds until it is lifted.
    let h = version_of(put(&mut db, "vault", "h"));
    db.ok(set("h", h, LockChange::LegalHold(true), false));
    assert_eq!(
        db.code(delete_version("vault", "h", h, true)),
        "object_locked"
    );
    db.ok(set("h", h, LockChange::LegalHold(false), false));
    db.ok(delete_version("vault", "h", h, false));
    // Default retention applies to plain writes, and a lock given to an upload reaches the
    // object it completes.
    db.ok(BucketCommand::Configure {
        name: "vault".into(),
        change: BucketChange::ObjectLock(LockConfig {
            default: Some(DefaultRetention {
                mode: LockMode::Governance,
                period: 1,
                years: false,
            }),
        }),
    });
    let d = version_of(put(&mut db, "vault", "d"));
    match db.q(BucketQuery::ObjectLock {
        bucket: "vault".into(),
        key: "d".into(),
        version: None,
    }) {
        BucketQueryResponse::ObjectLock(Some(Some((v, l)))) => {
            assert_eq!(v, d);
            let r = l.retention.unwrap();
            assert_eq!(r.mode, LockMode::Governance);
            assert_eq!(r.until_ms, db.clock + DAY_MS);
        }
        other => panic!("{other:?}"),
    }
    let up = match db.ok(BucketCommand::Locked {
        lock: lock(LockMode::Compliance, day),
        command: Box::new(BucketCommand::CreateUpload {
            bucket: "vault".into(),
            key: "big".into(),
            owner: "me".into(),
            meta: ObjectMeta::default(),
            tags: Vec::new(),
        }),
    }) {
        BucketResponse::Upload { id } => id,
        other => panic!("{other:?}"),
    };
    let h1 = db.alloc();
    db.ok(BucketCommand::PutPart {
        bucket: "vault".into(),
        key: "big".into(),
        upload: up,
        number: 1,
        etag: "00".repeat(16),
        size: 5,
        extents: vec![Extent {
            handle: h1,
            offset: 0,
            len: 5,
        }],
    });
    let big = version_of(db.ok(BucketCommand::CompleteUpload {
        bucket: "vault".into(),
        key: "big".into(),
        upload: up,
        parts: vec![(1, "00".repeat(16))],
        conditions: Conditions::default(),
    }));
    assert_eq!(
        db.code(delete_version("vault", "big", big, true)),
        "object_locked"
    );

    // Lifecycle leaves held versions alone and removes them once the retention has passed.
    put(&mut db, "vault", "c");
    db.ok(BucketCommand::Configure {
        name: "vault".into(),
        change: BucketChange::Lifecycle(Some(vec![LifecycleRuleV1 {
            id: Some("r".into()),
            enabled: true,
            prefix: String::new(),
            noncurrent_days: Some(1),
            ..LifecycleRuleV1::default()
        }])),
    });
    db.clock = day + DAY_MS / 2;
    db.ok(BucketCommand::Expire {
        bucket: "vault".into(),
    });
    let versions_of = |db: &Db, key: &str| -> Vec<Option<u128>> {
        list(
            db,
            ListRequest {
                bucket: "vault".into(),
                prefix: key.into(),
                limit: 100,
                ..ListRequest::default()
            },
            true,
        )
        .objects
        .iter()
        .filter(|o| o.key == key)
        .map(|o| o.version.id)
        .collect()
    };
    assert!(versions_of(&db, "c").contains(&c), "a held version expired");
    db.clock = day + 3 * DAY_MS;
    db.ok(BucketCommand::Expire {
        bucket: "vault".into(),
    });
    assert!(
        !versions_of(&db, "c").contains(&c),
        "an expired retention still held"
    );
}

#[test]
fn conditional_deletes_check_the_current_etag() {
    let mut db = Db::new();
    create(&mut db, "bkt");
    put(&mut db, "bkt", "k");
    let del = |if_match: &[&str]| BucketCommand::DeleteObjectChecked {
        bucket: "bkt".into(),
        key: "k".into(),
        version: None,
        bypass_governance: false,
        if_match: Some(if_match.iter().map(|s| (*s).to_owned()).collect()),
    };
    assert_eq!(db.code(del(&["\"other\""])), "precondition_failed");
    db.ok(del(&["\"e\""]));
    // Nothing there any more: a conditional delete says so.
    assert_eq!(db.code(del(&["*"])), "no_such_key");
    put(&mut db, "bkt", "k");
    db.ok(del(&["*"]));
}

#[test]
fn object_acls_belong_to_one_version_and_go_with_it() {
    use super::acl::{Grant, Grantee, Ownership, Permission};
    let mut db = Db::new();
    create(&mut db, "bkt");
    db.ok(BucketCommand::Configure {
        name: "bkt".into(),
        change: BucketChange::Versioning(Versioning::Enabled),
    });
    let public = ObjectAcl {
        owner: None,
        grants: vec![Grant {
            grantee: Grantee::AllUsers,
            permission: Permission::Read,
        }],
    };
    let v1 = version_of(db.ok(BucketCommand::WithAcl {
        acl: public.clone(),
        command: Box::new(BucketCommand::PutObject {
            bucket: "bkt".into(),
            key: "k".into(),
            data: inline(b"1"),
            conditions: Conditions::default(),
        }),
    }));
    let v2 = version_of(put(&mut db, "bkt", "k"));
    let acl_of = |db: &Db, v: Option<u128>| match db.q(BucketQuery::ObjectAcl {
        bucket: "bkt".into(),
        key: "k".into(),
        version: Some(v.map_or(VersionRef::Null, VersionRef::Id)),
    }) {
        BucketQueryResponse::ObjectAcl(Some(Some((_, a)))) => a,
        other => panic!("{other:?}"),
    };
    assert_eq!(acl_of(&db, v1), public);
    assert_eq!(acl_of(&db, v2), ObjectAcl::default());
    db.ok(BucketCommand::SetObjectAcl {
        bucket: "bkt".into(),
        key: "k".into(),
        version: None,
        acl: public.clone(),
    });
    assert_eq!(acl_of(&db, v2), public);
    // Deleting the version takes its ACL with it.
    db.ok(delete_version("bkt", "k", v1, false));
    let v3 = version_of(put(&mut db, "bkt", "k"));
    assert_eq!(acl_of(&db, v3), ObjectAcl::default());
    assert_eq!(
        db.code(BucketCommand::SetObjectAcl {
            bucket: "bkt".into(),
            key: "none".into(),
            version: None,
            acl: public.clone(),
        }),
        "no_such_key"
    );
    // BucketOwnerEnforced refuses grants (after the bucket's own ACL is private).
    db.ok(BucketCommand::Configure {
        name: "bkt".into(),
        change: BucketChange::Ownership(Some(Ownership::BucketOwnerEnforced)),
    });
    assert_eq!(
        db.code(BucketCommand::SetObjectAcl {
            bucket: "bkt".into(),
            key: "k".into(),
            version: None,
            acl: public,
        }),
        "acl_not_supported"
    );
}

#[test]
fn encrypted_uploads_take_only_sealed_parts_and_complete_into_an_encrypted_object() {
    let mut db = Db::new();
    create(&mut db, "enc");
    let sse = Sse::S3 {
        key_version: 1,
        wrapped: vec![1; 60],
    };
    // An encrypted single put: the sealed bytes must be exactly what the sizes call for.
    let sealed_put = |stored: usize| BucketCommand::PutObject {
        bucket: "enc".into(),
        key: "small".into(),
        data: ObjectData {
            size: 10,
            etag: "e".into(),
            parts: Vec::new(),
            content: Content::Encrypted(Box::new(Encrypted {
                sse: sse.clone(),
                salts: vec![[2; 16]],
                body: Content::Inline(vec![0; stored]),
            })),
            meta: ObjectMeta::default(),
            tags: Vec::new(),
        },
        conditions: Conditions::default(),
    };
    assert_eq!(db.code(sealed_put(10)), "invalid_argument");
    db.ok(sealed_put(26));
    let BucketQueryResponse::Object(Some(Some(v))) = db.q(BucketQuery::Object {
        bucket: "enc".into(),
        key: "small".into(),
        version: None,
    }) else {
        panic!()
    };
    assert_eq!(v.data().unwrap().content.sse(), Some(&sse));

    let up = match db.ok(BucketCommand::Sealed {
        sse: sse.clone(),
        command: Box::new(BucketCommand::CreateUpload {
            bucket: "enc".into(),
            key: "big".into(),
            owner: "me".into(),
            meta: ObjectMeta::default(),
            tags: Vec::new(),
        }),
    }) {
        BucketResponse::Upload { id } => id,
        other => panic!("{other:?}"),
    };
    let BucketQueryResponse::UploadState(Some(UploadState {
        sse: Some(kept), ..
    })) = db.q(BucketQuery::UploadState {
        bucket: "enc".into(),
        key: "big".into(),
        upload: up,
    })
    else {
        panic!()
    };
    assert_eq!(kept, sse);
    let h1 = db.alloc();
    let h2 = db.alloc();
    let plain = |h: ChunkHandle| BucketCommand::PutPart {
        bucket: "enc".into(),
        key: "big".into(),
        upload: up,
        number: 1,
        etag: "00".repeat(16),
        size: 5,
        extents: vec![Extent {
            handle: h,
            offset: 0,
            len: 5,
        }],
    };
    // A plain part cannot join an encrypted upload.
    assert_eq!(db.code(plain(h1)), "invalid_request");
    let sealed = |n: u32, h: ChunkHandle, size: u64, salt: u8| BucketCommand::PutSealedPart {
        bucket: "enc".into(),
        key: "big".into(),
        upload: up,
        number: n,
        etag: format!("{n:032x}"),
        size,
        extents: vec![Extent {
            handle: h,
            offset: 0,
            len: sealed_len(size),
        }],
        salt: [salt; 16],
    };
    let first = PART_SIZE_MIN;
    db.ok(sealed(1, h1, first, 1));
    db.ok(sealed(2, h2, 5, 2));
    match db.ok(BucketCommand::CompleteUpload {
        bucket: "enc".into(),
        key: "big".into(),
        upload: up,
        parts: vec![(1, format!("{:032x}", 1)), (2, format!("{:032x}", 2))],
        conditions: Conditions::default(),
    }) {
        BucketResponse::Put { .. } => {}
        other => panic!("{other:?}"),
    }
    let BucketQueryResponse::Object(Some(Some(v))) = db.q(BucketQuery::Object {
        bucket: "enc".into(),
        key: "big".into(),
        version: None,
    }) else {
        panic!()
    };
    let d = v.data().unwrap();
    assert_eq!(d.size, first + 5);
    assert_eq!(d.parts, vec![first, 5]);
    let Content::Encrypted(e) = &d.content else {
        panic!("{:?}", d.content)
    };
    assert_eq!(e.salts, vec![[1; 16], [2; 16]]);
    assert_eq!(e.sse, sse);
    // The object holds the parts' chunks; the upload and its salts are gone.
    assert_eq!(db.chunk(h1).state, ChunkState::Live { refs: 1 });
    assert!(matches!(
        db.q(BucketQuery::UploadState {
            bucket: "enc".into(),
            key: "big".into(),
            upload: up,
        }),
        BucketQueryResponse::UploadState(None)
    ));

    // A sealed part cannot join a plain upload.
    let plain_up = match db.ok(BucketCommand::CreateUpload {
        bucket: "enc".into(),
        key: "p".into(),
        owner: "me".into(),
        meta: ObjectMeta::default(),
        tags: Vec::new(),
    }) {
        BucketResponse::Upload { id } => id,
        other => panic!("{other:?}"),
    };
    let h3 = db.alloc();
    assert_eq!(
        db.code(BucketCommand::PutSealedPart {
            bucket: "enc".into(),
            key: "p".into(),
            upload: plain_up,
            number: 1,
            etag: "00".repeat(16),
            size: 5,
            extents: vec![Extent {
                handle: h3,
                offset: 0,
                len: sealed_len(5),
            }],
            salt: [0; 16],
        }),
        "invalid_request"
    );
}

#[test]
fn upload_checksums_are_kept_checked_at_completion_and_go_with_the_version() {
    let mut db = Db::new();
    create(&mut db, "sums");
    let create_upload = |key: &str| BucketCommand::CreateUpload {
        bucket: "sums".into(),
        key: key.into(),
        owner: "me".into(),
        meta: ObjectMeta::default(),
        tags: Vec::new(),
    };
    // S3's combinations only.
    assert_eq!(
        db.code(BucketCommand::Checksummed {
            checksum: UploadChecksum {
                algorithm: "SHA256".into(),
                full_object: true,
            },
            command: Box::new(create_upload("k")),
        }),
        "invalid_request"
    );
    let up = match db.ok(BucketCommand::Checksummed {
        checksum: UploadChecksum::default_for("CRC32"),
        command: Box::new(create_upload("k")),
    }) {
        BucketResponse::Upload { id } => id,
        other => panic!("{other:?}"),
    };
    let part = |n: u32, h: ChunkHandle, size: u64| BucketCommand::PutPart {
        bucket: "sums".into(),
        key: "k".into(),
        upload: up,
        number: n,
        etag: format!("{n:032x}"),
        size,
        extents: vec![Extent {
            handle: h,
            offset: 0,
            len: size,
        }],
    };
    let checked = |alg: &str, value: &str, c: BucketCommand| BucketCommand::CheckedPart {
        checksum: PartChecksum {
            algorithm: alg.into(),
            value: value.into(),
        },
        command: Box::new(c),
    };
    let (h1, h2, h3) = (db.alloc(), db.alloc(), db.alloc());
    // Another algorithm than the upload's is refused and stores nothing.
    assert_eq!(
        db.code(checked("SHA1", "x", part(1, h1, PART_SIZE_MIN))),
        "invalid_request"
    );
    db.ok(checked("CRC32", "AAAAAQ==", part(1, h1, PART_SIZE_MIN)));
    db.ok(checked("CRC32", "AAAAAg==", part(2, h2, 5)));
    let BucketQueryResponse::UploadChecksums(Some((Some(u), parts))) =
        db.q(BucketQuery::UploadChecksums {
            bucket: "sums".into(),
            key: "k".into(),
            upload: up,
        })
    else {
        panic!()
    };
    assert_eq!(u, UploadChecksum::default_for("CRC32"));
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[1].1, 5);
    assert_eq!(
        parts[1].2.as_ref().map(|c| c.value.as_str()),
        Some("AAAAAg==")
    );
    let complete = |sums: Vec<Option<&str>>| BucketCommand::CheckedComplete {
        sums: ObjectChecksums {
            object: ("CRC32".into(), "AAAAAw==-2".into()),
            parts: sums.into_iter().map(|s| s.map(String::from)).collect(),
        },
        command: Box::new(BucketCommand::CompleteUpload {
            bucket: "sums".into(),
            key: "k".into(),
            upload: up,
            parts: vec![(1, format!("{:032x}", 1)), (2, format!("{:032x}", 2))],
            conditions: Conditions::default(),
        }),
    };
    // Part 2 stored again without a checksum loses its old one, so a completion that
    // combined the old one is refused.
    db.ok(part(2, h3, 5));
    assert_eq!(
        db.code(complete(vec![Some("AAAAAQ=="), Some("AAAAAg==")])),
        "invalid_part"
    );
    let h4 = db.alloc();
    db.ok(checked("CRC32", "AAAAAg==", part(2, h4, 5)));
    assert_eq!(
        db.code(complete(vec![Some("AAAAAQ==")])),
        "invalid_argument"
    );
    db.ok(complete(vec![Some("AAAAAQ=="), Some("AAAAAg==")]));
    let BucketQueryResponse::Object(Some(Some(v))) = db.q(BucketQuery::Object {
        bucket: "sums".into(),
        key: "k".into(),
        version: None,
    }) else {
        panic!()
    };
    assert_eq!(
        v.data().unwrap().meta.checksum,
        Some(("CRC32".into(), "AAAAAw==-2".into()))
    );
    let sums = |db: &Db| match db.q(BucketQuery::VersionPartSums {
        bucket: "sums".into(),
        key: "k".into(),
        version: None,
    }) {
        BucketQueryResponse::VersionPartSums(s) => s,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        sums(&db),
        Some(PartSums(vec!["AAAAAQ==".into(), "AAAAAg==".into()]))
    );
    // A plain put replacing the null version takes its part checksums with it.
    put(&mut db, "sums", "k");
    assert_eq!(sums(&db), None);
}

#[test]
fn lifecycle_filters_on_tags_and_sizes_and_newer_noncurrent_versions() {
    let mut db = Db::new();
    create(&mut db, "bkt");
    let put_with = |db: &mut Db, key: &str, size: usize, tags: &[(&str, &str)]| {
        let mut data = inline(&vec![7u8; size]);
        data.tags = tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        db.ok(BucketCommand::PutObject {
            bucket: "bkt".into(),
            key: key.into(),
            data,
            conditions: Conditions::default(),
        })
    };
    put_with(&mut db, "tmp/tagged-small", 10, &[("class", "scratch")]);
    put_with(&mut db, "tmp/tagged-big", 500, &[("class", "scratch")]);
    put_with(&mut db, "tmp/untagged-small", 10, &[]);
    put_with(&mut db, "other/tagged-small", 10, &[("class", "scratch")]);
    db.ok(BucketCommand::Configure {
        name: "bkt".into(),
        change: BucketChange::LifecycleRules(Some(vec![LifecycleRule {
            id: Some("scratch".into()),
            enabled: true,
            filter: LifecycleFilter {
                prefix: "tmp/".into(),
                tags: vec![("class".into(), "scratch".into())],
                size_less_than: Some(100),
                form: FilterForm::And,
                ..LifecycleFilter::default()
            },
            expiration_days: Some(1),
            ..LifecycleRule::default()
        }])),
    });
    // The header's answer agrees with the pass: only the small tagged object under tmp/.
    let BucketQueryResponse::Bucket(Some(b)) = db.q(BucketQuery::Bucket { name: "bkt".into() })
    else {
        panic!()
    };
    let rules = b.lifecycle.unwrap();
    let tags = vec![("class".to_owned(), "scratch".to_owned())];
    assert!(expiration(&rules, ("tmp/a", 10, &tags), 0).is_some());
    assert!(expiration(&rules, ("tmp/a", 500, &tags), 0).is_none());
    assert!(expiration(&rules, ("tmp/a", 10, &[]), 0).is_none());
    db.clock += 2 * DAY_MS;
    db.ok(BucketCommand::Expire {
        bucket: "bkt".into(),
    });
    let keys = walk(&db, "", None, 100);
    assert_eq!(
        keys,
        vec!["other/tagged-small", "tmp/tagged-big", "tmp/untagged-small"]
    );

    // NewerNoncurrentVersions keeps the newest noncurrent versions however old they are.
    db.ok(BucketCommand::Configure {
        name: "bkt".into(),
        change: BucketChange::Versioning(Versioning::Enabled),
    });
    for _ in 0..4 {
        put(&mut db, "bkt", "v");
    }
    db.ok(BucketCommand::Configure {
        name: "bkt".into(),
        change: BucketChange::LifecycleRules(Some(vec![LifecycleRule {
            id: Some("two".into()),
            enabled: true,
            noncurrent_days: Some(1),
            newer_noncurrent_versions: Some(2),
            ..LifecycleRule::default()
        }])),
    });
    db.clock += 2 * DAY_MS;
    db.ok(BucketCommand::Expire {
        bucket: "bkt".into(),
    });
    let page = list(
        &db,
        ListRequest {
            bucket: "bkt".into(),
            prefix: "v".into(),
            limit: 100,
            ..ListRequest::default()
        },
        true,
    );
    // The current version and the two newest noncurrent ones.
    assert_eq!(page.objects.len(), 3);
}
