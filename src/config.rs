//! Configuration: defaults, then a TOML file, then `CAIRN_*` environment variables, then flags
//! (flags win). Every key is declared once in [`KEYS`]; an unknown key or a bad value is refused
//! with a message naming the key and where its value came from.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use cairn_engine::chunk::{
    CHUNK_SIZE_MAX_DEFAULT, ChunkStoreOptions, SyncPolicy, format::CHUNK_SIZE_MAX_LIMIT,
};

/// A configuration key, by its dotted name (as in the file). What each means is in the
/// README's configuration table and in `cairn serve --help`.
#[derive(Debug)]
pub struct Key {
    pub name: &'static str,
}

/// Every configuration key. The environment variable of `a.b_c` is `CAIRN_A_B_C`; the flag is
/// `--a-b-c` (with `chunks.` shortened to `chunk-`).
pub const KEYS: &[Key] = &[
    Key { name: "data" },
    Key { name: "listen" },
    Key { name: "log" },
    Key {
        name: "chunks.sync",
    },
    Key {
        name: "chunks.sync_batch_bytes",
    },
    Key {
        name: "chunks.size_max",
    },
    Key {
        name: "cluster.listen",
    },
    Key { name: "master.id" },
    Key {
        name: "master.snapshot_after_entries",
    },
    Key {
        name: "master.replication",
    },
    Key {
        name: "master.election_timeout_ms",
    },
    Key {
        name: "master.write_replicas_min",
    },
    Key {
        name: "master.repair_copies_per_server",
    },
    Key {
        name: "master.dead_after_ms",
    },
    Key {
        name: "master.gc_grace_ms",
    },
    Key {
        name: "master.tick_ms",
    },
    Key {
        name: "chunkserver.masters",
    },
    Key {
        name: "chunkserver.zone",
    },
    Key {
        name: "chunkserver.heartbeat_ms",
    },
    Key {
        name: "chunkserver.scrub_rate",
    },
    Key {
        name: "chunkserver.repair_rate",
    },
    Key {
        name: "chunkserver.repair_rate_busy",
    },
    Key {
        name: "master.lifecycle_ms",
    },
    Key {
        name: "serve.chunkservers",
    },
    Key {
        name: "gateway.masters",
    },
    Key {
        name: "gateway.region",
    },
    Key {
        name: "gateway.inline_max",
    },
    Key {
        name: "gateway.domain",
    },
    Key {
        name: "gateway.cluster_bind",
    },
    Key {
        name: "api.auth_rate_limit",
    },
    Key {
        name: "api.rate_limit",
    },
    Key {
        name: "api.access_token_ttl",
    },
    Key { name: "smtp.url" },
    Key { name: "smtp.from" },
    Key {
        name: "shares.max_links",
    },
    Key {
        name: "shares.max_ttl",
    },
    Key {
        name: "images.max_size",
    },
    Key {
        name: "gateway.allow_sse_c_over_http",
    },
];

pub const DEFAULT_DATA: &str = "./cairn-data";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9000";
pub const DEFAULT_LOG: &str = "info";
pub const DEFAULT_CLUSTER_LISTEN: &str = "127.0.0.1:7070";
const DEFAULT_SYNC_BATCH_BYTES: u64 = 8 << 20;

/// Where a value came from, for error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Default,
    File(PathBuf),
    Env(String),
    Flag(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => write!(f, "the default"),
            Source::File(p) => write!(f, "config file {}", p.display()),
            Source::Env(v) => write!(f, "environment variable {v}"),
            Source::Flag(v) => write!(f, "flag {v}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid value for `{key}` (from {origin}): {reason}")]
    BadValue {
        key: String,
        origin: Source,
        reason: String,
    },
    #[error("unknown configuration key `{key}` in {origin}")]
    UnknownKey { key: String, origin: Source },
    #[error("missing `{key}`: {hint}")]
    Missing { key: String, hint: String },
    #[error("cannot read config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
}

/// The environment variable for a key.
pub fn env_name(key: &str) -> String {
    format!("CAIRN_{}", key.to_ascii_uppercase().replace('.', "_"))
}

/// The flag for a key.
pub fn flag_name(key: &str) -> String {
    format!(
        "--{}",
        key.replace("chunks.", "chunk-").replace(['.', '_'], "-")
    )
}

