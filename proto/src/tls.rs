//! The cluster CA and node identities, and the rustls configurations built from them.
//!
//! Trust model: a node is a cluster member if and only if it presents a certificate signed by the
//! cluster CA. Every connection is TLS 1.3 with certificates checked on both sides; a peer
//! without a certificate from this CA is refused during the handshake.
//!
//! Files (in a node's `DATA/tls/`): `ca.pem` (the CA certificate, on every node), `node.pem` and
//! `node.key` (this node's certificate and key), and on the node that holds the CA, `ca.key`.
//! Private keys are written with mode 0600.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The DNS name every node certificate carries and every client verifies: cluster membership is
/// the CA signature, not a per-host name.
pub const CLUSTER_SERVER_NAME: &str = "cairn-cluster";
/// ALPN protocol of Cairn's internal QUIC traffic.
pub const ALPN: &[u8] = b"cairn/1";

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca.key";
const NODE_CERT: &str = "node.pem";
const NODE_KEY: &str = "node.key";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path}: {reason}")]
    Pem { path: PathBuf, reason: String },
    /// Not marked as the source: rustls's message already holds it, and printing the chain
    /// said it twice (`KeyMismatch: keys may not be consistent: KeyMismatch`).
    #[error("TLS configuration: {0}")]
    Rustls(rustls::Error),
    #[error(
        "node.key is not the private key of node.pem (they come from different certificates); copy both from the same `cairn cluster issue-cert` folder"
    )]
    KeyMismatch,
    #[error("TLS client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("{0} already exists; refusing to overwrite cluster credentials")]
    Exists(PathBuf),
    #[error(
        "no cluster CA key at {0}: run `cairn cluster init` for a new cluster, or issue certificates on the node that holds the CA"
    )]
    MissingCa(PathBuf),
    #[error(
        "no node certificate in {0}: get one with `cairn cluster issue-cert` on the node that holds the CA and copy it here"
    )]
    MissingIdentity(PathBuf),
    #[error("invalid node name {0:?}: use letters, digits, '-' and '.'")]
    BadName(String),
}

impl From<rustls::Error> for TlsError {
    fn from(e: rustls::Error) -> TlsError {
        TlsError::Rustls(e)
    }
}

/// A PEM parsing error in words (the library's own messages print byte arrays).
fn pem_words(what: &str, e: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error as E;
    match e {
        E::MissingSectionEnd { end_marker } => format!(
            "a PEM section never ends (no \"-----END {}-----\" line): the file is cut short or damaged",
            String::from_utf8_lossy(end_marker).trim()
        ),
        E::IllegalSectionStart { line } => format!(
            "a line that starts a PEM section is malformed: \"{}\"",
            String::from_utf8_lossy(line).trim()
        ),
        E::Base64Decode(m) => {
            format!("a PEM section is not valid base64 ({m}): the file is damaged")
        }
        E::Io(e) => format!("cannot be read: {e}"),
        E::NoItemsFound => {
            format!("holds no PEM {what}: is it the file `cairn cluster issue-cert` wrote?")
        }
        E::SectionTooLarge => "a PEM section is larger than 256 MB: not a certificate file".into(),
        other => format!("cannot be parsed as PEM: {other}"),
    }
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> TlsError {
    let context = context.into();
    move |source| TlsError::Io { context, source }
}

/// Write `contents` to `path`, creating it with `mode`, refusing to overwrite, and syncing it.
fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), TlsError> {
    crate::files::write_new(path, contents, mode).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => TlsError::Exists(path.to_path_buf()),
        _ => TlsError::Io {
            context: format!("write {}", path.display()),
            source: e,
        },
    })
}

fn read(path: &Path) -> Result<String, TlsError> {
    fs::read_to_string(path).map_err(io(format!("read {}", path.display())))
}

fn ca_params() -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Cairn");
    params
        .distinguished_name
        .push(DnType::CommonName, "Cairn cluster CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

fn check_name(name: &str) -> Result<(), TlsError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !name.starts_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        Err(TlsError::BadName(name.to_owned()))
    }
}

/// The cluster certificate authority: its certificate and signing key.
pub struct ClusterCa {
    cert_pem: String,
    key: KeyPair,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa").finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// Generate a new CA (ECDSA P-256) and write `ca.pem` and `ca.key` (0600) into `dir`.
    pub fn create(dir: &Path) -> Result<ClusterCa, TlsError> {
        fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
        let key = KeyPair::generate()?;
        let cert = ca_params()?.self_signed(&key)?;
        let ca = ClusterCa {
            cert_pem: cert.pem(),
            key,
        };
        write_new(&dir.join(CA_KEY), &ca.key.serialize_pem(), 0o600)?;
        write_new(&dir.join(CA_CERT), &ca.cert_pem, 0o644)?;
        // The cluster secrets key is born with the CA and travels with issued certificates.
        if !dir.join(crate::secrets::SECRETS_KEY).exists() {
            crate::secrets::SecretsKey::create(dir).map_err(|e| TlsError::Io {
                context: format!("create the secrets key in {}", dir.display()),
                source: std::io::Error::other(e),
            })?;
        }
        Ok(ca)
    }

