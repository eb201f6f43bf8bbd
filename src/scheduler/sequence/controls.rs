//! The control inputs of one sequence batch (sequence-batching.md §4.2, §4.3): one element per
//! row, shape `[rows, 1]` for a batching model and `[1]` otherwise. A real row carries its
//! request's START/END flags, READY true and its correlation id; a padding row carries
//! START/END/READY false and CORRID 0 (an empty string for a string CORRID).

use crate::error::Result;
use crate::model::sequence::{Control, ControlForm, ControlKind, FlagValues};
use crate::request::{CorrelationId, SequenceParams};
use crate::tensor::{DataType, Tensor};

/// The control tensors for `rows` (`None` = a padding row), in the spec's control order.
pub(super) fn control_tensors(
    controls: &[Control],
    rows: &[Option<&SequenceParams>],
    batching: bool,
) -> Result<Vec<Tensor>> {
    let shape = if batching {
        vec![rows.len() as i64, 1]
    } else {
        vec![1]
    };
    controls
        .iter()
        .map(|c| {
            let mut data = Vec::with_capacity(rows.len() * 8);
            for row in rows {
                encode(c, *row, &mut data);
            }
            Tensor::new(c.name.clone(), c.dtype(), shape.clone(), data)
        })
        .collect()
}

/// Appends one row's value of control `c`.
fn encode(c: &Control, row: Option<&SequenceParams>, out: &mut Vec<u8>) {
    match c.form {
        ControlForm::Flag(values) => {
            let on = row.is_some_and(|p| match c.kind {
                ControlKind::Start => p.start,
                ControlKind::End => p.end,
                ControlKind::Ready | ControlKind::Corrid => true,
            });
            let i = usize::from(on);
            match values {
                FlagValues::Int32(v) => out.extend_from_slice(&v[i].to_le_bytes()),
                FlagValues::Fp32(v) => out.extend_from_slice(&v[i].to_le_bytes()),
                FlagValues::Bool(v) => out.push(u8::from(v[i])),
            }
        }
        ControlForm::Corrid(dtype) => {
            let padding = CorrelationId::default();
            let id = row.map_or(&padding, |p| &p.id);
            match (dtype, id) {
                (DataType::Bytes, CorrelationId::Str(s)) => {
                    // One BYTES element: 4-byte little-endian length, then the bytes (a
                    // validated id is at most 128 bytes).
                    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                    out.extend_from_slice(s.as_bytes());
                }
                (DataType::Bytes, CorrelationId::Uint(_)) => {
                    out.extend_from_slice(&0u32.to_le_bytes())
                }
                (dtype, id) => {
                    // Validation admits only integer ids here; the 32-bit types truncate.
                    let n = match id {
                        CorrelationId::Uint(n) => *n,
                        CorrelationId::Str(_) => 0,
                    };
                    let bytes = n.to_le_bytes();
                    let width = if matches!(dtype, DataType::Uint32 | DataType::Int32) {
                        4
                    } else {
                        8
                    };
                    out.extend_from_slice(&bytes[..width]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control(name: &str, kind: ControlKind, form: ControlForm) -> Control {
        Control {
            name: name.into(),
            kind,
            form,
        }
    }

    #[test]
    fn every_form_encodes_real_and_padding_rows() {
        let first = SequenceParams {
            id: CorrelationId::Uint(0x1_0000_0007),
            start: true,
            end: false,
        };
        let last = SequenceParams {
            id: CorrelationId::Str("ab".into()),
            start: false,
            end: true,
        };
        let rows = [Some(&first), None, Some(&last)];
        let controls = [
            control(
                "S",
                ControlKind::Start,
                ControlForm::Flag(FlagValues::Int32([0, 1])),
            ),
            control(
                "E",
                ControlKind::End,
                ControlForm::Flag(FlagValues::Fp32([0.0, 2.5])),
            ),
            control(
                "R",
                ControlKind::Ready,
                ControlForm::Flag(FlagValues::Bool([false, true])),
            ),
            control(
                "C64",
                ControlKind::Corrid,
                ControlForm::Corrid(DataType::Uint64),
            ),
            control(
                "C32",
                ControlKind::Corrid,
                ControlForm::Corrid(DataType::Int32),
            ),
            control(
                "CS",
                ControlKind::Corrid,
                ControlForm::Corrid(DataType::Bytes),
            ),
        ];
        let t = control_tensors(&controls, &rows, true).unwrap();
        assert_eq!(t[0].shape(), &[3, 1]);
        assert_eq!(t[0].data(), &[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0][..]);
        let e: Vec<f32> = t[1]
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(e, vec![0.0, 0.0, 2.5]);
        assert_eq!(t[2].data(), &[1, 0, 1][..]);
        assert_eq!(&t[3].data()[..8], &0x1_0000_0007u64.to_le_bytes());
        assert_eq!(&t[3].data()[8..16], &[0; 8]);
        assert_eq!(&t[4].data()[..4], &7i32.to_le_bytes());
        assert_eq!(
            t[5].data(),
            &[0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, b'a', b'b'][..]
        );
        let one = control_tensors(&controls[..1], &[Some(&first)], false).unwrap();
        assert_eq!(one[0].shape(), &[1]);
    }
}
