//! File names from a config, kept inside the model, and server paths kept out of client errors.
//!
//! A config names files relative to the folder where Triton looks for them (labels and the
//! tokenizer: the model folder; the model file: the version folder; warmup data: `warmup/`).
//! `inside` is the one place that turns such a name into a path: a leading `/` is stripped, as
//! Triton's `JoinPath` does, and a name that could leave the folder (a `..` component) or that
//! carries a NUL or another control character fails the load. Symlinks are followed: the
//! repository's operator places them, a config cannot create them.
//!
//! `scrub` rewrites an error's text so that the server's own folders (repository roots, model
//! folders, temp folders of `file:` uploads) do not reach clients; the full text goes to the log.

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// `base/name` for a file `name` that the config of `model` gives in `field`, or a load error
/// when `name` could leave `base`.
pub(crate) fn inside(base: &Path, model: &str, field: &str, name: &str) -> Result<PathBuf> {
    let escapes = || {
        Error::invalid_arg(format!(
            "model '{model}': {field} '{}' must stay inside the model folder",
            printable(name)
        ))
    };
    if name.chars().any(char::is_control) {
        return Err(escapes());
    }
    let relative = Path::new(name.trim_start_matches('/'));
    let mut path = base.to_path_buf();
    for c in relative.components() {
        match c {
            Component::Normal(part) => path.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(escapes());
            }
        }
    }
    Ok(path)
}

/// `name` with control characters escaped, so that a hostile name cannot forge log lines or
/// terminal output; any other name is shown as written.
pub(crate) fn printable(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// `message` with every folder in `roots` removed: `<root>/x` becomes `x`, and a bare `<root>`
/// becomes `.`. Longer roots go first, so a model folder inside a repository becomes the path
/// relative to the model (`1/model.onnx`), not to the repository.
pub(crate) fn scrub(message: &str, roots: &[&Path]) -> String {
    let mut roots: Vec<String> = roots
        .iter()
        .filter_map(|r| r.to_str())
        .map(|r| r.trim_end_matches('/').to_string())
        .filter(|r| !r.is_empty())
        .collect();
    roots.sort_by_key(|r| std::cmp::Reverse(r.len()));
    let mut out = message.to_string();
    for root in &roots {
        out = out.replace(&format!("{root}/"), "");
        out = out.replace(root.as_str(), ".");
    }
    out
}

/// `error` with `scrub` applied to its message.
pub(crate) fn scrub_error(mut error: Error, roots: &[&Path]) -> Error {
    error.message = scrub(&error.message, roots);
    error
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_joined_under_the_base_or_refused() {
        let base = Path::new("/repo/m");
        let ok = |name: &str| inside(base, "m", "label_filename", name).unwrap();
        assert_eq!(ok("labels.txt"), Path::new("/repo/m/labels.txt"));
        assert_eq!(ok("/labels.txt"), Path::new("/repo/m/labels.txt"));
        assert_eq!(ok("//etc/passwd"), Path::new("/repo/m/etc/passwd"));
        assert_eq!(ok("./sub/labels.txt"), Path::new("/repo/m/sub/labels.txt"));
        assert_eq!(ok("a..b"), Path::new("/repo/m/a..b"));
        for bad in ["../x", "a/../../x", "/..", "..", "a\0b", "a\nb", "x\u{7f}"] {
            let e = inside(base, "m", "label_filename", bad).unwrap_err();
            assert_eq!(e.code, crate::error::Code::InvalidArg);
            assert!(
                e.message.starts_with("model 'm': label_filename '")
                    && e.message.ends_with("' must stay inside the model folder"),
                "{bad:?}: {}",
                e.message
            );
            assert!(!e.message.contains('\n') && !e.message.contains('\0'));
        }
        let e = inside(base, "m", "tokenizer", "../../etc/passwd").unwrap_err();
        assert_eq!(
            e.message,
            "model 'm': tokenizer '../../etc/passwd' must stay inside the model folder"
        );
    }

    proptest::proptest! {
        /// Any name a config can hold (any characters, `/` and `..` often): either refused, or
        /// a path under the base with only plain components below it.
        #[test]
        fn a_joined_name_never_leaves_the_base(
            name in proptest::string::string_regex("(/|\\.\\.|\\.|[a-z]|\\PC|\\p{Cc}){0,24}").unwrap()
        ) {
            let base = Path::new("/repo/m");
            if let Ok(path) = inside(base, "m", "label_filename", &name) {
                let rest = path.strip_prefix(base).expect("under the base");
                proptest::prop_assert!(
                    rest.components().all(|c| matches!(c, Component::Normal(_))),
                    "{name:?} -> {path:?}"
                );
                proptest::prop_assert!(!name.chars().any(char::is_control));
            }
        }
    }

    #[test]
    fn scrub_removes_server_folders() {
        let msg = "failed to load model file '/tmp/r/m/1/model.onnx': Load model from /tmp/r/m/1/model.onnx failed; repository '/tmp/r'";
        assert_eq!(
            scrub(msg, &[Path::new("/tmp/r"), Path::new("/tmp/r/m")]),
            "failed to load model file '1/model.onnx': Load model from 1/model.onnx failed; repository '.'"
        );
        assert_eq!(scrub("nothing here", &[Path::new("/")]), "nothing here");
    }
}
