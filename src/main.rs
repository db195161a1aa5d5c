//! `cairn`: one binary for every role. `cairn serve` runs everything in one process on a local
//! data folder; `master`, `chunkserver` and `gateway` run the roles of a cluster apart.

use cairn::{chunkserver, config, gateway, master, serve};

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::Layers;

/// mimalloc instead of glibc malloc: the allocator took ~10% of a master's CPU under load
/// (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "cairn",
    version,
    about = "Cairn: a self-hosted, S3-compatible distributed object store"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run everything in one process on a local data folder.
    Serve(ServeArgs),
    /// Cluster credentials: the cluster CA and node certificates.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Run one master of the replicated control plane.
    Master(MasterArgs),
    /// Run one chunkserver of the data plane.
    Chunkserver(ChunkserverArgs),
    /// Run an S3 gateway in front of a cluster.
    Gateway(GatewayArgs),
    /// Operate a running cluster.
    #[command(subcommand)]
    Admin(AdminCommand),
}

/// Flags of `cairn master`. Each may also come from a `CAIRN_*` variable or the config file
/// (keys `master.id`, `cluster.listen`, `data`, `log`, `master.snapshot_after_entries`).
#[derive(Debug, Args)]
struct MasterArgs {
    /// TOML config file (also CAIRN_CONFIG).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// This master's id, unique in the group and never reused (CAIRN_MASTER_ID).
    #[arg(long)]
    id: Option<String>,
    /// QUIC (UDP) address peers and clients reach this master on (CAIRN_CLUSTER_LISTEN).
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Data folder: tls/ credentials, master/ Raft log and state (CAIRN_DATA).
    #[arg(long, value_name = "DIR")]
    data: Option<String>,
    /// Log filter (CAIRN_LOG).
    #[arg(long)]
    log: Option<String>,
    /// Build a snapshot after this many log entries [default: 10000]
    /// (CAIRN_MASTER_SNAPSHOT_AFTER_ENTRIES).
    #[arg(long, value_name = "N")]
    snapshot_after_entries: Option<String>,
    /// Replicas per chunk, 1 to 7 [default: 3] (CAIRN_MASTER_REPLICATION).
    #[arg(long, value_name = "R")]
    replication: Option<String>,
    /// A chunkserver silent this long is dead [default: 5000] (CAIRN_MASTER_DEAD_AFTER_MS).
    #[arg(long, value_name = "MS")]
    dead_after_ms: Option<String>,
    /// Unreferenced chunks are reclaimed after this grace period [default: 3600000]
    /// (CAIRN_MASTER_GC_GRACE_MS).
    #[arg(long, value_name = "MS")]
    gc_grace_ms: Option<String>,
    /// Chunk size the master hands writers [default: 64MiB] (CAIRN_CHUNKS_SIZE_MAX).
    #[arg(long, value_name = "SIZE")]
    chunk_size_max: Option<String>,
}

/// Flags of `cairn chunkserver`. Each may also come from a `CAIRN_*` variable or the config
/// file (keys `chunkserver.masters`, `cluster.listen`, `data`, `chunkserver.zone`...).
#[derive(Debug, Args)]
struct ChunkserverArgs {
    /// TOML config file (also CAIRN_CONFIG).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// A master's QUIC address (repeatable; CAIRN_CHUNKSERVER_MASTERS, comma-separated).
    #[arg(long = "master", value_name = "ADDR")]
    masters: Vec<String>,
    /// QUIC (UDP) address for the chunk protocol (CAIRN_CLUSTER_LISTEN).
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Data folder: tls/ credentials and chunks/ (CAIRN_DATA).
    #[arg(long, value_name = "DIR")]
    data: Option<String>,
    /// Failure domain (rack, room...); replicas go to distinct zones (CAIRN_CHUNKSERVER_ZONE).
    #[arg(long)]
    zone: Option<String>,
    /// Heartbeat interval [default: 1000] (CAIRN_CHUNKSERVER_HEARTBEAT_MS).
    #[arg(long, value_name = "MS")]
    heartbeat_ms: Option<String>,
    /// Scrubber rate, e.g. 32MiB (per second; 0 turns it off) (CAIRN_CHUNKSERVER_SCRUB_RATE).
    #[arg(long, value_name = "SIZE")]
    scrub_rate: Option<String>,
    /// Replica copies into this server per second while no client transfer runs on it, e.g.
    /// 200MiB; 0: unlimited [default: 0] (CAIRN_CHUNKSERVER_REPAIR_RATE).
    #[arg(long, value_name = "SIZE")]
    repair_rate: Option<String>,
    /// The same while clients read or write on it [default: 32MiB]
    /// (CAIRN_CHUNKSERVER_REPAIR_RATE_BUSY).
    #[arg(long, value_name = "SIZE")]
    repair_rate_busy: Option<String>,
    /// Log filter (CAIRN_LOG).
    #[arg(long)]
    log: Option<String>,
    /// Largest chunk accepted [default: 64MiB] (CAIRN_CHUNKS_SIZE_MAX).
    #[arg(long, value_name = "SIZE")]
    chunk_size_max: Option<String>,
}

