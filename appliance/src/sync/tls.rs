//! QUIC with mutual TLS 1.3 between appliances, certificates pinned by
//! fingerprint: no CA, no names, no validity dates.
//!
//! One primary endpoint serves two channels told apart by ALPN: pairing
//! (`moat-pair/1`), where any certificate is welcome because the PAKE binds
//! both fingerprints, and sync (`moat-sync/1`), where only pinned replicas
//! are. A rustls client verifier cannot see the ALPN, so [`server_config`]
//! accepts any client certificate in the handshake and [`admit`] enforces the
//! pins per channel right after it. Every verifier still checks the peer's
//! TLS 1.3 handshake signature, so a peer proves it holds the key of the
//! certificate it shows. Session resumption is off (it would skip the pin
//! check) and so is 0-RTT (replayable).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{HandshakeData, QuicClientConfig, QuicServerConfig};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;

use crate::sync::identity::{Fingerprint, Identity};

/// ALPN of the pairing channel.
pub(crate) const ALPN_PAIRING: &[u8] = b"moat-pair/1";
/// ALPN of the sync channel.
pub(crate) const ALPN_SYNC: &[u8] = b"moat-sync/1";
/// The TLS server name clients send; certificates are pinned, not named.
pub const SERVER_NAME: &str = "moat";
/// How often an idle connection is kept alive.
pub(crate) const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// How long a silent connection lives.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(15);
/// QUIC application close code for a peer refused by [`admit`].
pub(crate) const CLOSE_REFUSED: quinn::VarInt = quinn::VarInt::from_u32(0x4d01);

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// rustls refused the configuration (bad key or certificate).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The crypto provider lacks the cipher suite QUIC needs.
    #[error("TLS configuration: {0}")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
}

/// Which certificates a peer accepts, by fingerprint. Asked on every
/// handshake, so pins added or revoked at run time take effect at once.
#[derive(Clone)]
pub struct Pins {
    check: Arc<dyn Fn(&Fingerprint) -> bool + Send + Sync>,
}

/// The replicas a primary accepts on its sync channel.
pub(crate) type ClientPins = Pins;
/// The primary a replica accepts.
pub(crate) type ServerPin = Pins;

impl Pins {
    /// Pins decided by `check`, for lists that change at run time.
    pub fn new(check: impl Fn(&Fingerprint) -> bool + Send + Sync + 'static) -> Self {
        Self {
            check: Arc::new(check),
        }
    }

    /// Exactly one certificate.
    pub fn only(fingerprint: Fingerprint) -> Self {
        Self::new(move |candidate| *candidate == fingerprint)
    }

    /// Whether a certificate with this fingerprint is accepted.
    pub(crate) fn accepts(&self, fingerprint: &Fingerprint) -> bool {
        (self.check)(fingerprint)
    }
}

impl fmt::Debug for Pins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pins(..)")
    }
}

/// The two channels an appliance speaks, told apart by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// One-time-code pairing (`moat-pair/1`).
    Pairing,
    /// Bundle sync between paired appliances (`moat-sync/1`).
    Sync,
}

impl Channel {
    /// The ALPN protocol id.
    pub(crate) fn alpn(self) -> &'static [u8] {
        match self {
            Self::Pairing => ALPN_PAIRING,
            Self::Sync => ALPN_SYNC,
        }
    }

    fn from_alpn(protocol: &[u8]) -> Option<Self> {
        [Self::Pairing, Self::Sync]
            .into_iter()
            .find(|channel| channel.alpn() == protocol)
    }
}

/// What a server may do with an accepted connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Run pairing (see `pairing::accept_pairing`).
    Pairing,
    /// Run sync with this pinned replica.
    Sync {
        /// The replica's certificate fingerprint.
        replica: Fingerprint,
    },
}

/// Why [`admit`] refused a connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AdmitError {
    /// No known ALPN was negotiated.
    #[error("no moat protocol negotiated")]
    UnknownProtocol,
    /// The peer showed no certificate.
    #[error("the peer showed no certificate")]
    NoPeerCertificate,
    /// The peer's certificate is not pinned (never paired, or revoked).
    #[error("certificate {0} is not pinned: pair this appliance first")]
    NotPinned(Fingerprint),
}

