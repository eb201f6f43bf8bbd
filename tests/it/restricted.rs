//! Restricted APIs (`--grpc-restricted-protocol`, `--http-restricted-api`), as Triton: one table
//! names a call of every group over each protocol. With every group restricted under its own
//! header, each call is refused without its header and with a wrong value (the other groups'
//! headers all present and right, so a call filed under the wrong group would pass), and served
//! with the right value. Startup refuses an unknown group and a group named twice with Triton's
//! messages.

use std::time::Duration;

use clap::Parser;
use nereid::Cli;
use nereid::ControlMode;
use nereid::pb::health::HealthCheckRequest;
use nereid::pb::inference::{
    LogSettingsRequest, ModelConfigRequest, ModelStatisticsRequest, RepositoryIndexRequest,
    RepositoryModelLoadRequest, ServerLiveRequest, ServerMetadataRequest,
    SystemSharedMemoryStatusRequest, TraceSettingRequest,
};
use nereid::{Api, Group, Restrictions};
use reqwest::Method;
use tokio_stream::StreamExt;
use tonic::metadata::{MetadataKey, MetadataValue};
use tonic::{Code, Status};

use crate::common::*;
use crate::process::ServerProcess;
use crate::rest::*;

/// A gRPC call of one group.
#[derive(Debug, Clone, Copy)]
enum Rpc {
    ServerLive,
    HealthCheck,
    ServerMetadata,
    ModelInfer,
    ModelStreamInfer,
    SystemSharedMemoryStatus,
    ModelConfig,
    RepositoryIndex,
    ModelStatistics,
    TraceSetting,
    LogSettings,
}

/// One call per group per protocol (and the second gRPC service, and streaming), with what a
/// call that passes the restriction gets: a gRPC code, an HTTP status.
struct Row {
    group: Group,
    rpc: Rpc,
    grpc_passed: Code,
    http: (Method, &'static str),
    http_passed: u16,
}

fn table() -> Vec<Row> {
    use Group::*;
    let row = |group, rpc, grpc_passed, http, http_passed| Row {
        group,
        rpc,
        grpc_passed,
        http,
        http_passed,
    };
    vec![
        row(
            Health,
            Rpc::ServerLive,
            Code::Ok,
            (Method::GET, "/v2/health/live"),
            200,
        ),
        row(
            Health,
            Rpc::HealthCheck,
            Code::Ok,
            (Method::GET, "/v2/models/simple/ready"),
            200,
        ),
        row(
            Metadata,
            Rpc::ServerMetadata,
            Code::Ok,
            (Method::GET, "/v2"),
            200,
        ),
        row(
            Inference,
            Rpc::ModelInfer,
            Code::Ok,
            (Method::POST, "/v2/models/simple/infer"),
            200,
        ),
        row(
            Inference,
            Rpc::ModelStreamInfer,
            Code::Ok,
            (Method::POST, "/v2/models/simple/versions/1/infer"),
            200,
        ),
        row(
            SharedMemory,
            Rpc::SystemSharedMemoryStatus,
            Code::Ok,
            (Method::GET, "/v2/systemsharedmemory/status"),
            200,
        ),
        row(
            ModelConfig,
            Rpc::ModelConfig,
            Code::Ok,
            (Method::GET, "/v2/models/simple/config"),
            200,
        ),
        row(
            ModelRepository,
            Rpc::RepositoryIndex,
            Code::Ok,
            (Method::POST, "/v2/repository/index"),
            200,
        ),
        row(
            Statistics,
            Rpc::ModelStatistics,
            Code::Ok,
            (Method::GET, "/v2/models/stats"),
            200,
        ),
        row(
            Trace,
            Rpc::TraceSetting,
            Code::Ok,
            (Method::GET, "/v2/trace/setting"),
            200,
        ),
        row(
            Logging,
            Rpc::LogSettings,
            Code::Ok,
            (Method::GET, "/v2/logging"),
            200,
        ),
    ]
}

/// Every group restricted, each under its own key and value.
fn key(g: Group) -> String {
    format!("key-{}", g.name())
}

fn value(g: Group) -> String {
    format!("value-{}", g.name())
}

fn every_group(api: Api) -> Restrictions {
    let flags: Vec<String> = Group::ALL
        .iter()
        .map(|&g| format!("{}:{}={}", g.name(), key(g), value(g)))
        .collect();
    Restrictions::parse(api, &flags).expect("valid flags")
}

/// The headers of a call of `group`: every other group's right header, and this group's with
/// `own` (`None`: left out).
fn headers(group: Group, own: Option<&str>, prefix: &str) -> Vec<(String, String)> {
    Group::ALL
        .iter()
        .filter_map(|&g| {
            let v = if g == group {
                own?.to_string()
            } else {
                value(g)
            };
            Some((format!("{prefix}{}", key(g)), v))
        })
        .collect()
}

fn request<T>(msg: T, headers: &[(String, String)]) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    for (k, v) in headers {
        req.metadata_mut().insert(
            MetadataKey::from_bytes(k.as_bytes()).unwrap(),
            MetadataValue::try_from(v.as_str()).unwrap(),
        );
    }
    req
}

