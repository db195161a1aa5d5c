//! Bodies of the gateway's fuzz targets (`fuzz/fuzz_targets/http_input.rs`), kept here so the
//! ordinary test suite runs them too over generated inputs. Each must return normally on any
//! input: the decoders that see outside bytes on the HTTP faces.

use s3s::xml::{Deserialize, Deserializer};

/// Arbitrary bytes as every piece of HTTP input Cairn decodes itself or through s3s: S3 XML
/// bodies, `Range` headers, file paths and namespace names, share-link tokens, image headers.
pub fn http_input(data: &[u8]) {
    fn xml<'a, T: Deserialize<'a>>(data: &'a [u8]) {
        let mut d = Deserializer::new(data);
        let _ = T::deserialize(&mut d);
    }
    xml::<s3s::dto::CompletedMultipartUpload>(data);
    xml::<s3s::dto::Delete>(data);
    xml::<s3s::dto::Tagging>(data);
    xml::<s3s::dto::BucketLifecycleConfiguration>(data);
    xml::<s3s::dto::CORSConfiguration>(data);
    xml::<s3s::dto::VersioningConfiguration>(data);
    let text = String::from_utf8_lossy(data);
    for size in [0, 1, 1 << 20, u64::MAX] {
        if let Ok(Some((a, b))) = crate::namespaces::parse_range(Some(&text), size) {
            assert!(a <= b && b < size, "a range outside the object");
        }
    }
    if crate::namespaces::check_path(&text).is_ok() {
        assert!(!text.split('/').any(|s| s == ".." || s.is_empty()));
        assert!(!text.contains('\0'));
    }
    let _ = crate::namespaces::check_namespace_name(&text);
    let _ = crate::shares::parse_token(&text);
    if let Some((format, _)) = crate::images::sniff(data, data.len() as u64) {
        assert!(cairn_master::images::FORMATS.contains(&format));
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    /// Inputs that reach deep into each decoder, to be mutated.
    fn seeds() -> Vec<Vec<u8>> {
        let mut qcow2 = vec![0u8; 64];
        qcow2[..4].copy_from_slice(b"QFI\xfb");
        qcow2[7] = 3;
        vec![
            b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>\"a\"</ETag></Part></CompleteMultipartUpload>".to_vec(),
            b"<Delete><Object><Key>k</Key><VersionId>v</VersionId></Object><Quiet>true</Quiet></Delete>".to_vec(),
            b"<Tagging><TagSet><Tag><Key>a</Key><Value>b</Value></Tag></TagSet></Tagging>".to_vec(),
            b"<LifecycleConfiguration><Rule><ID>r</ID><Status>Enabled</Status><Filter><Prefix>p/</Prefix></Filter><Expiration><Days>3</Days></Expiration></Rule></LifecycleConfiguration>".to_vec(),
            b"bytes=0-99".to_vec(),
            b"bytes=-5".to_vec(),
            b"dir/sub/file.txt".to_vec(),
            b"0123456789abcdef0123456789abcdef.18c2f.0123456789abcdef0123456789abcdef".to_vec(),
            qcow2,
        ]
    }

    proptest! {
        #[test]
        fn fuzz_http_input_body(noise in proptest::collection::vec(any::<u8>(), 0..512), seed in 0usize..9, at in any::<usize>(), flips in proptest::collection::vec(any::<(usize, u8)>(), 0..8)) {
            super::http_input(&noise);
            let mut s = seeds()[seed].clone();
            for (i, b) in flips {
                let n = s.len().max(1);
                if let Some(x) = s.get_mut(i % n) {
                    *x ^= b;
                }
            }
            s.truncate(at % (s.len() + 1) + s.len() / 2);
            super::http_input(&s);
        }
    }

    #[test]
    fn the_seeds_decode() {
        for s in seeds() {
            super::http_input(&s);
        }
        assert_eq!(
            crate::namespaces::parse_range(Some("bytes=0-99"), 1000),
            Ok(Some((0, 99)))
        );
        assert!(
            crate::shares::parse_token(
                "0123456789abcdef0123456789abcdef.18c2f.0123456789abcdef0123456789abcdef"
            )
            .is_some()
        );
    }
}
