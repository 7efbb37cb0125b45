//! TLS and QUIC endpoint configuration shared by server and client.
//!
//! Both sides use rustls with the `ring` provider, TLS 1.3 only (QUIC
//! requires it) and the ALPN `quicbus/1`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::wire::ALPN;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file is missing, unreadable or holds no usable item.
    #[error("{path}: {reason}")]
    Pem { path: PathBuf, reason: String },
    /// PEM text given in memory holds no usable item.
    #[error("invalid PEM: {0}")]
    PemText(String),
    /// rustls refused the certificate, key or settings.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The rustls configuration is not usable for QUIC.
    #[error("QUIC TLS configuration: {0}")]
    Quic(String),
    /// The browser certificate could not be made.
    #[error(transparent)]
    Cert(#[from] crate::certs::CertError),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_err = |reason: String| TlsError::Pem {
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_err("no certificate found".into()));
    }
    Ok(certs)
}

/// Reads the private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Pem {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Parses certificates from PEM text.
pub fn parse_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::PemText(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::PemText("no certificate found".into()));
    }
    Ok(certs)
}

/// Parses a private key from PEM text.
pub fn parse_key(pem: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| TlsError::PemText(e.to_string()))
}

/// QUIC transport settings common to both sides.
#[derive(Debug, Clone)]
pub struct TransportSettings {
    /// Close the connection after this long without hearing from the peer.
    pub idle_timeout: Duration,
    /// Send keep-alives this often so an idle but healthy connection stays open.
    pub keep_alive: Duration,
    /// How many unidirectional streams (rooms) the peer may have open at once.
    pub max_uni_streams: u32,
    /// Bytes the peer may have in flight to us across all streams of a
    /// connection before flow control holds it back (`None`: unbounded,
    /// quinn's default; each stream is bounded on its own anyway).
    pub receive_window: Option<u64>,
    /// Bytes of received datagrams buffered before the oldest are dropped.
    pub datagram_receive_buffer: usize,
    /// Bytes of outgoing datagrams buffered before the oldest are dropped.
    pub datagram_send_buffer: usize,
    /// The longest the peer may hold back an ACK (asked for with the QUIC
    /// ACK-frequency extension; the RFC 9000 default is 25 ms). A lost
    /// packet with nothing sent after it is only retransmitted after the
    /// probe timeout, which includes this delay: on loopback it decides the
    /// tail latency of reliable events under loss. `None` leaves the
    /// peer's default.
    pub max_ack_delay: Option<Duration>,
}

impl Default for TransportSettings {
    fn default() -> Self {
        TransportSettings {
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(5),
            max_uni_streams: 1024,
            receive_window: None,
            datagram_receive_buffer: 2 * 1024 * 1024,
            datagram_send_buffer: 2 * 1024 * 1024,
            max_ack_delay: Some(Duration::from_millis(1)),
        }
    }
}

impl TransportSettings {
    fn to_quinn(&self) -> Result<quinn::TransportConfig, TlsError> {
        let mut t = quinn::TransportConfig::default();
        let idle = quinn::IdleTimeout::try_from(self.idle_timeout)
            .map_err(|_| TlsError::Quic("idle timeout out of range".into()))?;
        t.max_idle_timeout(Some(idle));
        t.keep_alive_interval(Some(self.keep_alive));
        t.max_concurrent_uni_streams(self.max_uni_streams.into());
        // Clients open one bidirectional stream (control); allow a few spare.
        t.max_concurrent_bidi_streams(4u32.into());
        t.datagram_receive_buffer_size(Some(self.datagram_receive_buffer));
        if let Some(window) = self.receive_window {
            let window = quinn::VarInt::from_u64(window)
                .map_err(|_| TlsError::Quic("receive window out of range".into()))?;
            t.receive_window(window);
        }
        t.datagram_send_buffer_size(self.datagram_send_buffer);
        if let Some(delay) = self.max_ack_delay {
            let mut ack = quinn::AckFrequencyConfig::default();
            ack.max_ack_delay(Some(delay));
            t.ack_frequency_config(Some(ack));
        }
        Ok(t)
    }
}

/// Browsers' certificates are replaced when less than this is left of
/// their validity, so a page never pins one about to expire.
pub const BROWSER_CERT_RENEW: Duration = Duration::from_secs(7 * 24 * 3600);

