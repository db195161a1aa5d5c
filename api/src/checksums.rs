//! S3's additional checksums (CRC32, CRC32C, CRC64NVME, SHA1, SHA256) as the gateway computes
//! and checks them: which ones a write asks for, whether what arrived matches, and how a
//! multipart object's checksum is made from its parts' (a checksum of the parts' checksums,
//! "composite", or the CRCs combined into the whole object's, "full object").
//!
//! Pure: no I/O, so the combinations are tested against checksums of the whole bytes.
use base64::Engine;
use s3s::checksum::ChecksumHasher;
use s3s::dto::{Checksum, CompletedPart};
use s3s::{S3Error, S3ErrorCode, S3Result};

/// Every algorithm with its header, in the order a write's kept checksum is chosen.
pub(crate) const CHECKSUMS: [(&str, &str); 5] = [
    ("CRC32", "x-amz-checksum-crc32"),
    ("CRC32C", "x-amz-checksum-crc32c"),
    ("CRC64NVME", "x-amz-checksum-crc64nvme"),
    ("SHA1", "x-amz-checksum-sha1"),
    ("SHA256", "x-amz-checksum-sha256"),
];

fn header_str<'a>(h: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// The algorithms a write names: by a value header, the SDK's algorithm header, or a
/// trailer it announces.
pub(crate) fn requested(h: &http::HeaderMap) -> Vec<&'static str> {
    let algo = header_str(h, "x-amz-sdk-checksum-algorithm").map(str::to_ascii_uppercase);
    let trailer = header_str(h, "x-amz-trailer").map(str::to_ascii_lowercase);
    CHECKSUMS
        .iter()
        .filter(|(alg, name)| {
            h.contains_key(*name)
                || algo.as_deref() == Some(*alg)
                || trailer
                    .as_deref()
                    .is_some_and(|t| t.split(',').any(|x| x.trim() == *name))
        })
        .map(|(alg, _)| *alg)
        .collect()
}

/// A hasher computing the algorithms a write names, and `also` (the upload's, which S3
/// computes when the client sends none).
pub(crate) fn plan(h: &http::HeaderMap, also: Option<&str>) -> ChecksumHasher {
    let mut c = ChecksumHasher::default();
    for alg in requested(h).into_iter().chain(also) {
        enable(&mut c, alg);
    }
    c
}

/// A hasher of one algorithm.
pub(crate) fn hasher(alg: &str) -> ChecksumHasher {
    let mut c = ChecksumHasher::default();
    enable(&mut c, alg);
    c
}

fn enable(c: &mut ChecksumHasher, alg: &str) {
    match alg {
        "CRC32" => c.crc32 = Some(Default::default()),
        "CRC32C" => c.crc32c = Some(Default::default()),
        "CRC64NVME" => c.crc64nvme = Some(Default::default()),
        "SHA1" => c.sha1 = Some(Default::default()),
        "SHA256" => c.sha256 = Some(Default::default()),
        _ => {}
    }
}

/// The value of `alg` in a computed (or sent) set of checksums.
pub(crate) fn value<'a>(c: &'a Checksum, alg: &str) -> Option<&'a String> {
    match alg {
        "CRC32" => c.checksum_crc32.as_ref(),
        "CRC32C" => c.checksum_crc32c.as_ref(),
        "CRC64NVME" => c.checksum_crc64nvme.as_ref(),
        "SHA1" => c.checksum_sha1.as_ref(),
        "SHA256" => c.checksum_sha256.as_ref(),
        _ => None,
    }
}

/// The checksum of `alg` a completion lists for a part.
pub(crate) fn of_completed_part<'a>(p: &'a CompletedPart, alg: &str) -> Option<&'a String> {
    match alg {
        "CRC32" => p.checksum_crc32.as_ref(),
        "CRC32C" => p.checksum_crc32c.as_ref(),
        "CRC64NVME" => p.checksum_crc64nvme.as_ref(),
        "SHA1" => p.checksum_sha1.as_ref(),
        "SHA256" => p.checksum_sha256.as_ref(),
        _ => None,
    }
}

/// Check every checksum the client sent (header or trailer) against the bytes received;
/// returns the one to keep with the object: `prefer`'s when computed, else the first.
pub(crate) fn verify(
    sums: &Checksum,
    h: &http::HeaderMap,
    trailers: Option<&http::HeaderMap>,
    prefer: Option<&str>,
) -> S3Result<Option<(String, String)>> {
    let mut keep = None;
    for (alg, name) in CHECKSUMS {
        let sent = trailers
            .and_then(|t| header_str(t, name))
            .or_else(|| header_str(h, name));
        let got = value(sums, alg);
        if let Some(sent) = sent
            && got.map(String::as_str) != Some(sent.trim())
        {
            return Err(S3Error::with_message(
                S3ErrorCode::BadDigest,
                format!("The {alg} you specified did not match the calculated checksum."),
            ));
        }
        if let Some(g) = got
            && (keep.is_none() || prefer == Some(alg))
        {
            keep = Some((alg.to_owned(), g.clone()));
        }
    }
    Ok(keep)
}

