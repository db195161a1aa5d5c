//! The transport on real QUIC over loopback: mutual TLS, framing, typed RPC, bad input.

// Test code: a panic here is a failed test, which is what unwrap() should cause.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use cairn_proto::frame::{self, FRAME_BODY_MAX, Frame, Kind};
use cairn_proto::rpc::CLOSE_PROTOCOL_VIOLATION;
use cairn_proto::tls::ensure_identity;
use cairn_proto::{
    Client, ClientOptions, ClusterCa, ErrorCode, NodeIdentity, RemoteError, Router, Rpc, RpcError,
    ServeOptions, TransportOptions,
};
use serde::{Deserialize, Serialize};

struct Echo;
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct EchoRequest {
    text: String,
    fail: bool,
}
impl Rpc for Echo {
    const METHOD: u16 = 1;
    const NAME: &'static str = "echo";
    type Request = EchoRequest;
    type Response = String;
}

/// A method the server does not route.
struct Missing;
impl Rpc for Missing {
    const METHOD: u16 = 99;
    const NAME: &'static str = "missing";
    type Request = ();
    type Response = ();
}

fn router() -> Router {
    Router::new().route::<Echo, _, _>(|req: EchoRequest| async move {
        if req.fail {
            Err(RemoteError::new(ErrorCode::Internal, "asked to fail"))
        } else {
            Ok(format!("echo: {}", req.text))
        }
    })
}

fn local() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn start_server(identity: &NodeIdentity, addr: SocketAddr) -> (quinn::Endpoint, SocketAddr) {
    let ep = cairn_proto::endpoint(addr, identity, &TransportOptions::default()).unwrap();
    let bound = ep.local_addr().unwrap();
    tokio::spawn(cairn_proto::serve(
        ep.clone(),
        router(),
        ServeOptions::default(),
    ));
    (ep, bound)
}

fn client(identity: &NodeIdentity, options: ClientOptions) -> Client {
    Client::new(
        cairn_proto::endpoint(local(), identity, &TransportOptions::default()).unwrap(),
        options,
    )
}

fn quick() -> ClientOptions {
    ClientOptions {
        attempt_timeout: Duration::from_secs(5),
        attempts: 1,
        ..ClientOptions::default()
    }
}

fn echo(text: &str) -> EchoRequest {
    EchoRequest {
        text: text.into(),
        fail: false,
    }
}

#[tokio::test]
async fn mutual_tls_calls_reuse_one_connection() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::create(dir.path()).unwrap();
    let (_server, addr) = start_server(&ca.issue("server", &[]).unwrap(), local());
    let c = client(&ca.issue("client", &[]).unwrap(), quick());
    for i in 0..20 {
        let got = c
            .call::<Echo>(addr, &echo(&format!("hi {i}")))
            .await
            .unwrap();
        assert_eq!(got, format!("echo: hi {i}"));
    }
    // Concurrent calls share the connection too (a stream per call).
    let calls = (0..50).map(|i| {
        let c = c.clone();
        async move { c.call::<Echo>(addr, &echo(&i.to_string())).await }
    });
    for r in futures_join(calls).await {
        r.unwrap();
    }
    let err = c
        .call::<Echo>(
            addr,
            &EchoRequest {
                text: "x".into(),
                fail: true,
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RpcError::Remote { error, .. } if error.code == ErrorCode::Internal),
        "{err}"
    );
    let err = c.call::<Missing>(addr, &()).await.unwrap_err();
    assert!(
        matches!(&err, RpcError::Remote { error, .. } if error.code == ErrorCode::UnknownMethod),
        "{err}"
    );
    // Errors answered by the peer do not cost the connection.
    assert_eq!(
        c.call::<Echo>(addr, &echo("still")).await.unwrap(),
        "echo: still"
    );
}

async fn futures_join<F: std::future::Future + Send + 'static>(
    fs: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = fs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn a_peer_with_a_certificate_from_another_ca_is_refused_at_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::create(&dir.path().join("a")).unwrap();
    let other = ClusterCa::create(&dir.path().join("b")).unwrap();
    let (_server, addr) = start_server(&ca.issue("server", &[]).unwrap(), local());

    let intruder = client(&other.issue("intruder", &[]).unwrap(), quick());
    let err = intruder
        .call::<Echo>(addr, &echo("let me in"))
        .await
        .unwrap_err();
    // Typed, and said in words: a refused handshake is not a connection failure to retry.
    assert!(matches!(err, RpcError::Untrusted { .. }), "{err}");
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("another cluster's CA"), "{err}");

    // The server keeps serving members.
    let member = client(&ca.issue("member", &[]).unwrap(), quick());
    assert_eq!(
        member.call::<Echo>(addr, &echo("ok")).await.unwrap(),
        "echo: ok"
    );

    // And a member does not trust a server from another CA either.
    let (_rogue, rogue_addr) = start_server(&other.issue("rogue", &[]).unwrap(), local());
    assert!(
        member
            .call::<Echo>(rogue_addr, &echo("hello?"))
            .await
            .is_err()
    );
}

