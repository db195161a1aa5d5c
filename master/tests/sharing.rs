//! Share links, namespace visibility and the image store on a real state store, through the
//! registry as the log applies them: limits, tenant checks, content stored once and removed
//! with its last image, and bucket records written before `unlisted` existed.

// Test code: a panic here is a failed test, which is what unwrap() should cause.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use cairn_engine::state::{Registry, Rejection, StateStore, TypedService};
use cairn_master::buckets::{
    BucketChange, BucketCommand, BucketQuery, BucketQueryResponse, BucketResponse, BucketService,
    Conditions, Content, ObjectData, ObjectMeta, SYSTEM_BUCKET, SYSTEM_OWNER,
};
use cairn_master::images::{
    ImageCommand, ImageContent, ImageMeta, ImageQuery, ImageQueryResponse, ImageResponse,
    ImageService, ImageStatus, blob_key,
};
use cairn_master::tenancy::tenant_hex;

struct State {
    store: StateStore,
    registry: Registry,
    index: u64,
    _dir: tempfile::TempDir,
}

/// Command times: the log's clock starts here and moves 1 ms per entry.
const T0: u64 = 1_000_000;

impl State {
    fn new() -> State {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path().join("state.redb")).unwrap();
        let registry = cairn_master::registry().unwrap();
        registry.init(&store).unwrap();
        State {
            store,
            registry,
            index: 0,
            _dir: dir,
        }
    }

    fn now(&self) -> u64 {
        T0 + self.index
    }

    fn apply<S: TypedService>(&mut self, c: &S::Command) -> Result<S::Response, Rejection> {
        self.index += 1;
        let mut id_seed = [0u8; 16];
        id_seed[..8].copy_from_slice(&self.index.to_le_bytes());
        let bytes = S::command(c, T0 + self.index, id_seed).unwrap().encode();
        let out = self
            .registry
            .apply_batch(&self.store, [(self.index, bytes.as_slice())])
            .unwrap()
            .remove(0);
        out.map(|b| S::response(&b).unwrap())
    }

    fn ask<S: TypedService>(&self, q: &S::Query) -> S::QueryResponse {
        let payload = S::encode_query(q).unwrap();
        let b = self
            .registry
            .query(&self.store, S::ID, &payload)
            .unwrap()
            .unwrap();
        S::query_response(&b).unwrap()
    }

    fn bucket(&mut self, name: &str, tenant: u128) {
        self.apply::<BucketService>(&BucketCommand::CreateBucket {
            name: name.into(),
            owner: tenant_hex(tenant),
            public_read: false,
        })
        .unwrap();
    }

    fn put(&mut self, bucket: &str, key: &str, bytes: &[u8]) {
        self.apply::<BucketService>(&BucketCommand::PutObject {
            bucket: bucket.into(),
            key: key.into(),
            data: inline(bytes),
            conditions: Conditions::default(),
        })
        .unwrap();
    }

    fn object(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        match self.ask::<BucketService>(&BucketQuery::Object {
            bucket: bucket.into(),
            key: key.into(),
            version: None,
        }) {
            BucketQueryResponse::Object(Some(Some(v))) => match &v.data()?.content {
                Content::Inline(b) => Some(b.clone()),
                Content::Chunks(_) | Content::Encrypted(_) => panic!("inline expected"),
            },
            _ => None,
        }
    }

    fn image(&self, id: u128) -> Option<cairn_master::images::Image> {
        match self.ask::<ImageService>(&ImageQuery::Get { id }) {
            ImageQueryResponse::Image(i) => i,
            other => panic!("{other:?}"),
        }
    }
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

fn share(tenant: u128, bucket: &str, key: &str, expires_ms: u64, max: u32) -> BucketCommand {
    BucketCommand::CreateShare {
        tenant,
        bucket: bucket.into(),
        key: key.into(),
        created_by: 7,
        expires_ms,
        max_active: max,
    }
}