fn decode(v: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(v.trim())
        .ok()
}

fn encode(raw: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(raw)
}

/// A composite checksum: `alg` over the parts' raw checksums back to back, then `-N`.
/// `None` if a part's value is not a checksum of `alg`.
pub(crate) fn composite(alg: &str, parts: &[&str]) -> Option<String> {
    let width = width(alg)?;
    let mut h = hasher(alg);
    for p in parts {
        let raw = decode(p).filter(|r| r.len() == width)?;
        h.update(&raw);
    }
    let whole = h.finalize();
    Some(format!("{}-{}", value(&whole, alg)?, parts.len()))
}

/// A full-object checksum: the parts' CRCs (with their sizes) combined into the CRC of the
/// whole object. `None` for an algorithm that has none (SHA1, SHA256) or a part's value that
/// is not a checksum of `alg`.
pub(crate) fn full_object(alg: &str, parts: &[(&str, u64)]) -> Option<String> {
    use crc_fast::CrcAlgorithm;
    let (algorithm, width) = match alg {
        "CRC32" => (CrcAlgorithm::Crc32IsoHdlc, 4),
        "CRC32C" => (CrcAlgorithm::Crc32Iscsi, 4),
        "CRC64NVME" => (CrcAlgorithm::Crc64Nvme, 8),
        _ => return None,
    };
    let mut crc = crc_fast::checksum(algorithm, &[]);
    for (v, size) in parts {
        let raw = decode(v).filter(|r| r.len() == width)?;
        let mut be = [0u8; 8];
        be[8 - width..].copy_from_slice(&raw);
        crc = crc_fast::checksum_combine(algorithm, crc, u64::from_be_bytes(be), *size);
    }
    Some(encode(&crc.to_be_bytes()[8 - width..]))
}

/// Raw bytes of a checksum of `alg`.
fn width(alg: &str) -> Option<usize> {
    Some(match alg {
        "CRC32" | "CRC32C" => 4,
        "CRC64NVME" => 8,
        "SHA1" => 20,
        "SHA256" => 32,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn of(alg: &str, bytes: &[u8]) -> String {
        let mut h = hasher(alg);
        h.update(bytes);
        value(&h.finalize(), alg).cloned().unwrap_or_default()
    }

    proptest! {
        /// Combining the parts' CRCs gives the CRC of the whole object, however it is cut.
        #[test]
        fn full_object_crcs_equal_the_crc_of_the_whole(
            bytes in proptest::collection::vec(any::<u8>(), 0..4096),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let mut at: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
            at.push(0);
            at.push(bytes.len());
            at.sort_unstable();
            for alg in ["CRC32", "CRC32C", "CRC64NVME"] {
                let parts: Vec<(String, u64)> = at
                    .windows(2)
                    .map(|w| (of(alg, &bytes[w[0]..w[1]]), (w[1] - w[0]) as u64))
                    .collect();
                let refs: Vec<(&str, u64)> =
                    parts.iter().map(|(v, n)| (v.as_str(), *n)).collect();
                prop_assert_eq!(full_object(alg, &refs), Some(of(alg, &bytes)));
            }
        }
    }

    #[test]
    fn composite_is_the_checksum_of_the_part_checksums() {
        // SHA-256 over the parts' raw digests back to back, then the part count.
        let parts = [of("SHA256", b"a"), of("SHA256", b"b")];
        let mut raw = Vec::new();
        for p in &parts {
            raw.extend(decode(p).unwrap());
        }
        let want = format!("{}-2", of("SHA256", &raw));
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        assert_eq!(composite("SHA256", &refs), Some(want));
        // A value of another width is not a part checksum of this algorithm.
        assert_eq!(composite("CRC32", &refs), None);
        assert_eq!(full_object("SHA256", &[]), None);
        assert_eq!(full_object("CRC32", &[]), Some(of("CRC32", b"")));
    }

    #[test]
    fn requested_algorithms_come_from_values_the_sdk_header_and_trailers() {
        let mut h = http::HeaderMap::new();
        assert!(requested(&h).is_empty());
        h.insert("x-amz-checksum-crc32c", "AAAAAA==".parse().unwrap());
        h.insert("x-amz-sdk-checksum-algorithm", "sha1".parse().unwrap());
        h.insert("x-amz-trailer", "x-amz-checksum-crc64nvme".parse().unwrap());
        assert_eq!(requested(&h), vec!["CRC32C", "CRC64NVME", "SHA1"]);
    }
}
