//! The gateway (not built yet; the S3-gateway, identity and namespace issues fill it).
//!
//! This crate will own the S3 API (through s3s, with SigV4), the JSON REST API under `/api`,
//! namespace sharing URLs, authentication and authorisation, metrics and the console. The S3 XML
//! and REST JSON shapes live here, apart from the internal wire types in `cairn-proto`.