#[test]
fn share_links_are_limited_per_tenant_and_checked_against_their_bucket() {
    let mut s = State::new();
    s.bucket("docs", 1);
    s.bucket("other", 2);
    s.put("docs", "a.txt", b"a");
    s.put("other", "b.txt", b"b");

    // Another tenant's bucket is "no such bucket"; a missing file and a past expiry refused.
    let far = s.now() + 1_000_000;
    for (c, code) in [
        (share(1, "other", "b.txt", far, 10), "no_such_bucket"),
        (share(1, "docs", "missing", far, 10), "no_such_key"),
        (share(1, "docs", "a.txt", s.now(), 10), "invalid_argument"),
        (share(1, "nope", "a.txt", far, 10), "no_such_bucket"),
    ] {
        assert_eq!(s.apply::<BucketService>(&c).unwrap_err().code, code);
    }

    // The limit counts unexpired links only; expired ones are cleared when a link is made.
    let soon = s.now() + 10;
    let BucketResponse::Share { id: short } = s
        .apply::<BucketService>(&share(1, "docs", "a.txt", soon, 2))
        .unwrap()
    else {
        panic!()
    };
    let BucketResponse::Share { id: long } = s
        .apply::<BucketService>(&share(1, "docs", "a.txt", far, 2))
        .unwrap()
    else {
        panic!()
    };
    let refused = s
        .apply::<BucketService>(&share(1, "docs", "a.txt", far, 2))
        .unwrap_err();
    assert_eq!(refused.code, "too_many_shares");
    assert!(
        refused.message.contains("limit is 2"),
        "{}",
        refused.message
    );
    // Tenant 2's links do not count against tenant 1.
    s.apply::<BucketService>(&share(2, "other", "b.txt", far, 2))
        .unwrap();
    while s.now() < soon {
        s.apply::<BucketService>(&BucketCommand::Configure {
            name: "docs".into(),
            change: BucketChange::PublicRead(false),
        })
        .unwrap();
    }
    s.apply::<BucketService>(&share(1, "docs", "a.txt", far, 2))
        .unwrap();
    let BucketQueryResponse::Shares(mine) =
        s.ask::<BucketService>(&BucketQuery::Shares { tenant: 1 })
    else {
        panic!()
    };
    assert_eq!(mine.len(), 2, "the expired link was cleared: {mine:?}");
    assert!(mine.iter().all(|(id, r)| *id != short && r.tenant == 1));
    assert!(matches!(
        s.ask::<BucketService>(&BucketQuery::Share { id: short }),
        BucketQueryResponse::Share(None)
    ));

    // Revocation: only by the link's tenant.
    let wrong = s
        .apply::<BucketService>(&BucketCommand::DeleteShare {
            tenant: 2,
            id: long,
        })
        .unwrap_err();
    assert_eq!(wrong.code, "no_such_share");
    s.apply::<BucketService>(&BucketCommand::DeleteShare {
        tenant: 1,
        id: long,
    })
    .unwrap();
    assert!(matches!(
        s.ask::<BucketService>(&BucketQuery::Share { id: long }),
        BucketQueryResponse::Share(None)
    ));
    let again = s
        .apply::<BucketService>(&BucketCommand::DeleteShare {
            tenant: 1,
            id: long,
        })
        .unwrap_err();
    assert_eq!(again.code, "no_such_share");
}

