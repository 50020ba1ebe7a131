//! TLS with rustls on ring: the HTTPS listener's certificate and the trust
//! roots of billguard's own clients.
//!
//! The listener's certificate and key are read from PEM files, checked
//! against each other, and re-read every `tls.reload_interval`; a changed
//! pair that loads cleanly replaces the old one for new handshakes, and a
//! broken one is logged and ignored, so a half-written renewal never takes
//! the listener down. Kubernetes replaces mounted Secrets by swapping a
//! symlink, so the files are compared by content, not by modification time.
//!
//! Clients (the provider's and the upstream's) trust the bundled web roots
//! plus an optional PEM bundle, for a self-hosted provider behind a private
//! CA. Choosing what to serve over a connection (HTTP/2 or HTTP/1.1 by
//! ALPN) is the server's business.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::config;

/// ALPN protocol ids the listener offers, preferred first (RFC 7301).
const ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: not a usable certificate: {reason}", path.display())]
    BadCertificate { path: PathBuf, reason: String },
    #[error(
        "{} holds no PEM private key (PKCS#8, PKCS#1 or SEC1, such as -----BEGIN PRIVATE KEY-----)",
        path.display()
    )]
    NoKey { path: PathBuf },
    #[error("{}: not a usable private key: {reason}", path.display())]
    BadKey { path: PathBuf, reason: String },
    #[error(
        "the private key in {} does not belong to the certificate in {}; \
         use the key the certificate was issued for",
        key.display(),
        cert.display()
    )]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("TLS setup: {0}")]
    Setup(String),
}

// === impl Error ===

impl Error {
    /// The file to blame: for a mismatch, the key (it is the key that must
    /// be replaced by the one the certificate was issued for).
    pub fn file(&self) -> Option<&Path> {
        match self {
            Error::Read { path, .. }
            | Error::NoCertificate { path }
            | Error::BadCertificate { path, .. }
            | Error::NoKey { path }
            | Error::BadKey { path, .. } => Some(path),
            Error::Mismatch { key, .. } => Some(key),
            Error::Setup(_) => None,
        }
    }
}

/// Reads a certificate chain and its private key, and checks they belong
/// together.
pub fn load_identity(cert_file: &Path, key_file: &Path) -> Result<Arc<CertifiedKey>, Error> {
    let cert_pem = read(cert_file)?;
    let key_pem = read(key_file)?;
    identity_from_pem(cert_file, &cert_pem, key_file, &key_pem)
}

/// Reads a PEM bundle of CA certificates.
pub fn read_ca_bundle(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let pem = read(path)?;
    certificates(path, &pem)
}

/// The rustls configuration of the HTTPS listener, and the certificate
/// store behind it (to be watched with [`Certificates::watch`]).
pub fn server_config(cfg: &config::Tls) -> Result<(Arc<ServerConfig>, Arc<Certificates>), Error> {
    let certs = Arc::new(Certificates::load(cfg)?);
    let mut server = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Setup(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(certs.clone());
    server.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok((Arc::new(server), certs))
}

/// A client configuration trusting the web roots and `extra` (checked
/// when the configuration was loaded).
pub fn client_config(extra: Option<&config::CaBundle>) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(bundle) = extra {
        roots.add_parsable_certificates(bundle.certs.iter().cloned());
    }
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports rustls's default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// The listener's current certificate, swapped when the files change.
pub struct Certificates {
    current: ArcSwap<CertifiedKey>,
    cert_file: PathBuf,
    key_file: PathBuf,
    /// The file contents last looked at, loaded or not.
    seen: Mutex<(Vec<u8>, Vec<u8>)>,
}

// === impl Certificates ===

impl Certificates {
    fn load(cfg: &config::Tls) -> Result<Self, Error> {
        let cert_pem = read(&cfg.cert_file)?;
        let key_pem = read(&cfg.key_file)?;
        let identity = identity_from_pem(&cfg.cert_file, &cert_pem, &cfg.key_file, &key_pem)?;
        Ok(Certificates {
            current: ArcSwap::new(identity),
            cert_file: cfg.cert_file.clone(),
            key_file: cfg.key_file.clone(),
            seen: Mutex::new((cert_pem, key_pem)),
        })
    }

    /// Re-reads the files every `every`, forever.
    pub async fn watch(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            self.reload();
        }
    }

    /// Takes the files' current contents if they changed and load cleanly.
    /// Returns whether a new certificate is now served.
    pub fn reload(&self) -> bool {
        let (cert_pem, key_pem) = match (read(&self.cert_file), read(&self.key_file)) {
            (Ok(c), Ok(k)) => (c, k),
            (Err(error), _) | (_, Err(error)) => {
                tracing::warn!(%error, "TLS certificate not reloaded; still serving the previous one");
                crate::metrics::tls_reload(false);
                return false;
            }
        };
        {
            let Ok(mut seen) = self.seen.lock() else {
                return false;
            };
            if seen.0 == cert_pem && seen.1 == key_pem {
                return false;
            }
            // Remember it even if it fails, so a broken file is reported once.
            *seen = (cert_pem.clone(), key_pem.clone());
        }
        match identity_from_pem(&self.cert_file, &cert_pem, &self.key_file, &key_pem) {
            Ok(identity) => {
                self.current.store(identity);
                crate::metrics::tls_reload(true);
                tracing::info!(cert = %self.cert_file.display(), "TLS certificate reloaded");
                true
            }
            Err(error) => {
                tracing::warn!(%error, "TLS certificate not reloaded; still serving the previous one");
                crate::metrics::tls_reload(false);
                false
            }
        }
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })
}

fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::BadCertificate {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(Error::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn identity_from_pem(
    cert_file: &Path,
    cert_pem: &[u8],
    key_file: &Path,
    key_pem: &[u8],
) -> Result<Arc<CertifiedKey>, Error> {
    let chain = certificates(cert_file, cert_pem)?;
    let key = match PrivateKeyDer::from_pem_slice(key_pem) {
        Ok(key) => key,
        Err(rustls::pki_types::pem::Error::NoItemsFound) => {
            return Err(Error::NoKey {
                path: key_file.to_owned(),
            });
        }
        Err(e) => {
            return Err(Error::BadKey {
                path: key_file.to_owned(),
                reason: e.to_string(),
            });
        }
    };
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| Error::BadKey {
            path: key_file.to_owned(),
            reason: e.to_string(),
        })?;

    let identity = CertifiedKey::new(chain, signing);
    match identity.keys_match() {
        // ring cannot always derive the public key (some RSA encodings):
        // then the handshake is the test.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(_)) => {
            return Err(Error::Mismatch {
                cert: cert_file.to_owned(),
                key: key_file.to_owned(),
            });
        }
        Err(e) => {
            return Err(Error::BadCertificate {
                path: cert_file.to_owned(),
                reason: e.to_string(),
            });
        }
    }
    Ok(Arc::new(identity))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn files(cert: &str, key: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        (dir, c, k)
    }

    #[test]
    fn a_matching_pair_loads() {
        let (cert, key) = pair("localhost");
        let (_dir, c, k) = files(&cert, &key);
        assert!(load_identity(&c, &k).is_ok());
    }

    #[test]
    fn a_key_from_another_pair_is_a_mismatch() {
        let (cert, _) = pair("localhost");
        let (_, other_key) = pair("localhost");
        let (_dir, c, k) = files(&cert, &other_key);
        let error = load_identity(&c, &k).unwrap_err();
        assert!(matches!(error, Error::Mismatch { .. }), "{error}");
        assert_eq!(error.file(), Some(k.as_path()));
    }

    #[test]
    fn swapped_files_are_named() {
        let (cert, key) = pair("localhost");
        let (_dir, c, k) = files(&key, &cert);
        let error = load_identity(&c, &k).unwrap_err();
        assert!(matches!(error, Error::NoCertificate { .. }), "{error}");
        assert!(error.to_string().contains("tls.crt"), "{error}");
    }

    #[test]
    fn a_missing_file_says_which() {
        let error = load_identity(Path::new("/nonexistent/c.pem"), Path::new("/x")).unwrap_err();
        assert!(error.to_string().contains("/nonexistent/c.pem"), "{error}");
    }

    #[test]
    fn reload_takes_a_good_pair_and_keeps_the_old_one_for_a_bad_pair() {
        let (cert, key) = pair("one.test");
        let (_dir, c, k) = files(&cert, &key);
        let cfg = config::Tls {
            cert_file: c.clone(),
            key_file: k.clone(),
            handshake_timeout: Duration::from_secs(1),
            reload_interval: Duration::from_secs(1),
        };
        let certs = Certificates::load(&cfg).unwrap();
        let first = certs.current.load_full();
        assert!(!certs.reload(), "unchanged files are not reloaded");

        let (cert2, key2) = pair("two.test");
        std::fs::write(&c, &cert2).unwrap();
        assert!(!certs.reload(), "a certificate without its key is refused");
        assert!(Arc::ptr_eq(&first, &certs.current.load_full()));

        std::fs::write(&k, &key2).unwrap();
        assert!(certs.reload());
        assert!(!Arc::ptr_eq(&first, &certs.current.load_full()));
    }
}
