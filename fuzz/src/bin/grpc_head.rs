//! The early-refusal scan of a gRPC `ModelInferRequest`'s first bytes: it must terminate on any
//! input, never panic, and a head it reports lies inside the buffer, after the 5-byte prefix.
use nereid::internals::{Head, find_head};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        if let Head::Ready(range) = find_head(data) {
            assert_eq!(range.start, 5);
            assert!(
                range.end <= data.len(),
                "{range:?} outside {} bytes",
                data.len()
            );
        }
    });
}
