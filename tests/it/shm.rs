//! Client system shared memory over both protocols (shared-memory.md): register, status and
//! unregister, inference with inputs read from regions and outputs written into them (BYTES
//! included), and Triton's texts for the bad cases.

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use nereid::pb::inference::infer_parameter::ParameterChoice as P;
use nereid::pb::inference::{
    InferParameter, SystemSharedMemoryRegisterRequest, SystemSharedMemoryStatusRequest,
    SystemSharedMemoryUnregisterRequest,
};
use serde_json::{Value, json};
use tonic::Code;

use crate::common::*;

/// A POSIX shared-memory object under /dev/shm, as a client creates it; removed when dropped.
pub struct Object {
    pub key: String,
    pub path: PathBuf,
}

impl Object {
    pub fn new(len: u64) -> Object {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("nereid-it-{}-{n}", std::process::id());
        let path = PathBuf::from("/dev/shm").join(&name);
        std::fs::File::create(&path).unwrap().set_len(len).unwrap();
        Object {
            key: format!("/{name}"),
            path,
        }
    }

    pub fn write(&self, at: u64, data: &[u8]) {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .unwrap();
        f.write_all_at(data, at).unwrap();
    }

    pub fn read(&self, at: usize, len: usize) -> Vec<u8> {
        std::fs::read(&self.path).unwrap()[at..at + len].to_vec()
    }

    pub fn truncate(&self, len: u64) {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .unwrap()
            .set_len(len)
            .unwrap();
    }
}