/// Open a raw stream to the server as a member and send `bytes`; returns what came back and the
/// connection's close code.
/// A bare QUIC connection to `addr` (its endpoint must live as long as it).
async fn connect(
    identity: &NodeIdentity,
    addr: SocketAddr,
) -> (quinn::Endpoint, quinn::Connection) {
    let ep = cairn_proto::endpoint(local(), identity, &TransportOptions::default()).unwrap();
    let conn = ep
        .connect(addr, cairn_proto::tls::CLUSTER_SERVER_NAME)
        .unwrap()
        .await
        .unwrap();
    (ep, conn)
}

async fn raw_exchange(
    identity: &NodeIdentity,
    addr: SocketAddr,
    bytes: &[u8],
) -> (Result<Frame, frame::FrameError>, Option<u64>) {
    let (_ep, conn) = connect(identity, addr).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(bytes).await.unwrap();
    let _ = send.finish();
    let reply = frame::read_frame(&mut recv, FRAME_BODY_MAX).await;
    let code = match conn.closed().await {
        quinn::ConnectionError::ApplicationClosed(c) => Some(c.error_code.into_inner()),
        _ => None,
    };
    (reply, code)
}

#[tokio::test]
async fn bad_frames_close_the_connection_with_a_typed_error_and_the_node_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::create(dir.path()).unwrap();
    let (_server, addr) = start_server(&ca.issue("server", &[]).unwrap(), local());
    let member = ca.issue("member", &[]).unwrap();

    let good = Frame::new(
        Kind::Request,
        Echo::METHOD,
        postcard::to_stdvec(&echo("x")).unwrap(),
    )
    .encode();
    let mut bad_body_crc = good.clone();
    let last = bad_body_crc.len() - 1;
    bad_body_crc[last] ^= 1;
    let mut bad_version = good.clone();
    bad_version[0] = 9;
    let oversize = Frame::new(Kind::Request, 1, vec![0u8; 10]).encode_header();
    let mut oversize = oversize.to_vec();
    oversize[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    let crc = crc32c::crc32c(&oversize[..12]);
    oversize[12..16].copy_from_slice(&crc.to_le_bytes());
    let response_kind = Frame::new(Kind::Response, 1, vec![1, 2, 3]).encode();

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("body checksum", bad_body_crc),
        ("unknown version", bad_version),
        ("oversize", oversize),
        ("truncated", good[..good.len() - 3].to_vec()),
        ("wrong kind", response_kind),
    ];
    for (name, bytes) in cases {
        let (reply, code) = raw_exchange(&member, addr, &bytes).await;
        let reply = reply.unwrap_or_else(|e| panic!("{name}: no error frame: {e}"));
        assert_eq!(reply.kind, Kind::Error, "{name}");
        let err: RemoteError = postcard::from_bytes(&reply.body).unwrap();
        assert_eq!(err.code, ErrorCode::BadRequest, "{name}");
        assert!(
            err.message.starts_with("bad frame"),
            "{name}: {}",
            err.message
        );
        assert_eq!(code, Some(u64::from(CLOSE_PROTOCOL_VIOLATION)), "{name}");
    }
    // A request body that frames correctly but does not decode is a bad request, not a
    // protocol violation: the connection stays open.
    let c = client(&member, quick());
    let junk_body = Frame::new(Kind::Request, Echo::METHOD, vec![0xff; 3]);
    let (reply, _) = {
        let (_ep, conn) = connect(&member, addr).await;
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        frame::write_frame(&mut send, &junk_body).await.unwrap();
        let _ = send.finish();
        let reply = frame::read_frame(&mut recv, FRAME_BODY_MAX).await.unwrap();
        assert!(conn.close_reason().is_none());
        (reply, ())
    };
    let err: RemoteError = postcard::from_bytes(&reply.body).unwrap();
    assert_eq!(err.code, ErrorCode::BadRequest);
    // The node kept serving through all of it.
    assert_eq!(
        c.call::<Echo>(addr, &echo("alive")).await.unwrap(),
        "echo: alive"
    );
}

#[tokio::test]
async fn calls_retry_until_the_server_comes_up() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::create(dir.path()).unwrap();
    // Reserve a port, free it, and start the server there only after the client began calling.
    let addr = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let server_id = ca.issue("server", &[]).unwrap();
    let c = client(
        &ca.issue("client", &[]).unwrap(),
        ClientOptions {
            attempt_timeout: Duration::from_millis(500),
            attempts: 40,
            backoff: Duration::from_millis(20),
            backoff_max: Duration::from_millis(200),
            ..ClientOptions::default()
        },
    );
    let call = tokio::spawn(async move { c.call::<Echo>(addr, &echo("late")).await });
    tokio::time::sleep(Duration::from_millis(700)).await;
    let _server = start_server(&server_id, addr);
    assert_eq!(call.await.unwrap().unwrap(), "echo: late");

    // With nothing there at all, the call gives up with a retryable error after its attempts.
    let nowhere = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let c = client(
        &ca.issue("client2", &[]).unwrap(),
        ClientOptions {
            attempt_timeout: Duration::from_millis(200),
            attempts: 3,
            backoff: Duration::from_millis(10),
            ..ClientOptions::default()
        },
    );
    let err = c.call::<Echo>(nowhere, &echo("anyone?")).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
}

