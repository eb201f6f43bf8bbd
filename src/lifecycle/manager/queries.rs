//! The manager's read side: request lookups with Triton's errors, readiness and the index.

use super::*;

impl ModelManager {
    /// Whether a load of `name` is in flight.
    pub fn is_loading(&self, name: &str) -> bool {
        self.read().get(name).is_some_and(|e| e.loading.is_some())
    }

    /// Names of the models currently tracked (loaded, loading, failed or unloaded).
    pub fn tracked(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }

    /// Fingerprint of what serves `name`, if it was loaded from its repository folder.
    pub fn source_of(&self, name: &str) -> Option<u64> {
        self.read().get(name).and_then(|e| e.source)
    }

    /// The version a request should use: `version` empty = the highest READY version.
    pub fn get(&self, name: &str, version: &str) -> Result<Arc<LoadedModel>> {
        let models = self.read();
        let entry = models.get(name).ok_or_else(|| {
            Error::invalid_arg(format!("Request for unknown model: '{name}' is not found"))
        })?;
        if version.is_empty() {
            return entry
                .versions
                .values()
                .rev()
                .find_map(|s| s.model.clone().filter(|_| s.state == ModelState::Ready))
                .ok_or_else(|| {
                    Error::not_found(format!(
                        "Request for unknown model: '{name}' has no available versions"
                    ))
                });
        }
        let v = parse_version(version)?;
        let slot = entry.versions.get(&v).ok_or_else(|| {
            Error::not_found(format!(
                "Request for unknown model: '{name}' version {v} is not found"
            ))
        })?;
        match (&slot.model, slot.state) {
            (Some(m), ModelState::Ready) => Ok(m.clone()),
            _ => Err(Error::unavailable(format!(
                "Request for unknown model: '{name}' version {v} is not at ready state"
            ))),
        }
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

    /// The repository index: one row per model folder found, one per tracked version.
    pub fn index(&self, ready_only: bool) -> Result<Vec<IndexEntry>> {
        let mut names: Vec<String> = repository::scan(&self.opts.repositories)?
            .into_keys()
            .collect();
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
        Ok(rows)
    }
}