#[test]
fn visibility_and_usage_and_the_reserved_system_bucket() {
    let mut s = State::new();
    s.bucket("space", 1);
    s.put("space", "a", b"12345");
    s.put("space", "b/c", b"67");
    s.apply::<BucketService>(&BucketCommand::Configure {
        name: "space".into(),
        change: BucketChange::Visibility {
            public_read: true,
            unlisted: true,
        },
    })
    .unwrap();
    let BucketQueryResponse::Bucket(Some(b)) = s.ask::<BucketService>(&BucketQuery::Bucket {
        name: "space".into(),
    }) else {
        panic!()
    };
    assert!(b.public_read && b.unlisted);
    // The S3 ACL makes it listed again; "unlisted" alone never makes a bucket readable.
    for (change, public, unlisted) in [
        (BucketChange::PublicRead(true), true, false),
        (
            BucketChange::Visibility {
                public_read: false,
                unlisted: true,
            },
            false,
            false,
        ),
    ] {
        s.apply::<BucketService>(&BucketCommand::Configure {
            name: "space".into(),
            change,
        })
        .unwrap();
        let BucketQueryResponse::Bucket(Some(b)) = s.ask::<BucketService>(&BucketQuery::Bucket {
            name: "space".into(),
        }) else {
            panic!()
        };
        assert_eq!((b.public_read, b.unlisted), (public, unlisted));
    }
    let BucketQueryResponse::Usage(Some(u)) = s.ask::<BucketService>(&BucketQuery::Usage {
        bucket: "space".into(),
    }) else {
        panic!()
    };
    assert_eq!((u.objects, u.bytes, u.complete), (2, 7, true));
    assert!(matches!(
        s.ask::<BucketService>(&BucketQuery::Usage {
            bucket: "missing".into()
        }),
        BucketQueryResponse::Usage(None)
    ));

    let taken = s
        .apply::<BucketService>(&BucketCommand::CreateBucket {
            name: SYSTEM_BUCKET.into(),
            owner: tenant_hex(1),
            public_read: false,
        })
        .unwrap_err();
    assert_eq!(taken.code, "bucket_exists");
}

fn content(bytes: &[u8]) -> ImageContent {
    ImageContent {
        blake3: *blake3_of(bytes),
        size: bytes.len() as u64,
        format: "raw".into(),
        virtual_size: bytes.len() as u64,
    }
}

/// A stand-in digest for the test (any 32 bytes naming the content will do for the store).
fn blake3_of(bytes: &[u8]) -> Box<[u8; 32]> {
    let mut d = [0u8; 32];
    for (i, b) in bytes.iter().enumerate() {
        d[i % 32] ^= b.wrapping_add(i as u8);
    }
    d[31] ^= bytes.len() as u8;
    Box::new(d)
}

fn register(s: &mut State, tenant: u128, name: &str, format: Option<&str>) -> u128 {
    let ImageResponse::Registered { id } = s
        .apply::<ImageService>(&ImageCommand::Register {
            tenant,
            owner: 9,
            meta: ImageMeta {
                name: name.into(),
                format: format.map(str::to_owned),
                ..ImageMeta::default()
            },
            source: None,
        })
        .unwrap()
    else {
        panic!()
    };
    id
}

fn set(s: &mut State, id: u128, tenant: u128, bytes: &[u8]) -> Result<ImageResponse, Rejection> {
    s.apply::<ImageService>(&ImageCommand::SetContent {
        id,
        tenant,
        content: content(bytes),
        data: inline(bytes),
    })
}

