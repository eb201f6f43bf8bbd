//! Triton's object-store repository URLs, parsed (pure):
//!
//! - `s3://bucket/path`: AWS S3, region and credentials from the environment;
//! - `s3://host:port/bucket/path`: an S3-compatible server over plain HTTP;
//! - `s3://http://host:port/bucket/path`, `s3://https://host:port/bucket/path`: the same with
//!   the scheme named (Triton's way to ask for HTTPS);
//! - `gs://bucket/path`: Google Cloud Storage;
//! - `as://account/container/path`: Azure Blob Storage.
//!
//! Credentials never come in the URL (a `user@` part is refused), so the URL as given is safe to
//! print in errors and logs.

use std::fmt;

/// Where the objects are: the service, and the bucket (container) on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Service {
    /// `endpoint` is `http(s)://host[:port]` for an S3-compatible server, `None` for AWS.
    S3 {
        endpoint: Option<String>,
        bucket: String,
    },
    Gcs {
        bucket: String,
    },
    Azure {
        account: String,
        container: String,
    },
}

/// A repository URL: its service and the key prefix of the repository inside the bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RemoteUrl {
    /// The URL as given on the command line.
    given: String,
    pub(crate) service: Service,
    /// Key prefix without leading or trailing `/`; empty = the bucket's root.
    pub(crate) prefix: String,
}

/// True for the URL schemes of object stores (the rest of `--model-repository` are folders).
pub(crate) fn is_remote(repo: &str) -> bool {
    ["s3://", "gs://", "as://"]
        .iter()
        .any(|s| repo.starts_with(s))
}

impl RemoteUrl {
    pub(crate) fn parse(given: &str) -> Result<RemoteUrl, String> {
        let shown = hide_userinfo(given);
        let bad = |why: &str| format!("model repository '{shown}': {why}");
        let (scheme, rest) = given
            .split_once("://")
            .ok_or_else(|| bad("not an s3://, gs:// or as:// URL"))?;
        let (service, path) = match scheme {
            "s3" => {
                let (endpoint, rest) = split_endpoint(rest).map_err(|e| bad(&e))?;
                let (bucket, path) = first_segment(rest);
                (
                    Service::S3 {
                        endpoint,
                        bucket: bucket.to_string(),
                    },
                    path,
                )
            }
            "gs" => {
                let (bucket, path) = first_segment(rest);
                (
                    Service::Gcs {
                        bucket: bucket.to_string(),
                    },
                    path,
                )
            }
            "as" => {
                let (account, rest) = first_segment(rest);
                let (container, path) = first_segment(rest);
                if account.is_empty() || container.is_empty() {
                    return Err(bad("expected as://<account>/<container>/<path>"));
                }
                (
                    Service::Azure {
                        account: account.to_string(),
                        container: container.to_string(),
                    },
                    path,
                )
            }
            _ => return Err(bad("not an s3://, gs:// or as:// URL")),
        };
        let bucket_empty = match &service {
            Service::S3 { bucket, .. } | Service::Gcs { bucket } => bucket.is_empty(),
            Service::Azure { .. } => false,
        };
        if bucket_empty {
            return Err(bad("no bucket name"));
        }
        if service_names(&service).iter().any(|s| s.contains('@')) {
            return Err(bad(
                "credentials are not accepted in the URL; set them in the environment",
            ));
        }
        let prefix = path.trim_matches('/');
        if prefix.split('/').any(|s| s == "." || s == "..")
            || (!prefix.is_empty() && prefix.split('/').any(str::is_empty))
        {
            return Err(bad("the path may not hold empty, '.' or '..' segments"));
        }
        Ok(RemoteUrl {
            given: given.to_string(),
            service,
            prefix: prefix.to_string(),
        })
    }

    /// The key prefix of model `name`'s objects (ends with `/`).
    pub(crate) fn model_prefix(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            format!("{name}/")
        } else {
            format!("{}/{name}/", self.prefix)
        }
    }
}

impl fmt::Display for RemoteUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.given)
    }
}

fn service_names(service: &Service) -> Vec<&str> {
    match service {
        Service::S3 { endpoint, bucket } => {
            let mut v = vec![bucket.as_str()];
            v.extend(endpoint.as_deref());
            v
        }
        Service::Gcs { bucket } => vec![bucket.as_str()],
        Service::Azure { account, container } => vec![account.as_str(), container.as_str()],
    }
}

