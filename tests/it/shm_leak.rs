//! Registering and unregistering 1,000 regions leaves nothing behind: the server process's open
//! descriptors and its mappings return to where they were (read from /proc of the real binary).

use std::time::Duration;

use nereid::pb::inference::{
    SystemSharedMemoryRegisterRequest, SystemSharedMemoryUnregisterRequest,
};

use crate::common::*;
use crate::process::ServerProcess;
use crate::shm::Object;

const BOUND: Duration = Duration::from_secs(60);

/// (open descriptors, of which on /dev/shm) of process `pid`.
fn descriptors(pid: u32) -> (usize, usize) {
    let mut total = 0;
    let mut shm = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        total += 1;
        if std::fs::read_link(entry.path()).is_ok_and(|t| t.starts_with("/dev/shm")) {
            shm += 1;
        }
    }
    (total, shm)
}

/// Mappings of process `pid` backed by /dev/shm objects.
fn shm_mappings(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("/dev/shm/"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_regions_leave_no_descriptor_or_mapping_behind() {
    let repo = repo_with(&[("simple", "simple")]);
    let mut server = ServerProcess::grpc_and_metrics(repo.path(), &["--allow-client-shm=true"]);
    let grpc = server.logged_addr(BOUND, "Started GRPCInferenceService");
    let pid = server.pid();
    let mut c = connect(grpc.parse().unwrap()).await;
    let objects: Vec<Object> = (0..100).map(|_| Object::new(4096)).collect();

    let register = |c: &mut Client, name: String, key: String| {
        let mut c = c.clone();
        async move {
            c.system_shared_memory_register(SystemSharedMemoryRegisterRequest {
                name,
                key,
                offset: 0,
                byte_size: 4096,
            })
            .await
            .unwrap();
        }
    };
    // One round first, so that the baseline includes whatever the first call sets up.
    register(&mut c, "warm".into(), objects[0].key.clone()).await;
    c.system_shared_memory_unregister(SystemSharedMemoryUnregisterRequest::default())
        .await
        .unwrap();
    let (baseline, none) = descriptors(pid);
    assert_eq!(none, 0);
    let maps = shm_mappings(pid);

    for round in 0..10 {
        for (i, o) in objects.iter().enumerate() {
            register(&mut c, format!("r{round}_{i}"), o.key.clone()).await;
        }
        assert_eq!(
            descriptors(pid).1,
            100,
            "round {round}: one descriptor per region"
        );
        if round % 2 == 0 {
            c.system_shared_memory_unregister(SystemSharedMemoryUnregisterRequest::default())
                .await
                .unwrap();
        } else {
            for i in 0..objects.len() {
                c.system_shared_memory_unregister(SystemSharedMemoryUnregisterRequest {
                    name: format!("r{round}_{i}"),
                })
                .await
                .unwrap();
            }
        }
        assert_eq!(
            descriptors(pid).1,
            0,
            "round {round}: every descriptor closed"
        );
    }
    wait_for("the descriptors return to the baseline", || async {
        descriptors(pid).0 == baseline
    })
    .await;
    assert_eq!(shm_mappings(pid), maps);
    assert_eq!(maps, 0, "regions are read and written, never mapped");
    drop(server);
}
