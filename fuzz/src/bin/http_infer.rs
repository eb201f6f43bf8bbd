//! An HTTP infer body: the `Inference-Header-Content-Length` split, the JSON header, JSON tensor
//! data and the binary sections after it. The first two bytes of the input are the header length
//! (0xffff: no header, the whole body is JSON); errors are fine, panics are findings.
use bytes::Bytes;
use nereid::internals::{header_length, infer_request};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        if data.len() < 2 {
            return;
        }
        let declared = u16::from_le_bytes([data[0], data[1]]);
        let body = Bytes::copy_from_slice(&data[2..]);
        let header = (declared != u16::MAX).then(|| declared.to_string());
        let Ok(split) = header_length(header.as_deref(), body.len()) else {
            return;
        };
        if let Some(n) = split {
            assert!(n <= body.len());
        }
        let _ = infer_request("m", "", body, split);
    });
}
