//! Restricted APIs, as Triton's `--grpc-restricted-protocol` and `--http-restricted-api`: the
//! calls of a restricted group are served only to a client that sends the group's header with
//! the group's value.
//!
//! Triton's semantics, kept here: the groups are the nine of [`Group::ALL`]; each flag is
//! `<groups>:<key>=<value>` with comma-separated groups, may be repeated, and a group may appear
//! in one flag only. The gRPC header is `triton-grpc-protocol-<key>`, the HTTP header `<key>`.
//! A call of a restricted group without the header, or with another value, is refused before
//! anything else is done (no body read, no model looked up): gRPC `UNAVAILABLE` "This protocol
//! is restricted, expecting header '…'", HTTP 403 "This API is restricted, expecting header
//! '…'" (a 403 even for a method the route does not take, as Triton checks first). Nothing is
//! restricted by default. One deviation: a key that is not a valid header name, or a value no
//! header can carry, stops startup, where Triton would start and lock the group out for good.
//!
//! [`grpc_group`] and [`http_group`] are the one table each of which call belongs to which
//! group; [`Restricted`] applies it in front of the gRPC services, and the HTTP front-end's
//! middleware calls [`Restrictions::check`] with [`http_group`].

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::Status;
use tonic::body::Body;
use tonic::codegen::http::{HeaderMap, HeaderName, HeaderValue};
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::NamedService;

/// Triton's API groups (`RestrictedCategory`), in Triton's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Group {
    Health,
    Metadata,
    Inference,
    SharedMemory,
    ModelConfig,
    ModelRepository,
    Statistics,
    Trace,
    Logging,
}

impl Group {
    pub const ALL: [Group; 9] = [
        Group::Health,
        Group::Metadata,
        Group::Inference,
        Group::SharedMemory,
        Group::ModelConfig,
        Group::ModelRepository,
        Group::Statistics,
        Group::Trace,
        Group::Logging,
    ];

    /// The group's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Group::Health => "health",
            Group::Metadata => "metadata",
            Group::Inference => "inference",
            Group::SharedMemory => "shared-memory",
            Group::ModelConfig => "model-config",
            Group::ModelRepository => "model-repository",
            Group::Statistics => "statistics",
            Group::Trace => "trace",
            Group::Logging => "logging",
        }
    }

    fn from_name(name: &str) -> Option<Group> {
        Group::ALL.into_iter().find(|g| g.name() == name)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Which front-end a set of restrictions is for: its flag, header prefix and wording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Grpc,
    Http,
}

impl Api {
    fn flag(self) -> &'static str {
        match self {
            Api::Grpc => "grpc-restricted-protocol",
            Api::Http => "http-restricted-api",
        }
    }

    /// Triton's word for a group in its startup errors.
    fn feature(self) -> &'static str {
        match self {
            Api::Grpc => "protocol",
            Api::Http => "api",
        }
    }

    fn header_prefix(self) -> &'static str {
        match self {
            Api::Grpc => "triton-grpc-protocol-",
            Api::Http => "",
        }
    }
}

/// One group's condition: this header with exactly this value.
#[derive(Clone)]
struct Rule {
    /// The header as configured (prefix + key), for the refusal message.
    shown: String,
    /// The same, parsed (lowercase) for the lookup.
    header: HeaderName,
    value: HeaderValue,
}

/// The restricted groups of one front-end, each with its header and value. The default
/// restricts nothing.
#[derive(Clone)]
pub struct Restrictions {
    api: Api,
    rules: [Option<Rule>; Group::ALL.len()],
}

/// The values are secrets: the debug form names the groups and headers only.
impl fmt::Debug for Restrictions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                Group::ALL
                    .iter()
                    .filter_map(|g| Some((g.name(), &self.rules[g.index()].as_ref()?.shown))),
            )
            .finish()
    }
}

impl Restrictions {
    /// Nothing restricted.
    pub fn none(api: Api) -> Self {
        Restrictions {
            api,
            rules: Default::default(),
        }
    }

