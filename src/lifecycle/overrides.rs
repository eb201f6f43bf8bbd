//! Model files sent with a load request (`file:<path>` parameters): written into a private
//! temporary folder laid out like a model folder, never anywhere else.

use std::path::{Component, Path};

use crate::error::{Error, Result};

/// Writes `files` under `<tmp>/<model>/` and returns the temporary folder (removed on drop).
/// A path that is absolute or climbs out of the model folder is rejected.
pub(crate) fn write_files(model: &str, files: &[(String, Vec<u8>)]) -> Result<tempfile::TempDir> {
    let tmp = tempfile::Builder::new()
        .prefix("nereid-load-")
        .tempdir()
        .map_err(|e| {
            Error::internal(format!(
                "failed to create a folder for the files of '{model}': {e}"
            ))
        })?;
    let root = tmp.path().join(model);
    for (rel, data) in files {
        let path = Path::new(rel);
        let safe = !rel.is_empty() && path.components().all(|c| matches!(c, Component::Normal(_)));
        if !safe {
            return Err(Error::invalid_arg(format!(
                "load parameter 'file:{rel}' of model '{model}' must be a relative path inside the model folder (no '..', no leading '/')"
            )));
        }
        let target = root.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::internal(format!("failed to write 'file:{rel}': {e}")))?;
        }
        std::fs::write(&target, data)
            .map_err(|e| Error::internal(format!("failed to write 'file:{rel}': {e}")))?;
    }
    std::fs::create_dir_all(&root).map_err(|e| Error::internal(e.to_string()))?;
    Ok(tmp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_inside_and_rejects_escapes() {
        let tmp = write_files("m", &[("1/model.onnx".into(), b"x".to_vec())]).unwrap();
        assert_eq!(
            std::fs::read(tmp.path().join("m/1/model.onnx")).unwrap(),
            b"x"
        );
        for bad in ["../evil", "/etc/passwd", "1/../../x", ""] {
            let err = write_files("m", &[(bad.into(), vec![])]).unwrap_err();
            assert!(
                err.message
                    .contains("must be a relative path inside the model folder"),
                "{bad}: {}",
                err.message
            );
        }
    }
}
