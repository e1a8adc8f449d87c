//! A compressed answer, inflated so that it can be searched for the
//! secrets the call placed (see `echo`). The gateway asks services for
//! their answers as they are; one that compresses anyway (gzip, or HTTP's
//! `deflate`: zlib) is inflated piece by piece, never more than about
//! [`PIECE`] at a time, whatever the ratio (a small answer may inflate to
//! gigabytes).

use std::io::Write;

use bytes::{Buf, Bytes};
use flate2::{Decompress, FlushDecompress, Status};

/// Most bytes inflated before a piece is handed on.
const PIECE: usize = 64 * 1024;

enum Decoder {
    /// One gzip member or several, one after another.
    Gzip(Box<flate2::write::MultiGzDecoder<Vec<u8>>>),
    Zlib {
        state: Decompress,
        ended: bool,
    },
}

/// Inflates an answer as its pieces come.
pub struct Inflater {
    decoder: Decoder,
    /// Compressed bytes not inflated yet.
    pending: Bytes,
    /// Whether any compressed byte came (an answer without a body, to a
    /// `HEAD`, has nothing to inflate).
    fed: bool,
}

fn broken(what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("the service's compressed answer {what}"),
    )
}

impl Inflater {
    /// For an answer whose `Content-Encoding` names these `codings` (the
    /// header's values, `identity` left out): none to inflate for none;
    /// the codings as the answer named them when they cannot be inflated.
    pub fn for_codings<'a>(codings: impl Iterator<Item = &'a str>) -> Result<Option<Self>, String> {
        let named: Vec<String> = codings
            .flat_map(|v| v.split(','))
            .map(|c| c.trim().to_ascii_lowercase())
            .filter(|c| !c.is_empty() && c != "identity")
            .collect();
        let decoder = match named.as_slice() {
            [] => return Ok(None),
            [one] if one == "gzip" || one == "x-gzip" => {
                Decoder::Gzip(Box::new(flate2::write::MultiGzDecoder::new(Vec::new())))
            }
            [one] if one == "deflate" => Decoder::Zlib {
                state: Decompress::new(true),
                ended: false,
            },
            _ => return Err(named.join(", ")),
        };
        Ok(Some(Self {
            decoder,
            pending: Bytes::new(),
            fed: false,
        }))
    }

    /// Whether compressed bytes wait to be inflated.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The next compressed piece (once those before it are inflated).
    pub fn push(&mut self, compressed: Bytes) {
        debug_assert!(self.pending.is_empty());
        self.fed |= !compressed.is_empty();
        self.pending = compressed;
    }

    /// The next piece inflated (empty when the bytes that waited held only
    /// framing), up to about [`PIECE`]; the rest waits for the next call.
    pub fn next_piece(&mut self) -> std::io::Result<Bytes> {
        let mut out = Vec::new();
        while !self.pending.is_empty() && out.len() < PIECE {
            let consumed = match &mut self.decoder {
                Decoder::Gzip(gzip) => {
                    let consumed = gzip.write(&self.pending)?;
                    if consumed == self.pending.len() {
                        // What the last write inflated, not held back
                        // until the next piece comes.
                        gzip.flush()?;
                    }
                    out.append(gzip.get_mut());
                    consumed
                }
                Decoder::Zlib { ended: true, .. } => return Err(broken("goes on after its end")),
                Decoder::Zlib { state, ended } => {
                    out.reserve(PIECE);
                    let before = state.total_in();
                    let status = state
                        .decompress_vec(&self.pending, &mut out, FlushDecompress::None)
                        .map_err(|_| broken("is not valid"))?;
                    *ended = status == Status::StreamEnd;
                    (state.total_in() - before) as usize
                }
            };
            if consumed == 0 && out.is_empty() {
                return Err(broken("cannot be inflated"));
            }
            self.pending.advance(consumed);
        }
        Ok(Bytes::from(out))
    }

    /// What is left once the answer has ended; fails when the compressed
    /// answer was broken off.
    pub fn finish(&mut self) -> std::io::Result<Bytes> {
        debug_assert!(self.pending.is_empty());
        if !self.fed {
            return Ok(Bytes::new());
        }
        match &mut self.decoder {
            Decoder::Gzip(gzip) => {
                gzip.try_finish().map_err(|_| broken("was broken off"))?;
                Ok(Bytes::from(std::mem::take(gzip.get_mut())))
            }
            Decoder::Zlib { ended: true, .. } => Ok(Bytes::new()),
            Decoder::Zlib { .. } => Err(broken("was broken off")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gzip(text: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(text).unwrap();
        e.finish().unwrap()
    }

    fn zlib(text: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(text).unwrap();
        e.finish().unwrap()
    }

    /// Inflates `compressed` fed in pieces of `size`: all it gave, and the
    /// largest piece.
    fn inflate(coding: &str, compressed: &[u8], size: usize) -> std::io::Result<(Vec<u8>, usize)> {
        let mut inflater = Inflater::for_codings([coding].into_iter()).unwrap().unwrap();
        let (mut all, mut largest) = (Vec::new(), 0);
        for piece in compressed.chunks(size) {
            inflater.push(Bytes::copy_from_slice(piece));
            while inflater.has_pending() {
                let out = inflater.next_piece()?;
                largest = largest.max(out.len());
                all.extend_from_slice(&out);
            }
        }
        all.extend_from_slice(&inflater.finish()?);
        Ok((all, largest))
    }

    #[test]
    fn an_answer_inflates_whole_in_bounded_pieces_and_a_broken_one_fails() {
        let text: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_string().into_bytes()).collect();
        let zeros = vec![0u8; 64 * 1024 * 1024];
        let mut two_members = gzip(b"one, ");
        two_members.extend(gzip(b"two"));
        for (coding, compressed) in [("gzip", gzip(&text)), ("x-gzip", gzip(&text)), ("deflate", zlib(&text))] {
            for size in [1, 7, 4096, compressed.len()] {
                let (all, _) = inflate(coding, &compressed, size).unwrap();
                assert!(all == text, "{coding} in pieces of {size}");
            }
            let cut = &compressed[..compressed.len() / 2];
            assert!(inflate(coding, cut, 4096).is_err(), "{coding} broken off");
            let mut trailing = compressed.clone();
            trailing.extend_from_slice(b"garbage after the end");
            assert!(
                inflate(coding, &trailing, 4096).is_err(),
                "{coding} with bytes after its end"
            );
        }
        for (coding, bomb) in [("gzip", gzip(&zeros)), ("deflate", zlib(&zeros))] {
            assert!(bomb.len() < 128 * 1024, "{}", bomb.len());
            let (all, largest) = inflate(coding, &bomb, bomb.len()).unwrap();
            assert_eq!(all.len(), zeros.len(), "{coding}");
            assert!(largest <= 2 * PIECE, "{coding}: a piece of {largest} bytes");
        }
        assert_eq!(inflate("gzip", &two_members, 3).unwrap().0, b"one, two");
        let mut empty = Inflater::for_codings(["gzip"].into_iter()).unwrap().unwrap();
        assert!(empty.finish().unwrap().is_empty(), "no body, nothing to inflate");
    }

    #[test]
    fn only_gzip_and_deflate_are_inflated_and_identity_is_none() {
        assert!(Inflater::for_codings(["identity"].into_iter()).unwrap().is_none());
        assert!(Inflater::for_codings(std::iter::empty()).unwrap().is_none());
        assert!(Inflater::for_codings([" GZIP "].into_iter()).unwrap().is_some());
        assert_eq!(Inflater::for_codings(["br"].into_iter()).err().unwrap(), "br");
        assert_eq!(
            Inflater::for_codings(["gzip, br"].into_iter()).err().unwrap(),
            "gzip, br"
        );
        assert_eq!(
            Inflater::for_codings(["deflate", "gzip"].into_iter()).err().unwrap(),
            "deflate, gzip"
        );
    }
}