    /// Parses the flag's values (`<groups>:<key>=<value>` each), with Triton's errors for a
    /// malformed value, an unknown group and a group named twice.
    pub fn parse(api: Api, args: &[String]) -> Result<Self, String> {
        let mut r = Restrictions::none(api);
        for arg in args {
            let (groups, key, value) = split_option(api, arg)?;
            let shown = format!("{}{key}", api.header_prefix());
            let header = HeaderName::from_bytes(shown.as_bytes()).map_err(|_| {
                format!(
                    "--{} '{arg}': '{shown}' is not a valid header name",
                    api.flag()
                )
            })?;
            let value = HeaderValue::from_str(value).map_err(|_| {
                format!(
                    "--{} '{arg}': the value is not one a header can carry (visible ASCII)",
                    api.flag()
                )
            })?;
            for name in groups.split(',') {
                let group = Group::from_name(name)
                    .ok_or_else(|| format!("unknown restricted {} '{name}'", api.feature()))?;
                let slot = &mut r.rules[group.index()];
                if slot.is_some() {
                    return Err(format!(
                        "restricted {} '{name}' can not be specified in multiple config groups",
                        api.feature()
                    ));
                }
                *slot = Some(Rule {
                    shown: shown.clone(),
                    header: header.clone(),
                    value: value.clone(),
                });
            }
        }
        Ok(r)
    }

    pub fn is_empty(&self) -> bool {
        self.rules.iter().all(Option::is_none)
    }

    /// Whether `group` is restricted.
    pub fn restricts(&self, group: Group) -> bool {
        self.rules[group.index()].is_some()
    }

    /// Passes a call of `group` whose request carries `headers`, or gives the refusal's message.
    /// The first header of the name is compared, byte for byte, as Triton does.
    pub fn check(&self, group: Group, headers: &HeaderMap) -> Result<(), String> {
        let Some(rule) = &self.rules[group.index()] else {
            return Ok(());
        };
        if headers.get(&rule.header) == Some(&rule.value) {
            return Ok(());
        }
        Err(match self.api {
            Api::Grpc => format!(
                "This protocol is restricted, expecting header '{}'",
                rule.shown
            ),
            Api::Http => format!("This API is restricted, expecting header '{}'", rule.shown),
        })
    }
}

/// Triton's `ParseGenericConfigOption(arg, ":", "=")`: the groups before the first `:`, the key
/// up to the first `=` after it, the value after that; none of the three may be empty.
fn split_option(api: Api, arg: &str) -> Result<(&str, &str, &str), String> {
    let malformed = || {
        format!(
            "--{} option format is '<config name>:<setting>=<value>'. Got {arg}",
            api.flag()
        )
    };
    let (groups, rest) = arg.split_once(':').ok_or_else(malformed)?;
    let (key, value) = rest.split_once('=').ok_or_else(malformed)?;
    if groups.is_empty() || key.is_empty() || value.is_empty() {
        return Err(malformed());
    }
    Ok((groups, key, value))
}

/// The group of a gRPC call, from its path (`/<service>/<method>`); `None` for a path no service
/// answers (tonic's UNIMPLEMENTED then). Triton's `CommonHandler` and inference handlers.
pub(crate) fn grpc_group(path: &str) -> Option<Group> {
    let method = match path.strip_prefix("/inference.GRPCInferenceService/") {
        Some(m) => m,
        None if path == "/grpc.health.v1.Health/Check" => return Some(Group::Health),
        None => return None,
    };
    Some(match method {
        "ServerLive" | "ServerReady" | "ModelReady" => Group::Health,
        "ServerMetadata" | "ModelMetadata" => Group::Metadata,
        "ModelInfer" | "ModelStreamInfer" => Group::Inference,
        "ModelConfig" => Group::ModelConfig,
        "ModelStatistics" => Group::Statistics,
        "RepositoryIndex" | "RepositoryModelLoad" | "RepositoryModelUnload" => {
            Group::ModelRepository
        }
        "SystemSharedMemoryStatus"
        | "SystemSharedMemoryRegister"
        | "SystemSharedMemoryUnregister"
        | "CudaSharedMemoryStatus"
        | "CudaSharedMemoryRegister"
        | "CudaSharedMemoryUnregister" => Group::SharedMemory,
        "TraceSetting" => Group::Trace,
        "LogSettings" => Group::Logging,
        _ => return None,
    })
}

