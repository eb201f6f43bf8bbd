//! The connection flags of the three listeners: counts, timeouts, header caps, HTTP/2
//! keepalive and reset-flood limits (Triton's gRPC keepalive flags among them), and TLS.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args};

use super::parse_bool;
use crate::frontend::grpc::serve::Http2Options;
use crate::frontend::listen::{Http1Options, ListenOptions};
use crate::frontend::tls::TlsFiles;

/// What the connection flags ask for, per listener.
#[derive(Debug, Clone)]
pub struct ConnectionOptions {
    pub listen: ListenOptions,
    pub http1: Http1Options,
    pub http2: Http2Options,
    pub grpc_tls: Option<TlsFiles>,
    pub http_tls: Option<TlsFiles>,
    pub metrics_tls: Option<TlsFiles>,
}

#[derive(Debug, Clone, Args)]
pub struct ConnectionArgs {
    /// Connections each listener (gRPC, HTTP, metrics) holds at once; past it new connections wait in the kernel's backlog.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub max_connections: usize,

    /// Time a new connection on any listener has to finish its TLS handshake, and a gRPC connection to send the HTTP/2 preface, before it is closed.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub grpc_handshake_timeout_secs: u64,

    /// Time an HTTP client has to send a request's headers (HTTP and metrics listeners) before the connection is closed.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub http_header_timeout_secs: u64,

    /// An HTTP keep-alive connection with no request in progress for this long is closed (HTTP and metrics listeners).
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub http_idle_timeout_secs: u64,

    /// Time an HTTP client has to send a request's whole body once its headers are in; a body still arriving then is answered 408 and the connection closed.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub http_body_timeout_secs: u64,

    /// Largest HTTP request head (request line and headers) in bytes (at least 8192); a larger one is answered 431.
    #[arg(long, default_value_t = 65536, value_name = "BYTES")]
    pub http_max_header_size: usize,

    /// Most header fields in one HTTP request; more is answered 431.
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub http_max_headers: usize,

    /// gRPC: send an HTTP/2 PING on a connection idle this long (milliseconds).
    #[arg(long, default_value_t = 7_200_000, value_name = "MS")]
    pub grpc_keepalive_time: u64,

    /// gRPC: close a connection whose keepalive PING is not answered in this time (milliseconds).
    #[arg(long, default_value_t = 20_000, value_name = "MS")]
    pub grpc_keepalive_timeout: u64,

    /// gRPC: accepted with Triton's default; approximated: the HTTP/2 server (hyper) pings idle connections whether or not calls are open, and does not police client pings by this rule.
    #[arg(long, action = ArgAction::Set, value_parser = parse_bool, default_value = "false", value_name = "BOOL")]
    pub grpc_keepalive_permit_without_calls: bool,

    /// gRPC: accepted with Triton's default; approximated: hyper has no limit on PINGs sent without data (its ping handling is its own).
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub grpc_http2_max_pings_without_data: u32,

    /// gRPC: accepted with Triton's default (milliseconds); approximated: hyper does not enforce a minimum interval between client PINGs.
    #[arg(long, default_value_t = 300_000, value_name = "MS")]
    pub grpc_http2_min_recv_ping_interval_without_data: u64,

    /// gRPC: accepted with Triton's default; approximated: hyper counts no ping strikes.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub grpc_http2_max_ping_strikes: u32,

    /// gRPC: send GOAWAY to a connection this old (milliseconds; default: never).
    #[arg(long, value_name = "MS")]
    pub grpc_max_connection_age: Option<u64>,

    /// gRPC: after the GOAWAY of --grpc-max-connection-age, close the connection this long later (milliseconds; default: wait for its calls).
    #[arg(long, value_name = "MS")]
    pub grpc_max_connection_age_grace: Option<u64>,

    /// gRPC: largest header list (metadata) of one request in bytes; a larger one is refused.
    #[arg(long, default_value_t = 16384, value_name = "BYTES")]
    pub grpc_max_header_list_size: u32,

    /// gRPC: streams a client may open and reset before they are served, at once; past it the connection is closed (HTTP/2 rapid-reset flood).
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub grpc_max_pending_reset_streams: usize,

    /// gRPC: streams the server may reset for a client's protocol errors on one connection; past it the connection is closed.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub grpc_max_local_reset_streams: usize,