    /// Load the CA from `dir` (needs `ca.key`, which only the CA holder has).
    pub fn load(dir: &Path) -> Result<ClusterCa, TlsError> {
        let key_path = dir.join(CA_KEY);
        if !key_path.exists() {
            return Err(TlsError::MissingCa(key_path));
        }
        let key = KeyPair::from_pem(&read(&key_path)?).map_err(|e| TlsError::Pem {
            path: key_path,
            reason: e.to_string(),
        })?;
        Ok(ClusterCa {
            cert_pem: read(&dir.join(CA_CERT))?,
            key,
        })
    }

    pub fn exists(dir: &Path) -> bool {
        dir.join(CA_KEY).exists()
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issue a node certificate for `name`, valid as both server and client, with the cluster
    /// name and `extra_names` (DNS names or IP addresses) as subject alternative names.
    pub fn issue(&self, name: &str, extra_names: &[String]) -> Result<NodeIdentity, TlsError> {
        check_name(name)?;
        let mut sans = vec![CLUSTER_SERVER_NAME.to_owned(), name.to_owned()];
        sans.extend(extra_names.iter().cloned());
        let mut params = CertificateParams::new(sans)?;
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Cairn");
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let issuer = Issuer::new(ca_params()?, &self.key);
        let cert = params.signed_by(&key, &issuer)?;
        Ok(NodeIdentity {
            name: name.to_owned(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            ca_pem: self.cert_pem.clone(),
        })
    }
}

/// A node's certificate and key, and the CA certificate it trusts.
#[derive(Clone)]
pub struct NodeIdentity {
    pub name: String,
    cert_pem: String,
    key_pem: String,
    ca_pem: String,
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl NodeIdentity {
    /// Write `node.pem`, `node.key` (0600) and `ca.pem` into `dir` (`ca.pem` is left alone if
    /// it is already there, as on the CA's own node).
    pub fn save(&self, dir: &Path) -> Result<(), TlsError> {
        fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
        write_new(&dir.join(NODE_KEY), &self.key_pem, 0o600)?;
        write_new(&dir.join(NODE_CERT), &self.cert_pem, 0o644)?;
        if !dir.join(CA_CERT).exists() {
            write_new(&dir.join(CA_CERT), &self.ca_pem, 0o644)?;
        }
        Ok(())
    }

    pub fn load(dir: &Path) -> Result<NodeIdentity, TlsError> {
        let cert_path = dir.join(NODE_CERT);
        if !cert_path.exists() {
            return Err(TlsError::MissingIdentity(dir.to_path_buf()));
        }
        Ok(NodeIdentity {
            name: String::new(),
            cert_pem: read(&cert_path)?,
            key_pem: read(&dir.join(NODE_KEY))?,
            ca_pem: read(&dir.join(CA_CERT))?,
        })
    }

    pub fn exists(dir: &Path) -> bool {
        dir.join(NODE_CERT).exists()
    }

    fn parts(
        &self,
    ) -> Result<
        (
            Vec<CertificateDer<'static>>,
            PrivateKeyDer<'static>,
            Arc<RootCertStore>,
        ),
        TlsError,
    > {
        let pem_err = |file: &str, what: &str, e: rustls_pki_types::pem::Error| TlsError::Pem {
            path: PathBuf::from(file),
            reason: pem_words(what, &e),
        };
        let cert = CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .map_err(|e| pem_err(NODE_CERT, "certificate", e))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| pem_err(NODE_KEY, "private key", e))?;
        let ca = CertificateDer::from_pem_slice(self.ca_pem.as_bytes())
            .map_err(|e| pem_err(CA_CERT, "certificate", e))?;
        let mut roots = RootCertStore::empty();
        roots.add(ca)?;
        Ok((vec![cert], key, Arc::new(roots)))
    }

    /// A secret for `purpose`, derived from the node's private key: the same in every life of
    /// the node, and telling nothing about the key.
    pub(crate) fn derived_secret(&self, purpose: &str) -> [u8; 32] {
        let from_private = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, self.key_pem.as_bytes());
        let tag = ring::hmac::sign(&from_private, format!("cairn {purpose} v1").as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(&tag.as_ref()[..32]);
        out
    }

    /// A certificate and key that rustls refused together, said plainly when they do not match.
    fn key_error(&self, e: rustls::Error) -> TlsError {
        match e {
            rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch,
            other => TlsError::Rustls(other),
        }
    }

    /// Server side: TLS 1.3, our certificate, and a client certificate from the CA required.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        let (chain, key, roots) = self.parts()?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            WebPkiClientVerifier::builder_with_provider(roots, provider.clone()).build()?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| self.key_error(e))?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }

    /// Client side: TLS 1.3, only the cluster CA trusted, our certificate presented.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let (chain, key, roots) = self.parts()?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| self.key_error(e))?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }
}

/// First start of a node: make sure `dir` holds a node identity, creating a new cluster CA and a
/// certificate for `name` when there are no credentials at all. Returns whether a CA was created.
pub fn ensure_identity(dir: &Path, name: &str) -> Result<bool, TlsError> {
    if NodeIdentity::exists(dir) {
        return Ok(false);
    }
    let (ca, created) = if ClusterCa::exists(dir) {
        (ClusterCa::load(dir)?, false)
    } else {
        (ClusterCa::create(dir)?, true)
    };
    ca.issue(name, &[])?.save(dir)?;
    Ok(created)
}
