//! `--tls`: the probe's TLS client (rustls with ring, as the server).

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore};

use crate::exchange::{Failure, Kind};

/// How the probe speaks TLS.
pub(crate) struct Client {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

/// What `--tls` and its options say.
pub(crate) struct Options<'a> {
    /// The server name to send (SNI) and verify; an IP address sends none.
    pub(crate) name: &'a str,
    /// Trust these CA certificates (PEM); `None` with `insecure`.
    pub(crate) ca: Option<&'a Path>,
    /// Accept any certificate.
    pub(crate) insecure: bool,
    /// ALPN protocols to offer.
    pub(crate) alpn: Vec<Vec<u8>>,
    /// A client certificate and key (PEM).
    pub(crate) identity: Option<(&'a Path, &'a Path)>,
}

impl Client {
    /// The client `options` describe, or a one-line error.
    pub(crate) fn new(options: &Options<'_>) -> Result<Client, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = match (options.ca, options.insecure) {
            (Some(ca), false) => {
                let mut roots = RootCertStore::empty();
                let certs = CertificateDer::pem_file_iter(ca)
                    .map_err(|e| format!("--ca {}: {e:?}", ca.display()))?;
                for cert in certs {
                    let cert = cert.map_err(|e| format!("--ca {}: {e:?}", ca.display()))?;
                    roots
                        .add(cert)
                        .map_err(|e| format!("--ca {}: {e}", ca.display()))?;
                }
                if roots.is_empty() {
                    return Err(format!("--ca {}: no certificate in the file", ca.display()));
                }
                builder.with_root_certificates(roots)
            }
            (None, true) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider))),
            _ => return Err("--tls needs --ca FILE or --insecure (not both)".to_string()),
        };
        let mut config = match options.identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                    .and_then(|c| c.collect())
                    .map_err(|e| format!("--cert {}: {e:?}", cert.display()))?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("--key {}: {e:?}", key.display()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("--cert/--key: {e}"))?
            }
        };
        config.alpn_protocols = options.alpn.clone();
        config.resumption = rustls::client::Resumption::disabled();
        let name = ServerName::try_from(options.name.to_string())
            .map_err(|_| format!("--sni {}: not a server name", options.name))?;
        Ok(Client {
            config: Arc::new(config),
            name,
        })
    }

    /// A new connection's TLS state, before its handshake.
    pub(crate) fn connection(&self) -> Result<ClientConnection, Failure> {
        ClientConnection::new(Arc::clone(&self.config), self.name.clone())
            .map_err(|e| Failure::new(Kind::Tls, format!("TLS: {e}")))
    }
}

/// `--insecure`: any certificate is accepted (its signatures are still checked).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
