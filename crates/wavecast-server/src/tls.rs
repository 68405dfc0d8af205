//! HTTPS with rustls, and optional mutual TLS for devices.
//!
//! With `--device-client-ca`, the server asks every client for a certificate but does not
//! require one at the handshake: operators connect without. A certificate that does not chain
//! to that CA, or that a CRL revokes, fails the handshake. The certificate's subject common
//! name travels with each request as a [`PeerIdentity`]; the device API then requires it and
//! requires it to name the device whose credential was presented.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

/// TLS settings.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// The server's certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// CA whose certificates identify devices (PEM); enables mTLS for devices.
    pub device_client_ca: Option<PathBuf>,
    /// Revocation lists for device certificates (PEM).
    pub device_client_crls: Vec<PathBuf>,
}

/// Errors loading TLS material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("reading {what} from {path}")]
    Pem {
        /// What we wanted.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why not.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// rustls refused the configuration.
    #[error("configuring TLS")]
    Config(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The client certificate's identity, attached to every request of the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// Subject common name, if the client presented a certificate.
    pub common_name: Option<String>,
}

fn pem_err<E>(what: &'static str, path: &Path) -> impl FnOnce(E) -> TlsError + use<E>
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let path = path.to_path_buf();
    move |e| TlsError::Pem { what, path, source: e.into() }
}

fn config_err<E: Into<Box<dyn std::error::Error + Send + Sync>>>(e: E) -> TlsError {
    TlsError::Config(e.into())
}

fn certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(pem_err(what, path))?
        .collect::<Result<_, _>>()
        .map_err(pem_err(what, path))?;
    if certs.is_empty() {
        return Err(pem_err(what, path)("no CERTIFICATE blocks"));
    }
    Ok(certs)
}

