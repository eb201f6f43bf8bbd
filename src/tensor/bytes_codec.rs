//! Triton's BYTES serialization: each element is a 4-byte little-endian length followed by
//! that many payload bytes, elements concatenated in row-major order.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FramingError {
    /// Fewer than 4 bytes remain where a length prefix should start.
    IncompleteLength { element: usize },
    /// A length prefix points past the end of the buffer.
    IncompletePayload {
        element: usize,
        length: usize,
        remaining: usize,
    },
    /// The buffer holds a different number of elements than the shape says.
    Count { expected: usize, got: usize },
}

impl fmt::Display for FramingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FramingError::IncompleteLength { element } => {
                write!(f, "incomplete string length indicator at element {element}")
            }
            FramingError::IncompletePayload {
                element,
                length,
                remaining,
            } => write!(
                f,
                "incomplete string data at element {element}: length indicator says {length} bytes, {remaining} remain"
            ),
            FramingError::Count { expected, got } => {
                write!(f, "expected {expected} string elements, got {got}")
            }
        }
    }
}

/// Walks the framing, calling `each` with every element's payload; returns how many there were.
/// Every step is checked against the bytes left, so it cannot read past `data` or wrap.
fn walk<'a>(data: &'a [u8], mut each: impl FnMut(&'a [u8])) -> Result<usize, FramingError> {
    let mut pos = 0;
    let mut element = 0;
    while pos < data.len() {
        let Some(prefix) = data.get(pos..pos + 4) else {
            return Err(FramingError::IncompleteLength { element });
        };
        let length = u32::from_le_bytes(prefix.try_into().expect("4 bytes")) as usize;
        pos += 4;
        let remaining = data.len() - pos;
        if length > remaining {
            return Err(FramingError::IncompletePayload {
                element,
                length,
                remaining,
            });
        }
        each(&data[pos..pos + length]);
        pos += length;
        element += 1;
    }
    Ok(element)
}

/// Splits `data` into exactly `expected` elements.
pub fn decode(data: &[u8], expected: usize) -> Result<Vec<&[u8]>, FramingError> {
    // `expected` comes from a client's shape: never reserve more than the data can hold
    // (every element takes at least its 4-byte length).
    let mut out = Vec::with_capacity(expected.min(data.len() / 4));
    let got = walk(data, |e| out.push(e))?;
    if got != expected {
        return Err(FramingError::Count { expected, got });
    }
    Ok(out)
}

/// Checks that `data` is the serialization of exactly `expected` elements, without copying.
pub fn check(data: &[u8], expected: usize) -> Result<(), FramingError> {
    let got = walk(data, |_| {})?;
    if got != expected {
        return Err(FramingError::Count { expected, got });
    }
    Ok(())
}

/// Serializes elements into the length-prefixed form.
pub fn encode<'a>(elements: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for e in elements {
        out.extend_from_slice(&(e.len() as u32).to_le_bytes());
        out.extend_from_slice(e);
    }
    out
}

/// Byte length of each group of `rows[i] × per_row` consecutive elements.
pub fn row_byte_lengths(
    data: &[u8],
    rows: &[usize],
    per_row: usize,
) -> Result<Vec<usize>, FramingError> {
    let total = rows
        .iter()
        .fold(0usize, |a, &r| a.saturating_add(r))
        .saturating_mul(per_row);
    let elements = decode(data, total)?;
    let mut lengths = Vec::with_capacity(rows.len());
    let mut idx = 0;
    for r in rows {
        let n = r * per_row;
        lengths.push(elements[idx..idx + n].iter().map(|e| e.len() + 4).sum());
        idx += n;
    }
    Ok(lengths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let data = encode([b"hello".as_slice(), b"", b"\xff\x00"]);
        assert_eq!(check(&data, 3), Ok(()));
        assert_eq!(
            check(&data, 2),
            Err(FramingError::Count {
                expected: 2,
                got: 3
            })
        );
        assert_eq!(
            decode(&data, 3).unwrap(),
            vec![b"hello".as_slice(), b"", b"\xff\x00"]
        );
    }

    #[test]
    fn malformed_inputs() {
        assert_eq!(
            decode(&[1, 0], 1),
            Err(FramingError::IncompleteLength { element: 0 })
        );
        let mut data = encode([b"ab".as_slice()]);
        data.extend_from_slice(&[9, 0, 0, 0, b'x']);
        assert_eq!(
            decode(&data, 2),
            Err(FramingError::IncompletePayload {
                element: 1,
                length: 9,
                remaining: 1
            })
        );
        assert_eq!(
            decode(&encode([b"a".as_slice()]), 2),
            Err(FramingError::Count {
                expected: 2,
                got: 1
            })
        );
        assert_eq!(decode(&[], 0), Ok(vec![]));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// Whether `part` lies inside `whole` (a sub-slice, not a copy).
        fn inside(part: &[u8], whole: &[u8]) -> bool {
            let (p, w) = (part.as_ptr() as usize, whole.as_ptr() as usize);
            p >= w && p + part.len() <= w + whole.len()
        }

        proptest! {
            /// Any bytes and any element count: an error, or exactly that many elements, each a
            /// slice of the input, that encode back to the input.
            #[test]
            fn any_bytes_decode_to_slices_of_themselves(
                data in proptest::collection::vec(any::<u8>(), 0..200),
                expected in prop_oneof![0usize..8, any::<usize>()],
            ) {
                if let Ok(elements) = decode(&data, expected) {
                    prop_assert_eq!(elements.len(), expected);
                    prop_assert!(elements.iter().all(|e| inside(e, &data)));
                    prop_assert_eq!(encode(elements.iter().copied()), data);
                }
            }

            /// Framed elements whose length prefixes may lie: decoding never reads past the end.
            #[test]
            fn lying_lengths_are_framing_errors(
                elements in proptest::collection::vec(
                    (any::<u32>(), proptest::collection::vec(any::<u8>(), 0..16)), 0..8),
            ) {
                let mut data = Vec::new();
                for (len, body) in &elements {
                    data.extend_from_slice(&len.to_le_bytes());
                    data.extend_from_slice(body);
                }
                match decode(&data, elements.len()) {
                    Ok(out) => prop_assert!(out.iter().all(|e| inside(e, &data))),
                    Err(e) => prop_assert!(!e.to_string().is_empty()),
                }
            }

            #[test]
            fn encode_then_decode_is_the_identity(
                elements in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..32), 0..8),
            ) {
                let data = encode(elements.iter().map(Vec::as_slice));
                let back = decode(&data, elements.len()).unwrap();
                prop_assert_eq!(back, elements.iter().map(Vec::as_slice).collect::<Vec<_>>());
            }
        }
    }
}
