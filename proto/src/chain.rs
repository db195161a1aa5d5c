//! The chain write as pure logic, shared by both ends: the frames a writer sends, what a
//! replica does with each frame it receives (store it and pass it on, or end), and the
//! acknowledgement that travels back up the chain. Nothing here touches a socket or a disk:
//! the data client (`cairn-client`) and the chunkserver drive it over QUIC streams or
//! in-process channels, and the unit tests below drive it with frames.
//!
//! ```text
//! writer ─data…end→ cs1 ─data…end→ cs2 ─data…end→ cs3
//! writer ←ack(cs1,cs2,cs3)─ cs1 ←ack(cs2,cs3)─ cs2 ←ack(cs3)─ cs3
//! ```

use bytes::Bytes;

use crate::chunk::{
    CHAIN_MAX, ChunkFailure, FailureKind, METHOD_WRITE_DATA, METHOD_WRITE_END, WriteAck, WriteEnd,
    WriteHeader, encode,
};
use crate::frame::{Frame, Kind};

/// A data frame: one piece of the chunk.
pub fn data_frame(piece: Bytes) -> Frame {
    Frame::new(Kind::Request, METHOD_WRITE_DATA, piece)
}

/// The end frame, after `len` bytes of data frames.
pub fn end_frame(len: u64) -> Frame {
    Frame::new(Kind::Request, METHOD_WRITE_END, encode(&WriteEnd { len }))
}

/// Where a replica passes the chunk on: the next replica's address and the header it gets
/// (the chain after it); `None` at the tail.
pub fn next_hop(h: &WriteHeader) -> Option<(&str, WriteHeader)> {
    let (next, rest) = h.chain.split_first()?;
    Some((
        next.as_str(),
        WriteHeader {
            handle: h.handle,
            version: h.version,
            chain: rest.to_vec(),
        },
    ))
}

/// What a replica does with a frame it received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Store the frame's body and pass the frame on.
    Data,
    /// Pass the frame on and finish: seal, then wait for the acknowledgement from below.
    End(WriteEnd),
}

/// One replica's view of a chain write, frame by frame.
#[derive(Debug)]
pub struct Receiver {
    me: String,
    size_max: u64,
    received: u64,
}

impl Receiver {
    /// A write `h` arriving at the replica `me`, whose chunks hold at most `size_max` bytes.
    pub fn new(me: &str, h: &WriteHeader, size_max: u64) -> Result<Receiver, ChunkFailure> {
        if h.chain.len() >= CHAIN_MAX {
            return Err(ChunkFailure::new(
                me,
                FailureKind::Rejected,
                format!("chain longer than {CHAIN_MAX}"),
            ));
        }
        Ok(Receiver {
            me: me.to_owned(),
            size_max,
            received: 0,
        })
    }

    /// Bytes of data received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Judge one frame from above.
    pub fn frame(&mut self, f: &Frame) -> Result<Step, ChunkFailure> {
        match (f.kind, f.method) {
            (Kind::Request, METHOD_WRITE_DATA) => {
                self.received += f.body.len() as u64;
                if self.received > self.size_max {
                    return Err(self.refuse(format!("chunk exceeds {} bytes", self.size_max)));
                }
                Ok(Step::Data)
            }
            (Kind::Request, METHOD_WRITE_END) => postcard::from_bytes::<WriteEnd>(&f.body)
                .map(Step::End)
                .map_err(|e| self.refuse(format!("bad write end: {e}"))),
            (kind, method) => {
                Err(self.refuse(format!("unexpected {kind:?} frame {method} in a write")))
            }
        }
    }

    /// After the end: the writer's count, the bytes received and the bytes the local replica
    /// stored must agree (a lost or doubled frame fails the write).
    pub fn check_end(&self, end: &WriteEnd, stored: u64) -> Result<(), ChunkFailure> {
        if end.len != self.received || stored != self.received {
            return Err(ChunkFailure::new(
                &self.me,
                FailureKind::Unavailable,
                format!(
                    "length mismatch: writer sent {}, received {}, stored {stored}",
                    end.len, self.received
                ),
            ));
        }
        Ok(())
    }

    fn refuse(&self, message: String) -> ChunkFailure {
        ChunkFailure::new(&self.me, FailureKind::Rejected, message)
    }
}

/// The acknowledgement replica `me` sends up once its `len` bytes are synced: itself, then
/// every replica below that acknowledged.
pub fn acknowledge(me: String, len: u64, below: Option<WriteAck>) -> WriteAck {
    let mut stored_on = vec![me];
    if let Some(b) = below {
        stored_on.extend(b.stored_on);
    }
    WriteAck { stored_on, len }
}

/// The body of an acknowledgement frame from the replica at `from`: what it acknowledged, or
/// the failure it reports (a failure further down names that replica); a body that does not
/// decode is `from`'s failure.
pub fn read_ack(from: &str, body: &[u8]) -> Result<WriteAck, ChunkFailure> {
    postcard::from_bytes::<Result<WriteAck, ChunkFailure>>(body).unwrap_or_else(|e| {
        Err(ChunkFailure::new(
            from,
            FailureKind::Unavailable,
            format!("bad acknowledgement: {e}"),
        ))
    })
}

