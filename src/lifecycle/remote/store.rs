//! The `object_store` door: the only file that names the crate. It opens a store for a
//! repository URL (credentials from the environment), lists objects under a key prefix and
//! streams one object, and turns the crate's errors into `StoreError`s whose text never holds a
//! credential (the crate's messages carry request URLs and response bodies, never secrets).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::path::Path;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, RetryConfig};

use super::url::{RemoteUrl, Service};

/// A request that fails (connection refused, 5xx) is retried this many times, within
/// `RETRY_WITHIN`, before the operation fails: a poll or a load must end, not wait minutes.
const RETRIES: usize = 2;
const RETRY_WITHIN: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// One whole request, body included: large enough for a model file over a slow link.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(600);

/// One object of a listing: its key (full, inside the bucket), size and ETag.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Listed {
    pub(crate) key: String,
    pub(crate) size: u64,
    pub(crate) etag: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoreErrorKind {
    /// The bucket, the container or the object does not exist (HTTP 404).
    NotFound,
    /// The credentials are missing, wrong or not allowed (HTTP 401/403).
    Denied,
    /// No connection to the endpoint (refused, no route, unknown host, connect timeout).
    Unreachable,
    /// Anything else: a timeout, a server error.
    Failed,
}

#[derive(Debug, Clone)]
pub(crate) struct StoreError {
    pub(crate) kind: StoreErrorKind,
    /// The crate's text (request URL and response body; no credential).
    pub(crate) detail: String,
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.kind {
            StoreErrorKind::NotFound => "not found (no such bucket, container or object)",
            StoreErrorKind::Denied => "access denied (check the credentials in the environment)",
            StoreErrorKind::Unreachable => "endpoint unreachable",
            StoreErrorKind::Failed => "request failed",
        };
        write!(f, "{what}: {}", self.detail)
    }
}

impl From<object_store::Error> for StoreError {
    fn from(e: object_store::Error) -> Self {
        use object_store::Error as E;
        let mut kind = match &e {
            E::NotFound { .. } => StoreErrorKind::NotFound,
            E::PermissionDenied { .. } | E::Unauthenticated { .. } => StoreErrorKind::Denied,
            _ => StoreErrorKind::Failed,
        };
        // The crate nests the cause (the request, the client error, the body) in sources.
        let mut detail = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            let text = s.to_string();
            if !detail.contains(&text) {
                detail.push_str(": ");
                detail.push_str(&text);
            }
            source = s.source();
        }
        // A listing's error is `Generic` whatever the status: read the status from the text.
        if kind == StoreErrorKind::Failed {
            if detail.contains("status code: 404") {
                kind = StoreErrorKind::NotFound;
            } else if detail.contains("status code: 401") || detail.contains("status code: 403") {
                kind = StoreErrorKind::Denied;
            } else if ["(Connect)", "tcp connect error", "dns error"]
                .iter()
                .any(|m| detail.contains(m))
            {
                kind = StoreErrorKind::Unreachable;
            }
        }
        StoreError {
            kind,
            detail: shorten_xml(&detail),
        }
    }
}

/// An S3 error body (`<?xml ...><Error><Code>C</Code><Message>M</Message>...`) cut to
/// "C: M"; request and host ids say nothing to the reader of a load error.
fn shorten_xml(detail: &str) -> String {
    let Some(at) = detail.find("<?xml") else {
        return detail.to_string();
    };
    let tag = |name: &str| {
        let open = format!("<{name}>");
        let start = detail[at..].find(&open)? + at + open.len();
        let end = detail[start..].find(&format!("</{name}>"))? + start;
        Some(&detail[start..end])
    };
    match (tag("Code"), tag("Message")) {
        (Some(code), Some(message)) => format!("{}{code}: {message}", &detail[..at]),
        (Some(code), None) => format!("{}{code}", &detail[..at]),
        _ => detail.to_string(),
    }
}

/// An object being read: what the server says it is, and its bytes.
pub(crate) struct Download {
    pub(crate) size: u64,
    pub(crate) etag: Option<String>,
    pub(crate) body: BoxStream<'static, Result<Bytes, StoreError>>,
}

#[derive(Debug, Clone)]
pub(crate) struct Store {
    inner: Arc<dyn ObjectStore>,
}

