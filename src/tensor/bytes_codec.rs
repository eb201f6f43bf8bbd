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
}
