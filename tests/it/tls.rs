//! TLS on the listeners, with certificates generated here: gRPC server-only and mutual (the
//! generated client over a rustls connection), HTTPS, and a certificate swapped on disk that
//! new connections get after SIGHUP while an established connection keeps working.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nereid::ServerConfig;
use nereid::TlsFiles;
use nereid::pb::inference::ServerLiveRequest;
use nereid::pb::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use nereid::testing::FakeBackend;
use nereid::{Listeners, RunningServer, bind};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_rustls::client::TlsStream;

use crate::common::*;

/// A test CA and the PEM files of certificates it signed.
struct Pki {
    dir: TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "nereid test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `<name>.pem` and `<name>.key` for "localhost" and returns the certificate's DER.
    fn leaf(&self, name: &str, client: bool) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let cert = params.signed_by(&key, &*self.ca).unwrap();
        std::fs::write(self.path(&format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(self.path(&format!("{name}.key")), key.serialize_pem()).unwrap();
        cert.der().to_vec()
    }

    fn files(&self, name: &str, mutual: bool) -> TlsFiles {
        TlsFiles {
            cert: self.path(&format!("{name}.pem")),
            key: self.path(&format!("{name}.key")),
            root: Some(self.path("ca.pem")),
            mutual,
        }
    }

    /// A client trusting the CA, presenting `client` (a leaf written before) if given.
    fn client(&self, client: Option<&str>, alpn: &[u8]) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(self.path("ca.pem")).unwrap())
            .unwrap();
        #[allow(deprecated, reason = "the server's provider, see frontend/tls.rs")]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match client {
            Some(name) => builder
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_file(self.path(&format!("{name}.pem"))).unwrap()],
                    PrivateKeyDer::from_pem_file(self.path(&format!("{name}.key"))).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![alpn.to_vec()];
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

struct TlsServer {
    server: Option<RunningServer>,
    stop: Option<oneshot::Sender<()>>,
    _repo: TempDir,
}

impl TlsServer {
    async fn start(edit: impl FnOnce(&mut ServerConfig)) -> Result<TlsServer, String> {
        let repo = fake_repo(&[]);
        let mut config = ServerConfig::new(vec![repo.path().to_path_buf()]);
        edit(&mut config);
        let listeners = Listeners {
            grpc: Some(bind("127.0.0.1:0".parse().unwrap()).await.unwrap()),
            http: Some(bind("127.0.0.1:0".parse().unwrap()).await.unwrap()),
            metrics: Some(bind("127.0.0.1:0".parse().unwrap()).await.unwrap()),
        };
        let (tx, rx) = oneshot::channel::<()>();
        let server = RunningServer::start_with_backend(
            config,
            listeners,
            Arc::new(FakeBackend::default()),
            async {
                let _ = rx.await;
            },
        )
        .await
        .map_err(|e| e.to_string())?;
        Ok(TlsServer {
            server: Some(server),
            stop: Some(tx),
            _repo: repo,
        })
    }

    fn running(&self) -> &RunningServer {
        self.server.as_ref().unwrap()
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(RPC_TIMEOUT, self.server.take().unwrap().wait())
            .await
            .expect("server stops promptly")
            .expect("server stops cleanly");
    }
}

