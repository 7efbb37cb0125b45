//! Development certificates: a local CA and a server certificate it signs.
//!
//! Clients verify the server against a CA they trust (by default
//! `certs/ca.pem`); there is deliberately no way to skip verification. For
//! production, point the server at real PEM files instead.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Names every development server certificate covers.
pub const DEFAULT_SANS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Why certificates could not be created or written.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused the parameters (for example an invalid SAN).
    #[error("cannot generate certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// The directory holds a CA but not the server certificate and key;
    /// generating a new set would replace the CA that clients trust.
    #[error("{dir} has ca.pem but no server.pem/server.key; run `quicbus certs --dir {dir} --force` for a new set (clients must then trust the new ca.pem), or restore the files")]
    Incomplete { dir: String },
    /// A file could not be written or read.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A development CA and a server certificate signed by it, all PEM.
#[derive(Clone)]
pub struct DevCerts {
    pub ca_pem: String,
    pub ca_key_pem: String,
    pub server_pem: String,
    pub server_key_pem: String,
}

/// Where [`write_dev_certs`] puts each file inside a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPaths {
    pub ca: PathBuf,
    pub ca_key: PathBuf,
    pub server: PathBuf,
    pub server_key: PathBuf,
}

impl CertPaths {
    /// The conventional file names inside `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        CertPaths {
            ca: dir.join("ca.pem"),
            ca_key: dir.join("ca.key"),
            server: dir.join("server.pem"),
            server_key: dir.join("server.key"),
        }
    }

    /// True when the server certificate and key both exist.
    pub fn server_files_exist(&self) -> bool {
        self.server.exists() && self.server_key.exists()
    }
}

/// Generates a CA and a server certificate for the default SANs plus `extra_sans`.
pub fn generate(extra_sans: &[String]) -> Result<DevCerts, CertError> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "quicbus development CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let ca_pem = ca_cert.pem();
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(ca_params, ca_key);

    let mut sans: Vec<String> = DEFAULT_SANS.iter().map(|s| s.to_string()).collect();
    for san in extra_sans {
        if !sans.contains(san) {
            sans.push(san.clone());
        }
    }
    let mut params = CertificateParams::new(sans)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "quicbus development server");
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate()?;
    let server_cert = params.signed_by(&server_key, &issuer)?;

    Ok(DevCerts {
        ca_pem,
        ca_key_pem,
        server_pem: server_cert.pem(),
        server_key_pem: server_key.serialize_pem(),
    })
}

/// Generates development certificates into `dir` (created if needed),
/// overwriting what is there.
pub fn write_dev_certs(dir: &Path, extra_sans: &[String]) -> Result<CertPaths, CertError> {
    let certs = generate(extra_sans)?;
    fs::create_dir_all(dir).map_err(|source| CertError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let paths = CertPaths::in_dir(dir);
    write_file(&paths.ca, &certs.ca_pem, false)?;
    write_file(&paths.ca_key, &certs.ca_key_pem, true)?;
    write_file(&paths.server, &certs.server_pem, false)?;
    write_file(&paths.server_key, &certs.server_key_pem, true)?;
    Ok(paths)
}

/// Makes sure `dir` holds a server certificate and key, generating a fresh
/// development set when they are missing. Returns the paths and whether
/// anything was generated.
pub fn ensure_dev_certs(dir: &Path) -> Result<(CertPaths, bool), CertError> {
    let paths = CertPaths::in_dir(dir);
    if paths.server_files_exist() {
        return Ok((paths, false));
    }
    if paths.ca.exists() {
        return Err(CertError::Incomplete {
            dir: dir.display().to_string(),
        });
    }
    write_dev_certs(dir, &[]).map(|paths| (paths, true))
}

/// Writes a file; a private key is created readable by its owner only
/// (never world-readable, not even for a moment).
fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), CertError> {
    use std::io::Write;
    let io_err = |source| CertError::Io {
        path: path.to_owned(),
        source,
    };
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(path).map_err(io_err)?;
    // An existing file keeps its mode on open: tighten it as well.
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io_err)?;
    }
    file.write_all(contents.as_bytes()).map_err(io_err)
}

