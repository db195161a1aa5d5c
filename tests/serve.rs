//! End-to-end: the real `cairn` binary, started as a process, driven over HTTP and signals.

// Test code: a panic here is a failed test, which is what unwrap() should cause.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use cairn_tests::{CairnProcess, run};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_cairn");

fn serve(data: &Path, extra: &[&str], env: &[(&str, &str)]) -> CairnProcess {
    let data = data.to_str().unwrap();
    let mut args = vec![
        "serve",
        "--data",
        data,
        "--listen",
        "127.0.0.1:0",
        "--cluster-listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    CairnProcess::start(Path::new(BIN), &args, env, Path::new("/")).unwrap()
}

/// Readiness includes an elected master, which takes a moment after start.
async fn wait_ready(addr: std::net::SocketAddr) -> Value {
    let deadline = std::time::Instant::now() + cairn_tests::PATIENCE;
    loop {
        let (status, body) = get(addr, "/ready").await;
        if status == 200 {
            return body;
        }
        assert!(std::time::Instant::now() < deadline, "never ready: {body}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, Value) {
    let resp = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

#[test]
fn version_is_printed() {
    let (status, out, _) = run(Path::new(BIN), &["--version"], &[], Path::new("/")).unwrap();
    assert!(status.success());
    assert_eq!(out.trim(), format!("cairn {}", env!("CARGO_PKG_VERSION")));
}

#[tokio::test]
async fn serve_answers_health_and_readiness_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut p = serve(&data, &[], &[]);
    let addr = p.wait_listening().unwrap();

    assert_eq!(
        get(addr, "/health").await,
        (200, serde_json::json!({"status": "ok"}))
    );
    let ready = wait_ready(addr).await;
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["checks"]["master"]["status"], "ok");
    assert_eq!(ready["checks"]["chunk_store"]["status"], "ok");
    assert_eq!(ready["checks"]["state_store"]["status"], "ok");
    // Everything else is S3: an unsigned request is refused with an S3 error carrying the
    // request id, which is also on every response.
    let resp = reqwest::get(format!("http://{addr}/nosuchbucket/some/key"))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    let id = resp.headers()["x-amz-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = resp.text().await.unwrap();
    assert!(body.contains("<Code>AccessDenied</Code>"), "{body}");
    assert!(
        body.contains(&format!("<RequestId>{id}</RequestId>")),
        "{body}"
    );

    // A component going away turns readiness to 503 and names it; health stays up.
    std::fs::rename(data.join("chunks"), data.join("chunks.away")).unwrap();
    let (status, ready) = get(addr, "/ready").await;
    assert_eq!(status, 503);
    assert_eq!(ready["checks"]["chunk_store"]["status"], "down");
    assert_eq!(ready["checks"]["state_store"]["status"], "ok");
    assert_eq!(get(addr, "/health").await.0, 200);
    std::fs::rename(data.join("chunks.away"), data.join("chunks")).unwrap();
    wait_ready(addr).await;

    p.signal(libc::SIGTERM).unwrap();
    let status = p.wait().unwrap();
    assert!(status.success(), "exit {status:?}\n{}", p.log());
    assert!(p.log().contains("shutdown complete"), "{}", p.log());

    // The lock went with the process: the same folder serves again, and SIGINT stops it too.
    let mut again = serve(&data, &[], &[]);
    let addr = again.wait_listening().unwrap();
    assert_eq!(get(addr, "/health").await.0, 200);
    wait_ready(addr).await;
    again.signal(libc::SIGINT).unwrap();
    assert!(again.wait().unwrap().success(), "{}", again.log());
}

#[test]
fn second_serve_on_the_same_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = serve(dir.path(), &[], &[]);
    first.wait_listening().unwrap();
    let data = dir.path().to_str().unwrap();
    let (status, _, err) = run(
        Path::new(BIN),
        &[
            "serve",
            "--data",
            data,
            "--listen",
            "127.0.0.1:0",
            "--cluster-listen",
            "127.0.0.1:0",
        ],
        &[],
        Path::new("/"),
    )
    .unwrap();
    assert!(!status.success());
    assert!(err.contains("in use by another cairn process"), "{err}");
    assert!(err.contains(&format!("pid {}", first.pid())), "{err}");
}

#[test]
fn a_killed_process_leaves_no_stale_lock() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = serve(dir.path(), &[], &[]);
    p.wait_listening().unwrap();
    p.kill().unwrap();
    let mut again = serve(dir.path(), &[], &[]);
    again.wait_listening().unwrap();
}

#[test]
fn default_data_folder_is_cairn_data_in_the_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = CairnProcess::start(
        Path::new(BIN),
        &[
            "serve",
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
    assert!(dir.path().join("cairn-data/LOCK").exists());
    assert!(dir.path().join("cairn-data/master/state.redb").exists());
    assert!(dir.path().join("cairn-data/master/raft-log.redb").exists());
    assert!(dir.path().join("cairn-data/chunks").is_dir());
}

#[test]
fn configuration_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let file = cwd.join("cairn.toml");
    let data = cwd.join("d");
    let data = data.to_str().unwrap();

    std::fs::write(&file, "[chunks]\nsink = \"always\"\n").unwrap();
    let (status, _, err) = run(
        Path::new(BIN),
        &["serve", "--config", file.to_str().unwrap()],
        &[],
        cwd,
    )
    .unwrap();
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(
        err.contains("unknown configuration key `chunks.sink`"),
        "{err}"
    );

    std::fs::write(&file, "[chunks]\nsync = \"sometimes\"\n").unwrap();
    let (status, _, err) = run(
        Path::new(BIN),
        &["serve", "--data", data],
        &[("CAIRN_CONFIG", file.to_str().unwrap())],
        cwd,
    )
    .unwrap();
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(
        err.contains("`chunks.sync`") && err.contains("cairn.toml"),
        "{err}"
    );

    let (status, _, err) = run(
        Path::new(BIN),
        &["serve", "--data", data],
        &[("CAIRN_CHUNKS_SIZE_MAX", "lots")],
        cwd,
    )
    .unwrap();
    assert_eq!(status.code(), Some(2));
    assert!(
        err.contains("`chunks.size_max`") && err.contains("CAIRN_CHUNKS_SIZE_MAX"),
        "{err}"
    );

    let (status, _, err) = run(
        Path::new(BIN),
        &["serve", "--data", data],
        &[("CAIRN_DATADIR", "x")],
        cwd,
    )
    .unwrap();
    assert_eq!(status.code(), Some(2));
    assert!(err.contains("CAIRN_DATADIR"), "{err}");

    let (status, _, err) = run(
        Path::new(BIN),
        &["serve", "--data", data, "--listen", "localhost"],
        &[],
        cwd,
    )
    .unwrap();
    assert_eq!(status.code(), Some(2));
    assert!(
        err.contains("`listen`") && err.contains("--listen"),
        "{err}"
    );
}

#[tokio::test]
async fn flags_win_over_environment_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cairn.toml");
    // The file and the environment both name unusable listen addresses; the flag wins.
    std::fs::write(&file, "listen = \"192.0.2.1:1\"\nlog = \"debug\"\n").unwrap();
    let data = dir.path().join("d");
    let mut p = CairnProcess::start(
        Path::new(BIN),
        &[
            "serve",
            "--config",
            file.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--cluster-listen",
            "127.0.0.1:0",
        ],
        &[("CAIRN_LISTEN", "192.0.2.1:2")],
        dir.path(),
    )
    .unwrap();
    let addr = p.wait_listening().unwrap();
    assert!(addr.ip().is_loopback());
    // The file's log level applied (no flag or variable overrode it).
    assert!(p.log().contains("DEBUG"), "{}", p.log());
}