/// Server configuration for a primary's endpoint: pairing and sync
/// channels, client certificates required. Pins are enforced by [`admit`],
/// which the accept loop must call on every connection.
pub fn server_config(identity: &Identity) -> Result<quinn::ServerConfig, TlsError> {
    let verifier = danger::FingerprintVerifier::any();
    build_server(identity, verifier, &[Channel::Sync, Channel::Pairing])
}

/// Client configuration for the sync channel: presents `identity` and
/// accepts only a server `server` accepts.
pub(crate) fn client_config(
    identity: &Identity,
    server: ServerPin,
) -> Result<quinn::ClientConfig, TlsError> {
    build_client(
        identity,
        danger::FingerprintVerifier::pinned(server),
        Channel::Sync,
    )
}

/// Client configuration for pairing: presents `identity` and accepts any
/// server certificate, since the PAKE binds the fingerprints seen here.
pub fn pairing_client_config(identity: &Identity) -> Result<quinn::ClientConfig, TlsError> {
    build_client(
        identity,
        danger::FingerprintVerifier::any(),
        Channel::Pairing,
    )
}

/// A client endpoint to reach `peer` from: an ephemeral port on loopback
/// for a loopback peer, else on every address of the peer's family.
pub fn client_endpoint(peer: SocketAddr) -> std::io::Result<quinn::Endpoint> {
    let ip = match (peer.ip().is_loopback(), peer.is_ipv6()) {
        (true, false) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        (true, true) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        (false, false) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        (false, true) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    quinn::Endpoint::client(SocketAddr::new(ip, 0))
}

/// The channel negotiated on a connection, if any.
pub fn channel(connection: &quinn::Connection) -> Option<Channel> {
    let data = connection.handshake_data()?;
    let data = data.downcast::<HandshakeData>().ok()?;
    Channel::from_alpn(data.protocol.as_deref()?)
}

/// The fingerprint of the certificate the peer showed.
pub(crate) fn peer_fingerprint(connection: &quinn::Connection) -> Option<Fingerprint> {
    let identity = connection.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    chain.first().map(|cert| Fingerprint::of(cert))
}

/// Decides what an accepted connection may do: pairing for anyone, sync
/// only for a certificate `clients` accepts. A refused connection is
/// closed with [`CLOSE_REFUSED`] and the reason.
pub fn admit(
    connection: &quinn::Connection,
    clients: &ClientPins,
) -> Result<Admission, AdmitError> {
    let admission = classify(connection, clients);
    if let Err(err) = &admission {
        connection.close(CLOSE_REFUSED, err.to_string().as_bytes());
    }
    admission
}

fn classify(connection: &quinn::Connection, clients: &ClientPins) -> Result<Admission, AdmitError> {
    let channel = channel(connection).ok_or(AdmitError::UnknownProtocol)?;
    let peer = peer_fingerprint(connection).ok_or(AdmitError::NoPeerCertificate)?;
    match channel {
        Channel::Pairing => Ok(Admission::Pairing),
        Channel::Sync if clients.accepts(&peer) => Ok(Admission::Sync { replica: peer }),
        Channel::Sync => Err(AdmitError::NotPinned(peer)),
    }
}

/// A TLS 1.3 client configuration (HTTP/1.1) that accepts only a server
/// certificate `pins` accepts: the control client of a remote appliance.
pub(crate) fn pinned_https_client(pins: Pins) -> Result<rustls::ClientConfig, TlsError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(danger::FingerprintVerifier::pinned(pins))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    tls.resumption = rustls::client::Resumption::disabled();
    Ok(tls)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn build_server(
    identity: &Identity,
    verifier: Arc<danger::FingerprintVerifier>,
    channels: &[Channel],
) -> Result<quinn::ServerConfig, TlsError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![identity.cert_der().clone()], identity.key_der())?;
    tls.alpn_protocols = channels.iter().map(|c| c.alpn().to_vec()).collect();
    tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    tls.send_tls13_tickets = 0;
    let crypto = QuicServerConfig::try_from(tls)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(server_transport()));
    config
        .max_incoming(MAX_INCOMING)
        .incoming_buffer_size_total(INCOMING_BUFFER_TOTAL);
    Ok(config)
}

fn build_client(
    identity: &Identity,
    verifier: Arc<danger::FingerprintVerifier>,
    channel: Channel,
) -> Result<quinn::ClientConfig, TlsError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![identity.cert_der().clone()], identity.key_der())?;
    tls.alpn_protocols = vec![channel.alpn().to_vec()];
    tls.resumption = rustls::client::Resumption::disabled();
    let crypto = QuicClientConfig::try_from(tls)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(client_transport()));
    Ok(config)
}

