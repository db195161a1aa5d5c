//! `cairn`: one binary for every role. `cairn serve` runs everything in one process on a local
//! data folder; later issues add `master`, `chunkserver` and `gateway` roles for a cluster.

mod config;
mod lock;
mod serve;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::Layers;

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
            Ok(format!(
                "wrote node.pem, node.key and ca.pem for {name} to {}\ncopy that folder to the new node as DATA/tls (keep node.key private)",
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
    /// When chunk appends reach the disk: always | batch [default: always] (CAIRN_CHUNKS_SYNC).
    #[arg(long, value_name = "POLICY")]
    chunk_sync: Option<String>,
    /// With batch sync, sync after this many unsynced bytes [default: 8MiB]
    /// (CAIRN_CHUNKS_SYNC_BATCH_BYTES).
    #[arg(long, value_name = "SIZE")]
    chunk_sync_batch_bytes: Option<String>,
    /// Size limit of new chunks [default: 64MiB] (CAIRN_CHUNKS_SIZE_MAX).
    #[arg(long, value_name = "SIZE")]
    chunk_size_max: Option<String>,
}

fn serve_config(args: &ServeArgs) -> Result<config::ServeConfig, config::ConfigError> {
    let mut layers = Layers::default();
    let file = args
        .config
        .clone()
        .or_else(|| std::env::var_os("CAIRN_CONFIG").map(PathBuf::from));
    if let Some(path) = file {
        layers.file(&path)?;
    }
    layers.env(std::env::vars(), &["CAIRN_CONFIG"])?;
    layers.flag("data", args.data.as_deref());
    layers.flag("listen", args.listen.as_deref());
    layers.flag("log", args.log.as_deref());
    layers.flag("chunks.sync", args.chunk_sync.as_deref());
    layers.flag(
        "chunks.sync_batch_bytes",
        args.chunk_sync_batch_bytes.as_deref(),
    );
    layers.flag("chunks.size_max", args.chunk_size_max.as_deref());
    layers.resolve()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Cluster(command) => match cluster(command) {
            Ok(message) => {
                println!("{message}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Serve(args) => {
            let config = match serve_config(&args) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(&config.log))
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .init();
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(serve::run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