/// Raw values per key, with their source; later layers overwrite earlier ones.
#[derive(Debug, Default)]
pub struct Layers {
    values: BTreeMap<&'static str, (String, Source)>,
}

fn known(name: &str) -> Option<&'static str> {
    KEYS.iter().find(|k| k.name == name).map(|k| k.name)
}

impl Layers {
    /// Layer a TOML file's keys.
    pub fn file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        self.text(&text, path)
    }

    /// Layer the keys of a config file's text (`path` names it in errors).
    pub fn text(&mut self, text: &str, path: &Path) -> Result<(), ConfigError> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::File {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        self.table(&table, "", &Source::File(path.to_path_buf()))
    }

    fn table(
        &mut self,
        table: &toml::Table,
        prefix: &str,
        source: &Source,
    ) -> Result<(), ConfigError> {
        for (k, v) in table {
            let dotted = format!("{prefix}{k}");
            if let toml::Value::Table(t) = v
                && KEYS
                    .iter()
                    .any(|key| key.name.starts_with(&format!("{dotted}.")))
            {
                self.table(t, &format!("{dotted}."), source)?;
                continue;
            }
            let Some(name) = known(&dotted) else {
                return Err(ConfigError::UnknownKey {
                    key: dotted,
                    origin: source.clone(),
                });
            };
            let raw = match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                other => {
                    return Err(ConfigError::BadValue {
                        key: dotted,
                        origin: source.clone(),
                        reason: format!(
                            "expected a string or an integer, found {}",
                            other.type_str()
                        ),
                    });
                }
            };
            self.values.insert(name, (raw, source.clone()));
        }
        Ok(())
    }

    /// Layer `CAIRN_*` variables. Unknown `CAIRN_*` names are refused so a typo is not ignored.
    pub fn env(
        &mut self,
        vars: impl IntoIterator<Item = (String, String)>,
        ignore: &[&str],
    ) -> Result<(), ConfigError> {
        for (var, value) in vars {
            if !var.starts_with("CAIRN_") || ignore.contains(&var.as_str()) {
                continue;
            }
            let Some(key) = KEYS.iter().find(|k| env_name(k.name) == var) else {
                return Err(ConfigError::UnknownKey {
                    key: var.clone(),
                    origin: Source::Env(var),
                });
            };
            self.values.insert(key.name, (value, Source::Env(var)));
        }
        Ok(())
    }

    /// Layer one flag's value.
    pub fn flag(&mut self, key: &'static str, value: Option<&str>) {
        if let Some(v) = value {
            self.values
                .insert(key, (v.to_owned(), Source::Flag(flag_name(key))));
        }
    }

    /// Whether any layer gave `key` a value.
    pub fn is_set(&self, key: &str) -> bool {
        self.values.contains_key(key)
    }

    fn get(&self, key: &'static str, default: &str) -> (String, Source) {
        self.values
            .get(key)
            .cloned()
            .unwrap_or_else(|| (default.to_owned(), Source::Default))
    }

    fn parse<T>(
        &self,
        key: &'static str,
        default: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        let (raw, source) = self.get(key, default);
        parse(raw.trim()).map_err(|reason| ConfigError::BadValue {
            key: key.to_owned(),
            origin: source,
            reason,
        })
    }

    /// Resolve every key into the serve configuration.
    pub fn resolve(&self) -> Result<ServeConfig, ConfigError> {
        let data = self.parse("data", DEFAULT_DATA, |s| {
            if s.is_empty() {
                Err("must not be empty".into())
            } else {
                Ok(PathBuf::from(s))
            }
        })?;
        let listen = self.parse("listen", DEFAULT_LISTEN, |s| {
            s.parse::<SocketAddr>()
                .map_err(|_| format!("{s:?} is not an address like 127.0.0.1:9000"))
        })?;
        let log = self.parse("log", DEFAULT_LOG, |s| {
            tracing_subscriber::EnvFilter::try_new(s)
                .map(|_| s.to_owned())
                .map_err(|e| format!("{s:?} is not a log filter: {e}"))
        })?;
        let batch = self.parse(
            "chunks.sync_batch_bytes",
            &DEFAULT_SYNC_BATCH_BYTES.to_string(),
            |s| {
                parse_size(s).and_then(|n| {
                    if n == 0 {
                        Err("must be at least 1".into())
                    } else {
                        Ok(n)
                    }
                })
            },
        )?;
        let sync = self.parse("chunks.sync", "batch", |s| match s {
            "always" => Ok(SyncPolicy::Always),
            "batch" => Ok(SyncPolicy::Batch { bytes_max: batch }),
            other => Err(format!("{other:?} is not one of: always, batch")),
        })?;
        let chunk_size_max = self.parse(
            "chunks.size_max",
            &CHUNK_SIZE_MAX_DEFAULT.to_string(),
            |s| {
                parse_size(s).and_then(|n| {
                    if n == 0 || n > CHUNK_SIZE_MAX_LIMIT {
                        Err(format!("{n} bytes is outside 1 byte ..= 1 GiB"))
                    } else {
                        Ok(n)
                    }
                })
            },
        )?;
        let cluster_listen = self.parse("cluster.listen", DEFAULT_CLUSTER_LISTEN, |s| {
            s.parse::<SocketAddr>()
                .map_err(|_| format!("{s:?} is not an address like 127.0.0.1:7070"))
        })?;
        let master_id = self.parse("master.id", "1", |s| match s.parse::<u64>() {
            Ok(0) | Err(_) => Err(format!("{s:?} is not a master id (a number from 1)")),
            Ok(n) => Ok(n),
        })?;
        let snapshot_after_entries = self.parse("master.snapshot_after_entries", "10000", |s| {
            match s.parse::<u64>() {
                Ok(n) if n >= 100 => Ok(n),
                _ => Err(format!("{s:?} is not a number of entries (at least 100)")),
            }
        })?;
        let replication = if self.is_set("master.replication") {
            Some(
                self.parse("master.replication", "3", |s| match s.parse::<u8>() {
                    Ok(n) if (1..=7).contains(&n) => Ok(n),
                    _ => Err(format!("{s:?} is not a replication factor (1 to 7)")),
                })?,
            )
        } else {
            None
        };
        let write_replicas_min =
            if self.is_set("master.write_replicas_min") {
                Some(self.parse("master.write_replicas_min", "2", |s| {
                match s.parse::<u8>() {
                    Ok(n) if (1..=7).contains(&n) => Ok(n),
                    _ => Err(format!(
                        "{s:?} is not a number of chunkservers (1 to 7, at most the replication)"
                    )),
                }
            })?)
            } else {
                None
            };
        let repair_copies_per_server = self.parse("master.repair_copies_per_server", "8", |s| {
            match s.parse::<u32>() {
                Ok(n) if (1..=256).contains(&n) => Ok(n),
                _ => Err(format!("{s:?} is not a number of copies (1 to 256)")),
            }
        })?;
        let millis = |key: &'static str, default: &str, min: u64| {
            self.parse(key, default, |s| match s.parse::<u64>() {
                Ok(n) if n >= min => Ok(n),
                _ => Err(format!(
                    "{s:?} is not a number of milliseconds (at least {min})"
                )),
            })
        };
        let dead_after_ms = millis("master.dead_after_ms", "5000", 100)?;
        let election_timeout_ms = millis("master.election_timeout_ms", "250", 25)?;
        let gc_grace_ms = millis("master.gc_grace_ms", "3600000", 0)?;
        let tick_ms = millis("master.tick_ms", "1000", 10)?;
        let heartbeat_ms = millis("chunkserver.heartbeat_ms", "1000", 10)?;
        let masters = self.parse("chunkserver.masters", "", |s| {
            s.split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(|a| {
                    a.parse::<SocketAddr>()
                        .map_err(|_| format!("{a:?} is not an address like 10.0.0.1:7070"))
                })
                .collect::<Result<Vec<_>, _>>()
        })?;
        let zone = self.parse("chunkserver.zone", "", |s| {
            if s.len() > 64
                || !s
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            {
                Err(format!(
                    "{s:?} is not a zone name (up to 64 letters, digits, - _ .)"
                ))
            } else if s.is_empty() {
                Ok(None)
            } else {
                Ok(Some(s.to_owned()))
            }
        })?;
        let scrub_rate = self.parse("chunkserver.scrub_rate", "32MiB", parse_size)?;
        let repair_rate = self.parse("chunkserver.repair_rate", "0", parse_size)?;
        let repair_rate_busy = self.parse("chunkserver.repair_rate_busy", "32MiB", parse_size)?;
        let lifecycle_ms = millis("master.lifecycle_ms", "60000", 10)?;
        let chunkservers = self.parse("serve.chunkservers", "1", |s| match s.parse::<u8>() {
            Ok(n) if (1..=16).contains(&n) => Ok(n),
            _ => Err(format!("{s:?} is not a number of chunkservers (1 to 16)")),
        })?;
        let gateway_masters = self.parse("gateway.masters", "", |s| {
            s.split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(|a| {
                    a.parse::<SocketAddr>()
                        .map_err(|_| format!("{a:?} is not an address like 10.0.0.1:7070"))
                })
                .collect::<Result<Vec<_>, _>>()
        })?;
        let region = self.parse("gateway.region", "us-east-1", |s| {
            if !s.is_empty()
                && s.len() <= 32
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                Ok(s.to_owned())
            } else {
                Err(format!("{s:?} is not a region name like us-east-1"))
            }
        })?;
        let inline_max = self.parse("gateway.inline_max", "16KiB", |s| {
            parse_size(s).and_then(|n| {
                if n > 1 << 20 {
                    Err("at most 1MiB (inline objects live in the replicated metadata)".into())
                } else {
                    Ok(n as usize)
                }
            })
        })?;
        let gateway_cluster_bind = self.parse("gateway.cluster_bind", "0.0.0.0:0", |s| {
            s.parse::<SocketAddr>().map_err(|_| {
                format!("{s:?} is not an address like 10.0.0.5:7071 (port 0: any free port)")
            })
        })?;
        let domain = self.parse("gateway.domain", "", |s| {
            let ok = s.len() <= 253
                && s.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if s.is_empty() {
                Ok(None)
            } else if ok {
                Ok(Some(s.to_ascii_lowercase()))
            } else {
                Err(format!("{s:?} is not a domain name like s3.example.com"))
            }
        })?;
        let auth_rate_limit = self.parse("api.auth_rate_limit", "5", |s| {
            s.parse::<u32>()
                .map_err(|_| format!("{s:?} is not a number of requests per minute"))
        })?;
        let api_rate_limit = self.parse("api.rate_limit", "600", |s| {
            s.parse::<u32>()
                .map_err(|_| format!("{s:?} is not a number of requests per minute"))
        })?;
        let access_ttl_s = self.parse("api.access_token_ttl", "900", |s| {
            s.parse::<u64>()
                .ok()
                .filter(|n| (1..=86_400).contains(n))
                .ok_or_else(|| format!("{s:?} is not a number of seconds from 1 to 86400"))
        })?;
        let share_links_max = self.parse("shares.max_links", "1000", |s| {
            s.parse::<u32>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| format!("{s:?} is not a number of links (at least 1)"))
        })?;
        let share_ttl_max_s = self.parse("shares.max_ttl", "31536000", |s| {
            s.parse::<u64>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| format!("{s:?} is not a number of seconds (at least 1)"))
        })?;
        let image_max = self.parse("images.max_size", "64GiB", |s| {
            parse_size(s).and_then(|n| {
                if n == 0 {
                    Err("an image store that takes no bytes takes no images".into())
                } else {
                    Ok(n)
                }
            })
        })?;
        let allow_sse_c_over_http =
            self.parse("gateway.allow_sse_c_over_http", "false", |s| match s {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(format!("{s:?} is not true or false")),
            })?;
        let nonempty = |s: &str| -> Result<Option<String>, String> {
            Ok(Some(s.to_owned()).filter(|s| !s.is_empty()))
        };
        let smtp_url = self.parse("smtp.url", "", |s| {
            let s = s.trim();
            if s.is_empty() || s.starts_with("smtp://") || s.starts_with("smtps://") {
                nonempty(s)
            } else {
                Err(format!(
                    "{s:?} is not an smtp:// or smtps:// URL (e.g. smtps://user:pass@mail.example.com:465)"
                ))
            }
        })?;
        let smtp_from = self.parse("smtp.from", "", nonempty)?;
        if smtp_url.is_some() && smtp_from.is_none() {
            return Err(ConfigError::Missing {
                key: "smtp.from".into(),
                hint: "with `smtp.url`, name the address mail is sent from (CAIRN_SMTP_FROM)"
                    .into(),
            });
        }
        Ok(ServeConfig {
            allow_sse_c_over_http,
            share_links_max,
            share_ttl_max_s,
            image_max,
            auth_rate_limit,
            api_rate_limit,
            access_ttl_s,
            smtp_url,
            smtp_from,
            domain,
            lifecycle_ms,
            chunkservers,
            gateway_masters,
            gateway_cluster_bind,
            region,
            inline_max,
            replication,
            dead_after_ms,
            write_replicas_min,
            repair_copies_per_server,
            election_timeout_ms,
            gc_grace_ms,
            tick_ms,
            masters,
            zone,
            heartbeat_ms,
            scrub_rate,
            repair_rate,
            repair_rate_busy,
            data,
            listen,
            cluster_listen,
            master_id,
            snapshot_after_entries,
            log,
            chunks: ChunkStoreOptions {
                sync,
                chunk_size_max,
                ..ChunkStoreOptions::default()
            },
        })
    }
}