/// The certificate a server shows browsers (WebTransport, ALPN `h3`) when
/// it runs on development certificates: self-signed, pinned by its hash,
/// and replaced before it expires (`renew_if_due`).
pub struct BrowserCerts {
    sans: Vec<String>,
    current: RwLock<Arc<BrowserKey>>,
}

struct BrowserKey {
    key: Arc<CertifiedKey>,
    sha256: [u8; 32],
    not_after: SystemTime,
}

impl std::fmt::Debug for BrowserCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let current = self.current();
        f.debug_struct("BrowserCerts")
            .field("sha256", &current.sha256)
            .field("not_after", &current.not_after)
            .finish()
    }
}

impl BrowserCerts {
    /// A first certificate for the development names and `extra_sans`.
    pub fn new(extra_sans: &[String]) -> Result<Arc<Self>, TlsError> {
        let current = RwLock::new(Arc::new(browser_key(extra_sans, SystemTime::now())?));
        Ok(Arc::new(BrowserCerts {
            sans: extra_sans.to_vec(),
            current,
        }))
    }

    fn current(&self) -> Arc<BrowserKey> {
        crate::sync::read(&self.current).clone()
    }

    /// SHA-256 of the certificate browsers are shown now.
    pub fn sha256(&self) -> [u8; 32] {
        self.current().sha256
    }

    /// When the certificate browsers are shown now expires.
    pub fn not_after(&self) -> SystemTime {
        self.current().not_after
    }

    /// Replaces the certificate if less than [`BROWSER_CERT_RENEW`] of it
    /// is left at `now`; returns whether it did. Connections already made
    /// keep theirs; new ones get the new one.
    pub fn renew_if_due(&self, now: SystemTime) -> Result<bool, TlsError> {
        if self.current().not_after > now + BROWSER_CERT_RENEW {
            return Ok(false);
        }
        let next = Arc::new(browser_key(&self.sans, now)?);
        *crate::sync::write(&self.current) = next;
        Ok(true)
    }
}

fn browser_key(extra_sans: &[String], now: SystemTime) -> Result<BrowserKey, TlsError> {
    let cert = crate::certs::browser_cert(extra_sans, now)?;
    let signing = provider().key_provider.load_private_key(cert.key)?;
    Ok(BrowserKey {
        key: Arc::new(CertifiedKey::new(vec![cert.der], signing)),
        sha256: cert.sha256,
        not_after: cert.not_after,
    })
}

/// Picks a connection's certificate: browsers (ALPN `h3`) get the browser
/// certificate when the server has one; everyone else the server's chain.
#[derive(Debug)]
struct CertResolver {
    chain: Arc<CertifiedKey>,
    browsers: Option<Arc<BrowserCerts>>,
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let h3 = web_transport_quinn::ALPN.as_bytes();
        match &self.browsers {
            Some(browsers) if hello.alpn().is_some_and(|mut alpn| alpn.any(|p| p == h3)) => {
                Some(browsers.current().key.clone())
            }
            _ => Some(self.chain.clone()),
        }
    }
}

/// A quinn server configuration for the given certificate chain and key,
/// and, if given, a browser certificate shown to WebTransport clients.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    browsers: Option<Arc<BrowserCerts>>,
    transport: &TransportSettings,
) -> Result<quinn::ServerConfig, TlsError> {
    let signing = provider().key_provider.load_private_key(key)?;
    let chain = Arc::new(CertifiedKey::new(chain, signing));
    // What `with_single_cert` checks: the key belongs to the certificate
    // (when the key can tell its public half).
    match chain.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(e) => return Err(e.into()),
    }
    let resolver = Arc::new(CertResolver { chain, browsers });
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    // Native clients, and browsers' WebTransport (HTTP/3) on the same port.
    tls.alpn_protocols = vec![ALPN.to_vec(), web_transport_quinn::ALPN.as_bytes().to_vec()];
    tls.max_early_data_size = 0;
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(Arc::new(transport.to_quinn()?));
    Ok(config)
}

/// A quinn client configuration that trusts exactly `roots`.
pub fn client_config(
    roots: &[CertificateDer<'static>],
    transport: &TransportSettings,
) -> Result<quinn::ClientConfig, TlsError> {
    let mut store = rustls::RootCertStore::empty();
    for cert in roots {
        store.add(cert.clone())?;
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(store)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(Arc::new(transport.to_quinn()?));
    Ok(config)
}
