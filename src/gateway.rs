//! The gateway role (`cairn gateway`) and the pieces `cairn serve` shares with it: building a
//! gateway on a node identity, and the root credentials.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use cairn_api::{Gateway, GatewayOptions};
use cairn_client::{DataClient, MasterClient};
use cairn_proto::{NodeIdentity, SecretsKey, TransportOptions};

use crate::config::ServeConfig;

pub fn options(config: &ServeConfig) -> GatewayOptions {
    GatewayOptions {
        region: config.region.clone(),
        inline_max: config.inline_max,
        domain: config.domain.clone(),
        auth_rate_limit: config.auth_rate_limit,
        api_rate_limit: config.api_rate_limit,
        access_ttl_s: config.access_ttl_s,
        share_links_max: config.share_links_max,
        share_ttl_max_s: config.share_ttl_max_s,
        image_max: config.image_max,
        allow_sse_c_over_http: config.allow_sse_c_over_http,
        ..GatewayOptions::default()
    }
}

/// The SMTP server and sender address, if mail is configured.
pub fn smtp(config: &ServeConfig) -> (Option<String>, Option<String>) {
    (config.smtp_url.clone(), config.smtp_from.clone())
}

/// A gateway talking to `masters` with the credentials in `tls`.
/// With `local`, calls go straight to that in-process master while it leads.
pub fn build(
    tls: &Path,
    bind: SocketAddr,
    masters: &[SocketAddr],
    local: Option<cairn_raft::RaftNode>,
    local_chunkservers: &[cairn_chunkserver::Chunkserver],
    options: GatewayOptions,
    smtp: (Option<String>, Option<String>),
) -> anyhow::Result<Arc<Gateway>> {
    let identity = NodeIdentity::load(tls).with_context(|| {
        format!(
            "cluster credentials in {} (issue them on the CA holder with `cairn cluster issue-cert --name NAME --out DIR` and copy DIR to {})",
            tls.display(),
            tls.display()
        )
    })?;
    let secrets = SecretsKey::load(tls).context("the cluster secrets key")?;
    let endpoint = cairn_proto::endpoint(bind, &identity, &TransportOptions::default())
        .with_context(|| format!("the cluster address gateway.cluster_bind = {bind}"))?;
    let mut master = MasterClient::new(endpoint.clone(), masters.to_vec());
    if let Some(node) = local {
        master = master.with_local(node);
    }
    let mut data = DataClient::new(master.clone(), endpoint);
    for cs in local_chunkservers {
        data = data.with_local(cs.clone());
    }
    let mut gateway = Gateway::new(master, data, Arc::new(secrets), options);
    if let (Some(url), Some(from)) = (&smtp.0, &smtp.1) {
        let mailer = cairn_api::mail::Mailer::new(url, from).map_err(anyhow::Error::msg)?;
        tracing::info!(?mailer, "password reset tokens are sent by mail");
        gateway.mailer = Some(Arc::new(mailer));
    }
    Ok(Arc::new(gateway))
}

/// Letters and digits from the system's randomness.
fn random_string(n: usize, alphabet: &[u8]) -> String {
    (0..n)
        .map(|_| alphabet[(rand::random::<u32>() as usize) % alphabet.len()] as char)
        .collect()
}

/// Make sure the root S3 key exists: from `CAIRN_ROOT_ACCESS_KEY`/`CAIRN_ROOT_SECRET_KEY`, or,
/// when the cluster has no key at all, a generated one printed once.
pub async fn ensure_root_key(g: &Gateway, s3_url: &str) -> anyhow::Result<()> {
    let ak = std::env::var("CAIRN_ROOT_ACCESS_KEY")
        .ok()
        .filter(|s| !s.is_empty());
    let sk = std::env::var("CAIRN_ROOT_SECRET_KEY")
        .ok()
        .filter(|s| !s.is_empty());
    // The master may still be electing itself: retry for a while.
    let mut tries = 0;
    loop {
        let r = match (&ak, &sk) {
            (Some(ak), Some(sk)) => match cairn_api::auth::key_exists(g, ak).await {
                Ok(true) => Ok(()),
                Ok(false) => cairn_api::auth::create_key(g, ak, sk, cairn_master::keys::ROOT_OWNER, None).await.map(|()| {
                    tracing::info!(access_key = %ak, "root S3 key taken from CAIRN_ROOT_ACCESS_KEY/CAIRN_ROOT_SECRET_KEY");
                }),
                Err(e) => Err(e),
            },
            (None, None) => match cairn_api::auth::key_count(g).await {
                Ok(0) => {
                    let ak = format!("CAIRN{}", random_string(15, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"));
                    let sk = random_string(
                        40,
                        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
                    );
                    cairn_api::auth::create_key(g, &ak, &sk, cairn_master::keys::ROOT_OWNER, None).await.map(|()| {
                        println!(
                            "\nCairn root S3 credentials (shown once; keep them safe):\n  access key: {ak}\n  secret key: {sk}\n\nTry it:\n  export AWS_ACCESS_KEY_ID={ak} AWS_SECRET_ACCESS_KEY={sk} AWS_DEFAULT_REGION={}\n  aws --endpoint-url {s3_url} s3 mb s3://my-bucket\n",
                            g.options.region
                        );
                    })
                }
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            },
            _ => bail!("set both CAIRN_ROOT_ACCESS_KEY and CAIRN_ROOT_SECRET_KEY, or neither"),
        };
        match r {
            Ok(()) => return Ok(()),
            Err(e) if tries < 100 => {
                tries += 1;
                tracing::debug!(error = %e, "root key not settled yet; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => bail!("cannot set up the root S3 key: {e}"),
        }
    }
}

/// Bind the HTTP listener (so the real port is known before serving).
pub async fn bind(listen: SocketAddr) -> anyhow::Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr().context("read the bound address")?;
    Ok((listener, addr))
}

/// Serve `router` (TCP_NODELAY on every connection: small responses leave at once) until
/// SIGINT/SIGTERM.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    router: axum::Router,
) -> anyhow::Result<()> {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY");
        }
    });
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(crate::signal::shutdown_signal())
    .await
    .context("HTTP server")
}

/// `cairn gateway`: serve S3 in front of a cluster until SIGINT/SIGTERM.
pub async fn run(config: ServeConfig) -> anyhow::Result<()> {
    if config.gateway_masters.is_empty() {
        bail!(
            "no master given: use --master ADDR (repeatable), CAIRN_GATEWAY_MASTERS or gateway.masters"
        );
    }
    let g = build(
        &config.data.join("tls"),
        config.gateway_cluster_bind,
        &config.gateway_masters,
        None,
        &[],
        options(&config),
        smtp(&config),
    )?;
    // A certificate from another cluster's CA: say so and stop, not retry for ever.
    g.master
        .rpc()
        .check_trust(&config.gateway_masters, std::time::Duration::from_secs(3))
        .await
        .map_err(|e| anyhow::anyhow!("cannot join the cluster: {e}"))?;
    let (listener, addr) = bind(config.listen).await?;
    let url = format!("http://{addr}");
    ensure_root_key(&g, &url).await?;
    tracing::info!("S3 gateway listening on {url}");
    serve_http(listener, cairn_api::router(g, None)).await?;
    tracing::info!("shutdown complete");
    Ok(())
}
