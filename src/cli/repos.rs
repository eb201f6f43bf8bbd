//! `--model-repository` values split into folders and object-store URLs (Triton's `s3://`,
//! `gs://`, `as://` forms), and `--model-cache-dir`, where remote models are copied to.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;

use crate::lifecycle::remote::RemoteRepo;
use crate::lifecycle::remote::url::is_remote;

#[derive(Debug, Clone, Args)]
pub struct RepoArgs {
    /// Folder where models from s3://, gs:// and as:// repositories are copied before they load (one subfolder per repository URL; complete copies are reused across restarts).
    #[arg(long, value_name = "DIR", default_value_os_t = default_cache_dir())]
    pub model_cache_dir: PathBuf,
}

fn default_cache_dir() -> PathBuf {
    std::env::temp_dir().join("nereid-model-cache")
}

/// The folders (each must exist) and the remote repositories (opened: their credentials read
/// from the environment, no request made) among `repos`.
pub(crate) fn split(
    repos: Vec<PathBuf>,
    cache_dir: &Path,
) -> Result<(Vec<PathBuf>, Vec<Arc<RemoteRepo>>), String> {
    let (mut folders, mut remotes) = (Vec::new(), Vec::new());
    for r in repos {
        match r.to_str().filter(|s| is_remote(s)) {
            Some(url) => remotes.push(Arc::new(RemoteRepo::open(url, cache_dir)?)),
            None if r.is_dir() => folders.push(r),
            None => {
                return Err(format!(
                    "model repository '{}' does not exist or is not a folder",
                    r.display()
                ));
            }
        }
    }
    Ok((folders, remotes))
}
