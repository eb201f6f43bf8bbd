//! The manager's read side: request lookups with typed errors (Triton's texts), readiness and
//! the index.

use super::*;

impl ModelManager {
    /// Names of the models currently tracked (loaded, loading, failed or unloaded).
    pub fn tracked(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }

    /// Fingerprint of what serves `name`, if it was loaded from its repository folder.
    pub fn source_of(&self, name: &str) -> Option<u64> {
        self.read().get(name).and_then(|e| e.source)
    }

    /// The version a request should use: `version` empty = the highest READY version. The
    /// answer comes from one look at the table, so "loading" and "not serving" agree.
    pub fn get(
        &self,
        name: &str,
        version: &str,
    ) -> std::result::Result<Arc<LoadedModel>, LookupError> {
        let models = self.read();
        let entry = models.get(name).ok_or_else(|| LookupError::UnknownModel {
            model: name.to_string(),
        })?;
        let loading = entry.loading.is_some();
        if version.is_empty() {
            return entry
                .versions
                .values()
                .rev()
                .find_map(|s| s.model.clone().filter(|_| s.state == ModelState::Ready))
                .ok_or_else(|| LookupError::NoVersion {
                    model: name.to_string(),
                    version: None,
                    loading,
                });
        }
        let v = parse_version(version).map_err(LookupError::BadVersion)?;
        let slot = entry
            .versions
            .get(&v)
            .ok_or_else(|| LookupError::NoVersion {
                model: name.to_string(),
                version: Some(v),
                loading,
            })?;
        match (&slot.model, slot.state) {
            (Some(m), ModelState::Ready) => Ok(m.clone()),
            _ => Err(LookupError::NotReady {
                model: name.to_string(),
                version: v,
            }),
        }
    }

    /// The old version a request's sequence still runs on after a reload or unload (`None`:
    /// the serving version), or the refusal of a continuation whose sequence a drain ended.
    pub(crate) fn sequence_home(
        &self,
        name: &str,
        p: &crate::request::SequenceParams,
    ) -> Result<Option<Arc<LoadedModel>>> {
        self.drains.home(name, p)
    }

    /// Every READY version of `name` (ascending), or of every model when `name` is empty.
    pub fn ready_versions(&self, name: &str) -> Vec<Arc<LoadedModel>> {
        self.read()
            .iter()
            .filter(|(n, _)| name.is_empty() || n.as_str() == name)
            .flat_map(|(_, e)| e.versions.values())
            .filter(|s| s.state == ModelState::Ready)
            .filter_map(|s| s.model.clone())
            .collect()
    }

    /// Strict readiness: no model is failed. A model that serves (even while it reloads, or
    /// after a failed reload) counts as ready; an unrelated load in flight does not count against.
    pub fn all_ready(&self) -> bool {
        if !self.opts.strict_readiness {
            return true;
        }
        self.read().values().all(|e| {
            let failed_version = e
                .versions
                .values()
                .any(|s| s.state == ModelState::Unavailable && s.reason != "unloaded");
            e.failure.is_none() && !failed_version
        })
    }

    /// The repository index: one row per model folder found, one per tracked version. The
    /// repositories are listed at each call (a folder added since is there, name only, as in
    /// Triton), on a blocking thread.
    pub async fn index(&self, ready_only: bool) -> Result<Vec<IndexEntry>> {
        let (locals, remotes) = (&self.opts.repositories, &self.opts.remotes);
        let on_disk = super::repos::scan(locals, remotes, super::repos::Use::Look).await?;
        Ok(self.rows(on_disk.into_keys().collect(), ready_only))
    }

    /// The index rows of the models tracked (loaded, loading, failed or unloaded), without
    /// listing the repositories: every row has a state.
    pub fn tracked_rows(&self) -> Vec<IndexEntry> {
        self.rows(Vec::new(), false)
    }