/// The group of an HTTP request, from its path alone (any method), following Triton's route
/// patterns; `None` for a path that is no route (404 then, restricted or not).
pub(crate) fn http_group(path: &str) -> Option<Group> {
    match path {
        "/v2" => return Some(Group::Metadata),
        "/v2/health/live" | "/v2/health/ready" => return Some(Group::Health),
        "/v2/models/stats" => return Some(Group::Statistics),
        "/v2/logging" => return Some(Group::Logging),
        "/v2/trace/setting" => return Some(Group::Trace),
        _ => {}
    }
    let segments: Vec<&str> = path.strip_prefix("/v2/")?.split('/').collect();
    // Every `[^/]+` of Triton's patterns: an empty segment matches no route.
    if segments.iter().any(|s| s.is_empty()) {
        return None;
    }
    match segments.as_slice() {
        ["models", _, rest @ ..] => model_route(rest),
        ["systemsharedmemory" | "cudasharedmemory", rest @ ..] => match rest {
            ["status" | "register" | "unregister"]
            | ["region", _, "status" | "register" | "unregister"] => Some(Group::SharedMemory),
            _ => None,
        },
        ["repository", rest @ ..] => {
            let control = |s: &[&str]| matches!(s, ["index"] | ["models", _, "load" | "unload"]);
            // `/v2/repository(/<repository>)?/...`
            (control(rest) || rest.split_first().is_some_and(|(_, s)| control(s)))
                .then_some(Group::ModelRepository)
        }
        _ => None,
    }
}

/// `/v2/models/<model>(/versions/<digits>)?(/<kind>)?` after the model name.
fn model_route(rest: &[&str]) -> Option<Group> {
    let (versioned, kind) = match rest {
        ["versions", v, kind @ ..] if v.bytes().all(|b| b.is_ascii_digit()) => (true, kind),
        _ => (false, rest),
    };
    Some(match kind {
        [] => Group::Metadata,
        ["ready"] => Group::Health,
        ["infer" | "generate" | "generate_stream"] => Group::Inference,
        ["config"] => Group::ModelConfig,
        ["stats"] => Group::Statistics,
        // Triton has no versioned trace route.
        ["trace", "setting"] if !versioned => Group::Trace,
        _ => return None,
    })
}

/// A gRPC service behind the restrictions: a call of a restricted group without its header is
/// answered `UNAVAILABLE` here, before the service sees it (its body is never read).
#[derive(Clone)]
pub(crate) struct Restricted<S> {
    inner: S,
    rules: Arc<Restrictions>,
}

impl<S> Restricted<S> {
    pub(crate) fn new(inner: S, rules: Arc<Restrictions>) -> Self {
        Restricted { inner, rules }
    }
}