/// Connections the primary's endpoint holds before the accept loop takes
/// them; more are refused by quinn.
const MAX_INCOMING: usize = 256;
/// Bytes of early packets buffered for all of them.
const INCOMING_BUFFER_TOTAL: u64 = 1 << 20;

/// The primary's side, sized to the protocol before anyone authenticates:
/// one stream at a time, which the replica opens, and windows that hold a
/// replica message (at most 64 KiB) and little more. No datagrams.
fn server_transport() -> quinn::TransportConfig {
    let mut transport = common_transport();
    transport
        .max_concurrent_bidi_streams(1u32.into())
        .stream_receive_window(quinn::VarInt::from_u32(64 << 10))
        .receive_window(quinn::VarInt::from_u32(128 << 10));
    transport
}

/// The replica's side: it opens the one stream and takes bundles (up to
/// 128 MiB), so its windows are wide; it accepts no stream.
fn client_transport() -> quinn::TransportConfig {
    let mut transport = common_transport();
    transport
        .max_concurrent_bidi_streams(0u32.into())
        .stream_receive_window(quinn::VarInt::from_u32(4 << 20))
        .receive_window(quinn::VarInt::from_u32(8 << 20));
    transport
}

fn common_transport() -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(KEEP_ALIVE));
    let idle_ms = u32::try_from(IDLE_TIMEOUT.as_millis()).unwrap_or(u32::MAX);
    transport
        .max_idle_timeout(Some(quinn::VarInt::from_u32(idle_ms).into()))
        .max_concurrent_uni_streams(0u32.into())
        .datagram_receive_buffer_size(None);
    transport
}

/// Certificate verifiers that replace the web PKI by fingerprint pins.
///
/// Why this is safe: an appliance's certificate is self-signed and pinned
/// by the SHA-256 of its DER at pairing, so the fingerprint is the whole
/// identity. Chains, names and validity dates carry no meaning here and are
/// ignored (a device may boot at 1970). What is kept is the TLS 1.3
/// handshake signature check, through the ring provider: a peer must hold
/// the private key of the certificate it shows. `any()` skips the pin check
/// and serves pairing only, where the PAKE binds the fingerprints seen in
/// the handshake (and, on a primary, [`super::admit`] checks pins for sync).
mod danger {
    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::WebPkiSupportedAlgorithms;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
    use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

    use super::Pins;
    use crate::sync::identity::Fingerprint;

    /// Accepts a certificate by fingerprint (or any, for pairing) and
    /// verifies handshake signatures made with it.
    #[derive(Debug)]
    pub(super) struct FingerprintVerifier {
        pins: Option<Pins>,
        algorithms: WebPkiSupportedAlgorithms,
    }

    impl FingerprintVerifier {
        pub(super) fn pinned(pins: Pins) -> Arc<Self> {
            Arc::new(Self::new(Some(pins)))
        }

        pub(super) fn any() -> Arc<Self> {
            Arc::new(Self::new(None))
        }

        fn new(pins: Option<Pins>) -> Self {
            let algorithms =
                rustls::crypto::ring::default_provider().signature_verification_algorithms;
            Self { pins, algorithms }
        }

        fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
            match &self.pins {
                Some(pins) if !pins.accepts(&Fingerprint::of(end_entity)) => {
                    Err(rustls::Error::InvalidCertificate(
                        CertificateError::ApplicationVerificationFailure,
                    ))
                }
                _ => Ok(()),
            }
        }