    /// Index rows for `names` (folders found) and every tracked model, sorted by name.
    fn rows(&self, mut names: Vec<String>, ready_only: bool) -> Vec<IndexEntry> {
        let models = self.read();
        names.extend(models.keys().cloned());
        names.sort();
        names.dedup();
        let mut rows = Vec::new();
        for name in names {
            let Some(e) = models.get(&name) else {
                if !ready_only {
                    rows.push(IndexEntry {
                        name,
                        version: None,
                        state: None,
                        reason: String::new(),
                    });
                }
                continue;
            };
            if !ready_only {
                let pending = e.loading.clone().map(|r| (ModelState::Loading, r));
                let failure = e.failure.clone().map(|r| (ModelState::Unavailable, r));
                if let Some((state, reason)) = pending.or(failure).filter(|_| !e.serving()) {
                    rows.push(IndexEntry {
                        name: name.clone(),
                        version: None,
                        state: Some(state),
                        reason,
                    });
                }
            }
            for (v, s) in &e.versions {
                if ready_only && s.state != ModelState::Ready {
                    continue;
                }
                let reason = match (&e.loading, &e.reload_error, s.state) {
                    (Some(step), _, ModelState::Ready) => {
                        format!("serving; reload in progress: {step}")
                    }
                    (None, Some(err), ModelState::Ready) => {
                        format!("serving; the last reload failed: {err}")
                    }
                    _ => s.reason.clone(),
                };
                rows.push(IndexEntry {
                    name: name.clone(),
                    version: Some(*v),
                    state: Some(s.state),
                    reason,
                });
            }
        }
        rows
    }
}

/// Why `get` found nothing to serve a request. `Error::from` gives Triton's code and text
/// (behaviour.md E1–E5); `not_ready` says whether it is worth retrying shortly.
#[derive(Debug, Clone, PartialEq)]
pub enum LookupError {
    /// No model of that name is tracked: never loaded, nor loading.
    UnknownModel { model: String },
    /// The model is tracked but nothing matches: no READY version (`version` None) or no such
    /// version. `loading`: a load of the model is in flight, so it may serve soon.
    NoVersion {
        model: String,
        version: Option<i64>,
        loading: bool,
    },
    /// The version is tracked but not READY (loading, unloading, failed or unloaded).
    NotReady { model: String, version: i64 },
    /// The version string is not a version number.
    BadVersion(Error),
}

impl LookupError {
    /// Known but not serving yet (or any more): a retry shortly may succeed.
    pub fn not_ready(&self) -> bool {
        match self {
            LookupError::NotReady { .. } => true,
            LookupError::NoVersion { loading, .. } => *loading,
            LookupError::UnknownModel { .. } | LookupError::BadVersion(_) => false,
        }
    }
}

impl From<LookupError> for Error {
    fn from(e: LookupError) -> Error {
        match e {
            LookupError::UnknownModel { model } => {
                Error::invalid_arg(format!("Request for unknown model: '{model}' is not found"))
            }
            LookupError::NoVersion {
                model,
                version: None,
                ..
            } => Error::not_found(format!(
                "Request for unknown model: '{model}' has no available versions"
            )),
            LookupError::NoVersion {
                model,
                version: Some(v),
                ..
            } => Error::not_found(format!(
                "Request for unknown model: '{model}' version {v} is not found"
            )),
            LookupError::NotReady { model, version } => Error::unavailable(format!(
                "Request for unknown model: '{model}' version {version} is not at ready state"
            )),
            LookupError::BadVersion(e) => e,
        }
    }
}

impl std::fmt::Display for LookupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&Error::from(self.clone()).message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Code;

    #[test]
    fn lookup_errors_keep_tritons_codes_and_texts() {
        let m = || "m".to_string();
        let table = [
            (
                LookupError::UnknownModel { model: m() },
                Code::InvalidArg,
                "Request for unknown model: 'm' is not found",
                false,
            ),
            (
                LookupError::NoVersion {
                    model: m(),
                    version: None,
                    loading: false,
                },
                Code::NotFound,
                "Request for unknown model: 'm' has no available versions",
                false,
            ),
            (
                LookupError::NoVersion {
                    model: m(),
                    version: None,
                    loading: true,
                },
                Code::NotFound,
                "Request for unknown model: 'm' has no available versions",
                true,
            ),
            (
                LookupError::NoVersion {
                    model: m(),
                    version: Some(2),
                    loading: true,
                },
                Code::NotFound,
                "Request for unknown model: 'm' version 2 is not found",
                true,
            ),
            (
                LookupError::NotReady {
                    model: m(),
                    version: 2,
                },
                Code::Unavailable,
                "Request for unknown model: 'm' version 2 is not at ready state",
                true,
            ),
        ];
        for (lookup, code, text, retry) in table {
            assert_eq!(lookup.not_ready(), retry, "{lookup:?}");
            let e = Error::from(lookup);
            assert_eq!((e.code, e.message.as_str()), (code, text));
            assert!(e.rejection.is_none(), "Core decides the retry hint");
        }
        let bad = parse_version("x").unwrap_err();
        assert_eq!(Error::from(LookupError::BadVersion(bad.clone())), bad);
    }
}