async fn tls_connect(
    addr: SocketAddr,
    connector: &tokio_rustls::TlsConnector,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// The generated gRPC client over a TLS connection made by `connector`.
async fn grpc_over_tls(
    addr: SocketAddr,
    connector: tokio_rustls::TlsConnector,
) -> Result<GrpcInferenceServiceClient<tonic::transport::Channel>, tonic::transport::Error> {
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let connector = connector.clone();
            async move {
                let tls = tls_connect(addr, &connector).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await?;
    Ok(GrpcInferenceServiceClient::new(channel))
}

async fn live(addr: SocketAddr, connector: tokio_rustls::TlsConnector) -> Result<bool, String> {
    let mut c = grpc_over_tls(addr, connector)
        .await
        .map_err(|e| e.to_string())?;
    let r = tokio::time::timeout(RPC_TIMEOUT, c.server_live(ServerLiveRequest {}))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(r.into_inner().live)
}

/// One HTTP/1.1 GET of the health route on `conn` (kept alive), returning the status line.
async fn https_live(conn: &mut TlsStream<TcpStream>) -> String {
    conn.write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 2048];
    let n = tokio::time::timeout(RPC_TIMEOUT, conn.read(&mut buf))
        .await
        .expect("an answer")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    text.lines().next().unwrap_or_default().to_string()
}

fn peer_cert(conn: &TlsStream<TcpStream>) -> Vec<u8> {
    conn.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_tls_server_only_and_mutual() {
    let pki = Pki::new();
    pki.leaf("server", false);
    pki.leaf("client", true);
    let s = TlsServer::start(|c| c.connections.grpc_tls = Some(pki.files("server", false)))
        .await
        .unwrap();
    let addr = s.running().grpc_addr.unwrap();
    assert_eq!(live(addr, pki.client(None, b"h2")).await, Ok(true));
    // ALPN: the gRPC listener speaks h2.
    let conn = tls_connect(addr, &pki.client(None, b"h2")).await.unwrap();
    assert_eq!(conn.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    drop(conn);
    s.stop().await;

    let s = TlsServer::start(|c| c.connections.grpc_tls = Some(pki.files("server", true)))
        .await
        .unwrap();
    let addr = s.running().grpc_addr.unwrap();
    assert_eq!(
        live(addr, pki.client(Some("client"), b"h2")).await,
        Ok(true)
    );
    // Without a client certificate the handshake (or the first call) fails.
    assert!(live(addr, pki.client(None, b"h2")).await.is_err());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_on_the_http_and_metrics_listeners() {
    let pki = Pki::new();
    pki.leaf("server", false);
    let s = TlsServer::start(|c| {
        c.connections.http_tls = Some(pki.files("server", false));
        c.connections.metrics_tls = Some(pki.files("server", false));
    })
    .await
    .unwrap();
    let connector = pki.client(None, b"http/1.1");
    let mut conn = tls_connect(s.running().http_addr.unwrap(), &connector)
        .await
        .unwrap();
    assert_eq!(https_live(&mut conn).await, "HTTP/1.1 200 OK");
    let mut m = tls_connect(s.running().metrics_addr.unwrap(), &connector)
        .await
        .unwrap();
    m.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 256];
    let n = m.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Plain HTTP on a TLS port is no request.
    let mut plain = TcpStream::connect(s.running().http_addr.unwrap())
        .await
        .unwrap();
    plain
        .write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(RPC_TIMEOUT, plain.read_to_end(&mut buf)).await;
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));
    drop((conn, m));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_certificate_stops_startup() {
    let pki = Pki::new();
    std::fs::write(pki.path("bad.pem"), "not a certificate").unwrap();
    std::fs::write(pki.path("bad.key"), "not a key").unwrap();
    let Err(e) = TlsServer::start(|c| c.connections.http_tls = Some(pki.files("bad", false))).await
    else {
        panic!("a server with an unreadable certificate started");
    };
    assert!(e.contains("HTTP TLS"), "{e}");
}

fn sighup_self() {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

fn replace(from: &Path, to: &Path) {
    // Write then rename: the server never reads a half-written file.
    let tmp = to.with_extension("tmp");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_swapped_on_disk_is_served_after_sighup() {
    let pki = Pki::new();
    let first = pki.leaf("server", false);
    let second = pki.leaf("next", false);
    // Serve from files of their own, so the swap below replaces what the server reads.
    replace(&pki.path("server.pem"), &pki.path("live.pem"));
    replace(&pki.path("server.key"), &pki.path("live.key"));
    let s = TlsServer::start(|c| c.connections.http_tls = Some(pki.files("live", false)))
        .await
        .unwrap();
    let addr = s.running().http_addr.unwrap();
    let connector = pki.client(None, b"http/1.1");
    let mut old = tls_connect(addr, &connector).await.unwrap();
    assert_eq!(peer_cert(&old), first);
    assert_eq!(https_live(&mut old).await, "HTTP/1.1 200 OK");

    // A broken file on reload keeps the current certificate.
    std::fs::write(pki.path("live.pem"), "garbage").unwrap();
    sighup_self();
    let conn = tls_connect(addr, &connector).await.unwrap();
    assert_eq!(peer_cert(&conn), first);

    replace(&pki.path("next.pem"), &pki.path("live.pem"));
    replace(&pki.path("next.key"), &pki.path("live.key"));
    sighup_self();
    wait_for("new connections get the new certificate", || async {
        tls_connect(addr, &connector)
            .await
            .is_ok_and(|c| peer_cert(&c) == second)
    })
    .await;
    // The connection made before the swap keeps working, with its certificate.
    assert_eq!(https_live(&mut old).await, "HTTP/1.1 200 OK");
    assert_eq!(peer_cert(&old), first);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_handshake_is_closed() {
    let pki = Pki::new();
    pki.leaf("server", false);
    let s = TlsServer::start(|c| {
        c.connections.listen.handshake_timeout = std::time::Duration::from_secs(1);
        c.connections.grpc_tls = Some(pki.files("server", false));
    })
    .await
    .unwrap();
    let addr = s.running().grpc_addr.unwrap();
    // Connected, no ClientHello: closed after the handshake timeout.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(WAIT_LIMIT, silent.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "the server closes the silent connection");
    // Meanwhile and after, TLS clients are served.
    assert_eq!(live(addr, pki.client(None, b"h2")).await, Ok(true));
    s.stop().await;
}
