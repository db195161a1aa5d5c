//! The command envelope: how one state-machine command is framed in the replicated log.
//!
//! ```text
//! 0        1   format version (1)
//! 1        2   service id, u16 LE
//! 3        2   command version, u16 LE (the service's own payload schema version)
//! 5        8   time, ms since the Unix epoch, u64 LE (stamped by the proposer)
//! 13       16  id seed (random, chosen by the proposer; fresh ids derive from it)
//! 29       4   payload length n, u32 LE (at most COMMAND_PAYLOAD_MAX)
//! 33       n   payload (the service's encoding, postcard for typed services)
//! 33+n     4   CRC-32C of bytes 0..33+n
//! ```

use serde::{Deserialize, Serialize};

/// Envelope format version written and read by this build.
pub const COMMAND_FORMAT_VERSION: u8 = 1;
/// Largest payload one command may carry (16 MiB); bigger data belongs in chunks.
pub const COMMAND_PAYLOAD_MAX: usize = 16 << 20;
const FIXED_LEN: usize = 33;

/// Which service a command is routed to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServiceId(pub u16);

impl std::fmt::Display for ServiceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "service {}", self.0)
    }
}

/// One command, as proposed to the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    pub service: ServiceId,
    pub version: u16,
    pub time_ms: u64,
    pub id_seed: [u8; 16],
    pub payload: Vec<u8>,
}

/// Why bytes are not a valid command envelope.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandDecodeError {
    #[error("command is {len} bytes, shorter than its {need}-byte frame")]
    Truncated { len: usize, need: usize },
    #[error("unsupported command format version {0} (this build reads {COMMAND_FORMAT_VERSION})")]
    FormatVersion(u8),
    #[error("command payload of {0} bytes exceeds the {COMMAND_PAYLOAD_MAX}-byte limit")]
    TooLarge(usize),
    #[error("command has {0} trailing bytes after its checksum")]
    Trailing(usize),
    #[error("command checksum mismatch")]
    Checksum,
}

impl Command {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(FIXED_LEN + self.payload.len() + 4);
        b.push(COMMAND_FORMAT_VERSION);
        b.extend_from_slice(&self.service.0.to_le_bytes());
        b.extend_from_slice(&self.version.to_le_bytes());
        b.extend_from_slice(&self.time_ms.to_le_bytes());
        b.extend_from_slice(&self.id_seed);
        b.extend_from_slice(&(self.payload.len() as u32).to_le_bytes());
        b.extend_from_slice(&self.payload);
        let c = crc32c::crc32c(&b);
        b.extend_from_slice(&c.to_le_bytes());
        b
    }

    /// Decode an envelope. Lengths are checked before anything is allocated.
    pub fn decode(b: &[u8]) -> Result<Command, CommandDecodeError> {
        if b.len() < FIXED_LEN + 4 {
            return Err(CommandDecodeError::Truncated {
                len: b.len(),
                need: FIXED_LEN + 4,
            });
        }
        if b[0] != COMMAND_FORMAT_VERSION {
            return Err(CommandDecodeError::FormatVersion(b[0]));
        }
        let le16 = |at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
        let mut n8 = [0u8; 8];
        n8.copy_from_slice(&b[5..13]);
        let mut seed = [0u8; 16];
        seed.copy_from_slice(&b[13..29]);
        let n = u32::from_le_bytes([b[29], b[30], b[31], b[32]]) as usize;
        if n > COMMAND_PAYLOAD_MAX {
            return Err(CommandDecodeError::TooLarge(n));
        }
        let need = FIXED_LEN + n + 4;
        if b.len() < need {
            return Err(CommandDecodeError::Truncated { len: b.len(), need });
        }
        if b.len() > need {
            return Err(CommandDecodeError::Trailing(b.len() - need));
        }
        let body = &b[..FIXED_LEN + n];
        let stored = u32::from_le_bytes([b[need - 4], b[need - 3], b[need - 2], b[need - 1]]);
        if crc32c::crc32c(body) != stored {
            return Err(CommandDecodeError::Checksum);
        }
        Ok(Command {
            service: ServiceId(le16(1)),
            version: le16(3),
            time_ms: u64::from_le_bytes(n8),
            id_seed: seed,
            payload: b[FIXED_LEN..FIXED_LEN + n].to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let c = Command {
            service: ServiceId(7),
            version: 2,
            time_ms: 1_700_000_000_000,
            id_seed: [3; 16],
            payload: b"hello".to_vec(),
        };
        let b = c.encode();
        assert_eq!(Command::decode(&b), Ok(c));
        for i in 0..b.len() {
            let mut x = b.clone();
            x[i] ^= 0x10;
            assert!(Command::decode(&x).is_err(), "byte {i}");
        }
        assert!(matches!(
            Command::decode(&b[..b.len() - 1]),
            Err(CommandDecodeError::Truncated { .. })
        ));
        let mut long = b.clone();
        long.push(0);
        assert_eq!(Command::decode(&long), Err(CommandDecodeError::Trailing(1)));
    }

    #[test]
    fn huge_length_is_refused_before_allocation() {
        let mut b = vec![COMMAND_FORMAT_VERSION; 40];
        b[29..33].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            Command::decode(&b),
            Err(CommandDecodeError::TooLarge(u32::MAX as usize))
        );
    }
}
