//! The control plane's HTTPS identity: a self-signed certificate made on
//! first start and kept in the data directory (its names: the appliance's
//! name, `<name>.local`, `localhost` and the addresses known then), or the
//! user's own chain and key (`[instance] https_cert`, `https_key`). Browsers
//! cannot check a self-signed certificate, so its SHA-256 fingerprint is
//! logged at every start and shown in status, for people to compare with
//! what the browser shows.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::config::Instance;
use crate::store::{Access, DataDir, StoreError, files};
use crate::sync::identity::Fingerprint;

/// Why the HTTPS certificate could not be loaded or made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpsError {
    /// The kept certificate could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A user-supplied file could not be read.
    #[error("{}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A user-supplied file holds no usable PEM certificate or key.
    #[error("{}: {reason}", .path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The certificate could not be generated.
    #[error("cannot make the HTTPS certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the certificate and key.
    #[error("HTTPS certificate and key: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The TLS setup of the HTTPS listener and the fingerprint it shows.
#[derive(Clone)]
pub(crate) struct HttpsIdentity {
    /// The rustls server configuration (HTTP/1.1 only).
    pub(crate) config: Arc<rustls::ServerConfig>,
    /// SHA-256 of the leaf certificate.
    pub(crate) fingerprint: Fingerprint,
}

impl std::fmt::Debug for HttpsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsIdentity")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl HttpsIdentity {
    /// The user's certificate if `instance` names one, else the one kept in
    /// `data` (made and stored on first use).
    pub(crate) fn load(instance: &Instance, data: &DataDir) -> Result<Self, HttpsError> {
        let (chain, key) = match (&instance.https_cert, &instance.https_key) {
            (Some(cert), Some(key)) => user_supplied(cert, key)?,
            _ => kept(instance, data)?,
        };
        let fingerprint = Fingerprint::of(&chain[0]);
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            config: Arc::new(config),
            fingerprint,
        })
    }
}

/// The certificate chain and key in the user's PEM files.
fn user_supplied(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), HttpsError> {
    let pem_error = |path: &Path, reason: String| HttpsError::Pem {
        path: path.to_owned(),
        reason,
    };
    let chain = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| pem_error(cert, err.to_string()))?;
    if chain.is_empty() {
        return Err(pem_error(cert, "no PEM certificate in it".into()));
    }
    let key_der = PrivateKeyDer::from_pem_slice(&read(key)?)
        .map_err(|err| pem_error(key, err.to_string()))?;
    Ok((chain, key_der))
}

fn read(path: &Path) -> Result<Vec<u8>, HttpsError> {
    std::fs::read(path).map_err(|source| HttpsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The self-signed certificate kept in `data`, made if either half is
/// missing (nothing pins it but people, so a new one is only a new
/// fingerprint to compare).
fn kept(
    instance: &Instance,
    data: &DataDir,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), HttpsError> {
    if let (Some(cert), Some(key)) = (data.read(files::HTTPS_CERT)?, data.read(files::HTTPS_KEY)?) {
        return Ok((vec![cert.into()], PrivatePkcs8KeyDer::from(key).into()));
    }
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::new(subject_names(instance))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, instance.name.to_string());
    let cert = params.self_signed(&key)?;
    data.write(files::HTTPS_KEY, &key.serialize_der(), Access::Secret)?;
    data.write(files::HTTPS_CERT, cert.der(), Access::Public)?;
    Ok((
        vec![cert.der().clone()],
        PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
    ))
}

/// The names a new certificate is made for: the appliance's name, its
/// `.local` name, `localhost`, loopback, and every address of the
/// configuration and of this machine's interfaces known now.
fn subject_names(instance: &Instance) -> Vec<String> {
    let name = instance.name.to_string();
    let configured = [instance.https, Some(instance.control)]
        .into_iter()
        .flatten()
        .chain(instance.listen.iter().copied())
        .map(|addr| addr.ip());
    let interfaces = nix::ifaddrs::getifaddrs()
        .into_iter()
        .flatten()
        .filter_map(|interface| interface.address)
        .filter_map(|address| {
            address
                .as_sockaddr_in()
                .map(|v4| IpAddr::V4(v4.ip()))
                .or_else(|| address.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
        });
    let mut addresses: Vec<IpAddr> = [Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()]
        .into_iter()
        .chain(configured)
        .chain(interfaces)
        .filter(|ip| !ip.is_unspecified() && !is_link_local(ip))
        .collect();
    addresses.sort();
    addresses.dedup();
    [format!("{name}.local"), name, "localhost".into()]
        .into_iter()
        .chain(addresses.iter().map(IpAddr::to_string))
        .collect()
}

/// An IPv6 link-local address needs its interface to mean anything.
fn is_link_local(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_is_made_once_and_names_the_appliance() {
        let root = std::env::temp_dir().join(format!("moat-https-{}", std::process::id()));
        let data = DataDir::open(&root).unwrap();
        let instance = Instance {
            name: "kitchen".parse().unwrap(),
            https: Some("192.0.2.4:443".parse().unwrap()),
            ..Instance::default()
        };
        let names = subject_names(&instance);
        for expected in [
            "kitchen",
            "kitchen.local",
            "localhost",
            "127.0.0.1",
            "::1",
            "192.0.2.4",
        ] {
            assert!(
                names.iter().any(|name| name == expected),
                "{expected} in {names:?}"
            );
        }
        let made = HttpsIdentity::load(&instance, &data).unwrap();
        let again = HttpsIdentity::load(&instance, &data).unwrap();
        assert_eq!(made.fingerprint, again.fingerprint, "kept, not made again");
        let cert = data.read(files::HTTPS_CERT).unwrap().unwrap();
        assert_eq!(Fingerprint::of(&cert), made.fingerprint);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_user_certificate_replaces_it_and_bad_files_are_named() {
        let root = std::env::temp_dir().join(format!("moat-https-user-{}", std::process::id()));
        let data = DataDir::open(&root).unwrap();
        let made = rcgen::generate_simple_self_signed(vec!["dns.example".to_owned()]).unwrap();
        let (cert, key) = (root.join("cert.pem"), root.join("key.pem"));
        std::fs::write(&cert, made.cert.pem()).unwrap();
        std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
        let instance = Instance {
            https: Some("127.0.0.1:0".parse().unwrap()),
            https_cert: Some(cert.clone()),
            https_key: Some(key.clone()),
            ..Instance::default()
        };
        let identity = HttpsIdentity::load(&instance, &data).unwrap();
        assert_eq!(identity.fingerprint, Fingerprint::of(made.cert.der()));
        assert!(data.read(files::HTTPS_CERT).unwrap().is_none(), "none made");

        std::fs::write(&key, "not a key").unwrap();
        let err = HttpsIdentity::load(&instance, &data).unwrap_err();
        assert!(err.to_string().contains("key.pem"), "{err}");
        std::fs::remove_file(&cert).unwrap();
        let err = HttpsIdentity::load(&instance, &data).unwrap_err();
        assert!(err.to_string().contains("cert.pem"), "{err}");
        std::fs::remove_dir_all(root).unwrap();
    }
}
