//! The arrival rules on the crate's in-memory store: a copy is served only once every object
//! of the listing arrived as listed; a change or a removal mid-download fails it and leaves
//! nothing in the cache.

use super::*;
use store::{Memory, delete, put};

const URL: &str = "s3://bucket/repo";

async fn repo_with_model() -> (RemoteRepo, Arc<Memory>, tempfile::TempDir) {
    let (store, mem) = Store::memory();
    put(&mem, "repo/m/config.pbtxt", b"name: \"m\"").await;
    put(&mem, "repo/m/1/model.onnx", b"graph v1").await;
    put(&mem, "repo/README", b"a file at the root is no model").await;
    put(&mem, "other/x/1/model.onnx", b"outside the prefix").await;
    let cache = tempfile::tempdir().unwrap();
    (RemoteRepo::over(URL, store, cache.path()), mem, cache)
}

fn partial_is_empty(repo: &RemoteRepo) -> bool {
    std::fs::read_dir(repo.cache.join(".partial"))
        .map(|d| d.count() == 0)
        .unwrap_or(true)
}

#[tokio::test]
async fn survey_lists_models_and_notices_etags() {
    let (repo, mem, _cache) = repo_with_model().await;
    let first = repo.survey().await.unwrap();
    assert_eq!(first.keys().collect::<Vec<_>>(), ["m"]);
    let fp = first["m"].fingerprint();
    assert_eq!(repo.survey().await.unwrap()["m"].fingerprint(), fp);
    // Same size, new contents: only the ETag tells.
    put(&mem, "repo/m/1/model.onnx", b"graph v2").await;
    assert_ne!(repo.survey().await.unwrap()["m"].fingerprint(), fp);
    assert!(repo.model("absent").await.unwrap().is_none());
}

#[tokio::test]
async fn a_complete_listing_arrives_once() {
    let (repo, _mem, _cache) = repo_with_model().await;
    let objects = repo.model("m").await.unwrap().unwrap();
    let dir = repo.fetch("m", &objects).await.unwrap();
    assert_eq!(
        std::fs::read(dir.join("1/model.onnx")).unwrap(),
        b"graph v1"
    );
    assert_eq!(
        std::fs::read(dir.join("config.pbtxt")).unwrap(),
        b"name: \"m\""
    );
    // The same listing again: the same snapshot, not downloaded twice.
    let marker = dir.join("1/marker");
    std::fs::write(&marker, "kept").unwrap();
    assert_eq!(repo.fetch("m", &objects).await.unwrap(), dir);
    assert!(marker.exists());
    assert!(partial_is_empty(&repo));
}

#[tokio::test]
async fn an_object_changed_after_the_listing_fails_the_download() {
    let (repo, mem, _cache) = repo_with_model().await;
    let objects = repo.model("m").await.unwrap().unwrap();
    put(&mem, "repo/m/1/model.onnx", b"graph v2, longer").await;
    let e = repo.fetch("m", &objects).await.unwrap_err();
    assert!(
        e.message.contains("changed during the download"),
        "{}",
        e.message
    );
    assert!(e.message.contains(URL), "{}", e.message);
    assert!(!cache::snapshot_dir(&repo.cache, "m", objects.fingerprint()).exists());
    assert!(partial_is_empty(&repo));
    // A fresh listing of the new contents arrives.
    let now = repo.model("m").await.unwrap().unwrap();
    let dir = repo.fetch("m", &now).await.unwrap();
    assert_eq!(
        std::fs::read(dir.join("1/model.onnx")).unwrap(),
        b"graph v2, longer"
    );
}

#[tokio::test]
async fn an_object_removed_after_the_listing_fails_the_download() {
    let (repo, mem, _cache) = repo_with_model().await;
    let objects = repo.model("m").await.unwrap().unwrap();
    delete(&mem, "repo/m/config.pbtxt").await;
    let e = repo.fetch("m", &objects).await.unwrap_err();
    assert!(
        e.message.contains("vanished during the download"),
        "{}",
        e.message
    );
    assert!(!cache::snapshot_dir(&repo.cache, "m", objects.fingerprint()).exists());
    assert!(partial_is_empty(&repo));
}

#[tokio::test]
async fn an_unsafe_key_is_refused() {
    let (repo, mem, _cache) = repo_with_model().await;
    put(&mem, "repo/m/a/../../escape", b"x").await;
    let objects = repo.model("m").await.unwrap().unwrap();
    if objects.objects.iter().any(|o| o.key.contains("..")) {
        let e = repo.fetch("m", &objects).await.unwrap_err();
        assert!(
            e.message.contains("not a relative file path"),
            "{}",
            e.message
        );
    }
    assert!(!repo.cache.parent().unwrap().join("escape").exists());
}

#[tokio::test]
async fn a_primed_listing_serves_one_load() {
    let (repo, mem, _cache) = repo_with_model().await;
    let surveyed = repo.survey().await.unwrap();
    repo.prime(&surveyed);
    put(&mem, "repo/m/1/model.onnx", b"graph v2").await;
    // The load the survey started gets what the survey saw, without a second listing ...
    let first = repo.model("m").await.unwrap().unwrap();
    assert_eq!(first.fingerprint(), surveyed["m"].fingerprint());
    // ... and only that load: the next one lists again.
    let second = repo.model("m").await.unwrap().unwrap();
    assert_ne!(second.fingerprint(), first.fingerprint());
}