/// A byte size: a plain number, or a number with B, KiB, MiB or GiB.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 67108864 or 64MiB"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit {other:?} (use B, KiB, MiB or GiB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Everything `cairn serve` needs.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub data: PathBuf,
    pub listen: SocketAddr,
    /// QUIC address of the master (in-process for `serve`).
    pub cluster_listen: SocketAddr,
    /// This master's id in the group.
    pub master_id: u64,
    /// Log compaction: build a snapshot after this many entries.
    pub snapshot_after_entries: u64,
    pub log: String,
    pub chunks: ChunkStoreOptions,
    /// Replicas per chunk (master); `None` for the role's default (3, or the number of
    /// chunkservers of `cairn serve`).
    pub replication: Option<u8>,
    /// A chunkserver silent this long is dead.
    pub dead_after_ms: u64,
    /// Fewest live chunkservers a write goes to when fewer than R are live; `None`: a
    /// majority of R.
    pub write_replicas_min: Option<u8>,
    /// Copies (repair and rebalancing) running into one chunkserver at once.
    pub repair_copies_per_server: u32,
    /// Raft's minimum election timeout (the maximum is twice it): a follower that hears no
    /// leader for 3 to 4 times this starts an election.
    pub election_timeout_ms: u64,
    /// Unreferenced chunks are reclaimed this long after they stopped being used.
    pub gc_grace_ms: u64,
    /// Planner interval.
    pub tick_ms: u64,
    /// Master addresses a chunkserver reports to.
    pub masters: Vec<SocketAddr>,
    pub zone: Option<String>,
    pub heartbeat_ms: u64,
    /// Scrubber rate in bytes per second (0: off).
    pub scrub_rate: u64,
    /// Bytes per second replica copies into a chunkserver may take while no client transfer
    /// runs on it (0: unlimited).
    pub repair_rate: u64,
    /// The same while clients read or write on it (0: unlimited).
    pub repair_rate_busy: u64,
    /// How often the master carries out bucket lifecycle rules.
    pub lifecycle_ms: u64,
    /// Chunkservers `cairn serve` runs in-process.
    pub chunkservers: u8,
    /// Master addresses a gateway talks to.
    pub gateway_masters: Vec<SocketAddr>,
    /// The UDP address a gateway's QUIC connections to the cluster leave from (port 0: any;
    /// a fixed port suits firewall rules).
    pub gateway_cluster_bind: SocketAddr,
    /// The S3 region the gateway reports.
    pub region: String,
    /// Objects up to this size live inline in the metadata.
    pub inline_max: usize,
    /// Domain for virtual-hosted-style addressing (`BUCKET.DOMAIN`).
    pub domain: Option<String>,
    /// Credential requests per minute per client address (0: off).
    pub auth_rate_limit: u32,
    /// Authenticated `/api` requests per minute per API key or login session (0: off).
    pub api_rate_limit: u32,
    /// Lifetime of access tokens, in seconds.
    pub access_ttl_s: u64,
    /// The SMTP server password reset tokens are mailed through (none: kept for an admin).
    pub smtp_url: Option<String>,
    /// The address those mails come from.
    pub smtp_from: Option<String>,
    /// Most unexpired share links per tenant.
    pub share_links_max: u32,
    /// Longest a share link may live, in seconds.
    pub share_ttl_max_s: u64,
    /// Largest image the image store takes.
    pub image_max: u64,
    /// Take SSE-C customer keys from remote clients over plain HTTP (else only from loopback
    /// clients, such as a TLS-terminating proxy on the same host).
    pub allow_sse_c_over_http: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("cairn.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn defaults() {
        let c = Layers::default().resolve().unwrap();
        assert_eq!(c.data, PathBuf::from("./cairn-data"));
        assert_eq!(c.listen.to_string(), "127.0.0.1:9000");
        assert_eq!(c.chunks.sync, SyncPolicy::Batch { bytes_max: 8 << 20 });
        assert_eq!(c.chunks.chunk_size_max, 64 << 20);
    }

    #[test]
    fn flags_beat_env_beat_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "listen = \"127.0.0.1:1\"\ndata = \"/f\"\nlog = \"debug\"\n[chunks]\nsync = \"batch\"\nsize_max = \"1MiB\"\n",
        );
        let mut l = Layers::default();
        l.file(&p).unwrap();
        l.env(
            [
                ("CAIRN_LISTEN".to_string(), "127.0.0.1:2".to_string()),
                ("CAIRN_DATA".into(), "/e".into()),
            ],
            &[],
        )
        .unwrap();
        l.flag("listen", Some("127.0.0.1:3"));
        let c = l.resolve().unwrap();
        assert_eq!(c.listen.port(), 3);
        assert_eq!(c.data, PathBuf::from("/e"));
        assert_eq!(c.log, "debug");
        assert_eq!(c.chunks.sync, SyncPolicy::Batch { bytes_max: 8 << 20 });
        assert_eq!(c.chunks.chunk_size_max, 1 << 20);
    }

    #[test]
    fn unknown_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = Layers::default();
        let e = l
            .file(&write(dir.path(), "[chunks]\nsyncc = \"always\"\n"))
            .unwrap_err();
        assert!(e.to_string().contains("`chunks.syncc`"), "{e}");
        let e = l.file(&write(dir.path(), "lisen = \"x\"\n")).unwrap_err();
        assert!(e.to_string().contains("`lisen`"), "{e}");
        let e = l
            .env([("CAIRN_LISTN".to_string(), "x".to_string())], &[])
            .unwrap_err();
        assert!(e.to_string().contains("CAIRN_LISTN"), "{e}");
        l.env(
            [
                ("CAIRN_CONFIG".to_string(), "x".to_string()),
                ("HOME".into(), "/".into()),
            ],
            &["CAIRN_CONFIG"],
        )
        .unwrap();
    }

    #[test]
    fn bad_values_are_named_with_their_source() {
        let mut l = Layers::default();
        l.flag("listen", Some("nowhere"));
        let e = l.resolve().unwrap_err().to_string();
        assert!(e.contains("`listen`") && e.contains("--listen"), "{e}");
        let mut l = Layers::default();
        l.env(
            [("CAIRN_CHUNKS_SYNC".to_string(), "sometimes".to_string())],
            &[],
        )
        .unwrap();
        let e = l.resolve().unwrap_err().to_string();
        assert!(
            e.contains("`chunks.sync`") && e.contains("CAIRN_CHUNKS_SYNC"),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let mut l = Layers::default();
        l.file(&write(dir.path(), "[chunks]\nsize_max = \"2GiB\"\n"))
            .unwrap();
        let e = l.resolve().unwrap_err().to_string();
        assert!(
            e.contains("`chunks.size_max`") && e.contains("cairn.toml"),
            "{e}"
        );
        let mut l = Layers::default();
        l.file(&write(dir.path(), "listen = true\n")).unwrap_err();
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1 GiB"), Ok(1 << 30));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("99999999999999GiB").is_err());
    }

    #[test]
    fn names() {
        assert_eq!(
            env_name("chunks.sync_batch_bytes"),
            "CAIRN_CHUNKS_SYNC_BATCH_BYTES"
        );
        assert_eq!(
            flag_name("chunks.sync_batch_bytes"),
            "--chunk-sync-batch-bytes"
        );
        assert_eq!(flag_name("listen"), "--listen");
    }
}