/// Builds the rustls server configuration.
pub fn server_config(tls: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = certs(&tls.cert, "the server certificate")?;
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(pem_err("the server key", &tls.key))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(config_err)?;
    let builder = match &tls.device_client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(ca, "the device client CA")? {
                roots.add(c).map_err(pem_err("the device client CA", ca))?;
            }
            let mut crls = Vec::new();
            for path in &tls.device_client_crls {
                for crl in CertificateRevocationListDer::pem_file_iter(path).map_err(pem_err("a CRL", path))? {
                    crls.push(crl.map_err(pem_err("a CRL", path))?);
                }
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .with_crls(crls)
                .allow_unauthenticated()
                .build()
                .map_err(config_err)?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(config_err)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The first common name in the certificate's subject. rustls has already verified the chain;
/// this only reads the name the device is known by.
fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    use x509_cert::der::{Decode as _, Tagged as _, asn1};
    let parsed = x509_cert::Certificate::from_der(cert.as_ref()).ok()?;
    let value = parsed
        .tbs_certificate
        .subject
        .0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .find(|atv| atv.oid == x509_cert::der::oid::db::rfc4519::CN)
        .map(|atv| &atv.value)?;
    // X.520 allows several string types for a name; certificates use these two.
    match value.tag() {
        x509_cert::der::Tag::Utf8String => {
            value.decode_as::<asn1::Utf8StringRef<'_>>().ok().map(|s| s.as_str().to_owned())
        }
        x509_cert::der::Tag::PrintableString => {
            value.decode_as::<asn1::PrintableStringRef<'_>>().ok().map(|s| s.as_str().to_owned())
        }
        _ => None,
    }
}

/// A run of failing `accept()` calls: how long to pause before the next one, and one log line
/// when the run starts and one when it ends, rather than one per attempt.
#[derive(Debug, Default)]
struct AcceptTrouble {
    /// Failures since the last successful accept.
    failures: u64,
    /// When the run started.
    since: Option<std::time::Instant>,
}

impl AcceptTrouble {
    /// The first pause after a failure, doubled on each further one up to [`Self::MAX_PAUSE`].
    const FIRST_PAUSE: Duration = Duration::from_millis(5);
    /// The longest pause: a second, as hyper's and axum's own accept loops use.
    const MAX_PAUSE: Duration = Duration::from_secs(1);

    fn failed(&mut self, e: &std::io::Error) -> Duration {
        // A connection that died between the kernel's accept and ours says nothing about the
        // listener: no pause, no alarm.
        if matches!(e.kind(), std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset) {
            tracing::debug!(error = %e, "a connection closed before it was accepted");
            return Duration::ZERO;
        }
        if self.failures == 0 {
            self.since = Some(std::time::Instant::now());
            tracing::warn!(error = %e, "accepting connections fails; retrying with growing pauses until it works again");
        }
        self.failures += 1;
        let doublings = u32::try_from(self.failures - 1).unwrap_or(u32::MAX).min(8);
        Self::FIRST_PAUSE.saturating_mul(1 << doublings).min(Self::MAX_PAUSE)
    }

    fn recovered(&mut self) {
        if self.failures > 0 {
            let secs = self.since.map_or(0.0, |s| s.elapsed().as_secs_f64());
            tracing::warn!(failures = self.failures, seconds = secs, "accepting connections works again");
            *self = Self::default();
        }
    }
}

/// How long a client may take to send a request's headers before the connection is closed:
/// slow-header (slowloris) clients must not pin connections open.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(15);

/// Serves `app` until `shutdown`, over TLS when `config` is given and plain HTTP otherwise;
/// then lets requests in flight finish (for up to 10 s) and closes idle connections.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: Option<Arc<rustls::ServerConfig>>,
    app: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let acceptor = config.map(tokio_rustls::TlsAcceptor::from);
    let mut connections = tokio::task::JoinSet::new();
    let (closing_tx, closing) = tokio::sync::watch::channel(false);
    let mut trouble = AcceptTrouble::default();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => {
                    trouble.recovered();
                    a
                }
                Err(e) => {
                    let pause = trouble.failed(&e);
                    // Out of descriptors or memory, accept fails at once, every time: retrying
                    // without a pause would burn a core until something frees up. Connections
                    // in progress keep being served meanwhile.
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(pause) => {}
                    }
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let closing = closing.clone();
        // Each way of serving is boxed: a task's future is as large as its largest state, and
        // a plain connection must not carry room for a TLS session it never has (a held
        // long-poll costs its connection's task for the whole wait).
        connections.spawn(async move {
            let Some(acceptor) = acceptor else {
                return Box::pin(connection(stream, PeerIdentity { common_name: None }, app, closing, peer)).await;
            };
            // A client that never finishes the handshake must not hold a task forever.
            let tls = match Box::pin(tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake refused"),
                Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
            };
            let identity = PeerIdentity {
                common_name: tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(common_name),
            };
            Box::pin(connection(tls, identity, app, closing, peer)).await
        });
        // Reap finished connections so the set does not grow without bound.
        while connections.try_join_next().is_some() {}
    }
    let _ = closing_tx.send(true);
    let _ =
        tokio::time::timeout(Duration::from_secs(10), async { while connections.join_next().await.is_some() {} }).await;
    Ok(())
}

async fn connection<IO>(
    io: IO,
    identity: PeerIdentity,
    app: axum::Router,
    mut closing: tokio::sync::watch::Receiver<bool>,
    peer: std::net::SocketAddr,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(identity.clone());
        // The peer address is what request budgets are keyed by (`api::auth::client_key`).
        req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
        let app = app.clone();
        async move { tower::ServiceExt::oneshot(app, req.map(axum::body::Body::new)).await }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        // While a request is in flight hyper would otherwise keep reading to notice the client
        // leave, and such a read grows the connection's read buffer, which a held long-poll
        // then keeps for its whole wait. A client that leaves mid-request is noticed when its
        // answer is written instead; held check-ins end within the group's long-poll limit
        // (55 s by default), so an abandoned one is bounded.
        .half_close(true);
    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(io), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = async { closing.wait_for(|c| *c).await.map(|_| ()) } => {
            // Finish the request in flight, then close instead of idling on keep-alive.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

#[cfg(test)]
mod accept_tests {
    use super::*;

    #[test]
    fn failed_accepts_back_off_to_a_second_and_connection_errors_do_not() {
        let mut t = AcceptTrouble::default();
        let emfile = std::io::Error::from_raw_os_error(24); // EMFILE: too many open files
        let pauses: Vec<u64> = (0..12).map(|_| t.failed(&emfile).as_millis() as u64).collect();
        assert_eq!(pauses, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000, 1000]);
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(t.failed(&reset), Duration::ZERO);
        t.recovered();
        assert_eq!(t.failed(&emfile), AcceptTrouble::FIRST_PAUSE, "a new run starts from the first pause");
    }
}
