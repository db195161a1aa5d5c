//! Serde helpers that write byte strings as one `serialize_bytes` call instead of a sequence of
//! `u8` (one visitor call per byte). With postcard both encode to the same bytes (a varint
//! length, then the bytes), so these change speed, not formats.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::state::{Outcome, Rejection};

/// `Vec<Vec<u8>>` as a sequence of byte strings.
pub mod bytes_vec {
    use super::*;

    pub fn serialize<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|b| serde_bytes::Bytes::new(b)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        let v: Vec<serde_bytes::ByteBuf> = Deserialize::deserialize(d)?;
        Ok(v.into_iter().map(serde_bytes::ByteBuf::into_vec).collect())
    }
}

/// An [`Outcome`] (`Result<Vec<u8>, Rejection>`) whose bytes travel as one byte string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireOutcome(pub Outcome);

impl Serialize for WireOutcome {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Ok(b) => s.serialize_newtype_variant("Result", 0, "Ok", serde_bytes::Bytes::new(b)),
            Err(r) => s.serialize_newtype_variant("Result", 1, "Err", r),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename = "Result")]
enum OutcomeWire {
    Ok(#[serde(with = "serde_bytes")] Vec<u8>),
    Err(Rejection),
}

impl<'de> Deserialize<'de> for WireOutcome {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<WireOutcome, D::Error> {
        Ok(WireOutcome(match OutcomeWire::deserialize(d)? {
            OutcomeWire::Ok(b) => Ok(b),
            OutcomeWire::Err(r) => Err(r),
        }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Fast(#[serde(with = "bytes_vec")] Vec<Vec<u8>>);

    #[test]
    fn same_bytes_as_plain_serde() {
        let v = vec![vec![1u8, 2, 3], Vec::new(), vec![255; 300]];
        let plain = postcard::to_stdvec(&v).unwrap();
        let fast = postcard::to_stdvec(&Fast(v.clone())).unwrap();
        assert_eq!(plain, fast);
        assert_eq!(postcard::from_bytes::<Fast>(&plain).unwrap(), Fast(v));
        for o in [
            Ok(vec![9u8; 100]),
            Err(crate::state::Refusal::with(
                crate::state::Envelope::Malformed,
                "why",
            )),
        ] {
            let plain = postcard::to_stdvec(&o).unwrap();
            let fast = postcard::to_stdvec(&WireOutcome(o.clone())).unwrap();
            assert_eq!(plain, fast);
            assert_eq!(
                postcard::from_bytes::<WireOutcome>(&plain).unwrap(),
                WireOutcome(o)
            );
        }
    }
}