    /// gRPC over TLS (needs --grpc-server-cert and --grpc-server-key).
    #[arg(long, action = ArgAction::Set, value_parser = parse_bool, default_value = "false", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub grpc_use_ssl: bool,
    /// gRPC TLS: the server's certificate chain (PEM).
    #[arg(long, value_name = "FILE")]
    pub grpc_server_cert: Option<PathBuf>,
    /// gRPC TLS: the server's private key (PEM).
    #[arg(long, value_name = "FILE")]
    pub grpc_server_key: Option<PathBuf>,
    /// gRPC TLS: certificates that sign client certificates (PEM), for --grpc-use-ssl-mutual.
    #[arg(long, value_name = "FILE")]
    pub grpc_root_cert: Option<PathBuf>,
    /// gRPC mutual TLS: clients must present a certificate signed by --grpc-root-cert (implies --grpc-use-ssl).
    #[arg(long, action = ArgAction::Set, value_parser = parse_bool, default_value = "false", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub grpc_use_ssl_mutual: bool,

    /// HTTPS on the HTTP listener (needs --http-server-cert and --http-server-key).
    #[arg(long, action = ArgAction::Set, value_parser = parse_bool, default_value = "false", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub http_use_ssl: bool,
    /// HTTPS: the server's certificate chain (PEM).
    #[arg(long, value_name = "FILE")]
    pub http_server_cert: Option<PathBuf>,
    /// HTTPS: the server's private key (PEM).
    #[arg(long, value_name = "FILE")]
    pub http_server_key: Option<PathBuf>,
    /// HTTPS: certificates that sign client certificates (PEM), for --http-use-ssl-mutual.
    #[arg(long, value_name = "FILE")]
    pub http_root_cert: Option<PathBuf>,
    /// HTTPS with client certificates signed by --http-root-cert (implies --http-use-ssl).
    #[arg(long, action = ArgAction::Set, value_parser = parse_bool, default_value = "false", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub http_use_ssl_mutual: bool,

    /// HTTPS on the metrics listener (needs --metrics-server-cert and --metrics-server-key).
    #[arg(long, action = ArgAction::Set, value_parser = parse_bool, default_value = "false", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub metrics_use_ssl: bool,
    /// Metrics HTTPS: the server's certificate chain (PEM).
    #[arg(long, value_name = "FILE")]
    pub metrics_server_cert: Option<PathBuf>,
    /// Metrics HTTPS: the server's private key (PEM).
    #[arg(long, value_name = "FILE")]
    pub metrics_server_key: Option<PathBuf>,
    /// Metrics HTTPS: certificates that sign client certificates (PEM), for --metrics-use-ssl-mutual.
    #[arg(long, value_name = "FILE")]
    pub metrics_root_cert: Option<PathBuf>,
    /// Metrics HTTPS with client certificates signed by --metrics-root-cert (implies --metrics-use-ssl).
    #[arg(long, action = ArgAction::Set, value_parser = parse_bool, default_value = "false", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub metrics_use_ssl_mutual: bool,
}

/// One listener's TLS flags → its files, or the error that stops startup.
fn tls(
    prefix: &str,
    on: bool,
    mutual: bool,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    root: Option<PathBuf>,
) -> Result<Option<TlsFiles>, String> {
    if !(on || mutual) {
        return Ok(None);
    }
    let (Some(cert), Some(key)) = (cert, key) else {
        return Err(format!(
            "--{prefix}-use-ssl needs --{prefix}-server-cert and --{prefix}-server-key"
        ));
    };
    if mutual && root.is_none() {
        return Err(format!(
            "--{prefix}-use-ssl-mutual needs --{prefix}-root-cert"
        ));
    }
    Ok(Some(TlsFiles {
        cert,
        key,
        root,
        mutual,
    }))
}

