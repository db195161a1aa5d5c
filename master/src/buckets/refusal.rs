//! Why the bucket service refuses a command: one enum, one stable code per reason.

cairn_engine::refusals! {
    /// Why the bucket service refuses a command (share links included).
    pub enum BucketRefusal {
        /// The bucket does not exist (or belongs to another tenant).
        NoSuchBucket = "no_such_bucket",
        /// The name is taken by someone else, or reserved.
        BucketExists = "bucket_exists",
        /// The caller already owns a bucket of that name.
        BucketOwnedByYou = "bucket_owned_by_you",
        /// The bucket still holds versions, markers or uploads.
        BucketNotEmpty = "bucket_not_empty",
        /// The name breaks S3's naming rules.
        InvalidBucketName = "invalid_bucket_name",
        /// An object key outside 1..=1024 bytes of UTF-8 without NUL.
        InvalidKey = "invalid_key",
        /// A value outside the rules (sizes, part numbers, extents, versioning).
        InvalidArgument = "invalid_argument",
        /// Tags outside S3's limits.
        InvalidTag = "invalid_tag",
        /// `If-Match` or `If-None-Match` does not hold.
        PreconditionFailed = "precondition_failed",
        /// The key has no live version.
        NoSuchKey = "no_such_key",
        /// The key has no version of that id.
        NoSuchVersion = "no_such_version",
        /// The version is a delete marker.
        MethodNotAllowed = "method_not_allowed",
        /// The key keeps the most versions it may.
        TooManyVersions = "too_many_versions",
        /// The multipart upload is completed, aborted or unknown.
        NoSuchUpload = "no_such_upload",
        /// A named part was not uploaded or its ETag differs.
        InvalidPart = "invalid_part",
        /// Parts are not in ascending order.
        InvalidPartOrder = "invalid_part_order",
        /// A part other than the last is under 5 MiB.
        EntityTooSmall = "entity_too_small",
        /// A completion names no part.
        MalformedXml = "malformed_xml",
        /// A chunk the write names was released meanwhile: write again.
        ChunkGone = "chunk_gone",
        /// No share link of the tenant has that id.
        NoSuchShare = "no_such_share",
        /// The tenant has the most unexpired share links it may.
        TooManyShares = "too_many_shares",
        /// A bucket policy S3 would refuse (the message says why).
        MalformedPolicy = "malformed_policy",
        /// The bucket's public access block refuses a public policy or ACL.
        PublicAccessBlocked = "public_access_blocked",
        /// Object lock (a retention or legal hold) keeps the version.
        ObjectLocked = "object_locked",
        /// A request S3 answers `InvalidRequest` (object lock on a bucket without it...).
        InvalidRequest = "invalid_request",
        /// The bucket's state does not allow the change (versioning of an object-lock bucket).
        InvalidBucketState = "invalid_bucket_state",
        /// ACLs are disabled on the bucket (ownership `BucketOwnerEnforced`).
        AclNotSupported = "acl_not_supported",
        /// `BucketOwnerEnforced` asked for while the bucket's ACL grants something.
        AclWithOwnership = "acl_with_ownership",
    }
}
