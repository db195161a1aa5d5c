//! The chunk file's on-disk layout: pure encoders and decoders, no I/O.
//!
//! Byte-by-byte description in `docs/formats.md`. In short:
//!
//! ```text
//! 0     .. 64     identity header (immutable after create), CRC-32C protected
//! 64    .. 192    state record A  (written alternately with B at every sync)
//! 192   .. 320    state record B
//! 320   .. 4096   unused, zero
//! 4096  .. D      block checksum table: CRC-32C of every *full* 64 KiB block, u32 LE each
//! D     .. end    data, contiguous (D = 4096 + table size rounded up to 4096)
//! ```
//!
//! The checksum of a partial last block lives in the state record (`tail_crc`), never in the
//! table, so that the table entry of a block is written once, when the block becomes full, and an
//! acknowledged partial block keeps a valid checksum while a later append to it is in flight.

use super::ChunkHandle;

/// File magic, first 8 bytes of every chunk file.
pub const MAGIC: [u8; 8] = *b"CAIRNCHK";
/// The chunk file format version this code writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// Size of a checksummed block. Fixed by format version 1.
pub const BLOCK_SIZE: u32 = 64 * 1024;
/// Largest `chunk_size_max` a chunk file may declare (the table then takes 64 KiB).
pub const CHUNK_SIZE_MAX_LIMIT: u64 = 1 << 30;

pub const HEADER_LEN: usize = 64;
pub const RECORD_LEN: usize = 128;
pub const RECORD_OFFSETS: [u64; 2] = [64, 192];
/// Page 0 holds the header and both state records.
pub const PAGE: u64 = 4096;
pub const TABLE_OFFSET: u64 = PAGE;

/// `flags` bit: the chunk is sealed; no more appends, digest is final.
pub const FLAG_SEALED: u32 = 1;

/// Checksum used for blocks, the header and state records.
pub fn crc(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// Continue a running CRC-32C over more bytes.
pub fn crc_append(crc: u32, bytes: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, bytes)
}

/// Where things are in a chunk file with a given `size_max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub size_max: u64,
    pub blocks_max: u64,
    pub data_offset: u64,
}

impl Layout {
    pub fn new(size_max: u64) -> Layout {
        let blocks_max = size_max.div_ceil(u64::from(BLOCK_SIZE));
        let table_len = blocks_max * 4;
        Layout {
            size_max,
            blocks_max,
            data_offset: TABLE_OFFSET + table_len.div_ceil(PAGE) * PAGE,
        }
    }

    /// File offset of the table entry of `block`.
    pub fn table_entry_offset(&self, block: u64) -> u64 {
        TABLE_OFFSET + block * 4
    }
}

/// Why a header or state record could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("file is {len} bytes, shorter than the {need}-byte header page")]
    Short { len: usize, need: usize },
    #[error("bad magic (not a Cairn chunk file)")]
    Magic,
    #[error("unsupported chunk format version {0} (this build reads {FORMAT_VERSION})")]
    Version(u16),
    #[error("header checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    HeaderChecksum { stored: u32, computed: u32 },
    #[error("unsupported block size {0} (format 1 uses {BLOCK_SIZE})")]
    BlockSize(u32),
    #[error("chunk size limit {0} is outside 1..={CHUNK_SIZE_MAX_LIMIT}")]
    SizeMax(u64),
    #[error("state record checksum mismatch")]
    RecordChecksum,
    #[error("state record never written")]
    RecordEmpty,
    #[error("state record is inconsistent: {0}")]
    RecordInvalid(&'static str),
}

/// The immutable identity of a chunk file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub handle: ChunkHandle,
    pub size_max: u64,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[at..at + 2]);
    u16::from_le_bytes(a)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        // 10..12 reserved (zero)
        b[12..16].copy_from_slice(&BLOCK_SIZE.to_le_bytes());
        b[16..24].copy_from_slice(&self.handle.0.to_le_bytes());
        b[24..32].copy_from_slice(&self.size_max.to_le_bytes());
        // 32..60 reserved (zero)
        let c = crc(&b[0..60]);
        b[60..64].copy_from_slice(&c.to_le_bytes());
        b
    }

    /// Decode the header from the start of a chunk file. Checks the checksum before trusting
    /// any field, so a flipped bit anywhere in the 64 bytes is caught.
    pub fn decode(bytes: &[u8]) -> Result<Header, DecodeError> {
        if bytes.len() < HEADER_LEN {
            return Err(DecodeError::Short {
                len: bytes.len(),
                need: HEADER_LEN,
            });
        }
        let b = &bytes[..HEADER_LEN];
        if b[0..8] != MAGIC {
            return Err(DecodeError::Magic);
        }
        let stored = u32_at(b, 60);
        let computed = crc(&b[0..60]);
        if stored != computed {
            return Err(DecodeError::HeaderChecksum { stored, computed });
        }
        let version = u16_at(b, 8);
        if version != FORMAT_VERSION {
            return Err(DecodeError::Version(version));
        }
        let block_size = u32_at(b, 12);
        if block_size != BLOCK_SIZE {
            return Err(DecodeError::BlockSize(block_size));
        }
        let size_max = u64_at(b, 24);
        if size_max == 0 || size_max > CHUNK_SIZE_MAX_LIMIT {
            return Err(DecodeError::SizeMax(size_max));
        }
        Ok(Header {
            handle: ChunkHandle(u64_at(b, 16)),
            size_max,
        })
    }
}

