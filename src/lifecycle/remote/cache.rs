//! The local cache of one remote repository (`--model-cache-dir`/<repo>/): every copy of a
//! model is an immutable snapshot folder `<model>/<fingerprint>/`, named by the listing it was
//! downloaded from. A download goes to a staging folder under `.partial/` (removed when the
//! download fails or the process stops it) and becomes a snapshot by one rename, once every
//! object arrived and matched its listing: nothing half-written is ever in a snapshot's place.
//! Blocking (filesystem): callers run these on blocking threads.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Staging folders live here, beside the snapshots (same filesystem: the rename is atomic).
const PARTIAL: &str = ".partial";

/// The cache folder of the repository at `url` under `root`: readable, and unique per URL.
pub(crate) fn repo_dir(root: &Path, url: &str) -> PathBuf {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut h = DefaultHasher::new();
    url.hash(&mut h);
    let readable: String = url
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' => c,
            _ => '_',
        })
        .take(64)
        .collect();
    root.join(format!("{readable}-{:08x}", h.finish() as u32))
}

/// Where the snapshot of `model` with fingerprint `fp` lives.
pub(crate) fn snapshot_dir(repo: &Path, model: &str, fp: u64) -> PathBuf {
    repo.join(model).join(format!("{fp:016x}"))
}

/// A new, empty staging folder for a download of `model`; removed when dropped.
pub(crate) fn stage(repo: &Path, model: &str) -> Result<tempfile::TempDir> {
    let partial = repo.join(PARTIAL);
    std::fs::create_dir_all(&partial)
        .and_then(|_| {
            tempfile::Builder::new()
                .prefix(&format!("{model}-"))
                .tempdir_in(&partial)
        })
        .map_err(|e| Error::internal(format!("cannot write the model cache: {e}")))
}

/// Makes the completed staging folder the snapshot `dest` (one rename). A snapshot already
/// there (another server sharing the cache got the same listing first) is kept; ours goes.
pub(crate) fn commit(staging: tempfile::TempDir, dest: &Path) -> Result<()> {
    let io = |e: std::io::Error| Error::internal(format!("cannot write the model cache: {e}"));
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    if dest.is_dir() {
        return Ok(());
    }
    let path = staging.keep();
    match std::fs::rename(&path, dest) {
        Ok(()) => Ok(()),
        Err(_) if dest.is_dir() => {
            let _ = std::fs::remove_dir_all(&path);
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&path);
            Err(io(e))
        }
    }
}

/// Removes the snapshots of `model` other than those in `keep` (best effort: a failure only
/// leaves disk used).
pub(crate) fn prune(repo: &Path, model: &str, keep: &[PathBuf]) {
    let Ok(entries) = std::fs::read_dir(repo.join(model)) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if !keep.contains(&path)
            && let Err(err) = std::fs::remove_dir_all(&path)
        {
            tracing::warn!(path = %path.display(), error = %err, "cannot remove an old model snapshot");
        }
    }
}

/// The file path (relative to the model folder) of an object key's rest after
/// `<prefix>/<model>/`, or `None` for a key that is no safe relative path (empty, `.` or `..`
/// segments, a backslash): such a key would write outside the snapshot.
pub(crate) fn relative_file(rest: &str) -> Option<PathBuf> {
    let ok = !rest.is_empty()
        && !rest.contains('\\')
        && rest
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..");
    ok.then(|| PathBuf::from(rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_files() {
        assert_eq!(
            relative_file("1/model.onnx"),
            Some(PathBuf::from("1/model.onnx"))
        );
        for bad in ["", "a//b", "../x", "1/./m", "a\\b", "a/"] {
            assert_eq!(relative_file(bad), None, "{bad}");
        }
    }

    #[test]
    fn staging_commits_once() {
        let root = tempfile::tempdir().unwrap();
        let repo = repo_dir(root.path(), "s3://127.0.0.1:9/b/p");
        assert!(
            repo.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("s3___127.0.0.1_9_b_p-")
        );
        let dest = snapshot_dir(&repo, "m", 7);
        let a = stage(&repo, "m").unwrap();
        std::fs::write(a.path().join("config.pbtxt"), "a").unwrap();
        commit(a, &dest).unwrap();
        // A second download of the same listing keeps the first snapshot.
        let b = stage(&repo, "m").unwrap();
        std::fs::write(b.path().join("config.pbtxt"), "b").unwrap();
        commit(b, &dest).unwrap();
        assert_eq!(
            std::fs::read_to_string(dest.join("config.pbtxt")).unwrap(),
            "a"
        );
        // A dropped staging folder leaves nothing behind.
        drop(stage(&repo, "m").unwrap());
        assert_eq!(std::fs::read_dir(repo.join(PARTIAL)).unwrap().count(), 0);
        let other = snapshot_dir(&repo, "m", 8);
        std::fs::create_dir_all(&other).unwrap();
        prune(&repo, "m", std::slice::from_ref(&dest));
        assert!(dest.is_dir() && !other.exists());
    }
}