impl ConnectionArgs {
    pub fn into_options(self) -> Result<ConnectionOptions, String> {
        if self.max_connections == 0 {
            return Err("--max-connections must be at least 1".into());
        }
        if self.grpc_handshake_timeout_secs == 0
            || self.http_header_timeout_secs == 0
            || self.http_idle_timeout_secs == 0
            || self.http_body_timeout_secs == 0
        {
            return Err("--grpc-handshake-timeout-secs, --http-header-timeout-secs, --http-idle-timeout-secs and --http-body-timeout-secs must be at least 1".into());
        }
        if self.grpc_keepalive_time == 0 || self.grpc_keepalive_timeout == 0 {
            return Err(
                "--grpc-keepalive-time and --grpc-keepalive-timeout must be at least 1".into(),
            );
        }
        if self.http_max_headers == 0 || self.grpc_max_header_list_size == 0 {
            return Err(
                "--http-max-headers and --grpc-max-header-list-size must be at least 1".into(),
            );
        }
        Ok(ConnectionOptions {
            listen: ListenOptions {
                max_connections: self.max_connections,
                handshake_timeout: Duration::from_secs(self.grpc_handshake_timeout_secs),
            },
            http1: Http1Options {
                header_timeout: Duration::from_secs(self.http_header_timeout_secs),
                idle_timeout: Duration::from_secs(self.http_idle_timeout_secs),
                body_timeout: Duration::from_secs(self.http_body_timeout_secs),
                max_header_bytes: self.http_max_header_size.max(8192),
                max_headers: self.http_max_headers,
            },
            http2: Http2Options {
                keepalive_time: Duration::from_millis(self.grpc_keepalive_time),
                keepalive_timeout: Duration::from_millis(self.grpc_keepalive_timeout),
                max_connection_age: self.grpc_max_connection_age.map(Duration::from_millis),
                max_connection_age_grace: self
                    .grpc_max_connection_age_grace
                    .map(Duration::from_millis),
                max_header_list_size: self.grpc_max_header_list_size,
                max_pending_accept_reset_streams: self.grpc_max_pending_reset_streams,
                max_local_error_reset_streams: self.grpc_max_local_reset_streams,
            },
            grpc_tls: tls(
                "grpc",
                self.grpc_use_ssl,
                self.grpc_use_ssl_mutual,
                self.grpc_server_cert,
                self.grpc_server_key,
                self.grpc_root_cert,
            )?,
            http_tls: tls(
                "http",
                self.http_use_ssl,
                self.http_use_ssl_mutual,
                self.http_server_cert,
                self.http_server_key,
                self.http_root_cert,
            )?,
            metrics_tls: tls(
                "metrics",
                self.metrics_use_ssl,
                self.metrics_use_ssl_mutual,
                self.metrics_server_cert,
                self.metrics_server_key,
                self.metrics_root_cert,
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cli::Cli;

    fn parse(args: &[&str]) -> Result<super::ConnectionOptions, String> {
        let repo = env!("CARGO_MANIFEST_DIR").to_string() + "/model_repository";
        let mut argv = vec!["nereid".to_string(), format!("--model-repository={repo}")];
        argv.extend(args.iter().map(|a| a.to_string()));
        Cli::try_parse_from(argv)
            .map_err(|e| e.to_string())?
            .into_config()
            .map(|c| c.connections)
    }

    #[test]
    fn defaults_are_tritons_and_this_servers() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.listen.max_connections, 1024);
        assert_eq!(c.listen.handshake_timeout.as_secs(), 10);
        assert_eq!(c.http1.header_timeout.as_secs(), 30);
        assert_eq!(c.http1.idle_timeout.as_secs(), 60);
        assert_eq!(c.http2.keepalive_time.as_millis(), 7_200_000);
        assert_eq!(c.http2.keepalive_timeout.as_millis(), 20_000);
        assert_eq!(c.http2.max_connection_age, None);
        assert!(c.grpc_tls.is_none() && c.http_tls.is_none() && c.metrics_tls.is_none());
    }

    #[test]
    fn tls_flags_need_their_files() {
        let e = parse(&["--grpc-use-ssl"]).unwrap_err();
        assert!(e.contains("--grpc-server-cert"), "{e}");
        let e = parse(&[
            "--http-use-ssl-mutual=true",
            "--http-server-cert=c.pem",
            "--http-server-key=k.pem",
        ])
        .unwrap_err();
        assert!(e.contains("--http-root-cert"), "{e}");
        let c = parse(&[
            "--metrics-use-ssl=1",
            "--metrics-server-cert=c.pem",
            "--metrics-server-key=k.pem",
        ])
        .unwrap();
        let tls = c.metrics_tls.unwrap();
        assert!(!tls.mutual && tls.cert.ends_with("c.pem"));
    }

    #[test]
    fn zero_limits_are_refused() {
        for flag in [
            "--max-connections=0",
            "--http-idle-timeout-secs=0",
            "--grpc-handshake-timeout-secs=0",
            "--grpc-keepalive-time=0",
        ] {
            assert!(parse(&[flag]).is_err(), "{flag}");
        }
    }
}