/// Flags of `cairn gateway`. Each may also come from a `CAIRN_*` variable or the config file
/// (keys `gateway.masters`, `listen`, `data`, `gateway.region`, `gateway.inline_max`,
/// `gateway.domain`, `gateway.cluster_bind`).
#[derive(Debug, Args)]
struct GatewayArgs {
    /// TOML config file (also CAIRN_CONFIG).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// A master's QUIC address (repeatable; CAIRN_GATEWAY_MASTERS, comma-separated).
    #[arg(long = "master", value_name = "ADDR")]
    masters: Vec<String>,
    /// HTTP address for S3, health and metrics [default: 127.0.0.1:9000] (CAIRN_LISTEN).
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Data folder holding tls/ (node certificate and the cluster secrets key) (CAIRN_DATA).
    #[arg(long, value_name = "DIR")]
    data: Option<String>,
    /// S3 region to report [default: us-east-1] (CAIRN_GATEWAY_REGION).
    #[arg(long)]
    region: Option<String>,
    /// Domain for virtual-hosted-style requests, e.g. s3.example.com: BUCKET.s3.example.com
    /// then names a bucket (CAIRN_GATEWAY_DOMAIN).
    #[arg(long)]
    domain: Option<String>,
    /// Objects up to this size are kept inline in the metadata [default: 16KiB]
    /// (CAIRN_GATEWAY_INLINE_MAX).
    #[arg(long, value_name = "SIZE")]
    inline_max: Option<String>,
    /// UDP address the gateway's QUIC connections to the cluster leave from [default:
    /// 0.0.0.0:0, any free port] (CAIRN_GATEWAY_CLUSTER_BIND).
    #[arg(long, value_name = "ADDR")]
    cluster_bind: Option<String>,
    /// Log filter (CAIRN_LOG).
    #[arg(long)]
    log: Option<String>,
}

fn gateway_config(args: &GatewayArgs) -> Result<config::ServeConfig, config::ConfigError> {
    let mut layers = file_and_env(args.config.as_ref())?;
    let masters = args.masters.join(",");
    layers.flag(
        "gateway.masters",
        (!masters.is_empty()).then_some(masters.as_str()),
    );
    layers.flag("listen", args.listen.as_deref());
    layers.flag("data", args.data.as_deref());
    layers.flag("gateway.region", args.region.as_deref());
    layers.flag("gateway.domain", args.domain.as_deref());
    layers.flag("gateway.inline_max", args.inline_max.as_deref());
    layers.flag("gateway.cluster_bind", args.cluster_bind.as_deref());
    layers.flag("log", args.log.as_deref());
    layers.resolve()
}

fn chunkserver_config(args: &ChunkserverArgs) -> Result<config::ServeConfig, config::ConfigError> {
    let mut layers = file_and_env(args.config.as_ref())?;
    let masters = args.masters.join(",");
    layers.flag(
        "chunkserver.masters",
        (!masters.is_empty()).then_some(masters.as_str()),
    );
    layers.flag("cluster.listen", args.listen.as_deref());
    layers.flag("data", args.data.as_deref());
    layers.flag("chunkserver.zone", args.zone.as_deref());
    layers.flag("chunkserver.heartbeat_ms", args.heartbeat_ms.as_deref());
    layers.flag("chunkserver.scrub_rate", args.scrub_rate.as_deref());
    layers.flag("chunkserver.repair_rate", args.repair_rate.as_deref());
    layers.flag(
        "chunkserver.repair_rate_busy",
        args.repair_rate_busy.as_deref(),
    );
    layers.flag("log", args.log.as_deref());
    layers.flag("chunks.size_max", args.chunk_size_max.as_deref());
    layers.resolve()
}

