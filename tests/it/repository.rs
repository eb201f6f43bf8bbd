//! RepositoryIndex on the bundled repository, and the RPCs this release does not implement:
//! each must answer promptly with an error status, never hang.

use std::collections::BTreeSet;
use std::future::Future;

use nereid::pb::inference::{
    CudaSharedMemoryRegisterRequest, CudaSharedMemoryStatusRequest,
    CudaSharedMemoryUnregisterRequest, RepositoryIndexRequest, RepositoryModelLoadRequest,
    RepositoryModelUnloadRequest, SystemSharedMemoryRegisterRequest,
    SystemSharedMemoryStatusRequest, SystemSharedMemoryUnregisterRequest,
};
use tonic::Code;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_lists_every_model_ready_with_its_version() {
    let s = TestServer::bundled().await;
    let index = s.index(false).await;
    let names: BTreeSet<&str> = index.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names.len(), BUNDLED_MODELS, "{names:?}");
    for expected in [
        "simple",
        "simple_string",
        "simple_identity",
        "simple_nobatch",
        "simple_versions",
        "add_sub_autocomplete",
    ] {
        assert!(
            names.contains(expected),
            "{expected} missing from {names:?}"
        );
    }
    for t in [
        "bool", "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64", "fp16",
        "bf16", "fp32", "fp64",
    ] {
        assert!(
            names.contains(format!("identity_{t}").as_str()),
            "identity_{t} missing"
        );
    }
    for r in &index {
        assert_eq!(r.state, "READY", "{r:?}");
        assert!(r.reason.is_empty(), "{r:?}");
        assert!(!r.version.is_empty(), "{r:?}");
    }
    // simple_versions serves its latest two versions; every other model exactly version 1.
    let versions: Vec<&str> = rows(&index, "simple_versions")
        .iter()
        .map(|r| r.version.as_str())
        .collect();
    assert_eq!(versions, vec!["2", "3"]);
    assert_eq!(
        rows(&index, "simple")
            .iter()
            .map(|r| r.version.as_str())
            .collect::<Vec<_>>(),
        vec!["1"]
    );
    assert_eq!(index.len(), BUNDLED_MODELS + 1);
    // Sorted by name (behaviour.md §5.3).
    let order: Vec<&str> = index.iter().map(|r| r.name.as_str()).collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_ready_filter_and_repository_name() {
    let s = TestServer::bundled().await;
    assert_eq!(
        s.index(true).await,
        s.index(false).await,
        "everything is READY, so the filter keeps all rows"
    );
    let mut c = s.client.clone();
    let st = assert_status(
        c.repository_index(RepositoryIndexRequest {
            repository_name: "models".into(),
            ready: false,
        })
        .await,
        Code::Unimplemented,
        &[],
    );
    assert_eq!(
        st.message(),
        "'repository_name' specification is not supported"
    );
}

/// Awaits `call` with a deadline and returns its error status.
async fn refused<T: std::fmt::Debug>(
    what: &str,
    call: impl Future<Output = Result<T, tonic::Status>>,
) -> tonic::Status {
    // RPC_TIMEOUT bounds a hang only: a refusal comes at once.
    match tokio::time::timeout(RPC_TIMEOUT, call).await {
        Err(_) => panic!("{what} hung"),
        Ok(Ok(v)) => panic!("{what} succeeded: {v:?}"),
        Ok(Err(s)) => s,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unimplemented_rpcs_fail_promptly() {
    let s = TestServer::bundled_subset(&["simple"]).await;
    let mut c = s.client.clone();

    // Model control mode is `none`: load/unload are refused with E30.
    let st = refused(
        "RepositoryModelLoad",
        c.repository_model_load(RepositoryModelLoadRequest {
            model_name: "simple".into(),
            ..Default::default()
        }),
    )
    .await;
    assert_eq!(st.code(), Code::Unavailable);
    assert_eq!(
        st.message(),
        "explicit model load / unload is not allowed if polling is enabled"
    );
    let st = refused(
        "RepositoryModelUnload",
        c.repository_model_unload(RepositoryModelUnloadRequest {
            model_name: "simple".into(),
            ..Default::default()
        }),
    )
    .await;
    assert_eq!(st.code(), Code::Unavailable);
    assert_eq!(
        st.message(),
        "explicit model load / unload is not allowed if polling is enabled"
    );
    let st = refused(
        "RepositoryModelLoad with repository_name",
        c.repository_model_load(RepositoryModelLoadRequest {
            repository_name: "r".into(),
            model_name: "simple".into(),
            ..Default::default()
        }),
    )
    .await;
    assert_eq!(st.code(), Code::Unimplemented);
    assert_eq!(
        st.message(),
        "'repository_name' specification is not supported"
    );

    // Client shared memory is off by default (E36): register and unregister are refused with
    // Triton's text, status answers; CUDA register answers as a build without GPU support.
    let disabled = "Client shared memory is disabled. Start the server with '--allow-client-shm=true' to enable.";
    let off = [
        refused(
            "SystemSharedMemoryRegister",
            c.system_shared_memory_register(SystemSharedMemoryRegisterRequest {
                name: "r".into(),
                key: "/k".into(),
                offset: 0,
                byte_size: 64,
            }),
        )
        .await,
        refused(
            "SystemSharedMemoryUnregister",
            c.system_shared_memory_unregister(SystemSharedMemoryUnregisterRequest::default()),
        )
        .await,
        refused(
            "CudaSharedMemoryUnregister",
            c.cuda_shared_memory_unregister(CudaSharedMemoryUnregisterRequest::default()),
        )
        .await,
    ];
    for st in off {
        assert_eq!(st.code(), Code::Unimplemented, "{st:?}");
        assert_eq!(st.message(), disabled);
    }
    let st = refused(
        "CudaSharedMemoryRegister",
        c.cuda_shared_memory_register(CudaSharedMemoryRegisterRequest {
            name: "g".into(),
            ..Default::default()
        }),
    )
    .await;
    assert_eq!(st.code(), Code::InvalidArgument);
    assert_eq!(
        st.message(),
        "failed to register CUDA shared memory region: 'g', GPUs not supported"
    );
    let system = c
        .system_shared_memory_status(SystemSharedMemoryStatusRequest::default())
        .await
        .unwrap();
    assert!(system.into_inner().regions.is_empty());
    let cuda = c
        .cuda_shared_memory_status(CudaSharedMemoryStatusRequest::default())
        .await
        .unwrap();
    assert!(cuda.into_inner().regions.is_empty());

    s.assert_still_serving().await;
}
