//! gzip / deflate for the infer route, as Triton does it (http-protocol.md §1.2): request bodies
//! are decompressed by `Content-Encoding`, responses compressed by `Accept-Encoding`.
//! "deflate" means a zlib stream (RFC 1950), which is what Triton and its clients produce.

use std::io::{Read, Write};

use flate2::Compression;
use flate2::read::{MultiGzDecoder, ZlibDecoder};
use flate2::write::{GzEncoder, ZlibEncoder};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    Deflate,
}

impl Encoding {
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Identity => "identity",
            Encoding::Gzip => "gzip",
            Encoding::Deflate => "deflate",
        }
    }
}

/// The request's `Content-Encoding`: absent, empty or `identity` = none; `gzip`; `deflate`;
/// anything else is `None` (the caller answers 501 with `Accept-Encoding: gzip, deflate`).
pub(crate) fn request_encoding(content_encoding: Option<&str>) -> Option<Encoding> {
    match content_encoding.map(str::trim) {
        None | Some("") | Some("identity") => Some(Encoding::Identity),
        Some("gzip") => Some(Encoding::Gzip),
        Some("deflate") => Some(Encoding::Deflate),
        Some(_) => None,
    }
}

/// Triton's choice among identity/gzip/deflate from `Accept-Encoding`: the highest q-weight
/// wins, ties keep the first listed, unknown codings and malformed entries are skipped.
pub(crate) fn response_encoding(accept_encoding: Option<&str>) -> Encoding {
    let Some(accept) = accept_encoding else {
        return Encoding::Identity;
    };
    let mut best = Encoding::Identity;
    let mut best_weight = 0.0f64;
    for entry in accept.split(',') {
        let mut parts = entry.split(';');
        let coding = parts.next().unwrap_or("").trim();
        let mut weight = 1.0f64;
        let mut malformed = false;
        for p in parts {
            if let Some(q) = p.trim().strip_prefix("q=") {
                match q.trim().parse::<f64>() {
                    Ok(w) => weight = w,
                    Err(_) => malformed = true,
                }
            }
        }
        let candidate = match coding {
            "identity" => Encoding::Identity,
            "gzip" => Encoding::Gzip,
            "deflate" => Encoding::Deflate,
            _ => continue,
        };
        if !malformed && weight > best_weight {
            best = candidate;
            best_weight = weight;
        }
    }
    best
}

/// Decompresses `data`, refusing to produce more than `limit` bytes (a small compressed body
/// must not expand without bound). `Ok(None)` means the limit was exceeded.
pub fn decompress(encoding: Encoding, data: &[u8], limit: usize) -> Result<Option<Vec<u8>>> {
    let mut out = Vec::new();
    let cap = (limit as u64).saturating_add(1);
    let read = match encoding {
        Encoding::Identity => return Ok(Some(data.to_vec())),
        Encoding::Gzip => MultiGzDecoder::new(data).take(cap).read_to_end(&mut out),
        Encoding::Deflate => ZlibDecoder::new(data).take(cap).read_to_end(&mut out),
    };
    read.map_err(|e| {
        Error::invalid_arg(format!(
            "failed to decompress the request body ({}): {e}",
            encoding.as_str()
        ))
    })?;
    Ok((out.len() <= limit).then_some(out))
}

/// Compresses a response body; `None` if compression failed (Triton then sends it as is).
pub(crate) fn compress(encoding: Encoding, data: &[u8]) -> Option<Vec<u8>> {
    match encoding {
        Encoding::Identity => None,
        Encoding::Gzip => {
            let mut enc = GzEncoder::new(Vec::new(), Compression::default());
            enc.write_all(data).ok()?;
            enc.finish().ok()
        }
        Encoding::Deflate => {
            let mut enc = ZlibEncoder::new(Vec::new(), Compression::default());
            enc.write_all(data).ok()?;
            enc.finish().ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_encoding_choice() {
        let table = [
            (None, Encoding::Identity),
            (Some(""), Encoding::Identity),
            (Some("gzip"), Encoding::Gzip),
            (Some("deflate"), Encoding::Deflate),
            (Some("gzip, deflate"), Encoding::Gzip),
            (Some("deflate;q=0.5, gzip;q=0.9"), Encoding::Gzip),
            (Some("gzip;q=0.2, deflate;q=0.8"), Encoding::Deflate),
            (Some("br, gzip;q=0.5"), Encoding::Gzip),
            (Some("br"), Encoding::Identity),
            (Some("identity, gzip"), Encoding::Identity),
            (Some("gzip;q=abc, deflate;q=0.1"), Encoding::Deflate),
            (Some("gzip;q=0"), Encoding::Identity),
        ];
        for (header, want) in table {
            assert_eq!(response_encoding(header), want, "{header:?}");
        }
    }

    #[test]
    fn content_encoding_kinds() {
        assert_eq!(request_encoding(None), Some(Encoding::Identity));
        assert_eq!(request_encoding(Some("identity")), Some(Encoding::Identity));
        assert_eq!(request_encoding(Some("gzip")), Some(Encoding::Gzip));
        assert_eq!(request_encoding(Some("deflate")), Some(Encoding::Deflate));
        assert_eq!(request_encoding(Some("br")), None);
    }

    #[test]
    fn round_trips_and_limits() {
        let data = b"{\"inputs\": []}".repeat(100);
        for enc in [Encoding::Gzip, Encoding::Deflate] {
            let packed = compress(enc, &data).unwrap();
            assert!(packed.len() < data.len());
            assert_eq!(decompress(enc, &packed, data.len()).unwrap().unwrap(), data);
            assert_eq!(decompress(enc, &packed, data.len() - 1).unwrap(), None);
            let err = decompress(enc, b"not compressed", 1 << 20).unwrap_err();
            assert!(err.message.contains("failed to decompress"), "{err}");
        }
    }
}
