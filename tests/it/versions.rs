//! Version directories and version policies (behaviour.md §3).

use nereid::pb::inference::{ModelMetadataRequest, ModelReadyRequest};
use tonic::Code;

use crate::common::*;

/// Runs simple_versions (OUTPUT0 = INPUT0 + INPUT1 + (v - 1)) at `version`; returns the
/// version that answered, after checking the offset matches it.
async fn run_version(s: &TestServer, model: &str, version: &str) -> Result<i32, tonic::Status> {
    let (a, b) = simple_operands(2, 3);
    let mut req = simple_request(model, 2, &a, &b);
    req.model_version = version.into();
    let resp = s.infer(req).await?;
    let v: i32 = resp
        .model_version
        .parse()
        .expect("numeric version in the response");
    if !version.is_empty() {
        assert_eq!(resp.model_version, version);
    }
    let want: Vec<i32> = add(&a, &b).iter().map(|x| x + v - 1).collect();
    assert_eq!(
        output_i32(&resp, "OUTPUT0"),
        want,
        "version {v} adds {}",
        v - 1
    );
    assert_eq!(output_i32(&resp, "OUTPUT1"), sub(&a, &b));
    Ok(v)
}

async fn metadata_versions(s: &TestServer, model: &str) -> Vec<String> {
    let mut c = s.client.clone();
    c.model_metadata(ModelMetadataRequest {
        name: model.into(),
        version: String::new(),
    })
    .await
    .unwrap()
    .into_inner()
    .versions
}

