//! The serving certificate of the admission server, swappable while the
//! server runs: rustls asks the resolver at every handshake, so a new
//! connection gets the certificate set last, and connections already open
//! keep theirs. Also what readiness needs to know: which CA issued the
//! certificate being served.

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::certificate::{CertificateError, parse_certificate};

/// Why a certificate could not be served.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The PEM held no certificate, or one that cannot be read.
    #[error("the serving certificate: {0}")]
    Certificate(String),
    /// The PEM held no private key, or rustls cannot sign with it.
    #[error("the serving key: {0}")]
    Key(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// The certificate's fields could not be read.
    #[error(transparent)]
    Parse(#[from] CertificateError),
}

/// What is being served: the chain and key, and the issuer of the leaf.
struct Served {
    key: Arc<CertifiedKey>,
    /// The leaf's issuer distinguished name (DER), to compare with the CAs
    /// of a `caBundle`.
    issuer: Vec<u8>,
}

/// The certificate the server presents; cloning is cheap and every clone
/// swaps the same certificate. Until one is set, handshakes fail (the
/// server is not ready, and readiness says so).
#[derive(Clone, Default)]
pub struct ServingCertificate {
    current: Arc<RwLock<Option<Served>>>,
}

impl fmt::Debug for ServingCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServingCertificate")
            .field("set", &self.read(|s| s.is_some()))
            .finish()
    }
}

impl ServingCertificate {
    /// Nothing served yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `cert_pem` (the leaf first, then any intermediates) with
    /// `key_pem` (PKCS#8, PKCS#1 or SEC1) from the next handshake on.
    pub fn set(&self, cert_pem: &[u8], key_pem: &[u8]) -> Result<(), TlsError> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::Certificate(e.to_string()))?;
        let Some(leaf) = chain.first() else {
            return Err(TlsError::Certificate("no certificate in the PEM".into()));
        };
        let issuer = parse_certificate(leaf)?.issuer;
        let key =
            PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Key(e.to_string()))?;
        let provider = provider();
        let certified = CertifiedKey::from_der(chain, key, &provider)
            .map_err(|e| TlsError::Key(e.to_string()))?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(Served {
            key: Arc::new(certified),
            issuer,
        });
        Ok(())
    }

    /// The issuer (DER distinguished name) of the leaf being served, if any.
    pub fn issuer(&self) -> Option<Vec<u8>> {
        self.read(|s| s.map(|s| s.issuer.clone()))
    }

    /// The DER of the leaf being served, if any.
    pub fn leaf_der(&self) -> Option<Vec<u8>> {
        self.read(|s| s.and_then(|s| s.key.cert.first().map(|c| c.as_ref().to_vec())))
    }

    /// A rustls server configuration that presents this certificate (HTTP/1.1
    /// only: the API server speaks it to webhooks, and it keeps the server
    /// small).
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let mut config = ServerConfig::builder_with_provider(Arc::new(provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(self.clone()));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        // A resumed session skips the certificate: a client would go on
        // trusting a certificate after it was swapped (or its CA dropped).
        // The API server keeps its webhook connections alive, so full
        // handshakes are rare anyway.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(Arc::new(config))
    }

    fn read<T>(&self, f: impl FnOnce(Option<&Served>) -> T) -> T {
        f(self
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref())
    }
}

impl ResolvesServerCert for ServingCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.read(|s| s.map(|s| s.key.clone()))
    }
}

/// ring, named explicitly: the process may not have installed a default
/// provider, and the workspace keeps all TLS on ring.
fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}
