//! HTTP request decompression (gzip, deflate): never panics, and what it returns never exceeds
//! the limit it was given (a decompression bomb is an error).
use nereid::internals::{Encoding, decompress};

const LIMIT: usize = 64 * 1024;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Some((&selector, data)) = data.split_first() else {
            return;
        };
        let encoding = if selector & 1 == 0 {
            Encoding::Gzip
        } else {
            Encoding::Deflate
        };
        if let Ok(Some(out)) = decompress(encoding, data, LIMIT) {
            assert!(out.len() <= LIMIT, "{} bytes out, limit {LIMIT}", out.len());
        }
    });
}