async fn grpc(s: &TestServer, rpc: Rpc, h: &[(String, String)]) -> Result<(), Status> {
    let mut c = s.client.clone();
    let (a, b) = simple_operands(1, 3);
    let call = async {
        match rpc {
            Rpc::ServerLive => c
                .server_live(request(ServerLiveRequest {}, h))
                .await
                .map(drop),
            Rpc::HealthCheck => {
                let mut health = s.health().await;
                health
                    .check(request(HealthCheckRequest::default(), h))
                    .await
                    .map(drop)
            }
            Rpc::ServerMetadata => c
                .server_metadata(request(ServerMetadataRequest {}, h))
                .await
                .map(drop),
            Rpc::ModelInfer => {
                let resp = c
                    .model_infer(request(simple_request("simple", 1, &a, &b), h))
                    .await?;
                assert_eq!(output_i32(resp.get_ref(), "OUTPUT0"), add(&a, &b));
                Ok(())
            }
            Rpc::ModelStreamInfer => {
                let reqs = tokio_stream::iter(vec![simple_request("simple", 1, &a, &b)]);
                let mut replies = c.model_stream_infer(request(reqs, h)).await?.into_inner();
                let first = replies.next().await.expect("one reply")?;
                assert_eq!(first.error_message, "");
                Ok(())
            }
            Rpc::SystemSharedMemoryStatus => c
                .system_shared_memory_status(request(SystemSharedMemoryStatusRequest::default(), h))
                .await
                .map(drop),
            Rpc::ModelConfig => {
                let req = ModelConfigRequest {
                    name: "simple".into(),
                    ..Default::default()
                };
                c.model_config(request(req, h)).await.map(drop)
            }
            Rpc::RepositoryIndex => c
                .repository_index(request(RepositoryIndexRequest::default(), h))
                .await
                .map(drop),
            Rpc::ModelStatistics => c
                .model_statistics(request(ModelStatisticsRequest::default(), h))
                .await
                .map(drop),
            Rpc::TraceSetting => c
                .trace_setting(request(TraceSettingRequest::default(), h))
                .await
                .map(drop),
            Rpc::LogSettings => c
                .log_settings(request(LogSettingsRequest::default(), h))
                .await
                .map(drop),
        }
    };
    tokio::time::timeout(RPC_TIMEOUT, call)
        .await
        .expect("gRPC call answered")
}

async fn http(
    s: &TestServer,
    (method, path): &(Method, &str),
    h: &[(String, String)],
) -> HttpReply {
    let mut req = s.http.request(method.clone(), s.url(path));
    if *method == Method::POST && path.ends_with("/infer") {
        let (a, b) = simple_operands(1, 3);
        req = req.body(simple_json(1, &a, &b).to_string());
    }
    for (k, v) in h {
        req = req.header(k, v);
    }
    s.send(req).await
}