fn index_versions(
    index: &[nereid::pb::inference::repository_index_response::ModelIndex],
    model: &str,
) -> Vec<(String, String)> {
    rows(index, model)
        .iter()
        .map(|r| (r.version.clone(), r.state.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_two_serves_versions_two_and_three() {
    let s = TestServer::bundled_subset(&["simple_versions"]).await;
    assert_eq!(
        metadata_versions(&s, "simple_versions").await,
        vec!["2", "3"]
    );
    assert_eq!(
        run_version(&s, "simple_versions", "").await.unwrap(),
        3,
        "empty version = highest READY"
    );
    assert_eq!(run_version(&s, "simple_versions", "3").await.unwrap(), 3);
    assert_eq!(run_version(&s, "simple_versions", "2").await.unwrap(), 2);

    let st = assert_status(
        run_version(&s, "simple_versions", "1").await,
        Code::NotFound,
        &[],
    );
    assert_eq!(
        st.message(),
        "Request for unknown model: 'simple_versions' version 1 is not found"
    );
    assert_status(
        run_version(&s, "simple_versions", "abc").await,
        Code::InvalidArgument,
        &["'abc'"],
    );

    // Metadata for one version names only it; ModelReady per version.
    let mut c = s.client.clone();
    let m = c
        .model_metadata(ModelMetadataRequest {
            name: "simple_versions".into(),
            version: "2".into(),
        })
        .await
        .unwrap();
    assert_eq!(m.into_inner().versions, vec!["2"]);
    let ready = |v: &str| ModelReadyRequest {
        name: "simple_versions".into(),
        version: v.into(),
    };
    assert!(c.model_ready(ready("2")).await.unwrap().into_inner().ready);
    // A version not loaded is simply not ready (Triton's ModelIsReady), not an error.
    assert!(!c.model_ready(ready("1")).await.unwrap().into_inner().ready);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_all_loads_every_version() {
    let repo = repo_with(&[("simple_versions", "simple_versions"), ("simple", "simple")]);
    edit_config(
        repo.path(),
        "simple_versions",
        "version_policy: { latest: { num_versions: 2 } }",
        "version_policy: { all { } }",
    );
    let s = TestServer::start(repo.path()).await;
    assert_eq!(
        metadata_versions(&s, "simple_versions").await,
        vec!["1", "2", "3"]
    );
    let idx = s.index(false).await;
    let want: Vec<(String, String)> = ["1", "2", "3"]
        .iter()
        .map(|v| (v.to_string(), "READY".to_string()))
        .collect();
    assert_eq!(index_versions(&idx, "simple_versions"), want);
    for v in ["1", "2", "3"] {
        assert_eq!(
            run_version(&s, "simple_versions", v)
                .await
                .unwrap()
                .to_string(),
            v
        );
    }
    assert_eq!(run_version(&s, "simple_versions", "").await.unwrap(), 3);
    assert!(s.server_ready().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_specific_loads_the_listed_versions() {
    let repo = repo_with(&[("simple_versions", "simple_versions")]);
    edit_config(
        repo.path(),
        "simple_versions",
        "version_policy: { latest: { num_versions: 2 } }",
        "version_policy: { specific: { versions: [1] } }",
    );
    let s = TestServer::start(repo.path()).await;
    assert_eq!(metadata_versions(&s, "simple_versions").await, vec!["1"]);
    assert_eq!(
        index_versions(&s.index(false).await, "simple_versions"),
        vec![("1".to_string(), "READY".to_string())]
    );
    assert_eq!(
        run_version(&s, "simple_versions", "").await.unwrap(),
        1,
        "version 1 adds nothing"
    );
    assert_status(
        run_version(&s, "simple_versions", "3").await,
        Code::NotFound,
        &["version 3 is not found"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_selecting_nothing_fails_the_load() {
    let repo = repo_with(&[("simple_versions", "simple_versions"), ("simple", "simple")]);
    edit_config(
        repo.path(),
        "simple_versions",
        "version_policy: { latest: { num_versions: 2 } }",
        "version_policy: { specific: { versions: [7] } }",
    );
    let err = TestServer::try_start_with(repo.path(), |_| {})
        .await
        .err()
        .expect("exit_on_error stops startup");
    assert!(
        err.to_string().contains("failed to load all models"),
        "{err}"
    );
    assert!(err.to_string().contains("simple_versions"), "{err}");

    let s = TestServer::start_with(repo.path(), |c| c.exit_on_error = false).await;
    let idx = s.index(false).await;
    let bad = rows(&idx, "simple_versions");
    assert!(!bad.is_empty());
    for r in &bad {
        assert_eq!(r.state, "UNAVAILABLE", "{r:?}");
        assert!(
            r.reason.contains("at least one version must be available under the version policy of model 'simple_versions'"),
            "{r:?}"
        );
    }
    assert!(
        !s.server_ready().await,
        "strict readiness: a failed model makes the server not ready"
    );
    // E2: known model, nothing READY.
    let st = assert_status(
        run_version(&s, "simple_versions", "").await,
        Code::NotFound,
        &[],
    );
    assert_eq!(
        st.message(),
        "Request for unknown model: 'simple_versions' has no available versions"
    );
    s.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_policy_serves_the_highest_numeric_version() {
    // simple with extra version folders: 2 (a copy), 10 (a copy), and folders that are not versions.
    let repo = repo_with(&[("simple", "simple")]);
    let model = repo.path().join("simple");
    for v in ["2", "10", "010", "abc", "warmup"] {
        std::fs::create_dir(model.join(v)).unwrap();
    }
    for v in ["2", "10"] {
        std::fs::copy(model.join("1/model.onnx"), model.join(v).join("model.onnx")).unwrap();
    }
    let s = TestServer::start(repo.path()).await;
    assert_eq!(metadata_versions(&s, "simple").await, vec!["10"]);
    assert_eq!(
        index_versions(&s.index(false).await, "simple"),
        vec![("10".to_string(), "READY".to_string())]
    );
    let (a, b) = simple_operands(1, 1);
    let resp = s.infer(simple_request("simple", 1, &a, &b)).await.unwrap();
    assert_eq!(resp.model_version, "10");
    assert_eq!(output_i32(&resp, "OUTPUT0"), add(&a, &b));
    assert!(s.server_ready().await);
}

/// Versions load independently (behaviour.md §3, §5.3): a corrupt newest version is
/// UNAVAILABLE on its own while the older selected version serves; asking for it by number
/// is E4, and an empty version resolves to the highest READY one.
async fn one_broken_version(auto_complete: bool) {
    let repo = repo_with(&[("simple_versions", "simple_versions"), ("simple", "simple")]);
    std::fs::write(
        repo.path().join("simple_versions/3/model.onnx"),
        b"not a model",
    )
    .unwrap();
    let s = TestServer::start_with(repo.path(), |c| {
        c.exit_on_error = false;
        c.load.auto_complete = auto_complete;
    })
    .await;
    let idx = s.index(false).await;
    let got: Vec<(&str, &str)> = rows(&idx, "simple_versions")
        .iter()
        .map(|r| (r.version.as_str(), r.state.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![("2", "READY"), ("3", "UNAVAILABLE")],
        "auto_complete={auto_complete}: {idx:?}"
    );
    let broken = rows(&idx, "simple_versions")
        .into_iter()
        .find(|r| r.version == "3")
        .unwrap();
    assert!(broken.reason.contains("model.onnx"), "{broken:?}");
    assert!(!s.server_ready().await, "strict readiness");

    assert_eq!(run_version(&s, "simple_versions", "").await.unwrap(), 2);
    assert_eq!(run_version(&s, "simple_versions", "2").await.unwrap(), 2);
    let st = assert_status(
        run_version(&s, "simple_versions", "3").await,
        Code::Unavailable,
        &[],
    );
    assert_eq!(
        st.message(),
        "Request for unknown model: 'simple_versions' version 3 is not at ready state"
    );
    assert_eq!(metadata_versions(&s, "simple_versions").await, vec!["2"]);
    let mut c = s.client.clone();
    let ready = ModelReadyRequest {
        name: "simple_versions".into(),
        version: "3".into(),
    };
    assert!(!c.model_ready(ready).await.unwrap().into_inner().ready);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_broken_version_leaves_the_others_serving() {
    one_broken_version(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_broken_version_leaves_the_others_serving_without_auto_complete() {
    one_broken_version(false).await;
}