        fn tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
        }

        fn tls12_signature(&self) -> Result<HandshakeSignatureValid, rustls::Error> {
            Err(rustls::Error::PeerIncompatible(
                rustls::PeerIncompatible::Tls13RequiredForQuic,
            ))
        }
    }

    impl ServerCertVerifier for FingerprintVerifier {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            self.check(end_entity)
                .map(|()| ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.tls12_signature()
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algorithms.supported_schemes()
        }
    }

    impl ClientCertVerifier for FingerprintVerifier {
        fn client_auth_mandatory(&self) -> bool {
            true
        }

        fn root_hint_subjects(&self) -> &[DistinguishedName] {
            &[]
        }

        fn verify_client_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _now: UnixTime,
        ) -> Result<ClientCertVerified, rustls::Error> {
            self.check(end_entity)
                .map(|()| ClientCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.tls12_signature()
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algorithms.supported_schemes()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback() -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
    }

    /// A primary that admits sync connections from `pins` and echoes one
    /// message on each; reports what `admit` said.
    fn primary(
        identity: &Identity,
        pins: ClientPins,
    ) -> (
        quinn::Endpoint,
        tokio::task::JoinHandle<Vec<Result<Admission, AdmitError>>>,
    ) {
        let endpoint =
            quinn::Endpoint::server(server_config(identity).unwrap(), loopback()).unwrap();
        let accepting = endpoint.clone();
        let task = tokio::spawn(async move {
            let mut admissions = Vec::new();
            while let Some(incoming) = accepting.accept().await {
                let Ok(connection) = incoming.await else {
                    continue;
                };
                let admission = admit(&connection, &pins);
                if admission.is_ok() {
                    serve_echo(&connection).await;
                }
                admissions.push(admission);
            }
            admissions
        });
        (endpoint, task)
    }

    /// Echoes one message, then waits for the client to close.
    async fn serve_echo(connection: &quinn::Connection) {
        if let Ok((mut send, mut recv)) = connection.accept_bi().await {
            let message = recv.read_to_end(64).await.unwrap_or_default();
            let _ = send.write_all(&message).await;
            let _ = send.finish();
            connection.closed().await;
        }
    }

    /// Connects with `config` and asks for an echo; an error reads as
    /// the connection's close reason.
    async fn echo(address: SocketAddr, config: quinn::ClientConfig) -> Result<Vec<u8>, String> {
        let endpoint = client_endpoint(address).map_err(|err| err.to_string())?;
        let connecting = endpoint
            .connect_with(config, address, SERVER_NAME)
            .map_err(|err| err.to_string())?;
        let result = match connecting.await {
            Ok(connection) => {
                assert_eq!(channel(&connection), Some(Channel::Sync));
                let echoed = ping(&connection).await.map_err(|()| {
                    let reason = connection.close_reason().map(|r| r.to_string());
                    reason.unwrap_or_default()
                });
                connection.close(quinn::VarInt::from_u32(0), b"");
                echoed
            }
            Err(err) => Err(err.to_string()),
        };
        endpoint.wait_idle().await;
        result
    }

    async fn ping(connection: &quinn::Connection) -> Result<Vec<u8>, ()> {
        let (mut send, mut recv) = connection.open_bi().await.map_err(drop)?;
        send.write_all(b"ping").await.map_err(drop)?;
        send.finish().map_err(drop)?;
        recv.read_to_end(64).await.map_err(drop)
    }

    #[tokio::test]
    async fn sync_needs_pins_on_both_sides() {
        let primary_identity = Identity::generate("basement").unwrap();
        let pinned = Identity::generate("kitchen").unwrap();
        let stranger = Identity::generate("stranger").unwrap();
        let pinned_fingerprint = pinned.fingerprint();
        let (endpoint, admissions) = primary(
            &primary_identity,
            Pins::new(move |candidate| *candidate == pinned_fingerprint),
        );
        let address = endpoint.local_addr().unwrap();
        let trust_primary = || Pins::only(primary_identity.fingerprint());

        let config = client_config(&pinned, trust_primary()).unwrap();
        assert_eq!(echo(address, config).await.unwrap(), b"ping");

        let config = client_config(&stranger, trust_primary()).unwrap();
        let err = echo(address, config).await.unwrap_err();
        assert!(err.contains("not pinned"), "{err}");

        let config = client_config(&pinned, Pins::only(stranger.fingerprint())).unwrap();
        let err = echo(address, config).await.unwrap_err();
        assert!(err.contains("invalid peer certificate"), "{err}");

        endpoint.close(quinn::VarInt::from_u32(0), b"");
        let admissions = admissions.await.unwrap();
        assert_eq!(
            admissions,
            [
                Ok(Admission::Sync {
                    replica: pinned.fingerprint()
                }),
                Err(AdmitError::NotPinned(stranger.fingerprint())),
            ]
        );
    }

    #[test]
    fn the_pin_check_is_asked_each_time() {
        let revoked = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = revoked.clone();
        let pins = Pins::new(move |_| !flag.load(std::sync::atomic::Ordering::SeqCst));
        let any = Fingerprint([0; 32]);
        assert!(pins.accepts(&any));
        revoked.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(!pins.accepts(&any));
        assert!(Pins::only(any).accepts(&any));
        assert!(!Pins::only(any).accepts(&Fingerprint([1; 32])));
    }
}