#[tokio::test]
async fn every_group_answers_as_triton_over_both_protocols() {
    let repo = fake_repo(&["simple"]);
    let s = TestServer::start_fake_with(repo.path(), |c| {
        c.grpc_restrictions = every_group(Api::Grpc);
        c.http_restrictions = every_group(Api::Http);
    })
    .await;
    let grpc_prefix = "triton-grpc-protocol-";
    for row in table() {
        let g = row.group;
        let what = format!("{:?} / {} {}", row.rpc, row.http.0, row.http.1);
        for own in [None, Some("wrong")] {
            let e = grpc(&s, row.rpc, &headers(g, own, grpc_prefix))
                .await
                .expect_err(&what);
            assert_eq!(e.code(), Code::Unavailable, "{what}");
            assert_eq!(
                e.message(),
                format!(
                    "This protocol is restricted, expecting header '{grpc_prefix}{}'",
                    key(g)
                ),
                "{what}"
            );
            let r = http(&s, &row.http, &headers(g, own, "")).await;
            assert_eq!(r.status, 403, "{what}");
            assert_eq!(
                r.error(),
                format!("This API is restricted, expecting header '{}'", key(g)),
                "{what}"
            );
        }
        let right = value(g);
        let passed = grpc(&s, row.rpc, &headers(g, Some(&right), grpc_prefix)).await;
        assert_eq!(
            passed.err().map_or(Code::Ok, |e| e.code()),
            row.grpc_passed,
            "{what}"
        );
        let r = http(&s, &row.http, &headers(g, Some(&right), "")).await;
        assert_eq!(r.status, row.http_passed, "{what}: {r:?}");
    }
    // Triton checks the restriction before the method: a wrong method is refused too.
    let r = s.get("/v2/repository/index").await;
    assert_eq!(r.status, 403);
    // The gRPC header means nothing to HTTP and the HTTP header nothing to gRPC.
    let g = Group::Metadata;
    let r = http(&s, &(Method::GET, "/v2"), &headers(g, None, "")).await;
    assert_eq!(r.status, 403);
    let grpc_header_over_http = [(format!("{grpc_prefix}{}", key(g)), value(g))];
    let r = http(&s, &(Method::GET, "/v2"), &grpc_header_over_http).await;
    assert_eq!(r.status, 403);
    let http_header_over_grpc = [(key(g), value(g))];
    let e = grpc(&s, Rpc::ServerMetadata, &http_header_over_grpc).await;
    assert_eq!(e.unwrap_err().code(), Code::Unavailable);
    // Unknown paths stay 404 with everything restricted.
    assert_eq!(s.get("/v2/nothing").await.status, 404);
}

