//! ONNX Runtime refuses an initializer whose external-data `location` climbs out of the model
//! folder (issue 14): a config cannot name the file, and neither can the model file itself.
//!
//! The ONNX files are written here, byte by byte, as the smallest protobuf that ONNX Runtime
//! accepts: `y = x + w`, with `w` (one FP32) stored in an external file at `location`.

use std::path::Path;

use nereid::ControlMode;

use crate::common::*;

pub(crate) fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A varint field.
pub(crate) fn int(field: u32, v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    varint(&mut out, u64::from(field) << 3);
    varint(&mut out, v);
    out
}

/// A length-delimited field (string, bytes or embedded message).
pub(crate) fn msg(field: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    varint(&mut out, (u64::from(field) << 3) | 2);
    varint(&mut out, body.len() as u64);
    out.extend_from_slice(body);
    out
}

pub(crate) fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

/// `ValueInfoProto` of a FP32 tensor of shape [1].
fn value_info(name: &str) -> Vec<u8> {
    tensor_info(name, 1, &[1])
}

/// `ValueInfoProto` of a tensor of ONNX element type `elem_type` and shape `dims` ([] = scalar).
pub(crate) fn tensor_info(name: &str, elem_type: u64, dims: &[u64]) -> Vec<u8> {
    let shape: Vec<u8> = dims.iter().flat_map(|&d| msg(1, &int(1, d))).collect();
    let tensor_type = cat(&[int(1, elem_type), msg(2, &shape)]);
    let type_proto = msg(1, &tensor_type); // TypeProto.tensor_type
    cat(&[msg(1, name.as_bytes()), msg(2, &type_proto)])
}

/// `ModelProto` (IR 8, opset 13) computing `y = x + w`, `w` stored externally at `location`.
fn model_with_external_weight(location: &str) -> Vec<u8> {
    let node = cat(&[
        msg(1, b"x"),
        msg(1, b"w"),
        msg(2, b"y"),
        msg(4, b"Add"), // op_type
    ]);
    let entry = |k: &str, v: &str| msg(13, &cat(&[msg(1, k.as_bytes()), msg(2, v.as_bytes())]));
    let initializer = cat(&[
        int(1, 1), // dims: [1]
        int(2, 1), // data_type: FLOAT
        msg(8, b"w"),
        entry("location", location),
        entry("offset", "0"),
        entry("length", "4"),
        int(14, 1), // data_location: EXTERNAL
    ]);
    let graph = cat(&[
        msg(1, &node),
        msg(2, b"g"),
        msg(5, &initializer),
        msg(11, &value_info("x")),
        msg(12, &value_info("y")),
    ]);
    let opset = cat(&[msg(1, b""), int(2, 13)]);
    cat(&[int(1, 8), msg(7, &graph), msg(8, &opset)])
}

/// `<repo>/<name>/{config.pbtxt, 1/model.onnx}` with the weight at `location`.
fn model_folder(repo: &Path, name: &str, location: &str) {
    let dir = repo.join(name);
    std::fs::create_dir_all(dir.join("1")).unwrap();
    std::fs::write(
        dir.join("1/model.onnx"),
        model_with_external_weight(location),
    )
    .unwrap();
    std::fs::write(
        dir.join("config.pbtxt"),
        format!(
            "name: \"{name}\"\nbackend: \"onnxruntime\"\nmax_batch_size: 0\ninput [ {{ name: \"x\" data_type: TYPE_FP32 dims: [ 1 ] }} ]\noutput [ {{ name: \"y\" data_type: TYPE_FP32 dims: [ 1 ] }} ]\n"
        ),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onnx_runtime_refuses_external_data_outside_the_model_folder() {
    let repo = tempfile::tempdir().unwrap();
    let weight = 41.0f32.to_le_bytes();
    // The control: the same model with its weight inside the version folder loads and runs.
    model_folder(repo.path(), "inside", "w.bin");
    std::fs::write(repo.path().join("inside/1/w.bin"), weight).unwrap();
    // The attack: the weight file is two folders up, outside the model.
    model_folder(repo.path(), "escape", "../../secret.bin");
    std::fs::write(repo.path().join("secret.bin"), weight).unwrap();

    let s = TestServer::start_with(repo.path(), |c| {
        c.manager.control_mode = ControlMode::Explicit;
        c.manager.startup_models = vec![];
    })
    .await;
    load_model(&s, "inside")
        .await
        .expect("external data inside loads");
    let req = raw_request(
        "inside",
        vec![(input("x", "FP32", &[1]), f32_bytes(&[1.0]))],
    );
    let resp = s.infer(req).await.unwrap();
    assert_eq!(output_f32(&resp, "y"), vec![42.0]);

    let err = load_model(&s, "escape")
        .await
        .expect_err("ONNX Runtime refuses");
    assert!(
        err.message().contains("load failed for model 'escape'")
            && err
                .message()
                .contains("External data path escapes model directory"),
        "{}",
        err.message()
    );
    assert!(
        !err.message().contains(repo.path().to_str().unwrap()),
        "{}",
        err.message()
    );
    let req = raw_request(
        "escape",
        vec![(input("x", "FP32", &[1]), f32_bytes(&[1.0]))],
    );
    assert!(
        s.infer(req).await.is_err(),
        "the escaping model never serves"
    );
}