fn master_config(args: &MasterArgs) -> Result<config::ServeConfig, config::ConfigError> {
    let mut layers = file_and_env(args.config.as_ref())?;
    layers.flag("master.id", args.id.as_deref());
    layers.flag("cluster.listen", args.listen.as_deref());
    layers.flag("data", args.data.as_deref());
    layers.flag("log", args.log.as_deref());
    layers.flag(
        "master.snapshot_after_entries",
        args.snapshot_after_entries.as_deref(),
    );
    layers.flag("master.replication", args.replication.as_deref());
    layers.flag("master.dead_after_ms", args.dead_after_ms.as_deref());
    layers.flag("master.gc_grace_ms", args.gc_grace_ms.as_deref());
    layers.flag("chunks.size_max", args.chunk_size_max.as_deref());
    // Two masters with one id would corrupt the group: the id has no default here.
    if !layers.is_set("master.id") {
        return Err(config::ConfigError::Missing {
            key: "master.id".into(),
            hint: "give it with --id, CAIRN_MASTER_ID or master.id in the config file".into(),
        });
    }
    layers.resolve()
}

/// Where the admin commands find masters and their credentials.
#[derive(Debug, Args)]
struct AdminTarget {
    /// A master's QUIC address (repeatable; any member will do).
    #[arg(long = "master", value_name = "ADDR", required = true)]
    masters: Vec<SocketAddr>,
    /// Folder with a certificate from the cluster CA (node.pem, node.key, ca.pem).
    #[arg(long, value_name = "DIR", default_value = "./cairn-data/tls")]
    tls: PathBuf,
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Members, leader, term, log and applied index, lag and health of each master.
    Status {
        #[command(flatten)]
        target: AdminTarget,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Change the master group.
    #[command(subcommand)]
    Cluster(AdminClusterCommand),
    /// Drain a chunkserver: it takes no new chunk, and every chunk it holds is copied to the
    /// others, after which its replicas are deleted. Progress shows in `admin status`.
    Drain {
        #[command(flatten)]
        target: AdminTarget,
        /// The chunkserver's id (16 hex digits, as `admin status` shows it).
        server: String,
        /// Stop draining it: it takes chunks again.
        #[arg(long)]
        cancel: bool,
    },
    /// Set the zone (failure domain) of a chunkserver, over the one it reports; placement and
    /// re-replication spread replicas across zones.
    SetZone {
        #[command(flatten)]
        target: AdminTarget,
        /// The chunkserver's id (16 hex digits).
        server: String,
        /// The zone (letters, digits, '.', '_', '-'); `--clear` goes back to the reported one.
        zone: Option<String>,
        #[arg(long)]
        clear: bool,
    },
    /// Pause or resume rebalancing (moves onto emptier servers); healing and drains go on.
    Rebalance {
        #[command(flatten)]
        target: AdminTarget,
        #[arg(long, conflicts_with = "resume", required_unless_present = "resume")]
        pause: bool,
        #[arg(long)]
        resume: bool,
    },
    /// Retire a drained chunkserver: refused until it holds no chunk and none is
    /// under-replicated; then it is marked retired and can be stopped.
    Decommission {
        #[command(flatten)]
        target: AdminTarget,
        /// The chunkserver's id (16 hex digits).
        server: String,
    },
}

#[derive(Debug, Subcommand)]
enum AdminClusterCommand {
    /// Add a master: joins as a learner, catches up, then becomes a voter.
    AddMaster {
        #[command(flatten)]
        target: AdminTarget,
        /// The new master's id.
        #[arg(long)]
        id: u64,
        /// The new master's QUIC address.
        addr: SocketAddr,
    },
    /// Demote and remove a master.
    RemoveMaster {
        #[command(flatten)]
        target: AdminTarget,
        /// The id of the master to remove.
        #[arg(long)]
        id: u64,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Create a new cluster CA in DIR/tls and a certificate for this node.
    Init {
        /// Data folder of the node that will hold the CA.
        #[arg(long, value_name = "DIR", default_value = config::DEFAULT_DATA)]
        data: PathBuf,
        /// This node's name (certificate common name).
        #[arg(long, default_value = "node-1")]
        name: String,
    },
    /// Issue a certificate for another node, signed by the CA in DIR/tls.
    IssueCert {
        /// Data folder holding the cluster CA (its tls/ca.key).
        #[arg(long, value_name = "DIR", default_value = config::DEFAULT_DATA)]
        data: PathBuf,
        /// The new node's name (letters, digits, '-', '.').
        #[arg(long)]
        name: String,
        /// Extra DNS names or IP addresses for the certificate (repeatable).
        #[arg(long = "san", value_name = "NAME_OR_IP")]
        sans: Vec<String>,
        /// Folder to write node.pem, node.key and ca.pem into; copy it to the new node as
        /// DATA/tls.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

fn cluster(command: ClusterCommand) -> Result<String, cairn_proto::TlsError> {
    match command {
        ClusterCommand::Init { data, name } => {
            let tls = data.join("tls");
            cairn_proto::ClusterCa::create(&tls)?
                .issue(&name, &[])?
                .save(&tls)?;
            Ok(format!(
                "created a cluster CA and a certificate for {name} in {}\nissue certificates for other nodes with: cairn cluster issue-cert --data {} --name NAME --out DIR",
                tls.display(),
                data.display()
            ))
        }
        ClusterCommand::IssueCert {
            data,
            name,
            sans,
            out,
        } => {
            let ca = cairn_proto::ClusterCa::load(&data.join("tls"))?;
            ca.issue(&name, &sans)?.save(&out)?;
            cairn_proto::SecretsKey::ensure(&data.join("tls"))
                .and_then(|k| k.save_copy(&out))
                .map_err(|e| cairn_proto::TlsError::Io {
                    context: "copy the cluster secrets key".into(),
                    source: std::io::Error::other(e.to_string()),
                })?;
            Ok(format!(
                "wrote node.pem, node.key, ca.pem and secrets.key for {name} to {}\ncopy that folder to the new node as DATA/tls (keep node.key and secrets.key private)",
                out.display()
            ))
        }
    }
}

/// Flags of `cairn serve`. Each may also come from a `CAIRN_*` variable or the config file;
/// flags win over variables, variables over the file.
#[derive(Debug, Args)]
struct ServeArgs {
    /// TOML config file (also CAIRN_CONFIG).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data folder, created if missing [default: ./cairn-data] (CAIRN_DATA).
    #[arg(long, value_name = "DIR")]
    data: Option<String>,
    /// HTTP listen address [default: 127.0.0.1:9000] (CAIRN_LISTEN).
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Log filter, e.g. info or cairn=debug [default: info] (CAIRN_LOG).
    #[arg(long, value_name = "FILTER")]
    log: Option<String>,
    /// When chunk appends reach the disk: batch | always [default: batch]; a chunk is synced
    /// before its write is acknowledged either way (CAIRN_CHUNKS_SYNC).
    #[arg(long, value_name = "POLICY")]
    chunk_sync: Option<String>,
    /// With batch sync, sync after this many unsynced bytes [default: 8MiB]
    /// (CAIRN_CHUNKS_SYNC_BATCH_BYTES).
    #[arg(long, value_name = "SIZE")]
    chunk_sync_batch_bytes: Option<String>,
    /// Size limit of new chunks [default: 64MiB] (CAIRN_CHUNKS_SIZE_MAX).
    #[arg(long, value_name = "SIZE")]
    chunk_size_max: Option<String>,
    /// QUIC address of the in-process master [default: 127.0.0.1:7070] (CAIRN_CLUSTER_LISTEN).
    #[arg(long, value_name = "ADDR")]
    cluster_listen: Option<String>,
    /// Chunkservers to run in-process, 1 to 16 [default: 1] (CAIRN_SERVE_CHUNKSERVERS).
    #[arg(long, value_name = "N")]
    chunkservers: Option<String>,
    /// Replicas per chunk, 1 to the number of chunkservers [default: min(3, N)]
    /// (CAIRN_MASTER_REPLICATION).
    #[arg(long, value_name = "R")]
    replication: Option<String>,
    /// S3 region to report [default: us-east-1] (CAIRN_GATEWAY_REGION).
    #[arg(long)]
    region: Option<String>,
    /// Domain for virtual-hosted-style requests, e.g. s3.example.com: BUCKET.s3.example.com
    /// then names a bucket (CAIRN_GATEWAY_DOMAIN).
    #[arg(long)]
    domain: Option<String>,
}

/// The configuration layers below the flags: the file (`--config` or `CAIRN_CONFIG`), then the
/// `CAIRN_*` variables.
fn file_and_env(config: Option<&PathBuf>) -> Result<Layers, config::ConfigError> {
    let mut layers = Layers::default();
    let file = config
        .cloned()
        .or_else(|| std::env::var_os("CAIRN_CONFIG").map(PathBuf::from));
    if let Some(path) = file {
        layers.file(&path)?;
    }
    layers.env(
        std::env::vars(),
        &[
            "CAIRN_CONFIG",
            "CAIRN_ROOT_ACCESS_KEY",
            "CAIRN_ROOT_SECRET_KEY",
        ],
    )?;
    Ok(layers)
}

fn serve_config(args: &ServeArgs) -> Result<config::ServeConfig, config::ConfigError> {
    let mut layers = file_and_env(args.config.as_ref())?;
    layers.flag("data", args.data.as_deref());
    layers.flag("listen", args.listen.as_deref());
    layers.flag("log", args.log.as_deref());
    layers.flag("chunks.sync", args.chunk_sync.as_deref());
    layers.flag(
        "chunks.sync_batch_bytes",
        args.chunk_sync_batch_bytes.as_deref(),
    );
    layers.flag("chunks.size_max", args.chunk_size_max.as_deref());
    layers.flag("cluster.listen", args.cluster_listen.as_deref());
    layers.flag("serve.chunkservers", args.chunkservers.as_deref());
    layers.flag("master.replication", args.replication.as_deref());
    layers.flag("gateway.region", args.region.as_deref());
    layers.flag("gateway.domain", args.domain.as_deref());
    layers.resolve()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Cluster(command) => match cluster(command) {
            Ok(message) => {
                cairn::say!("{message}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Master(args) => {
            let config = match master_config(&args) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logging(&config.log);
            block_on_watched("master", master::run(config))
        }
        Command::Chunkserver(args) => {
            let config = match chunkserver_config(&args) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logging(&config.log);
            block_on_watched("chunkserver", chunkserver::run(config))
        }
        Command::Gateway(args) => {
            let config = match gateway_config(&args) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logging(&config.log);
            block_on_watched("gateway", gateway::run(config))
        }
        Command::Admin(command) => {
            init_logging("warn");
            block_on(async move {
                match command {
                    AdminCommand::Status { target, json } => {
                        if master::status(&target.tls, &target.masters, json).await? {
                            Ok(())
                        } else {
                            anyhow::bail!("the master group is not healthy")
                        }
                    }
                    AdminCommand::Cluster(AdminClusterCommand::AddMaster { target, id, addr }) => {
                        master::add_master(&target.tls, &target.masters, id, addr).await
                    }
                    AdminCommand::Cluster(AdminClusterCommand::RemoveMaster { target, id }) => {
                        master::remove_master(&target.tls, &target.masters, id).await
                    }
                    AdminCommand::Drain {
                        target,
                        server,
                        cancel,
                    } => master::drain(&target.tls, &target.masters, &server, cancel).await,
                    AdminCommand::SetZone {
                        target,
                        server,
                        zone,
                        clear,
                    } => master::set_zone(&target.tls, &target.masters, &server, zone, clear).await,
                    AdminCommand::Rebalance { target, pause, .. } => {
                        master::rebalance(&target.tls, &target.masters, pause).await
                    }
                    AdminCommand::Decommission { target, server } => {
                        master::decommission(&target.tls, &target.masters, &server).await
                    }
                }
            })
        }
        Command::Serve(args) => {
            let config = match serve_config(&args) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logging(&config.log);
            block_on_watched("node", serve::run(config))
        }
    }
}

fn init_logging(filter: &str) {
    // openraft logs every failed heartbeat at ERROR while a peer is down, which is expected
    // during failover and restarts: its logs are off unless the filter names it
    // (e.g. `--log info,openraft=info`).
    let filter = if filter.contains("openraft") {
        filter.to_owned()
    } else {
        format!("{filter},openraft=off")
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn block_on(work: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    run_on_runtime(None, work)
}

/// A long-running role: its runtime is watched (`cairn::watchdog`).
fn block_on_watched(
    role: &'static str,
    work: impl std::future::Future<Output = anyhow::Result<()>>,
) -> ExitCode {
    run_on_runtime(Some(role), work)
}

fn run_on_runtime(
    watched: Option<&'static str>,
    work: impl std::future::Future<Output = anyhow::Result<()>>,
) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Dropped before the runtime (declared after it): its shutdown is not watched.
    let _watching = watched.map(|role| cairn::watchdog::start(runtime.handle(), role));
    match runtime.block_on(work) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<cairn::output::Refused>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
