//! Everything that crosses a process boundary (not built yet; the control-plane issue fills it).
//!
//! This crate will own the ids and messages shared by masters, chunkservers and gateways, their
//! versioned binary codec and frame checksums, and the one place where quinn and rustls are set
//! up: QUIC endpoints with mutual TLS against the cluster CA, request/response framing with a
//! length limit, and typed clients with timeouts, retries and connection reuse.
