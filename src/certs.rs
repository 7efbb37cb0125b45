//! Development certificates: a local CA and a server certificate it signs.
//!
//! Clients verify the server against a CA they trust (by default
//! `certs/ca.pem`); there is deliberately no way to skip verification. For
//! production, point the server at real PEM files instead.

use std::fs;
use std::path::{Path, PathBuf};

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
    write_dev_certs(dir, &[]).map(|paths| (paths, true))
}

fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), CertError> {
    let io_err = |source| CertError::Io {
        path: path.to_owned(),
        source,
    };
    fs::write(path, contents).map_err(io_err)?;
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io_err)?;
    }
    #[cfg(not(unix))]
    let _ = private;
    Ok(())
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
    fn invalid_san_is_an_error() {
        assert!(generate(&["bücher.example".into()]).is_err());
    }
}