/// `given` with a `user:secret@` part (refused, but printed in the refusal) masked.
fn hide_userinfo(given: &str) -> String {
    let Some(at) = given.find('@') else {
        return given.to_string();
    };
    let start = given[..at].rfind("://").map_or(0, |i| i + 3);
    format!("{}***{}", &given[..start], &given[at..])
}

/// Splits `s` at its first `/`: (segment, rest after the slash).
fn first_segment(s: &str) -> (&str, &str) {
    s.split_once('/').unwrap_or((s, ""))
}

/// The endpoint of an S3 URL's rest (after `s3://`), if it names one: `http(s)://host[:port]/`
/// or `host:port/` (Triton tells a host from a bucket by its port). Returns the rest after it.
fn split_endpoint(rest: &str) -> Result<(Option<String>, &str), String> {
    for scheme in ["http://", "https://"] {
        if let Some(after) = rest.strip_prefix(scheme) {
            let (host, path) = first_segment(after);
            if host.is_empty() {
                return Err(format!("no host after '{scheme}'"));
            }
            return Ok((Some(format!("{scheme}{host}")), path));
        }
    }
    let (first, path) = first_segment(rest);
    match first.rsplit_once(':') {
        Some((host, port))
            if !host.is_empty() && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) =>
        {
            Ok((Some(format!("http://{first}")), path))
        }
        Some(_) => Err(format!("'{first}' is neither a bucket nor host:port")),
        None => Ok((None, rest)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(endpoint: Option<&str>, bucket: &str) -> Service {
        Service::S3 {
            endpoint: endpoint.map(str::to_string),
            bucket: bucket.into(),
        }
    }

    #[test]
    fn triton_forms() {
        let cases = [
            (
                "s3://bucket/path/to/repo",
                s3(None, "bucket"),
                "path/to/repo",
            ),
            ("s3://bucket", s3(None, "bucket"), ""),
            ("s3://bucket/", s3(None, "bucket"), ""),
            (
                "s3://127.0.0.1:9000/bucket/models/",
                s3(Some("http://127.0.0.1:9000"), "bucket"),
                "models",
            ),
            (
                "s3://minio.local:443/b/p",
                s3(Some("http://minio.local:443"), "b"),
                "p",
            ),
            (
                "s3://https://minio.local:443/b/p/q",
                s3(Some("https://minio.local:443"), "b"),
                "p/q",
            ),
            (
                "s3://http://localhost:9000/b",
                s3(Some("http://localhost:9000"), "b"),
                "",
            ),
            (
                "gs://bucket/repo",
                Service::Gcs {
                    bucket: "bucket".into(),
                },
                "repo",
            ),
            (
                "as://acct/cont/a/b",
                Service::Azure {
                    account: "acct".into(),
                    container: "cont".into(),
                },
                "a/b",
            ),
        ];
        for (given, service, prefix) in cases {
            let url = RemoteUrl::parse(given).unwrap_or_else(|e| panic!("{given}: {e}"));
            assert_eq!(url.service, service, "{given}");
            assert_eq!(url.prefix, prefix, "{given}");
            assert_eq!(url.to_string(), given);
        }
        let url = RemoteUrl::parse("s3://b/repo").unwrap();
        assert_eq!(url.model_prefix("m"), "repo/m/");
        assert_eq!(RemoteUrl::parse("s3://b").unwrap().model_prefix("m"), "m/");
    }

    #[test]
    fn refused() {
        for given in [
            "s3://",
            "s3:///path",
            "s3://127.0.0.1:9000/",
            "s3://host:port/b",
            "s3://https:///b",
            "s3://key:secret@host:9000/b",
            "s3://b/a//c",
            "s3://b/../c",
            "gs://",
            "as://acct",
            "as://acct/",
            "ftp://b/p",
        ] {
            let e = RemoteUrl::parse(given).expect_err(given);
            assert!(e.contains(&hide_userinfo(given)), "{e}");
            assert!(!e.contains("secret"), "{e}");
        }
        assert!(is_remote("s3://b") && is_remote("gs://b") && is_remote("as://a/c"));
        assert!(!is_remote("/models") && !is_remote("models"));
    }
}