impl Drop for Object {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn shm_server(models: &[&str]) -> TestServer {
    TestServer::bundled_subset_with(models, |c| c.allow_client_shm = true).await
}

fn param(choice: P) -> InferParameter {
    InferParameter {
        parameter_choice: Some(choice),
    }
}

/// Puts a gRPC tensor (input or requested output parameters) at `offset`/`size` of `region`.
fn place(
    params: &mut std::collections::HashMap<String, InferParameter>,
    region: &str,
    offset: i64,
    size: i64,
) {
    params.insert(
        "shared_memory_region".into(),
        param(P::StringParam(region.into())),
    );
    params.insert("shared_memory_byte_size".into(), param(P::Int64Param(size)));
    if offset != 0 {
        params.insert("shared_memory_offset".into(), param(P::Int64Param(offset)));
    }
}

async fn register(s: &TestServer, name: &str, key: &str, offset: u64, byte_size: u64) {
    s.client
        .clone()
        .system_shared_memory_register(SystemSharedMemoryRegisterRequest {
            name: name.into(),
            key: key.into(),
            offset,
            byte_size,
        })
        .await
        .unwrap();
}

/// `simple` with both inputs in `in_region` (0..64, 64..128) and both outputs in
/// `out_region` (same layout).
fn simple_in_shm(in_region: &str, out_region: &str) -> nereid::pb::inference::ModelInferRequest {
    let mut req = raw_request(
        "simple",
        vec![
            (input("INPUT0", "INT32", &[1, 16]), Default::default()),
            (input("INPUT1", "INT32", &[1, 16]), Default::default()),
        ],
    );
    req.raw_input_contents.clear();
    place(&mut req.inputs[0].parameters, in_region, 0, 64);
    place(&mut req.inputs[1].parameters, in_region, 64, 64);
    let mut o0 = requested("OUTPUT0");
    let mut o1 = requested("OUTPUT1");
    place(&mut o0.parameters, out_region, 0, 64);
    place(&mut o1.parameters, out_region, 64, 64);
    req.outputs = vec![o0, o1];
    req
}

fn i32s(raw: &[u8]) -> Vec<i32> {
    raw.chunks_exact(4)
        .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_register_status_unregister_and_errors() {
    let s = shm_server(&["simple"]).await;
    let mut c = s.client.clone();
    let obj = Object::new(256);
    register(&s, "r", &obj.key, 0, 128).await;
    let all = c
        .system_shared_memory_status(SystemSharedMemoryStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    let row = &all.regions["r"];
    assert_eq!(
        (
            row.name.as_str(),
            row.key.as_str(),
            row.offset,
            row.byte_size
        ),
        ("r", obj.key.as_str(), 0, 128)
    );
    let st = c
        .system_shared_memory_status(SystemSharedMemoryStatusRequest { name: "x".into() })
        .await;
    let st = assert_status(st, Code::NotFound, &[]);
    assert_eq!(
        st.message(),
        "Unable to find system shared memory region: 'x'"
    );
    let again = c
        .system_shared_memory_register(SystemSharedMemoryRegisterRequest {
            name: "r".into(),
            key: obj.key.clone(),
            offset: 0,
            byte_size: 8,
        })
        .await;
    let st = assert_status(again, Code::AlreadyExists, &[]);
    assert_eq!(st.message(), "shared memory region 'r' already in manager");
    let missing = c
        .system_shared_memory_register(SystemSharedMemoryRegisterRequest {
            name: "m".into(),
            key: "/nereid-it-no-such-key".into(),
            offset: 0,
            byte_size: 8,
        })
        .await;
    let st = assert_status(missing, Code::Internal, &[]);
    assert_eq!(
        st.message(),
        "Unable to open shared memory region: '/nereid-it-no-such-key'"
    );
    let past = c
        .system_shared_memory_register(SystemSharedMemoryRegisterRequest {
            name: "p".into(),
            key: obj.key.clone(),
            offset: 200,
            byte_size: 100,
        })
        .await;
    let st = assert_status(past, Code::InvalidArgument, &[]);
    assert_eq!(
        st.message(),
        "failed to register shared memory region 'p': invalid args"
    );
    // Unknown names unregister without error; "" is all of them.
    c.system_shared_memory_unregister(SystemSharedMemoryUnregisterRequest { name: "x".into() })
        .await
        .unwrap();
    c.system_shared_memory_unregister(SystemSharedMemoryUnregisterRequest::default())
        .await
        .unwrap();
    let all = c
        .system_shared_memory_status(SystemSharedMemoryStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(all.regions.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_inference_reads_and_writes_regions() {
    let s = shm_server(&["simple"]).await;
    let (a, b) = simple_operands(1, 3);
    let input = Object::new(128);
    input.write(0, &i32_bytes(&a));
    input.write(64, &i32_bytes(&b));
    let output = Object::new(128);
    register(&s, "in", &input.key, 0, 128).await;
    register(&s, "out", &output.key, 0, 128).await;
    let resp = s.infer(simple_in_shm("in", "out")).await.unwrap();
    // Name, datatype and shape in the reply, an empty raw entry per output, data in the region.
    assert_eq!(resp.outputs.len(), 2);
    assert_eq!(resp.raw_output_contents.len(), 2);
    for (o, raw) in resp.outputs.iter().zip(&resp.raw_output_contents) {
        assert_eq!(
            (o.datatype.as_str(), o.shape.as_slice()),
            ("INT32", &[1, 16][..])
        );
        assert!(o.contents.is_none() && o.parameters.is_empty());
        assert!(raw.is_empty());
    }
    assert_eq!(i32s(&output.read(0, 64)), add(&a, &b));
    assert_eq!(i32s(&output.read(64, 64)), sub(&a, &b));

    // A region too small for an output: Triton's E39, after execution.
    let mut req = simple_in_shm("in", "out");
    place(&mut req.outputs[1].parameters, "out", 64, 32);
    let st = assert_status(s.infer(req).await, Code::Internal, &[]);
    assert_eq!(
        st.message(),
        "shared memory size specified with the request for output 'OUTPUT1' (32 bytes) should be at least 64 bytes to hold the results"
    );
    // Bad places: unknown region, offset past the end, offset + size past the end.
    for (region, offset, size, code, text) in [
        (
            "nope",
            0,
            64,
            Code::NotFound,
            "Unable to find shared memory region: 'nope'",
        ),
        (
            "in",
            128,
            64,
            Code::InvalidArgument,
            "Invalid offset for shared memory region: 'in'",
        ),
        (
            "in",
            100,
            64,
            Code::InvalidArgument,
            "Invalid offset + byte size for shared memory region: 'in'",
        ),
    ] {
        let mut req = simple_in_shm("in", "out");
        place(&mut req.inputs[0].parameters, region, offset, size);
        let st = assert_status(s.infer(req).await, code, &[]);
        assert_eq!(st.message(), text);
    }
    // gRPC's parameter rules.
    let mut req = simple_in_shm("in", "out");
    req.inputs[0].parameters.remove("shared_memory_byte_size");
    let st = assert_status(s.infer(req).await, Code::InvalidArgument, &[]);
    assert_eq!(
        st.message(),
        "'shared_memory_byte_size' must be specified along with 'shared_memory_region' parameter for tensor 'INPUT0'"
    );
    let mut req = simple_in_shm("in", "out");
    req.inputs[0]
        .parameters
        .insert("shared_memory_region".into(), param(P::Int64Param(1)));
    let st = assert_status(s.infer(req).await, Code::InvalidArgument, &[]);
    assert_eq!(
        st.message(),
        "invalid value type for 'shared_memory_region' parameter for tensor 'INPUT0', expected string_param."
    );
    // A region the client truncated after register: an error, and the server goes on.
    input.truncate(16);
    let st = assert_status(
        s.infer(simple_in_shm("in", "out")).await,
        Code::InvalidArgument,
        &["truncated"],
    );
    drop(st);
    s.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_bytes_pass_through_regions_byte_for_byte() {
    let s = shm_server(&["simple_identity", "simple"]).await;
    let elements: Vec<&[u8]> = vec![b"a\0b", b"", b"\xff\xfe\x00\x01", b"plain"];
    let serialized = bytes_tensor(&elements);
    let len = serialized.len() as i64;
    let input = Object::new(serialized.len() as u64);
    input.write(0, &serialized);
    let output = Object::new(serialized.len() as u64);
    register(&s, "in", &input.key, 0, serialized.len() as u64).await;
    register(&s, "out", &output.key, 0, serialized.len() as u64).await;
    let mut req = raw_request(
        "simple_identity",
        vec![(input_t("INPUT0", &[1, 4]), Default::default())],
    );
    req.raw_input_contents.clear();
    place(&mut req.inputs[0].parameters, "in", 0, len);
    let mut o = requested("OUTPUT0");
    place(&mut o.parameters, "out", 0, len);
    req.outputs = vec![o];
    let resp = s.infer(req).await.unwrap();
    assert_eq!(resp.outputs[0].shape, vec![1, 4]);
    assert_eq!(output.read(0, serialized.len()), serialized.to_vec());

    // Length prefixes that run past the region's bytes are refused.
    let mut bad = serialized.to_vec();
    bad[0] = 200;
    input.write(0, &bad);
    let mut req = raw_request(
        "simple_identity",
        vec![(input_t("INPUT0", &[1, 4]), Default::default())],
    );
    req.raw_input_contents.clear();
    place(&mut req.inputs[0].parameters, "in", 0, len);
    assert_status(s.infer(req).await, Code::InvalidArgument, &[]);
    s.assert_still_serving().await;
}

fn input_t(
    name: &str,
    shape: &[i64],
) -> nereid::pb::inference::model_infer_request::InferInputTensor {
    input(name, "BYTES", shape)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_routes_and_inference_through_regions() {
    let s = shm_server(&["simple"]).await;
    let http = &s.http;
    let (a, b) = simple_operands(1, 5);
    let input = Object::new(128);
    input.write(0, &i32_bytes(&a));
    input.write(64, &i32_bytes(&b));
    let output = Object::new(128);
    for (name, key) in [("in", &input.key), ("out", &output.key)] {
        let r = http
            .post(s.url(&format!("/v2/systemsharedmemory/region/{name}/register")))
            .json(&json!({"key": key, "offset": 0, "byte_size": 128}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
    let status: Value = http
        .get(s.url("/v2/systemsharedmemory/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        status,
        json!([
            {"name": "in", "key": input.key, "offset": 0, "byte_size": 128},
            {"name": "out", "key": output.key, "offset": 0, "byte_size": 128},
        ])
    );
    let tensor = |name: &str, offset: u64| {
        json!({"name": name, "datatype": "INT32", "shape": [1, 16],
               "parameters": {"shared_memory_region": "in", "shared_memory_byte_size": 64,
                              "shared_memory_offset": offset}})
    };
    let out = |name: &str, offset: u64| {
        json!({"name": name, "parameters": {"binary_data": false, "shared_memory_region": "out",
               "shared_memory_byte_size": 64, "shared_memory_offset": offset}})
    };
    let body = json!({
        "inputs": [tensor("INPUT0", 0), tensor("INPUT1", 64)],
        "outputs": [out("OUTPUT0", 0), out("OUTPUT1", 64)],
    });
    let r = http
        .post(s.url("/v2/models/simple/infer"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("inference-header-content-length").is_none());
    let reply: Value = r.json().await.unwrap();
    assert_eq!(
        reply["outputs"],
        json!([
            {"name": "OUTPUT0", "datatype": "INT32", "shape": [1, 16]},
            {"name": "OUTPUT1", "datatype": "INT32", "shape": [1, 16]},
        ])
    );
    assert_eq!(i32s(&output.read(0, 64)), add(&a, &b));
    assert_eq!(i32s(&output.read(64, 64)), sub(&a, &b));

    // Route errors: no region name, a missing body member, an unknown region's status.
    let r = http
        .post(s.url("/v2/systemsharedmemory/register"))
        .json(&json!({"key": "/k", "byte_size": 8}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(
        e["error"],
        "'region name' is necessary to register system shared memory region"
    );
    let r = http
        .post(s.url("/v2/systemsharedmemory/region/x/register"))
        .json(&json!({"byte_size": 8}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(
        e["error"],
        "Shared memory register request has no 'key' field"
    );
    let r = http
        .get(s.url("/v2/systemsharedmemory/region/x/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // CUDA: status and unregister work, register says why not.
    let r = http
        .get(s.url("/v2/cudasharedmemory/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!([]));
    let r = http
        .post(s.url("/v2/cudasharedmemory/unregister"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .post(s.url("/v2/cudasharedmemory/region/g/register"))
        .json(&json!({"raw_handle": {"b64": "AAAA"}, "device_id": 0, "byte_size": 8}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = http
        .post(s.url("/v2/systemsharedmemory/unregister"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let status: Value = http
        .get(s.url("/v2/systemsharedmemory/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status, json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_disabled_by_default() {
    let s = TestServer::bundled_subset(&["simple"]).await;
    let r = s
        .http
        .post(s.url("/v2/systemsharedmemory/region/r/register"))
        .json(&json!({"key": "/k", "byte_size": 8}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 501);
    let e: Value = r.json().await.unwrap();
    assert_eq!(
        e["error"],
        "Client shared memory is disabled. Start the server with '--allow-client-shm=true' to enable."
    );
    let r = s
        .http
        .get(s.url("/v2/systemsharedmemory/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