/// The mutable state of a chunk, written to the state record that does not hold the current
/// state, then synced: a torn record write leaves the other record intact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateRecord {
    /// Increases by one at every record write; the valid record with the higher `seq` is current.
    pub seq: u64,
    /// GFS chunk version, bumped by the master at each lease grant.
    pub version: u64,
    /// Length of the chunk's data in bytes.
    pub len: u64,
    /// CRC-32C of the last partial block (`len % BLOCK_SIZE` bytes); 0 when `len` is aligned.
    pub tail_crc: u32,
    pub flags: u32,
    /// BLAKE3 of the whole content; meaningful only when sealed (zero otherwise).
    pub digest: [u8; 32],
}

impl StateRecord {
    pub fn sealed(&self) -> bool {
        self.flags & FLAG_SEALED != 0
    }

    pub fn encode(&self) -> [u8; RECORD_LEN] {
        let mut b = [0u8; RECORD_LEN];
        b[0..8].copy_from_slice(&self.seq.to_le_bytes());
        b[8..16].copy_from_slice(&self.version.to_le_bytes());
        b[16..24].copy_from_slice(&self.len.to_le_bytes());
        b[24..28].copy_from_slice(&self.tail_crc.to_le_bytes());
        b[28..32].copy_from_slice(&self.flags.to_le_bytes());
        b[32..64].copy_from_slice(&self.digest);
        // 64..124 reserved (zero)
        let c = crc(&b[0..124]);
        b[124..128].copy_from_slice(&c.to_le_bytes());
        b
    }

    /// Decode one record. `size_max` comes from the (already verified) header.
    pub fn decode(bytes: &[u8], size_max: u64) -> Result<StateRecord, DecodeError> {
        if bytes.len() < RECORD_LEN {
            return Err(DecodeError::Short {
                len: bytes.len(),
                need: RECORD_LEN,
            });
        }
        let b = &bytes[..RECORD_LEN];
        if b.iter().all(|&x| x == 0) {
            return Err(DecodeError::RecordEmpty);
        }
        if u32_at(b, 124) != crc(&b[0..124]) {
            return Err(DecodeError::RecordChecksum);
        }
        let mut digest = [0u8; 32];
        digest.copy_from_slice(&b[32..64]);
        let r = StateRecord {
            seq: u64_at(b, 0),
            version: u64_at(b, 8),
            len: u64_at(b, 16),
            tail_crc: u32_at(b, 24),
            flags: u32_at(b, 28),
            digest,
        };
        if r.seq == 0 {
            return Err(DecodeError::RecordInvalid("sequence number 0"));
        }
        if r.len > size_max {
            return Err(DecodeError::RecordInvalid(
                "length beyond the chunk size limit",
            ));
        }
        if r.flags & !FLAG_SEALED != 0 {
            return Err(DecodeError::RecordInvalid("unknown flag bits"));
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_every_bit_flip_is_caught() {
        let h = Header {
            handle: ChunkHandle(0x1234_5678_9abc),
            size_max: 64 << 20,
        };
        let b = h.encode();
        assert_eq!(Header::decode(&b), Ok(h));
        for bit in 0..HEADER_LEN * 8 {
            let mut c = b;
            c[bit / 8] ^= 1 << (bit % 8);
            assert!(
                Header::decode(&c).is_err(),
                "flip of bit {bit} not detected"
            );
        }
    }

    #[test]
    fn record_round_trips_and_every_bit_flip_is_caught() {
        let r = StateRecord {
            seq: 7,
            version: 3,
            len: 1_000_000,
            tail_crc: 0xdead_beef,
            flags: FLAG_SEALED,
            digest: [9; 32],
        };
        let b = r.encode();
        assert_eq!(StateRecord::decode(&b, 64 << 20), Ok(r));
        for bit in 0..RECORD_LEN * 8 {
            let mut c = b;
            c[bit / 8] ^= 1 << (bit % 8);
            assert!(StateRecord::decode(&c, 64 << 20).is_err(), "bit {bit}");
        }
    }

    #[test]
    fn layout_of_default_chunk() {
        let l = Layout::new(64 << 20);
        assert_eq!(l.blocks_max, 1024);
        assert_eq!(l.data_offset, 8192);
        let odd = Layout::new(100_000);
        assert_eq!(odd.blocks_max, 2);
        assert_eq!(odd.data_offset, 8192);
    }
}
