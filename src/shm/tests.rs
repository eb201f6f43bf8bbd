//! The registry against real `/dev/shm` objects: Triton's checks and texts, deferred
//! unregistration, and reads and writes of an object that shrank.

use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;

use super::*;
use crate::error::Code;
use crate::request::{InferRequest, InferResponse, InputTensor, RequestParams};
use crate::tensor::{DataType, Tensor};

/// A shared-memory object of `len` bytes, removed when dropped.
struct Object {
    key: String,
    path: std::path::PathBuf,
}

impl Object {
    fn new(len: u64) -> Object {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("nereid-unit-{}-{n}", std::process::id());
        let path = std::path::Path::new("/dev/shm").join(&name);
        std::fs::File::create(&path).unwrap().set_len(len).unwrap();
        Object {
            key: format!("/{name}"),
            path,
        }
    }

    fn write(&self, at: u64, data: &[u8]) {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .unwrap();
        f.write_all_at(data, at).unwrap();
    }

    fn read(&self) -> Vec<u8> {
        std::fs::read(&self.path).unwrap()
    }
}

impl Drop for Object {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn at(region: &str, offset: u64, byte_size: u64) -> ShmRef {
    ShmRef {
        region: region.into(),
        offset,
        byte_size,
    }
}

#[test]
fn register_checks_and_texts() {
    let shm = SharedMemory::new(true);
    let obj = Object::new(256);
    let err = |r: Result<()>| r.unwrap_err();

    let e = err(shm.register_system("r", "//", 0, 8));
    assert_eq!(e.code, Code::InvalidArg);
    assert_eq!(
        e.message,
        "cannot register shared memory region 'r' - invalid shm key '//'"
    );
    let e = err(shm.register_system("r", "/triton_python_backend_shm_region_1", 0, 8));
    assert!(e.message.contains("reserved prefix"), "{}", e.message);
    let e = err(shm.register_system("r", "/nereid-no-such-object", 0, 8));
    assert_eq!(e.code, Code::Internal);
    assert_eq!(
        e.message,
        "Unable to open shared memory region: '/nereid-no-such-object'"
    );
    let e = err(shm.register_system("r", "/../etc/passwd", 0, 8));
    assert_eq!(e.code, Code::Internal);
    let e = err(shm.register_system("r", &obj.key, 200, 100));
    assert_eq!(e.code, Code::InvalidArg);
    assert_eq!(
        e.message,
        "failed to register shared memory region 'r': invalid args"
    );
    let e = err(shm.register_system("r", &obj.key, u64::MAX, 2));
    assert_eq!(e.code, Code::InvalidArg);
    let e = err(shm.register_system("r", &obj.key, 0, 0));
    assert!(e.message.contains("unable to process address space"));

    shm.register_system("r", &obj.key, 16, 128).unwrap();
    let e = err(shm.register_system("r", &obj.key, 0, 8));
    assert_eq!(e.code, Code::AlreadyExists);
    assert_eq!(e.message, "shared memory region 'r' already in manager");
    assert_eq!(
        shm.system_status("").unwrap(),
        vec![SystemStatus {
            name: "r".into(),
            key: obj.key.clone(),
            offset: 16,
            byte_size: 128
        }]
    );
    assert_eq!(shm.system_status("r").unwrap().len(), 1);
    let e = shm.system_status("x").unwrap_err();
    assert_eq!(e.code, Code::NotFound);
    assert_eq!(e.message, "Unable to find system shared memory region: 'x'");
    let e = shm.cuda_status("r").unwrap_err();
    assert_eq!(
        e.message,
        "The region named 'r' is registered as system shared memory, not CUDA shared memory"
    );
    assert!(shm.cuda_status("").unwrap().is_empty());
    // Unknown names and the other kind's names are not errors and change nothing.
    shm.unregister_system("x").unwrap();
    shm.unregister_cuda("r").unwrap();
    assert_eq!(shm.system_status("").unwrap().len(), 1);
    shm.unregister_system("").unwrap();
    assert!(shm.system_status("").unwrap().is_empty());
}

#[test]
fn disabled_refuses_register_and_unregister_but_not_status() {
    let shm = SharedMemory::new(false);
    let obj = Object::new(64);
    for e in [
        shm.register_system("r", &obj.key, 0, 64).unwrap_err(),
        shm.unregister_system("").unwrap_err(),
        shm.unregister_cuda("").unwrap_err(),
        shm.register_cuda("g", 0, 64).unwrap_err(),
    ] {
        assert_eq!(e.code, Code::Unsupported);
        assert_eq!(e.message, DISABLED);
    }
    assert!(shm.system_status("").unwrap().is_empty());
}

fn request(inputs: usize) -> InferRequest {
    InferRequest {
        model_name: "m".into(),
        model_version: String::new(),
        id: String::new(),
        inputs: (0..inputs)
            .map(|i| InputTensor {
                name: format!("x{i}"),
                datatype: "UINT8".into(),
                shape: vec![4],
                data: Bytes::new(),
            })
            .collect(),
        outputs: Vec::new(),
        params: RequestParams::default(),
    }
}

#[test]
fn places_inputs_and_outputs_and_checks_bounds() {
    let shm = SharedMemory::new(true);
    let obj = Object::new(64);
    obj.write(8, &[1, 2, 3, 4, 5, 6, 7, 8]);
    shm.register_system("r", &obj.key, 8, 32).unwrap();

    let mut req = request(2);
    let refs = ShmRefs {
        inputs: vec![(0, at("r", 0, 4)), (1, at("r", 4, 4))],
        outputs: vec![("y".into(), at("r", 16, 8))],
    };
    let placement = shm.place(&mut req, &refs).unwrap();
    assert_eq!(&req.inputs[0].data[..], &[1, 2, 3, 4]);
    assert_eq!(&req.inputs[1].data[..], &[5, 6, 7, 8]);
    let resp = |len: usize| InferResponse {
        model_name: "m".into(),
        model_version: 1,
        id: String::new(),
        outputs: vec![Tensor::new("y", DataType::Uint8, vec![len as i64], vec![9; len]).unwrap()],
    };
    placement.write_outputs(&resp(8)).unwrap();
    assert_eq!(&obj.read()[24..32], &[9; 8]);
    let e = placement.write_outputs(&resp(9)).unwrap_err();
    assert_eq!(e.code, Code::Internal);
    assert_eq!(
        e.message,
        "shared memory size specified with the request for output 'y' (8 bytes) should be at least 9 bytes to hold the results"
    );
    drop(placement);

    let place = |r: ShmRef| {
        let refs = ShmRefs {
            inputs: vec![(0, r)],
            outputs: Vec::new(),
        };
        shm.place(&mut request(1), &refs).map(|_| ()).unwrap_err()
    };
    let e = place(at("nope", 0, 4));
    assert_eq!(e.code, Code::NotFound);
    assert_eq!(e.message, "Unable to find shared memory region: 'nope'");
    let e = place(at("r", 32, 1));
    assert_eq!(e.message, "Invalid offset for shared memory region: 'r'");
    let e = place(at("r", 30, 4));
    assert_eq!(
        e.message,
        "Invalid offset + byte size for shared memory region: 'r'"
    );
    let e = place(at("r", 1, u64::MAX));
    assert!(
        e.message.starts_with("Integer overflow detected"),
        "{}",
        e.message
    );
}

#[test]
fn a_truncated_object_is_an_error_not_a_crash() {
    let shm = SharedMemory::new(true);
    let obj = Object::new(64);
    shm.register_system("r", &obj.key, 0, 64).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&obj.path)
        .unwrap()
        .set_len(8)
        .unwrap();
    let refs = ShmRefs {
        inputs: vec![(0, at("r", 0, 32))],
        outputs: Vec::new(),
    };
    let e = shm.place(&mut request(1), &refs).map(|_| ()).unwrap_err();
    assert_eq!(e.code, Code::InvalidArg);
    assert!(e.message.contains("truncated"), "{}", e.message);
    // A write past the shrunken end is refused, and the object is not grown back.
    let refs = ShmRefs {
        inputs: Vec::new(),
        outputs: vec![("y".into(), at("r", 16, 16))],
    };
    let placement = shm.place(&mut request(0), &refs).unwrap();
    let resp = InferResponse {
        model_name: "m".into(),
        model_version: 1,
        id: String::new(),
        outputs: vec![Tensor::new("y", DataType::Uint8, vec![16], vec![1; 16]).unwrap()],
    };
    assert!(placement.write_outputs(&resp).is_err());
    assert_eq!(obj.read().len(), 8);
}

#[test]
fn unregister_of_a_region_in_use_waits_for_the_request() {
    let shm = SharedMemory::new(true);
    let obj = Object::new(64);
    shm.register_system("r", &obj.key, 0, 64).unwrap();
    let refs = ShmRefs {
        inputs: vec![(0, at("r", 0, 4))],
        outputs: Vec::new(),
    };
    let placement = shm.place(&mut request(1), &refs).unwrap();
    shm.unregister_system("r").unwrap();
    // Gone for new requests and for status, but the name is still taken.
    assert!(shm.system_status("").unwrap().is_empty());
    let e = shm.place(&mut request(1), &refs).map(|_| ()).unwrap_err();
    assert_eq!(e.code, Code::NotFound);
    let e = shm.register_system("r", &obj.key, 0, 64).unwrap_err();
    assert_eq!(e.code, Code::AlreadyExists);
    drop(placement);
    shm.register_system("r", &obj.key, 0, 64).unwrap();
}
