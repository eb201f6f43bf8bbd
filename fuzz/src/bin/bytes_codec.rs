//! BYTES tensor framing (4-byte little-endian length before each element): `decode` must never
//! panic, must return exactly the elements asked for, each a slice of its input, and what it
//! decodes must encode back to the same bytes.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Some((&count, data)) = data.split_first() else {
            return;
        };
        let expected = usize::from(count);
        if let Ok(elements) = nereid::internals::bytes_codec::decode(data, expected) {
            assert_eq!(elements.len(), expected);
            let range = data.as_ptr_range();
            for e in &elements {
                let r = e.as_ptr_range();
                assert!(
                    range.start <= r.start && r.end <= range.end,
                    "element outside the input"
                );
            }
            assert_eq!(
                nereid::internals::bytes_codec::encode(elements.iter().copied()),
                data
            );
        }
    });
}
