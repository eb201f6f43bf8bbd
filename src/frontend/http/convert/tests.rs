use std::path::PathBuf;

use super::*;
use crate::error::Code;
use crate::model::{DeviceKind, InstanceSpec, OrtOptions};
use crate::tensor::Tensor;

fn parse(body: &[u8], header: Option<usize>) -> Result<(InferRequest, OutputFormat)> {
    infer_request("m", "", Bytes::copy_from_slice(body), header)
}

fn err(body: &[u8], header: Option<usize>) -> Error {
    parse(body, header).unwrap_err()
}

#[test]
fn json_request_with_params_and_outputs() {
    let body = br#"{"id":"7","parameters":{"priority":2,"timeout":100,"binary_data_output":true,"custom":1.5},
        "inputs":[{"name":"x","datatype":"INT32","shape":[1,2],"data":[[1,2]]}],
        "outputs":[{"name":"y","parameters":{"binary_data":false}},{"name":"z","parameters":{"classification":3}}]}"#;
    let (req, fmt) = parse(body, None).unwrap();
    assert_eq!(req.id, "7");
    assert_eq!(req.params.priority, 2);
    assert_eq!(req.params.timeout_us, 100);
    assert_eq!(req.inputs[0].shape, vec![1, 2]);
    assert_eq!(&req.inputs[0].data[..], &[1, 0, 0, 0, 2, 0, 0, 0]);
    assert_eq!(req.outputs[1].classification, Some(3));
    assert!(!fmt.is_binary("y"));
    assert!(
        fmt.is_binary("z"),
        "listed without binary_data: the default"
    );
    assert!(fmt.is_binary("unlisted"));
}

#[test]
fn binary_inputs_follow_the_header_in_order() {
    let header = br#"{"inputs":[{"name":"a","datatype":"UINT8","shape":[2],"parameters":{"binary_data_size":2}},
        {"name":"b","datatype":"UINT8","shape":[0],"parameters":{"binary_data_size":0}},
        {"name":"c","datatype":"UINT8","shape":[1],"parameters":{"binary_data_size":1}}]}"#;
    let mut body = header.to_vec();
    body.extend_from_slice(&[7, 8, 9]);
    let (req, fmt) = parse(&body, Some(header.len())).unwrap();
    let data: Vec<&[u8]> = req.inputs.iter().map(|i| &i.data[..]).collect();
    assert_eq!(data, vec![&[7u8, 8][..], &[][..], &[9][..]]);
    assert!(!fmt.is_binary("anything"));

    let short = &body[..body.len() - 1];
    let e = err(short, Some(header.len()));
    assert_eq!(
        e.message,
        "unexpected size for input 'c', expecting 1 additional bytes for model 'm'"
    );
    let mut long = body.clone();
    long.push(0);
    assert_eq!(
        err(&long, Some(header.len())).message,
        "unexpected additional input data for model 'm'"
    );
    // Without the header the whole body must be JSON.
    assert!(
        err(&body, None)
            .message
            .starts_with("failed to parse the request JSON buffer:")
    );
}

#[test]
fn header_length_bounds() {
    assert_eq!(header_length(None, 10).unwrap(), None);
    assert_eq!(header_length(Some("0"), 10).unwrap(), Some(0));
    assert_eq!(header_length(Some("10"), 10).unwrap(), Some(10));
    for bad in ["11", "-1"] {
        assert_eq!(
            header_length(Some(bad), 10).unwrap_err().message,
            format!("inference header size should be in range (0, 10), got: {bad}")
        );
    }
    assert!(
        header_length(Some("x"), 10)
            .unwrap_err()
            .message
            .contains("Unable to parse Inference-Header-Content-Length")
    );
}

