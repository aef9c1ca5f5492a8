//! Pairing over QUIC: the shell that runs `moat-proto`'s pairing state
//! machines ([`ReplicaPairing`], [`PrimaryPairing`]) through the one
//! driver, on a connection of channel `moat-pair/1`. The shell reads the
//! TLS exporter and both fingerprints into the [`Transcript`]; the primary
//! pins the replica before it ends the exchange, and a pin that fails is
//! reported to the replica as a failed pairing.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Instant;

pub(crate) use moat_proto::pairing::{
    CodeBook, CodeParseError, DEFAULT_CODE_TTL, EXPORTER_LABEL, PairingCode, PairingError,
    PairingMessage, PrimaryPairing, PrimaryPin, ReplicaPairing, ReplicaPin, STEP_TIMEOUT,
    Transcript,
};
use moat_proto::{ApplianceName, Fingerprint};
use rand::TryRngCore;
use rand::rngs::OsRng;

use super::driver::{self, Session, StreamError};
use super::identity::Identity;
use super::tls::{self, TlsError};
use crate::clock;

/// Why pairing failed, here or at the peer. Nothing is pinned after any.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PairError {
    /// The exchange failed (wrong code, refused, not pinned, ...).
    #[error(transparent)]
    Pairing(#[from] PairingError),
    /// The pairing stream failed.
    #[error("pairing {0}")]
    Stream(#[from] StreamError),
    /// The QUIC connection failed.
    #[error("pairing connection failed: {0}")]
    Connection(String),
    /// A step took longer than [`STEP_TIMEOUT`].
    #[error("pairing timed out while {0}")]
    Timeout(&'static str),
    /// The TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Pairs this appliance as a replica of the primary at `primary` (`address`
/// is how the user named it, kept in the pin). Opens its own connection
/// from `endpoint` (see [`tls::client_endpoint`]) and closes it after.
pub(crate) async fn pair_as_replica(
    endpoint: &quinn::Endpoint,
    primary: SocketAddr,
    address: &str,
    code: &PairingCode,
    identity: &Identity,
    replica_name: &ApplianceName,
) -> Result<PrimaryPin, PairError> {
    let config = tls::pairing_client_config(identity)?;
    let connecting = endpoint
        .connect_with(config, primary, tls::SERVER_NAME)
        .map_err(|err| PairError::Connection(err.to_string()))?;
    let connection = within("connecting to the primary", connecting)
        .await?
        .map_err(connection_error)?;
    let result = run_replica(&connection, address, code, identity, replica_name).await;
    connection.close(quinn::VarInt::from_u32(0), b"pairing over");
    result
}

async fn run_replica(
    connection: &quinn::Connection,
    address: &str,
    code: &PairingCode,
    identity: &Identity,
    replica_name: &ApplianceName,
) -> Result<PrimaryPin, PairError> {
    let primary = tls::peer_fingerprint(connection)
        .ok_or(PairingError::Protocol("the primary showed no certificate"))?;
    let transcript = transcript_of(connection, identity.fingerprint(), primary)?;
    let (mut send, mut recv) = within("opening a stream", connection.open_bi())
        .await?
        .map_err(connection_error)?;
    let pairing = ReplicaPairing::new(
        code,
        transcript,
        replica_name.clone(),
        address,
        &mut OsRng.unwrap_err(),
    );
    let mut side = ReplicaSide {
        pairing,
        step: Step::new(),
        failed: None,
    };
    let result = driver::drive(&mut side, &mut send, &mut recv).await;
    if result.is_err() {
        // The driver ended the stream after the refusal: let it arrive
        // before the connection closes.
        let _ = within("ending the exchange", send.stopped()).await;
    }
    result
}

/// Runs the primary's side of pairing on an accepted connection whose
/// channel is pairing (see [`tls::admit`]); `codes` is locked only briefly.
/// `pin` pins the replica (or says why it cannot) before the exchange ends,
/// so the replica hears whether it was pinned. Returns the replica pinned.
pub(crate) async fn accept_pairing(
    connection: &quinn::Connection,
    codes: &parking_lot::Mutex<CodeBook>,
    identity: &Identity,
    primary_name: &ApplianceName,
    signing_key: [u8; 32],
    pin: impl FnMut(&ReplicaPin) -> Result<(), String> + Send,
) -> Result<ReplicaPin, PairError> {
    let replica = tls::peer_fingerprint(connection)
        .ok_or(PairingError::Protocol("the replica showed no certificate"))?;
    let transcript = transcript_of(connection, replica, identity.fingerprint())?;
    let (mut send, mut recv) = within("waiting for the replica", connection.accept_bi())
        .await?
        .map_err(connection_error)?;
    let mut side = PrimarySide {
        pairing: PrimaryPairing::new(transcript, primary_name.clone(), signing_key),
        codes,
        pin,
        step: Step::new(),
        done: None,
    };
    let result = driver::drive(&mut side, &mut send, &mut recv).await;
    let _ = within("ending the exchange", send.stopped()).await;
    result
}

/// Reads the exporter value of `connection` into a transcript.
fn transcript_of(
    connection: &quinn::Connection,
    replica: Fingerprint,
    primary: Fingerprint,
) -> Result<Transcript, PairError> {
    let mut exporter = [0; 32];
    connection
        .export_keying_material(&mut exporter, EXPORTER_LABEL, b"")
        .map_err(|_| PairError::Connection("no TLS exporter".to_owned()))?;
    Ok(Transcript {
        exporter,
        replica,
        primary,
    })
}

/// The deadline of the step in progress: each message must come within
/// [`STEP_TIMEOUT`] of the previous one.
#[derive(Debug)]
struct Step {
    deadline: Instant,
}

impl Step {
    fn new() -> Self {
        Self {
            deadline: clock::now() + STEP_TIMEOUT,
        }
    }

    fn advance(&mut self) {
        self.deadline = clock::now() + STEP_TIMEOUT;
    }
}

/// The replica's pairing, as the driver runs it.
struct ReplicaSide {
    pairing: ReplicaPairing,
    step: Step,
    failed: Option<PairError>,
}

impl Session for ReplicaSide {
    type Incoming = PairingMessage;
    type Outgoing = PairingMessage;
    type Output = PrimaryPin;
    type Error = PairError;

    fn poll_transmit(&mut self) -> Option<PairingMessage> {
        self.pairing.poll_transmit()
    }

    fn poll_done(&mut self) -> Option<Result<PrimaryPin, PairError>> {
        self.failed.take().map(Err)
    }

    fn poll_timeout(&self) -> Option<Instant> {
        Some(self.step.deadline)
    }

    async fn handle(&mut self, message: PairingMessage) {
        self.step.advance();
        if let Err(err) = self.pairing.handle_message(message) {
            self.failed = Some(err.into());
        }
    }

    fn handle_timeout(&mut self, _now: Instant) {
        self.failed = Some(PairError::Timeout("waiting for the primary"));
    }

    fn handle_end(&mut self) -> Result<PrimaryPin, PairError> {
        Ok(self.pairing.handle_end()?)
    }
}

/// The primary's pairing, as the driver runs it.
struct PrimarySide<'a, P> {
    pairing: PrimaryPairing,
    codes: &'a parking_lot::Mutex<CodeBook>,
    pin: P,
    step: Step,
    done: Option<Result<ReplicaPin, PairError>>,
}

impl<P: FnMut(&ReplicaPin) -> Result<(), String> + Send> PrimarySide<'_, P> {
    fn pin(&mut self, replica: ReplicaPin) -> Result<ReplicaPin, PairingError> {
        match (self.pin)(&replica) {
            Ok(()) => {
                self.pairing.pinned();
                Ok(replica)
            }
            Err(reason) => Err(self.pairing.pin_failed(reason)),
        }
    }
}

impl<P: FnMut(&ReplicaPin) -> Result<(), String> + Send> Session for PrimarySide<'_, P> {
    type Incoming = PairingMessage;
    type Outgoing = PairingMessage;
    type Output = ReplicaPin;
    type Error = PairError;

    fn poll_transmit(&mut self) -> Option<PairingMessage> {
        self.pairing.poll_transmit()
    }

    fn poll_done(&mut self) -> Option<Result<ReplicaPin, PairError>> {
        self.done.take()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        Some(self.step.deadline)
    }

    async fn handle(&mut self, message: PairingMessage) {
        self.step.advance();
        let handled = self.pairing.handle_message(
            message,
            &mut self.codes.lock(),
            clock::now(),
            &mut OsRng.unwrap_err(),
        );
        let result = match handled {
            Ok(None) => return,
            Ok(Some(replica)) => self.pin(replica),
            Err(err) => Err(err),
        };
        self.done = Some(result.map_err(PairError::from));
    }

    fn handle_timeout(&mut self, _now: Instant) {
        self.done = Some(Err(PairError::Timeout("waiting for the replica")));
    }

    fn handle_end(&mut self) -> Result<ReplicaPin, PairError> {
        Err(PairingError::Protocol("the replica ended the exchange early").into())
    }
}

