//! The cluster secrets key: seals secrets that must be recoverable (S3 secret keys, which SigV4
//! needs in the clear) before they reach the replicated state, so the Raft log, the state store
//! and snapshots only ever hold ciphertext.
//!
//! `DATA/tls/secrets.key` (mode 0600, 32 random bytes as hex) is created with the cluster CA and
//! copied into every node folder `cairn cluster issue-cert` writes; gateways need it, masters
//! and chunkservers do not. Sealing is ChaCha20-Poly1305 with a random 96-bit nonce:
//! `nonce ‖ ciphertext ‖ tag`, with a purpose string as associated data so a sealed value
//! cannot be replayed under another purpose.

use std::path::{Path, PathBuf};

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

pub const SECRETS_KEY: &str = "secrets.key";

/// Write a new key file (mode 0600), refusing to overwrite one.
fn write_key(path: &Path, contents: &str) -> Result<(), SecretsError> {
    crate::files::write_new(path, contents, 0o600).map_err(|source| SecretsError::Io {
        context: match source.kind() {
            std::io::ErrorKind::AlreadyExists => format!("{} exists already", path.display()),
            _ => format!("write {}", path.display()),
        },
        source,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error(
        "no secrets key at {0}: it is created with the cluster CA; copy it from the CA node's tls/ folder (cairn cluster issue-cert writes it with each certificate)"
    )]
    Missing(PathBuf),
    #[error("{0}: not a 64-digit hex key")]
    Malformed(PathBuf),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("sealed secret does not open with this cluster's secrets key (wrong key or damaged)")]
    Open,
    #[error("system randomness failed")]
    Random,
}

/// The cluster's symmetric key for sealing secrets.
pub struct SecretsKey {
    key: LessSafeKey,
    raw: [u8; 32],
}

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretsKey(..)")
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl SecretsKey {
    fn from_raw(raw: [u8; 32]) -> Result<SecretsKey, SecretsError> {
        let key = UnboundKey::new(&CHACHA20_POLY1305, &raw).map_err(|_| SecretsError::Random)?;
        Ok(SecretsKey {
            key: LessSafeKey::new(key),
            raw,
        })
    }

    /// Create a new key in `dir` (refuses to overwrite one).
    pub fn create(dir: &Path) -> Result<SecretsKey, SecretsError> {
        let mut raw = [0u8; 32];
        SystemRandom::new()
            .fill(&mut raw)
            .map_err(|_| SecretsError::Random)?;
        write_key(&dir.join(SECRETS_KEY), &format!("{}\n", hex(&raw)))?;
        Self::from_raw(raw)
    }

    pub fn load(dir: &Path) -> Result<SecretsKey, SecretsError> {
        let path = dir.join(SECRETS_KEY);
        if !path.exists() {
            return Err(SecretsError::Missing(path));
        }
        let text = std::fs::read_to_string(&path).map_err(|source| SecretsError::Io {
            context: format!("read {}", path.display()),
            source,
        })?;
        let text = text.trim();
        let mut raw = [0u8; 32];
        if text.len() != 64 {
            return Err(SecretsError::Malformed(path));
        }
        for (i, b) in raw.iter_mut().enumerate() {
            *b = text
                .get(2 * i..2 * i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| SecretsError::Malformed(path.clone()))?;
        }
        Self::from_raw(raw)
    }

    /// Load the key in `dir`, creating it if missing.
    pub fn ensure(dir: &Path) -> Result<SecretsKey, SecretsError> {
        if dir.join(SECRETS_KEY).exists() {
            Self::load(dir)
        } else {
            Self::create(dir)
        }
    }

    /// Write a copy of this key into another node's folder.
    pub fn save_copy(&self, dir: &Path) -> Result<(), SecretsError> {
        write_key(&dir.join(SECRETS_KEY), &format!("{}\n", hex(&self.raw)))?;
        Ok(())
    }

    pub fn seal(&self, purpose: &str, plain: &[u8]) -> Result<Vec<u8>, SecretsError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SecretsError::Random)?;
        let mut buf = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(purpose.as_bytes()),
                &mut buf,
            )
            .map_err(|_| SecretsError::Random)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(out)
    }

    /// An HMAC-SHA256 of `data` under a key derived from this one for `purpose`: what every
    /// gateway of the cluster computes alike (share links are signed with it).
    pub fn mac(&self, purpose: &str, data: &[u8]) -> [u8; 32] {
        let derived = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.raw),
            purpose.as_bytes(),
        );
        let tag = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, derived.as_ref()),
            data,
        );
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    pub fn open(&self, purpose: &str, sealed: &[u8]) -> Result<Vec<u8>, SecretsError> {
        if sealed.len() < NONCE_LEN {
            return Err(SecretsError::Open);
        }
        let (n, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(n).map_err(|_| SecretsError::Open)?;
        let mut buf = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(purpose.as_bytes()), &mut buf)
            .map_err(|_| SecretsError::Open)?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn seal_open_round_trip_and_tamper() {
        let dir = tempfile::tempdir().unwrap();
        let k = SecretsKey::create(dir.path()).unwrap();
        let sealed = k.seal("s3", b"very secret").unwrap();
        assert!(!sealed.windows(11).any(|w| w == b"very secret"));
        assert_eq!(k.open("s3", &sealed).unwrap(), b"very secret");
        // Another purpose, a flipped bit, a truncation: all refused.
        assert!(k.open("other", &sealed).is_err());
        let mut bad = sealed.clone();
        bad[15] ^= 1;
        assert!(k.open("s3", &bad).is_err());
        assert!(k.open("s3", &sealed[..5]).is_err());
        // The file reloads to the same key; a second create refuses to overwrite.
        let again = SecretsKey::load(dir.path()).unwrap();
        assert_eq!(again.open("s3", &sealed).unwrap(), b"very secret");
        assert!(SecretsKey::create(dir.path()).is_err());
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join(SECRETS_KEY))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn macs_depend_on_key_purpose_and_data() {
        let a = SecretsKey::create(tempfile::tempdir().unwrap().path()).unwrap();
        let b = SecretsKey::create(tempfile::tempdir().unwrap().path()).unwrap();
        let m = a.mac("share", b"link 1");
        assert_eq!(m, a.mac("share", b"link 1"));
        assert_ne!(m, a.mac("share", b"link 2"));
        assert_ne!(m, a.mac("other", b"link 1"));
        assert_ne!(m, b.mac("share", b"link 1"));
    }
}