#[test]
fn image_content_is_stored_once_and_goes_with_its_last_image() {
    let mut s = State::new();
    let disk = b"a disk image's bytes".repeat(10);
    let key = blob_key(&content(&disk).blake3);
    let a = register(&mut s, 1, "a", None);
    let b = register(&mut s, 2, "b", Some("raw"));
    assert_eq!(s.image(a).unwrap().status, ImageStatus::Pending);

    set(&mut s, a, 1, &disk).unwrap();
    assert_eq!(s.object(SYSTEM_BUCKET, &key).unwrap(), disk);
    let BucketQueryResponse::Bucket(Some(sys)) = s.ask::<BucketService>(&BucketQuery::Bucket {
        name: SYSTEM_BUCKET.into(),
    }) else {
        panic!()
    };
    assert_eq!(sys.owner, SYSTEM_OWNER);
    // The second holder of the same content writes nothing (its data names other bytes to
    // show that the stored object is not replaced).
    s.apply::<ImageService>(&ImageCommand::SetContent {
        id: b,
        tenant: 2,
        content: content(&disk),
        data: inline(&vec![0u8; disk.len()]),
    })
    .unwrap();
    assert_eq!(s.object(SYSTEM_BUCKET, &key).unwrap(), disk);
    assert_eq!(s.image(b).unwrap().status, ImageStatus::Active);

    // Refusals change nothing: another tenant, a declared format, a non-pending failure.
    assert_eq!(set(&mut s, a, 2, b"x").unwrap_err().code, "no_such_image");
    let mut iso = content(b"iso bytes");
    iso.format = "iso".into();
    let wrong = s
        .apply::<ImageService>(&ImageCommand::SetContent {
            id: b,
            tenant: 2,
            content: iso,
            data: inline(b"iso bytes"),
        })
        .unwrap_err();
    assert_eq!(wrong.code, "format_mismatch");
    let fail = s
        .apply::<ImageService>(&ImageCommand::Fail {
            id: a,
            reason: "late".into(),
        })
        .unwrap_err();
    assert_eq!(fail.code, "invalid_state");
    assert_eq!(s.image(a).unwrap().status, ImageStatus::Active);
    assert_eq!(
        s.apply::<ImageService>(&ImageCommand::Delete { id: a, tenant: 2 })
            .unwrap_err()
            .code,
        "no_such_image"
    );

    // Listing: a tenant's own and the public ones.
    let ImageQueryResponse::Images(seen) = s.ask::<ImageService>(&ImageQuery::List { tenant: 1 })
    else {
        panic!()
    };
    assert_eq!(seen.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [a]);

    // Deleting one holder keeps the bytes; the last one removes them.
    s.apply::<ImageService>(&ImageCommand::Delete { id: a, tenant: 1 })
        .unwrap();
    assert_eq!(s.object(SYSTEM_BUCKET, &key).unwrap(), disk);
    assert!(s.image(a).is_none());
    // Replacing b's content releases the old content, its last holder.
    let newer = b"newer raw bytes".repeat(5);
    set(&mut s, b, 2, &newer).unwrap();
    assert!(s.object(SYSTEM_BUCKET, &key).is_none());
    let newer_key = blob_key(&content(&newer).blake3);
    assert_eq!(s.object(SYSTEM_BUCKET, &newer_key).unwrap(), newer);
    s.apply::<ImageService>(&ImageCommand::Delete { id: b, tenant: 2 })
        .unwrap();
    assert!(s.object(SYSTEM_BUCKET, &newer_key).is_none());

    // A pending import fails with its reason.
    let c = register(&mut s, 1, "c", None);
    s.apply::<ImageService>(&ImageCommand::Fail {
        id: c,
        reason: "404".into(),
    })
    .unwrap();
    assert_eq!(
        s.image(c).unwrap().status,
        ImageStatus::Failed("404".into())
    );
}

#[test]
fn bucket_records_from_before_visibility_still_read() {
    #[derive(serde::Serialize)]
    struct V1 {
        created_ms: u64,
        owner: String,
        versioning: cairn_master::buckets::Versioning,
        public_read: bool,
        lifecycle: Option<Vec<cairn_master::buckets::LifecycleRuleV1>>,
        cors: Option<Vec<cairn_master::buckets::CorsRule>>,
        tags: Option<Vec<(String, String)>>,
        replication: Option<u8>,
    }
    let s = State::new();
    let old = V1 {
        created_ms: 42,
        owner: tenant_hex(1),
        versioning: cairn_master::buckets::Versioning::Enabled,
        public_read: true,
        lifecycle: None,
        cors: None,
        tags: Some(vec![("k".into(), "v".into())]),
        replication: Some(2),
    };
    let txn = s.store.db().begin_write().unwrap();
    {
        let def: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("s3.buckets");
        let mut t = txn.open_table(def).unwrap();
        // As an older release wrote it, after the upgrade marked it layout 0.
        let mut bytes = vec![0u8];
        bytes.extend(postcard::to_stdvec(&old).unwrap());
        t.insert(b"old-bucket".as_slice(), bytes.as_slice())
            .unwrap();
    }
    txn.commit().unwrap();
    let BucketQueryResponse::Bucket(Some(b)) = s.ask::<BucketService>(&BucketQuery::Bucket {
        name: "old-bucket".into(),
    }) else {
        panic!()
    };
    assert_eq!(b.created_ms, 42);
    assert!(
        b.public_read && !b.unlisted,
        "an old public bucket stays listed"
    );
    assert_eq!(b.replication, Some(2));
    assert_eq!(b.tags, Some(vec![("k".into(), "v".into())]));
}