fn connection_error(err: quinn::ConnectionError) -> PairError {
    PairError::Connection(err.to_string())
}

async fn within<T>(step: &'static str, future: impl Future<Output = T>) -> Result<T, PairError> {
    tokio::time::timeout(STEP_TIMEOUT, future)
        .await
        .map_err(|_| PairError::Timeout(step))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::sync::tls::{Admission, Pins};
    use moat_proto::pairing::CodeError;

    const KEY: [u8; 32] = [7; 32];

    fn code(text: &str) -> PairingCode {
        PairingCode::parse(text).unwrap()
    }

    fn name(text: &str) -> ApplianceName {
        ApplianceName::parse(text).unwrap()
    }

    struct Primary {
        endpoint: quinn::Endpoint,
        identity: Identity,
        codes: Arc<parking_lot::Mutex<CodeBook>>,
    }

    fn primary(code: &PairingCode) -> Primary {
        let identity = Identity::generate("basement").unwrap();
        let config = tls::server_config(&identity).unwrap();
        let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
        let mut codes = CodeBook::new();
        codes.issue_code(*code, crate::clock::now(), DEFAULT_CODE_TTL);
        Primary {
            endpoint,
            identity,
            codes: Arc::new(parking_lot::Mutex::new(codes)),
        }
    }

    /// Accepts one connection and runs pairing on it.
    fn serve_one(primary: &Primary) -> tokio::task::JoinHandle<Result<ReplicaPin, PairError>> {
        serve_one_pinning(primary, |_| Ok(()))
    }

    /// Accepts one connection and runs pairing on it, pinning with `pin`.
    fn serve_one_pinning(
        primary: &Primary,
        pin: impl FnMut(&ReplicaPin) -> Result<(), String> + Send + 'static,
    ) -> tokio::task::JoinHandle<Result<ReplicaPin, PairError>> {
        let endpoint = primary.endpoint.clone();
        let identity = primary.identity.clone();
        let codes = primary.codes.clone();
        tokio::spawn(async move {
            let connection = endpoint.accept().await.unwrap().await.unwrap();
            let admission = tls::admit(&connection, &Pins::new(|_| false)).unwrap();
            assert_eq!(admission, Admission::Pairing);
            let pin =
                accept_pairing(&connection, &codes, &identity, &name("basement"), KEY, pin).await;
            connection.closed().await;
            pin
        })
    }

    async fn join(
        primary: &Primary,
        typed: &PairingCode,
        replica: &Identity,
    ) -> Result<PrimaryPin, PairError> {
        let address = primary.endpoint.local_addr().unwrap();
        let endpoint = tls::client_endpoint(address).unwrap();
        let pin = pair_as_replica(
            &endpoint,
            address,
            "primary.lan",
            typed,
            replica,
            &name("kitchen"),
        )
        .await;
        endpoint.wait_idle().await;
        pin
    }

    #[tokio::test]
    async fn pairing_over_quic_pins_both_sides() {
        let issued = code("ABCD-2345");
        let primary = primary(&issued);
        let server = serve_one(&primary);
        let replica = Identity::generate("kitchen").unwrap();
        let pinned_primary = join(&primary, &issued, &replica).await.unwrap();
        let pinned_replica = server.await.unwrap().unwrap();
        assert_eq!(pinned_primary.fingerprint, primary.identity.fingerprint());
        assert_eq!(pinned_primary.name, "basement");
        assert_eq!(pinned_primary.signing_key, KEY);
        assert_eq!(pinned_primary.address, "primary.lan");
        assert_eq!(pinned_replica.fingerprint, replica.fingerprint());
        assert_eq!(pinned_replica.name, "kitchen");
    }

    #[tokio::test]
    async fn a_pin_that_fails_on_the_primary_fails_the_join_and_says_why() {
        let issued = code("ABCD-2345");
        let primary = primary(&issued);
        let server = serve_one_pinning(&primary, |pin| {
            Err(format!("cannot store the pin of {}: disk full", pin.name))
        });
        let replica = Identity::generate("kitchen").unwrap();
        let err = join(&primary, &issued, &replica).await.unwrap_err();
        assert!(
            matches!(&err, PairError::Pairing(PairingError::NotPinned(reason)) if reason.contains("disk full")),
            "{err}"
        );
        assert!(err.to_string().contains("could not pin"), "{err}");
        let err = server.await.unwrap().unwrap_err();
        assert!(
            matches!(err, PairError::Pairing(PairingError::NotPinned(_))),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_wrong_code_over_quic_pins_nothing() {
        let primary = primary(&code("ABCD-2345"));
        let server = serve_one(&primary);
        let replica = Identity::generate("kitchen").unwrap();
        let err = join(&primary, &code("ABCD-2346"), &replica)
            .await
            .unwrap_err();
        assert!(
            matches!(err, PairError::Pairing(PairingError::WrongCode)),
            "{err}"
        );
        let err = server.await.unwrap().unwrap_err();
        assert!(
            matches!(
                err,
                PairError::Pairing(PairingError::Code(CodeError::WrongCode {
                    attempts_left: 2
                }))
            ),
            "{err}"
        );

        primary.codes.lock().withdraw();
        let server = serve_one(&primary);
        let err = join(&primary, &code("ABCD-2345"), &replica)
            .await
            .unwrap_err();
        assert!(
            matches!(err, PairError::Pairing(PairingError::CodeUnavailable)),
            "{err}"
        );
        let err = server.await.unwrap().unwrap_err();
        assert!(
            matches!(
                err,
                PairError::Pairing(PairingError::Code(CodeError::NoActiveCode))
            ),
            "{err}"
        );
    }

    /// A relay with its own certificate between replica and primary,
    /// copying the pairing stream both ways untouched.
    fn relay(primary: SocketAddr) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let identity = Identity::generate("relay").unwrap();
        let config = tls::server_config(&identity).unwrap();
        let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
        let address = endpoint.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let downstream = endpoint.accept().await.unwrap().await.unwrap();
            let client = tls::client_endpoint(primary).unwrap();
            let config = tls::pairing_client_config(&identity).unwrap();
            let connecting = client.connect_with(config, primary, tls::SERVER_NAME);
            let upstream = connecting.unwrap().await.unwrap();
            let (mut down_send, mut down_recv) = downstream.accept_bi().await.unwrap();
            let (mut up_send, mut up_recv) = upstream.open_bi().await.unwrap();
            let _ = tokio::join!(
                tokio::io::copy(&mut down_recv, &mut up_send),
                tokio::io::copy(&mut up_recv, &mut down_send),
            );
        });
        (address, task)
    }

    #[tokio::test]
    async fn a_relay_in_the_middle_is_detected() {
        let issued = code("ABCD-2345");
        let primary = primary(&issued);
        let server = serve_one(&primary);
        let (relay_address, relay) = relay(primary.endpoint.local_addr().unwrap());
        let replica = Identity::generate("kitchen").unwrap();
        let endpoint = tls::client_endpoint(relay_address).unwrap();
        let kitchen = name("kitchen");
        let pairing = pair_as_replica(
            &endpoint,
            relay_address,
            "primary.lan",
            &issued,
            &replica,
            &kitchen,
        );
        let err = pairing.await.unwrap_err();
        assert!(
            matches!(err, PairError::Pairing(PairingError::WrongCode)),
            "{err}"
        );
        let err = server.await.unwrap().unwrap_err();
        assert!(
            matches!(
                err,
                PairError::Pairing(PairingError::Code(CodeError::WrongCode {
                    attempts_left: 2
                }))
            ),
            "{err}"
        );
        relay.abort();
    }
}