/// The README's deployment example: model-repository, trace and logging behind one key; the
/// other groups stay open, and a load or unload needs the key.
#[tokio::test]
async fn one_flag_restricts_several_groups_and_leaves_the_rest_open() {
    let repo = fake_repo(&["simple", "other"]);
    let flag = ["model-repository,trace,logging:admin-key=s3cret".to_string()];
    let s = TestServer::start_fake_with(repo.path(), |c| {
        c.manager.control_mode = ControlMode::Explicit;
        c.manager.startup_models = vec!["simple".into()];
        c.grpc_restrictions = Restrictions::parse(Api::Grpc, &flag).unwrap();
        c.http_restrictions = Restrictions::parse(Api::Http, &flag).unwrap();
    })
    .await;
    for row in table() {
        let restricted = matches!(
            row.group,
            Group::ModelRepository | Group::Trace | Group::Logging
        );
        let got = grpc(&s, row.rpc, &[])
            .await
            .err()
            .map_or(Code::Ok, |e| e.code());
        let want = if restricted {
            Code::Unavailable
        } else {
            row.grpc_passed
        };
        assert_eq!(got, want, "{:?}", row.rpc);
        let r = http(&s, &row.http, &[]).await;
        let want = if restricted { 403 } else { row.http_passed };
        assert_eq!(r.status, want, "{} {}", row.http.0, row.http.1);
    }
    let mut c = s.client.clone();
    let load = || RepositoryModelLoadRequest {
        model_name: "other".into(),
        ..Default::default()
    };
    let e = c
        .repository_model_load(request(load(), &[]))
        .await
        .unwrap_err();
    assert_eq!(
        e.message(),
        "This protocol is restricted, expecting header 'triton-grpc-protocol-admin-key'"
    );
    let admin = [(
        "triton-grpc-protocol-admin-key".to_string(),
        "s3cret".to_string(),
    )];
    c.repository_model_load(request(load(), &admin))
        .await
        .expect("the load with the key is served");
    assert_eq!(s.get("/v2/models/other/ready").await.status, 200);
    let r = s.post("/v2/repository/models/other/unload", "").await;
    assert_eq!(r.status, 403);
    let r = s
        .send(
            s.http
                .post(s.url("/v2/repository/models/other/unload"))
                .header("admin-key", "s3cret"),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
}

fn startup_error(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let repo = format!("--model-repository={}", dir.path().display());
    let argv = ["nereid", repo.as_str()]
        .into_iter()
        .chain(args.iter().copied());
    Cli::try_parse_from(argv)
        .expect("the flags parse")
        .into_config()
        .expect_err("startup is refused")
}

#[test]
fn startup_refuses_an_unknown_group_and_a_group_named_twice() {
    for (flag, word) in [
        ("--grpc-restricted-protocol", "protocol"),
        ("--http-restricted-api", "api"),
    ] {
        let twice = [
            format!("{flag}=model-repository,health:k1=v1"),
            format!("{flag}=metadata,health:k2=v2"),
        ];
        let twice: Vec<&str> = twice.iter().map(String::as_str).collect();
        assert_eq!(
            startup_error(&twice),
            format!("restricted {word} 'health' can not be specified in multiple config groups")
        );
        let unknown = format!("{flag}=model-reposit,health:k1=v1");
        assert_eq!(
            startup_error(&[&unknown]),
            format!("unknown restricted {word} 'model-reposit'")
        );
    }
    // The same group on both protocols is two restrictions, not one named twice.
    let dir = tempfile::tempdir().unwrap();
    let repo = format!("--model-repository={}", dir.path().display());
    let config = Cli::try_parse_from([
        "nereid",
        &repo,
        "--grpc-restricted-protocol=health:k=v",
        "--http-restricted-api=health:k=v",
    ])
    .unwrap()
    .into_config()
    .unwrap();
    assert!(config.grpc_restrictions.restricts(Group::Health));
    assert!(config.http_restrictions.restricts(Group::Health));
    assert!(!config.grpc_restrictions.restricts(Group::Inference));
    // Triton's default: nothing restricted.
    let config = Cli::try_parse_from(["nereid", &repo])
        .unwrap()
        .into_config()
        .unwrap();
    assert!(config.grpc_restrictions.is_empty() && config.http_restrictions.is_empty());
}

/// The binary stops at startup with the message and a usage exit code.
#[tokio::test]
async fn the_binary_exits_with_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let repo = format!("--model-repository={}", dir.path().display());
    let mut p = ServerProcess::start(&[
        &repo,
        "--grpc-restricted-protocol=model-repository,health:k1=v1",
        "--grpc-restricted-protocol=metadata,health:k2=v2",
    ]);
    let status = p.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(2), "{}", p.log_text());
    assert!(
        p.log_text().contains(
            "restricted protocol 'health' can not be specified in multiple config groups"
        ),
        "{}",
        p.log_text()
    );
}