/// The writer's last check: every replica of a chain of `chain_len` stored all `sent` bytes.
pub fn check_complete(ack: &WriteAck, chain_len: usize, sent: u64) -> Result<(), String> {
    if ack.stored_on.len() == chain_len && ack.len == sent {
        Ok(())
    } else {
        Err(format!(
            "acknowledged by {} of the chain with {} bytes",
            ack.stored_on.len(),
            ack.len
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::ChunkHandle;

    fn header(chain: &[&str]) -> WriteHeader {
        WriteHeader {
            handle: ChunkHandle(7),
            version: 3,
            chain: chain.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn each_replica_forwards_the_rest_of_the_chain() {
        let h = header(&["b", "c"]);
        let (next, h2) = next_hop(&h).unwrap();
        assert_eq!(next, "b");
        assert_eq!(h2.chain, vec!["c".to_string()]);
        assert_eq!((h2.handle, h2.version), (h.handle, h.version));
        let (next, h3) = next_hop(&h2).unwrap();
        assert_eq!(next, "c");
        assert!(next_hop(&h3).is_none(), "the tail forwards nothing");
    }

    #[test]
    fn a_replica_takes_data_then_the_end_and_checks_the_lengths() {
        let mut r = Receiver::new("a", &header(&["b"]), 10).unwrap();
        assert_eq!(
            r.frame(&data_frame(Bytes::from_static(b"hello"))),
            Ok(Step::Data)
        );
        assert_eq!(
            r.frame(&data_frame(Bytes::from_static(b"abc"))),
            Ok(Step::Data)
        );
        let Ok(Step::End(end)) = r.frame(&end_frame(8)) else {
            panic!("an end frame ends the write");
        };
        assert_eq!(end.len, 8);
        assert!(r.check_end(&end, 8).is_ok());
        // A frame lost on the way, or a short local write, fails the replica.
        let lost = r.check_end(&WriteEnd { len: 9 }, 8).unwrap_err();
        assert_eq!(
            (lost.server.as_str(), lost.kind),
            ("a", FailureKind::Unavailable)
        );
        assert!(r.check_end(&end, 7).is_err());
    }

    #[test]
    fn oversized_chunks_long_chains_and_stray_frames_are_refused() {
        let mut r = Receiver::new("a", &header(&[]), 4).unwrap();
        assert_eq!(
            r.frame(&data_frame(Bytes::from_static(b"1234"))),
            Ok(Step::Data)
        );
        let big = r.frame(&data_frame(Bytes::from_static(b"5"))).unwrap_err();
        assert_eq!(big.kind, FailureKind::Rejected);
        assert!(big.message.contains("exceeds 4 bytes"), "{big}");

        let long: Vec<String> = (0..CHAIN_MAX).map(|i| i.to_string()).collect();
        let refs: Vec<&str> = long.iter().map(String::as_str).collect();
        assert_eq!(
            Receiver::new("a", &header(&refs), 4).unwrap_err().kind,
            FailureKind::Rejected
        );

        let mut r = Receiver::new("a", &header(&[]), 4).unwrap();
        let stray = Frame::new(Kind::Response, METHOD_WRITE_DATA, Bytes::new());
        assert_eq!(r.frame(&stray).unwrap_err().kind, FailureKind::Rejected);
        let bad_end = Frame::new(Kind::Request, METHOD_WRITE_END, Bytes::from_static(&[]));
        assert_eq!(r.frame(&bad_end).unwrap_err().kind, FailureKind::Rejected);
    }

    #[test]
    fn acknowledgements_collect_the_chain_bottom_up() {
        let tail = acknowledge("c".into(), 8, None);
        let mid = acknowledge("b".into(), 8, Some(tail));
        let head = acknowledge("a".into(), 8, Some(mid));
        assert_eq!(head.stored_on, vec!["a", "b", "c"]);
        assert!(check_complete(&head, 3, 8).is_ok());
        assert!(check_complete(&head, 4, 8).is_err(), "a replica missing");
        assert!(check_complete(&head, 3, 9).is_err(), "bytes missing");
    }

    #[test]
    fn an_acknowledgement_frame_is_read_in_one_place() {
        let ok: Result<WriteAck, ChunkFailure> = Ok(acknowledge("b".into(), 5, None));
        assert_eq!(read_ack("b", &encode(&ok)).unwrap().stored_on, vec!["b"]);
        // A failure further down names the replica that failed, with its kind.
        let down: Result<WriteAck, ChunkFailure> = Err(ChunkFailure::new(
            "c",
            FailureKind::Corrupt,
            "block 2 is corrupt",
        ));
        let f = read_ack("b", &encode(&down)).unwrap_err();
        assert_eq!((f.server.as_str(), f.kind), ("c", FailureKind::Corrupt));
        // Garbage blames the replica that sent it.
        let f = read_ack("b", &[0xFF, 0xFF, 0xFF]).unwrap_err();
        assert_eq!((f.server.as_str(), f.kind), ("b", FailureKind::Unavailable));
    }

    #[test]
    fn failure_kinds_read_the_old_corrupt_flag() {
        // A peer from before kinds sent `corrupt: bool` where `kind` now is.
        #[derive(serde::Serialize)]
        struct Old {
            server: String,
            message: String,
            corrupt: bool,
        }
        for (corrupt, kind) in [
            (false, FailureKind::Unavailable),
            (true, FailureKind::Corrupt),
        ] {
            let old = Old {
                server: "a".into(),
                message: "m".into(),
                corrupt,
            };
            let new: ChunkFailure = postcard::from_bytes(&encode(&old)).unwrap();
            assert_eq!(new.kind, kind);
        }
    }
}
