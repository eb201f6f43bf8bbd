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

/// Splits `data` into exactly `expected` elements.
pub fn decode(data: &[u8], expected: usize) -> Result<Vec<&[u8]>, FramingError> {
    // `expected` comes from a client's shape: never reserve more than the data can hold
    // (every element takes at least its 4-byte length).
    let mut out = Vec::with_capacity(expected.min(data.len() / 4));
    let mut pos = 0;
    while pos < data.len() {
        let element = out.len();
        if data.len() - pos < 4 {
            return Err(FramingError::IncompleteLength { element });
        }
        let length = u32::from_le_bytes(data[pos..pos + 4].try_into().expect("4 bytes")) as usize;
        pos += 4;
        let remaining = data.len() - pos;
        if length > remaining {
            return Err(FramingError::IncompletePayload {
                element,
                length,
                remaining,
            });
        }
        out.push(&data[pos..pos + length]);
        pos += length;
    }
    if out.len() != expected {
        return Err(FramingError::Count {
            expected,
            got: out.len(),
        });
    }
    Ok(out)
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
    let total: usize = rows.iter().sum::<usize>() * per_row;
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
}
