//! The fake backend in the integration tests (`nereid::testing`): servers whose
//! models run on it, repositories of fake model files, and waits on observable state (a
//! metric, the fake instances' activity) in place of sleeps.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use nereid::ServerConfig;
use nereid::testing::{Activity, FakeBackend, FakeLog, FakeModel, Gate};
use tempfile::TempDir;

use crate::common::{TestServer, WAIT_LIMIT, copy_model, sample};

impl TestServer {
    /// Serves `repo` (fake model files, see `fake_repo`) on the fake backend: no ONNX Runtime,
    /// and `gate()` / `fake_log()` let the test hold executions and see them.
    pub async fn start_fake(repo: &Path) -> TestServer {
        Self::start_fake_with(repo, |_| {}).await
    }

    /// `start_fake` after `edit` adjusted the default configuration; panics if startup fails.
    pub async fn start_fake_with(repo: &Path, edit: impl FnOnce(&mut ServerConfig)) -> TestServer {
        match Self::try_start_on(repo, edit, Some(FakeBackend::default())).await {
            Ok(s) => s,
            Err(e) => panic!("server failed to start: {e}"),
        }
    }

    /// The fake backend's gate: closed, executions (once begun) wait until it opens.
    pub fn gate(&self) -> &Gate {
        &self
            .fake
            .as_ref()
            .expect("a server on the fake backend")
            .gate
    }

    /// What the fake backend's instances have executed.
    pub fn fake_log(&self) -> &FakeLog {
        &self
            .fake
            .as_ref()
            .expect("a server on the fake backend")
            .log
    }

    /// `nv_inference_pending_request_count` of version 1 of `model`: requests accepted and not
    /// yet executing.
    pub async fn pending(&self, model: &str) -> f64 {
        let labels = format!("model=\"{model}\",version=\"1\"");
        sample(
            &self.metrics().await,
            "nv_inference_pending_request_count",
            &labels,
        )
        .unwrap_or_else(|| panic!("no pending count for {model}"))
    }

    /// Waits until `n` requests of `model` (version 1) wait in its queue.
    pub async fn wait_pending(&self, model: &str, n: usize) {
        wait_for(&format!("{n} pending requests of '{model}'"), || async {
            self.pending(model).await == n as f64
        })
        .await;
    }

    /// Waits until the fake instances satisfy `done` (bounded by `WAIT_LIMIT` only).
    pub async fn wait_fake(&self, what: &str, done: impl FnMut(&Activity) -> bool) {
        tokio::time::timeout(WAIT_LIMIT, self.fake_log().wait_until(done))
            .await
            .unwrap_or_else(|_| panic!("never happened: {what}; {:?}", self.fake_log().activity()));
    }
}

/// A temporary repository of copies of `simple` named `names`, each version's model file a
/// `FakeModel::simple()` (the fake backend computes `simple`'s sums and differences).
pub fn fake_repo(names: &[&str]) -> TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for name in names {
        copy_model(dir.path(), name, "simple");
        write_fake_model(dir.path(), name, 1, &FakeModel::simple());
    }
    dir
}

/// Writes `model` as version `version`'s model file of `name` in `repo`.
pub fn write_fake_model(repo: &Path, name: &str, version: i64, model: &FakeModel) {
    let dir = repo.join(name).join(version.to_string());
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("model.onnx"), model.to_text()).unwrap();
}

/// Polls `check` until it holds: a wait on observable state (a metric, a statistics counter,
/// a log line), never on the clock. `WAIT_LIMIT` only turns a hang into a failure.
pub async fn wait_for<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let poll = async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    tokio::time::timeout(WAIT_LIMIT, poll)
        .await
        .unwrap_or_else(|_| panic!("never happened: {what}"));
}