impl<S: NamedService> NamedService for Restricted<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for Restricted<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<http::Response<Body>, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let refused = grpc_group(req.uri().path())
            .map(|g| self.rules.check(g, req.headers()))
            .and_then(Result::err);
        match refused {
            Some(message) => {
                let reply = Status::unavailable(message).into_http();
                Box::pin(async move { Ok(reply) })
            }
            None => Box::pin(self.inner.call(req)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(api: Api, args: &[&str]) -> Result<Restrictions, String> {
        Restrictions::parse(api, &args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn triton_startup_errors() {
        let twice = parse(
            Api::Http,
            &["model-repository,health:k1=v1", "metadata,health:k2=v2"],
        );
        assert_eq!(
            twice.unwrap_err(),
            "restricted api 'health' can not be specified in multiple config groups"
        );
        let twice = parse(
            Api::Grpc,
            &["model-repository,health:k1=v1", "metadata,health:k2=v2"],
        );
        assert_eq!(
            twice.unwrap_err(),
            "restricted protocol 'health' can not be specified in multiple config groups"
        );
        let unknown = parse(Api::Grpc, &["model-reposit,health:k1=v1"]);
        assert_eq!(
            unknown.unwrap_err(),
            "unknown restricted protocol 'model-reposit'"
        );
        let unknown = parse(Api::Http, &["model-reposit,health:k1=v1"]);
        assert_eq!(
            unknown.unwrap_err(),
            "unknown restricted api 'model-reposit'"
        );
        for bad in ["health", "health:k", ":k=v", "health:=v", "health:k="] {
            assert_eq!(
                parse(Api::Http, &[bad]).unwrap_err(),
                format!(
                    "--http-restricted-api option format is '<config name>:<setting>=<value>'. Got {bad}"
                )
            );
        }
        assert!(parse(Api::Http, &["health:a key=v"]).is_err());
        assert!(parse(Api::Grpc, &["health:k=v\n"]).is_err());
    }

    #[test]
    fn headers_and_values() {
        let r = parse(Api::Grpc, &["inference,health:Key=a=b:c"]).unwrap();
        assert!(r.restricts(Group::Inference) && r.restricts(Group::Health));
        assert!(!r.restricts(Group::Metadata));
        let mut h = HeaderMap::new();
        let refusal = "This protocol is restricted, expecting header 'triton-grpc-protocol-Key'";
        assert_eq!(r.check(Group::Health, &h).unwrap_err(), refusal);
        assert_eq!(r.check(Group::Metadata, &h), Ok(()));
        h.insert("triton-grpc-protocol-key", HeaderValue::from_static("a=b"));
        assert_eq!(r.check(Group::Health, &h).unwrap_err(), refusal);
        h.insert(
            "triton-grpc-protocol-key",
            HeaderValue::from_static("a=b:c"),
        );
        assert_eq!(r.check(Group::Health, &h), Ok(()));
        let debug = format!("{r:?}");
        assert!(debug.contains("triton-grpc-protocol-Key") && !debug.contains("a=b:c"));
        assert!(parse(Api::Http, &[]).unwrap().is_empty());
    }

    #[test]
    fn http_routes() {
        use Group::*;
        let table = [
            ("/v2", Some(Metadata)),
            ("/v2/health/live", Some(Health)),
            ("/v2/health/ready", Some(Health)),
            ("/v2/models/m", Some(Metadata)),
            ("/v2/models/m/versions/3", Some(Metadata)),
            ("/v2/models/m/ready", Some(Health)),
            ("/v2/models/m/versions/3/ready", Some(Health)),
            ("/v2/models/m/infer", Some(Inference)),
            ("/v2/models/m/versions/3/generate_stream", Some(Inference)),
            ("/v2/models/m/config", Some(ModelConfig)),
            ("/v2/models/m/stats", Some(Statistics)),
            ("/v2/models/stats", Some(Statistics)),
            ("/v2/models/m/trace/setting", Some(Trace)),
            ("/v2/models/m/versions/1/trace/setting", None),
            ("/v2/trace/setting", Some(Trace)),
            ("/v2/logging", Some(Logging)),
            ("/v2/repository/index", Some(ModelRepository)),
            ("/v2/repository/r/index", Some(ModelRepository)),
            ("/v2/repository/models/m/load", Some(ModelRepository)),
            ("/v2/repository/r/models/m/unload", Some(ModelRepository)),
            ("/v2/systemsharedmemory/status", Some(SharedMemory)),
            ("/v2/cudasharedmemory/region/r/register", Some(SharedMemory)),
            ("/v2/models/m/versions/x/infer", None),
            ("/v2/models//infer", None),
            ("/v2/health", None),
            ("/v2/repository/models/m/drop", None),
            ("/metrics", None),
            ("/", None),
        ];
        for (path, group) in table {
            assert_eq!(http_group(path), group, "{path}");
        }
    }

    #[test]
    fn grpc_methods() {
        assert_eq!(
            grpc_group("/grpc.health.v1.Health/Check"),
            Some(Group::Health)
        );
        assert_eq!(
            grpc_group("/inference.GRPCInferenceService/ModelStreamInfer"),
            Some(Group::Inference)
        );
        assert_eq!(grpc_group("/inference.GRPCInferenceService/Nope"), None);
        assert_eq!(grpc_group("/other.Service/ModelInfer"), None);
    }
}