#[test]
fn first_start_creates_a_ca_with_private_keys_mode_0600() {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    assert!(ensure_identity(&tls, "node-1").unwrap());
    assert!(
        !ensure_identity(&tls, "node-1").unwrap(),
        "second start reuses the identity"
    );
    for key in ["ca.key", "node.key"] {
        let mode = std::fs::metadata(tls.join(key))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{key}");
    }
    // The CA refuses to be created twice over existing credentials.
    assert!(ClusterCa::create(&tls).is_err());
    // Node names are checked.
    let ca = ClusterCa::load(&tls).unwrap();
    assert!(ca.issue("bad name/..", &[]).is_err());
    assert!(
        ca.issue("node-2", &["10.0.0.2".into(), "node-2.example".into()])
            .is_ok()
    );
    NodeIdentity::load(&tls).unwrap().server_config().unwrap();
}

mod fuzz_bodies {
    use cairn_proto::frame::{Frame, Kind, fuzz_decode};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        // The frame fuzz target's body over generated inputs: random bytes, and real frames with
        // random damage.
        #[test]
        fn fuzz_frame_body(noise in proptest::collection::vec(any::<u8>(), 0..64), body in proptest::collection::vec(any::<u8>(), 0..300), at in 0usize..400) {
            fuzz_decode(&noise);
            let mut f = Frame::new(Kind::Request, 3, body).encode();
            fuzz_decode(&f);
            let start = at.min(f.len());
            let end = (start + noise.len()).min(f.len());
            f[start..end].copy_from_slice(&noise[..end - start]);
            fuzz_decode(&f);
        }
    }
}

/// A node restarted on its address (after a crash, or in a rolling restart) resets the
/// connections of its previous life at once: its stateless-reset key comes from its private
/// key, so the peer can verify the reset. Found by the rolling-restart test: with quinn's
/// random key per process, a gateway kept writing into its connection to a restarted
/// chunkserver until the 30 s idle timeout, and a put and the gateway's own shutdown waited
/// with it. The node is a real process (this test binary, run again as a server), killed
/// with SIGKILL.
#[tokio::test]
async fn a_node_restarted_on_its_address_resets_the_connections_of_its_previous_life() {
    const TEST: &str =
        "a_node_restarted_on_its_address_resets_the_connections_of_its_previous_life";
    if let (Ok(at), Ok(tls)) = (
        std::env::var("CAIRN_TEST_SERVE_AT"),
        std::env::var("CAIRN_TEST_SERVE_TLS"),
    ) {
        // The server's side: serve until killed.
        let identity = NodeIdentity::load(std::path::Path::new(&tls)).unwrap();
        let _server = start_server(&identity, at.parse().unwrap());
        println!("serving");
        std::future::pending::<()>().await;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::create(dir.path()).unwrap();
    let tls = dir.path().join("server");
    ca.issue("server", &[]).unwrap().save(&tls).unwrap();
    let client_id = ca.issue("client", &[]).unwrap();
    let addr = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let life = || {
        use std::io::BufRead;
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
            .env("CAIRN_TEST_SERVE_AT", addr.to_string())
            .env("CAIRN_TEST_SERVE_TLS", &tls)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        for line in out.lines() {
            if line.unwrap().contains("serving") {
                return child;
            }
        }
        let status = child.wait();
        panic!("the server process ended before serving: {status:?}");
    };
    let mut first_life = life();
    let (_ep, conn) = connect(&client_id, addr).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let request = Frame::new(
        Kind::Request,
        Echo::METHOD,
        postcard::to_stdvec(&echo("first")).unwrap(),
    );
    frame::write_frame(&mut send, &request).await.unwrap();
    let _ = send.finish();
    let reply = frame::read_frame(&mut recv, FRAME_BODY_MAX).await.unwrap();
    assert_eq!(reply.kind, Kind::Response);

    // kill -9, and the node comes back on its address.
    first_life.kill().unwrap();
    first_life.wait().unwrap();
    let mut second_life = life();

    // The client's next packet on the old connection meets the new process, which answers
    // with a stateless reset; the connection ends as reset, not timed out.
    if let Ok((mut send, _recv)) = conn.open_bi().await {
        let _ = send.write_all(&[0u8; 200]).await;
        let _ = send.finish();
    }
    let why = conn.closed().await;
    // And a call reconnects to the second life.
    let c = client(&client_id, quick());
    let again = c.call::<Echo>(addr, &echo("again")).await;
    second_life.kill().unwrap();
    let _ = second_life.wait();
    assert!(
        matches!(why, quinn::ConnectionError::Reset),
        "the old connection ended with {why:?}, not a stateless reset"
    );
    assert_eq!(again.unwrap(), "echo: again");
}
