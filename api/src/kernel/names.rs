//! Names the gateway keeps for itself: no bucket may take them (path-style S3 would shadow
//! the gateway's own routes).

/// Names the gateway serves itself: buckets cannot take them.
pub const RESERVED: &[&str] = &["health", "ready", "metrics", "api", "storage"];