#[test]
fn malformed_requests_name_the_field() {
    let table: [(&[u8], &str); 14] = [
        (b"{not json", "failed to parse the request JSON buffer"),
        (b"[1]", "Unable to parse 'inputs'"),
        (b"{}", "Unable to parse 'inputs'"),
        (br#"{"inputs":{}}"#, "Unable to parse 'inputs'"),
        (br#"{"id":5,"inputs":[]}"#, "Unable to parse 'id'"),
        (
            br#"{"inputs":[{"name":"x","datatype":"INT32","shape":[1]}]}"#,
            "But no field is set",
        ),
        (
            br#"{"inputs":[{"name":"x","datatype":"INT32","shape":[1],"data":[1],"parameters":{"binary_data_size":4}}]}"#,
            "But set 'data' 'binary_data_size'",
        ),
        (
            br#"{"inputs":[{"name":"x","datatype":"INT32","shape":[-1],"data":[1]}]}"#,
            "Unable to parse 'shape'",
        ),
        (
            br#"{"inputs":[{"name":1,"datatype":"INT32","shape":[1],"data":[1]}]}"#,
            "Unable to parse 'name'",
        ),
        (
            br#"{"inputs":[{"name":"x","datatype":"INT99","shape":[1],"data":[1]}]}"#,
            "invalid datatype 'INT99' for input 'x' for model 'm'",
        ),
        (
            br#"{"inputs":[],"parameters":{"triton_x":1}}"#,
            "reserved for Triton usage",
        ),
        (
            br#"{"inputs":[],"parameters":{"p":[1]}}"#,
            "parameter 'p' has invalid type",
        ),
        (
            br#"{"inputs":[],"parameters":{"priority":-1}}"#,
            "Unable to parse 'priority'",
        ),
        (
            br#"{"inputs":[],"outputs":[{"name":"y","parameters":{"binary_data":"yes"}}]}"#,
            "Unable to parse 'binary_data'",
        ),
    ];
    for (body, want) in table {
        let e = err(body, None);
        assert_eq!(
            e.code,
            Code::InvalidArg,
            "{}",
            String::from_utf8_lossy(body)
        );
        assert!(
            e.message.contains(want),
            "{}: {}",
            String::from_utf8_lossy(body),
            e.message
        );
    }
}

#[test]
fn shared_memory_places_are_listed_for_the_handler() {
    let body = br#"{"inputs":[{"name":"x","datatype":"INT32","shape":[1],"parameters":{"shared_memory_region":"r","shared_memory_byte_size":4,"shared_memory_offset":8}}],"outputs":[{"name":"y","parameters":{"binary_data":false,"shared_memory_region":"o","shared_memory_byte_size":16}}]}"#;
    let (req, fmt) = infer_request("m", "", Bytes::from_static(body), None).unwrap();
    assert!(req.inputs[0].data.is_empty());
    let at = |region: &str, offset, byte_size| crate::shm::ShmRef {
        region: region.into(),
        offset,
        byte_size,
    };
    assert_eq!(fmt.shm.inputs, vec![(0, at("r", 8, 4))]);
    assert_eq!(fmt.shm.outputs, vec![("y".to_string(), at("o", 0, 16))]);
    assert!(fmt.in_shm("y") && !fmt.in_shm("x"));
    let e = err(
        br#"{"inputs":[],"outputs":[{"name":"y","parameters":{"shared_memory_region":"r","classification":2}}]}"#,
        None,
    );
    assert_eq!(e.code, Code::InvalidArg);
    assert_eq!(
        e.message,
        "Output can't set both 'shared_memory_region' and 'classification'"
    );
    let e = err(
        br#"{"inputs":[],"outputs":[{"name":"y","parameters":{"shared_memory_region":"r","binary_data":true}}]}"#,
        None,
    );
    assert_eq!(
        e.message,
        "Output can't set both 'shared_memory_region' and 'binary_data'"
    );
}

fn spec(inputs: Vec<IoSpec>, max_batch_size: u32) -> ModelSpec {
    ModelSpec {
        name: "m".into(),
        version: 1,
        max_batch_size,
        inputs,
        outputs: vec![],
        model_path: PathBuf::new(),
        instances: vec![InstanceSpec {
            name: "m".into(),
            kind: DeviceKind::Cpu,
            count: 1,
        }],
        ort: OrtOptions::default(),
        dynamic_batching: None,
        text: None,
        sequence: None,
    }
}

fn io(name: &str, dtype: DataType, dims: &[i64]) -> IoSpec {
    IoSpec {
        name: name.into(),
        dtype,
        dims: dims.to_vec(),
        reshape: None,
        optional: false,
        labels: None,
    }
}

#[test]
fn raw_requests_deduce_the_shape() {
    let body = Bytes::from(vec![0u8; 24]);
    let s = spec(vec![io("x", DataType::Fp32, &[2, -1])], 8);
    let (req, fmt) = raw_infer_request(&s, "", body.clone()).unwrap();
    assert_eq!(req.inputs[0].shape, vec![1, 2, 3]);
    assert_eq!(req.inputs[0].datatype, "FP32");
    assert!(fmt.is_binary("any"));

    let s = spec(vec![io("x", DataType::Bytes, &[1])], 0);
    let (req, _) = raw_infer_request(&s, "", Bytes::from_static(b"hi")).unwrap();
    assert_eq!(req.inputs[0].shape, vec![1]);
    assert_eq!(&req.inputs[0].data[..], &[2, 0, 0, 0, b'h', b'i']);

    let two = spec(
        vec![io("a", DataType::Fp32, &[1]), io("b", DataType::Fp32, &[1])],
        0,
    );
    assert!(
        raw_infer_request(&two, "", body.clone())
            .unwrap_err()
            .message
            .starts_with("Raw request must only have 1 input (found 2)")
    );
    let odd = spec(vec![io("x", DataType::Fp32, &[-1, 5])], 0);
    assert_eq!(
        raw_infer_request(&odd, "", body).unwrap_err().code,
        Code::InvalidArg
    );
}

#[test]
fn responses_mix_json_and_binary() {
    let resp = InferResponse {
        model_name: "m".into(),
        model_version: 3,
        id: String::new(),
        outputs: vec![
            Tensor::new(
                "a",
                DataType::Int32,
                vec![2],
                Bytes::from(vec![1, 0, 0, 0, 2, 0, 0, 0]),
            )
            .unwrap(),
            Tensor::new("b", DataType::Uint8, vec![3], Bytes::from(vec![4, 5, 6])).unwrap(),
            Tensor::new("c", DataType::Uint8, vec![0], Bytes::new()).unwrap(),
        ],
    };
    let fmt = OutputFormat {
        default_binary: true,
        per_output: HashMap::from([("a".to_string(), false)]),
        ..OutputFormat::default()
    };
    let (body, header) = infer_response(resp.clone(), &fmt).unwrap();
    let header = header.expect("binary section");
    let json: Value = serde_json::from_slice(&body[..header]).unwrap();
    assert_eq!(
        json,
        json!({"model_name":"m","model_version":"3","outputs":[
            {"name":"a","datatype":"INT32","shape":[2],"data":[1,2]},
            {"name":"b","datatype":"UINT8","shape":[3],"parameters":{"binary_data_size":3}},
            {"name":"c","datatype":"UINT8","shape":[0],"parameters":{"binary_data_size":0}}]})
    );
    assert_eq!(&body[header..], &[4, 5, 6]);

    let (body, header) = infer_response(resp, &OutputFormat::default()).unwrap();
    assert_eq!(header, None);
    let json: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["outputs"][1]["data"], json!([4, 5, 6]));
    assert!(json.get("id").is_none());
}