/// How long a browser certificate is valid. Browsers accept a certificate
/// pinned by its hash (WebTransport's `serverCertificateHashes`) only if it
/// is an ECDSA P-256 one valid for at most 14 days in all.
pub const BROWSER_CERT_VALIDITY: Duration = Duration::from_secs(13 * 24 * 3600);

/// A self-signed ECDSA P-256 certificate for browsers, which pin it by its
/// SHA-256 hash instead of trusting a CA. Short-lived by the browsers'
/// rule ([`BROWSER_CERT_VALIDITY`]): a server keeps replacing it.
pub struct BrowserCert {
    pub der: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
    /// SHA-256 of `der`: what a page passes to `serverCertificateHashes`.
    pub sha256: [u8; 32],
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// A new browser certificate for the development names ([`DEFAULT_SANS`])
/// and `extra_sans`, valid from a minute before `now`, for
/// [`BROWSER_CERT_VALIDITY`] in all.
pub fn browser_cert(extra_sans: &[String], now: SystemTime) -> Result<BrowserCert, CertError> {
    let mut sans: Vec<String> = DEFAULT_SANS.iter().map(|s| s.to_string()).collect();
    sans.extend(
        extra_sans
            .iter()
            .filter(|s| !DEFAULT_SANS.contains(&s.as_str()))
            .cloned(),
    );
    let mut params = CertificateParams::new(sans)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "quicbus browser certificate");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let not_before = now - Duration::from_secs(60);
    let not_after = not_before + BROWSER_CERT_VALIDITY;
    params.not_before = time::OffsetDateTime::from(not_before);
    params.not_after = time::OffsetDateTime::from(not_after);
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let cert = params.self_signed(&key)?;
    let der = cert.der().clone();
    let digest = ring::digest::digest(&ring::digest::SHA256, &der);
    let mut sha256 = [0u8; 32];
    sha256.copy_from_slice(digest.as_ref());
    Ok(BrowserCert {
        der,
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        sha256,
        not_before,
        not_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_all_four_files_and_keeps_existing_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (paths, created) = ensure_dev_certs(dir.path()).unwrap();
        assert!(created);
        for p in [&paths.ca, &paths.ca_key, &paths.server, &paths.server_key] {
            let text = std::fs::read_to_string(p).unwrap();
            assert!(text.starts_with("-----BEGIN"), "{p:?}");
        }
        let before = std::fs::read_to_string(&paths.server).unwrap();
        let (_, created) = ensure_dev_certs(dir.path()).unwrap();
        assert!(!created);
        assert_eq!(before, std::fs::read_to_string(&paths.server).unwrap());
    }

    #[test]
    fn a_lone_ca_is_not_silently_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let (paths, _) = ensure_dev_certs(dir.path()).unwrap();
        let ca = std::fs::read_to_string(&paths.ca).unwrap();
        std::fs::remove_file(&paths.server_key).unwrap();
        let err = ensure_dev_certs(dir.path()).unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
        assert_eq!(std::fs::read_to_string(&paths.ca).unwrap(), ca);
    }

    #[cfg(unix)]
    #[test]
    fn keys_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let paths = write_dev_certs(dir.path(), &[]).unwrap();
        for key in [&paths.ca_key, &paths.server_key] {
            let mode = std::fs::metadata(key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{key:?}");
        }
    }

    #[test]
    fn invalid_san_is_an_error() {
        assert!(generate(&["bücher.example".into()]).is_err());
    }

    #[test]
    fn browser_certs_are_p256_short_lived_and_pinned_by_their_hash() {
        let now = SystemTime::now();
        let cert = browser_cert(&["example.test".into()], now).unwrap();
        let lifetime = cert.not_after.duration_since(cert.not_before).unwrap();
        assert!(
            lifetime <= Duration::from_secs(14 * 24 * 3600),
            "{lifetime:?}"
        );
        assert!(cert.not_before <= now && now < cert.not_after);
        // The named curve P-256 (1.2.840.10045.3.1.7) in the public key.
        let p256 = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
        assert!(cert.der.windows(p256.len()).any(|w| w == p256));
        let digest = ring::digest::digest(&ring::digest::SHA256, &cert.der);
        assert_eq!(digest.as_ref(), &cert.sha256[..]);
        // A fresh key each time.
        let other = browser_cert(&[], now).unwrap();
        assert_ne!(other.sha256, cert.sha256);
    }
}