impl Store {
    /// The store of `url`'s bucket. Reads the environment (credentials, region) but makes no
    /// request: an unreachable endpoint or a wrong key shows at the first listing.
    pub(crate) fn open(url: &RemoteUrl) -> Result<Store, String> {
        // object_store's HTTPS client is rustls without a provider of its own: ring, as the
        // listeners use (frontend/tls.rs says why ring). Installing fails only when a provider
        // is already installed.
        #[allow(
            deprecated,
            reason = "ring chosen for its build, as in frontend/tls.rs"
        )]
        let _ = rustls::crypto::ring::default_provider().install_default();
        let retry = RetryConfig {
            max_retries: RETRIES,
            retry_timeout: RETRY_WITHIN,
            ..RetryConfig::default()
        };
        let client = ClientOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT);
        let built: object_store::Result<Arc<dyn ObjectStore>> = match &url.service {
            Service::S3 { endpoint, bucket } => {
                let mut b = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(retry)
                    .with_client_options(client);
                if let Some(endpoint) = endpoint {
                    b = b
                        .with_endpoint(endpoint)
                        .with_allow_http(endpoint.starts_with("http://"))
                        .with_virtual_hosted_style_request(false);
                }
                b.build().map(|s| Arc::new(s) as Arc<dyn ObjectStore>)
            }
            Service::Gcs { bucket } => {
                let mut b = GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(retry)
                    .with_client_options(client);
                // Triton's variable for the service-account file.
                if let Ok(path) = std::env::var("GOOGLE_APPLICATION_CREDENTIALS") {
                    b = b.with_service_account_path(path);
                }
                b.build().map(|s| Arc::new(s) as Arc<dyn ObjectStore>)
            }
            Service::Azure { account, container } => {
                let mut b = MicrosoftAzureBuilder::from_env()
                    .with_account(account)
                    .with_container_name(container)
                    .with_retry(retry)
                    .with_client_options(client);
                // Triton's variable for the account key (the crate reads AZURE_STORAGE_ACCOUNT_KEY).
                if let Ok(key) = std::env::var("AZURE_STORAGE_KEY") {
                    b = b.with_access_key(key);
                }
                b.build().map(|s| Arc::new(s) as Arc<dyn ObjectStore>)
            }
        };
        let inner = built
            .map_err(|e| format!("model repository '{url}': {}", StoreError::from(e).detail))?;
        Ok(Store { inner })
    }

    /// Every object under `prefix` (a key prefix without trailing `/`; empty = the whole
    /// bucket), in one paginated listing.
    pub(crate) async fn list(&self, prefix: &str) -> Result<Vec<Listed>, StoreError> {
        let prefix = (!prefix.is_empty()).then(|| Path::from(prefix));
        let listed: Vec<_> = self.inner.list(prefix.as_ref()).try_collect().await?;
        Ok(listed
            .into_iter()
            .map(|m| Listed {
                key: m.location.to_string(),
                size: m.size,
                etag: m.e_tag,
            })
            .collect())
    }

    /// Starts reading object `key`.
    pub(crate) async fn get(&self, key: &str) -> Result<Download, StoreError> {
        // A key from a listing is already in the store's encoding.
        let path = Path::parse(key).unwrap_or_else(|_| Path::from(key));
        let got = self.inner.get(&path).await?;
        Ok(Download {
            size: got.meta.size,
            etag: got.meta.e_tag.clone(),
            body: got.into_stream().map_err(StoreError::from).boxed(),
        })
    }
}

#[cfg(test)]
#[test]
fn s3_error_bodies_are_cut_to_code_and_message() {
    let text = "GET http://h/b?list-type=2: status code: 404 Not Found: <?xml version=\"1.0\"?>\n<Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist</Message><RequestId>x</RequestId></Error>";
    assert_eq!(
        shorten_xml(text),
        "GET http://h/b?list-type=2: status code: 404 Not Found: NoSuchBucket: The specified bucket does not exist"
    );
    assert_eq!(shorten_xml("plain"), "plain");
}

/// The crate's in-memory store, for tests of the arrival rules.
#[cfg(test)]
pub(crate) type Memory = object_store::memory::InMemory;

#[cfg(test)]
impl Store {
    /// An in-memory store (the crate's own), and a handle to change its objects.
    pub(crate) fn memory() -> (Store, Arc<Memory>) {
        let mem = Arc::new(Memory::new());
        (Store { inner: mem.clone() }, mem)
    }
}

/// Writes (or replaces: a new ETag) object `key` of an in-memory store.
#[cfg(test)]
pub(crate) async fn put(mem: &Memory, key: &str, data: &'static [u8]) {
    mem.put(&Path::from(key), Bytes::from_static(data).into())
        .await
        .expect("in-memory put");
}

/// Removes object `key` of an in-memory store.
#[cfg(test)]
pub(crate) async fn delete(mem: &Memory, key: &str) {
    mem.delete(&Path::from(key))
        .await
        .expect("in-memory delete");
}
