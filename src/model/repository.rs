//! The model repositories on disk: which model folders exist, which version folders each has,
//! and which versions a version policy selects.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::pb::inference::{ModelVersionPolicy, model_version_policy::PolicyChoice};

/// Folder names inside a model folder that are never versions.
const RESERVED: &[&str] = &["warmup", "initial_state", "configs"];

/// Every model folder across `repos`, by name. A name found in two repositories maps to an error.
/// Blocking (it lists folders): callers on an async runtime run it on a blocking thread.
pub(crate) fn scan(repos: &[PathBuf]) -> Result<BTreeMap<String, Result<PathBuf>>> {
    let mut models: BTreeMap<String, Result<PathBuf>> = BTreeMap::new();
    for repo in repos {
        let entries = std::fs::read_dir(repo).map_err(|e| {
            Error::internal(format!(
                "failed to read model repository '{}': {e}",
                repo.display()
            ))
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            if !path.is_dir() {
                continue;
            }
            let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
                tracing::warn!(path = %path.display(), "skipping a model folder whose name is not UTF-8");
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            match models.get(&name) {
                Some(_) => {
                    models.insert(
                        name,
                        Err(Error::invalid_arg(
                            "model appears in two or more repositories",
                        )),
                    );
                }
                None => {
                    models.insert(name, Ok(path));
                }
            }
        }
    }
    Ok(models)
}

/// Numeric version folders of a model (no leading zeros), ascending.
pub(crate) fn versions_on_disk(model_dir: &Path) -> Vec<i64> {
    let mut versions: Vec<i64> = std::fs::read_dir(model_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| !RESERVED.contains(&n.as_str()))
        .filter(|n| {
            !n.is_empty()
                && n.bytes().all(|b| b.is_ascii_digit())
                && (n == "0" || !n.starts_with('0'))
        })
        .filter_map(|n| n.parse().ok())
        .collect();
    versions.sort_unstable();
    versions
}

/// The versions `policy` selects from `on_disk` (ascending). Zero selected is a load error.
pub(crate) fn select_versions(
    model: &str,
    policy: Option<&ModelVersionPolicy>,
    on_disk: &[i64],
) -> Result<Vec<i64>> {
    let selected: Vec<i64> = match policy.and_then(|p| p.policy_choice.as_ref()) {
        None => on_disk.iter().rev().take(1).rev().copied().collect(),
        Some(PolicyChoice::Latest(l)) => {
            let n = l.num_versions.max(1) as usize;
            let skip = on_disk.len().saturating_sub(n);
            on_disk[skip..].to_vec()
        }
        Some(PolicyChoice::All(_)) => on_disk.to_vec(),
        Some(PolicyChoice::Specific(s)) => {
            for v in &s.versions {
                if !on_disk.contains(v) {
                    tracing::warn!(
                        model,
                        version = v,
                        "version named by the version policy has no folder; skipped"
                    );
                }
            }
            on_disk
                .iter()
                .copied()
                .filter(|v| s.versions.contains(v))
                .collect()
        }
    };
    if selected.is_empty() {
        return Err(Error::invalid_arg(format!(
            "at least one version must be available under the version policy of model '{model}'"
        )));
    }
    Ok(selected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::inference::model_version_policy::{All, Latest, Specific};

    fn policy(p: PolicyChoice) -> ModelVersionPolicy {
        ModelVersionPolicy {
            policy_choice: Some(p),
        }
    }

    #[test]
    fn version_policies() {
        let disk = [1, 2, 3, 10];
        assert_eq!(select_versions("m", None, &disk).unwrap(), vec![10]);
        let latest2 = policy(PolicyChoice::Latest(Latest { num_versions: 2 }));
        assert_eq!(
            select_versions("m", Some(&latest2), &disk).unwrap(),
            vec![3, 10]
        );
        assert_eq!(
            select_versions("m", Some(&policy(PolicyChoice::All(All {}))), &disk).unwrap(),
            disk.to_vec()
        );
        let specific = policy(PolicyChoice::Specific(Specific {
            versions: vec![2, 7],
        }));
        assert_eq!(
            select_versions("m", Some(&specific), &disk).unwrap(),
            vec![2]
        );
        let none = policy(PolicyChoice::Specific(Specific { versions: vec![7] }));
        assert!(
            select_versions("m", Some(&none), &disk)
                .unwrap_err()
                .message
                .contains("at least one version")
        );
    }

    #[test]
    fn version_folders() {
        let dir = tempfile::tempdir().unwrap();
        for d in ["1", "02", "10", "abc", "warmup", "3"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        std::fs::write(dir.path().join("4"), "a file, not a folder").unwrap();
        assert_eq!(versions_on_disk(dir.path()), vec![1, 3, 10]);
    }
}
