//! TLS for a listener (rustls, `ring` provider). The certificate, key and client root are read
//! from PEM files at startup and again on `reload` (SIGHUP, from the composition root): the new
//! configuration serves new handshakes, established connections keep theirs, and a file that
//! fails to load leaves the current configuration in place.

use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// One listener's TLS flags (`--grpc-server-cert` and the rest, or the `--http-`/`--metrics-`
/// ones).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Certificates that sign client certificates; needed when `mutual`.
    pub root: Option<PathBuf>,
    /// Clients must present a certificate signed by `root`.
    pub mutual: bool,
}

/// A listener's TLS acceptor whose configuration can be swapped while it serves.
pub(crate) struct Tls {
    files: TlsFiles,
    alpn: Vec<Vec<u8>>,
    what: &'static str,
    config: RwLock<Arc<ServerConfig>>,
}

impl Tls {
    /// Reads the files. `alpn` is what the listener speaks (`h2` for gRPC, `http/1.1`);
    /// `what` names the listener in errors.
    pub(crate) fn load(
        files: TlsFiles,
        alpn: &[&[u8]],
        what: &'static str,
    ) -> Result<Arc<Tls>, String> {
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let config = build(&files, &alpn).map_err(|e| format!("{what} TLS: {e}"))?;
        Ok(Arc::new(Tls {
            files,
            alpn,
            what,
            config: RwLock::new(Arc::new(config)),
        }))
    }

    /// Re-reads the files; on failure the current configuration stays and the error is returned.
    pub(crate) fn reload(&self) -> Result<(), String> {
        let config =
            build(&self.files, &self.alpn).map_err(|e| format!("{} TLS: {e}", self.what))?;
        *self.config.write() = Arc::new(config);
        Ok(())
    }

    /// The listener's name, for logs.
    pub(crate) fn what(&self) -> &'static str {
        self.what
    }

    /// The server side of a handshake with the current configuration.
    pub(crate) async fn accept(&self, tcp: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        let config = self.config.read().clone();
        tokio_rustls::TlsAcceptor::from(config).accept(tcp).await
    }
}

fn build(files: &TlsFiles, alpn: &[Vec<u8>]) -> Result<ServerConfig, String> {
    // `ring` rather than aws-lc-rs: no cmake/NASM build. rustls 0.23.48 deprecates its ring
    // provider for lacking post-quantum key exchange; classical ECDHE stays what it was.
    #[allow(deprecated, reason = "ring chosen for its build; see above")]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("server certificate '{}': {e}", files.cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "server certificate '{}': no certificate in the file",
            files.cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("server key '{}': {e}", files.key.display()))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = if files.mutual {
        let root = files
            .root
            .as_ref()
            .ok_or("mutual TLS needs a root certificate")?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(root)
            .map_err(|e| format!("root certificate '{}': {e}", root.display()))?
        {
            let cert = cert.map_err(|e| format!("root certificate '{}': {e}", root.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("root certificate '{}': {e}", root.display()))?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| format!("root certificate '{}': {e}", root.display()))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("server certificate and key: {e}"))?;
    config.alpn_protocols = alpn.to_vec();
    Ok(config)
}
