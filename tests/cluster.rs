//! End-to-end: `cairn cluster init` / `issue-cert` produce credentials that authenticate real
//! QUIC calls, and `cairn serve` creates a cluster CA on first start.

// Test code: a panic here is a failed test, which is what unwrap() should cause.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use cairn_proto::{
    Client, ClientOptions, NodeIdentity, RemoteError, Router, Rpc, ServeOptions, TransportOptions,
};
use cairn_tests::{CairnProcess, run};

const BIN: &str = env!("CARGO_BIN_EXE_cairn");

struct Ping;
impl Rpc for Ping {
    const METHOD: u16 = 1;
    const NAME: &'static str = "ping";
    type Request = u64;
    type Response = u64;
}

#[tokio::test]
async fn issued_certificates_authenticate_quic_calls() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = dir.path().join("node-2");
    let d = data.to_str().unwrap();
    let (status, stdout, stderr) = run(
        Path::new(BIN),
        &["cluster", "init", "--data", d],
        &[],
        dir.path(),
    )
    .unwrap();
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains("created a cluster CA"), "{stdout}");
    let (status, _, stderr) = run(
        Path::new(BIN),
        &[
            "cluster",
            "issue-cert",
            "--data",
            d,
            "--name",
            "node-2",
            "--san",
            "127.0.0.1",
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
        dir.path(),
    )
    .unwrap();
    assert!(status.success(), "{stderr}");
    for key in [
        data.join("tls/ca.key"),
        data.join("tls/node.key"),
        out.join("node.key"),
    ] {
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600,
            "{}",
            key.display()
        );
    }
    assert!(
        !out.join("ca.key").exists(),
        "the CA key never leaves its node"
    );

    // node-1 serves with its identity; node-2 calls with the issued one.
    let server_id = NodeIdentity::load(&data.join("tls")).unwrap();
    let ep = cairn_proto::endpoint(
        "127.0.0.1:0".parse().unwrap(),
        &server_id,
        &TransportOptions::default(),
    )
    .unwrap();
    let addr = ep.local_addr().unwrap();
    let router =
        Router::new().route::<Ping, _, _>(|n: u64| async move { Ok::<_, RemoteError>(n + 1) });
    tokio::spawn(cairn_proto::serve(ep, router, ServeOptions::default()));
    let client_id = NodeIdentity::load(&out).unwrap();
    let client_ep = cairn_proto::endpoint(
        "127.0.0.1:0".parse().unwrap(),
        &client_id,
        &TransportOptions::default(),
    )
    .unwrap();
    let client = Client::new(client_ep, ClientOptions::default());
    assert_eq!(client.call::<Ping>(addr, &41).await.unwrap(), 42);

    // Refusals: a second init over existing credentials, issuing without a CA, bad names.
    let (status, _, stderr) = run(
        Path::new(BIN),
        &["cluster", "init", "--data", d],
        &[],
        dir.path(),
    )
    .unwrap();
    assert!(
        !status.success() && stderr.contains("refusing to overwrite"),
        "{stderr}"
    );
    let (status, _, stderr) = run(
        Path::new(BIN),
        &[
            "cluster",
            "issue-cert",
            "--data",
            out.to_str().unwrap(),
            "--name",
            "x",
            "--out",
            "/tmp/never",
        ],
        &[],
        dir.path(),
    )
    .unwrap();
    assert!(
        !status.success() && stderr.contains("no cluster CA key"),
        "{stderr}"
    );
    let (status, _, stderr) = run(
        Path::new(BIN),
        &[
            "cluster",
            "issue-cert",
            "--data",
            d,
            "--name",
            "../evil",
            "--out",
            dir.path().join("e").to_str().unwrap(),
        ],
        &[],
        dir.path(),
    )
    .unwrap();
    assert!(
        !status.success() && stderr.contains("invalid node name"),
        "{stderr}"
    );
}

#[test]
fn serve_creates_cluster_credentials_on_first_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = CairnProcess::start(
        Path::new(BIN),
        &[
            "serve",
            "--data",
            dir.path().to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--cluster-listen",
            "127.0.0.1:0",
        ],
        &[],
        dir.path(),
    )
    .unwrap();
    p.wait_listening().unwrap();
    assert!(p.log().contains("created a new cluster CA"), "{}", p.log());
    for f in ["ca.pem", "ca.key", "node.pem", "node.key"] {
        assert!(dir.path().join("tls").join(f).exists(), "{f}");
    }
    drop(p);
    let mut again = CairnProcess::start(
        Path::new(BIN),
        &[
            "serve",
            "--data",
            dir.path().to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--cluster-listen",
            "127.0.0.1:0",
        ],
        &[],
        dir.path(),
    )
    .unwrap();
    again.wait_listening().unwrap();
    assert!(
        !again.log().contains("created a new cluster CA"),
        "credentials are created once"
    );
}
