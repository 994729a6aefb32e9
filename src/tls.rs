//! TLS on the `--tls-port` ports (feature `tls`): rustls with ring, TLS 1.2 and 1.3.
//!
//! * The certificate is `--tls-cert`/`--tls-key` (PEM), or a self-signed one made at start for
//!   `--tls-names`. Given files are watched through their paths (a Kubernetes Secret volume
//!   swaps a symlink, cert-manager rewrites the file): a change is loaded within a second or
//!   two, for new connections; a bad file at start is a setting error (exit 2), at a reload
//!   it is logged and the old certificate stays.
//! * Each handshake starts with rustls' `Acceptor`, which reads the ClientHello before the
//!   configuration is chosen, so that by default the server agrees to the client's first
//!   offered ALPN protocol (`--tls-alpn` restricts it to a list of the server's own).
//! * `--tls-client-ca` requires client certificates signed by that CA (`--tls-client-auth
//!   optional` also accepts clients without one).
//! * A handshake has `--tls-handshake-timeout` from accept; what it agreed ([`Seen`]) is logged,
//!   and shown at the end of the banner. A failed one is logged with its reason and counted.
//! * Inside, a [`Session`] is the connection's byte stream: reads and writes work on a shared
//!   reference (as on `&TcpStream`), so that the echo loop reads through a `BufReader` while it
//!   writes through a copy. rustls holds at most [`BUFFER_LIMIT`] of encrypted output.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::fs;
use std::io::{self, ErrorKind, IoSlice, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{Acceptor, ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig, ServerConnection};

use crate::metrics::labelled;
use crate::socket;
use crate::threads;

/// Encrypted output rustls holds at most before it is written to the socket: one full
/// record and its overhead.
pub(crate) const BUFFER_LIMIT: usize = 16 * 1024 + 1024;

/// Whether a client must present a certificate (with `--tls-client-ca`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientAuth {
    /// No certificate signed by the CA, no connection.
    Required,
    /// A client without a certificate is served; one with a bad certificate is not.
    Optional,
}

impl FromStr for ClientAuth {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "required" => Ok(ClientAuth::Required),
            "optional" => Ok(ClientAuth::Optional),
            _ => Err("expected required or optional".to_string()),
        }
    }
}

/// The TLS settings of a server with TLS ports.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// The certificate chain and key files (`None`: a self-signed certificate).
    pub(crate) files: Option<(PathBuf, PathBuf)>,
    /// The names of the self-signed certificate.
    pub(crate) names: Vec<String>,
    /// The CA that signs client certificates, and whether one is required.
    pub(crate) client_ca: Option<(PathBuf, ClientAuth)>,
    /// The ALPN protocols the server agrees to, in its order of preference (`None`: the
    /// client's first offered).
    pub(crate) alpn: Option<Vec<Vec<u8>>>,
    /// The time a handshake has from accept.
    pub(crate) handshake_timeout: Duration,
}

/// The names of the self-signed certificate when `--tls-names` is not given: `POD_NAME` when
/// set, the hostname, `localhost`.
pub(crate) fn default_names() -> Vec<String> {
    let mut names = Vec::new();
    if let Some(pod) = std::env::var("POD_NAME").ok().filter(|p| !p.is_empty()) {
        names.push(pod);
    }
    if let Some(host) = hostname() {
        if !names.contains(&host) {
            names.push(host);
        }
    }
    if !names.iter().any(|n| n == "localhost") {
        names.push("localhost".to_string());
    }
    names
}

fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = std::str::from_utf8(&buf[..end]).ok()?.trim();
    (!name.is_empty()).then(|| name.to_string())
}

labelled! {
    /// How a TLS handshake ended, for `/metrics`.
    pub(crate) enum Handshake {
        /// It completed.
        Ok => "ok",
        /// It did not complete within `--tls-handshake-timeout`.
        Timeout => "timeout",
        /// The client closed or reset the connection during it.
        Closed => "closed",
        /// The client's first bytes were not TLS (plaintext on a TLS port, say).
        NotTls => "not_tls",
        /// The client's certificate was missing, or not signed by `--tls-client-ca`.
        ClientCertificate => "client_certificate",
        /// The client offered ALPN protocols and none is in `--tls-alpn`.
        NoApplicationProtocol => "no_application_protocol",
        /// No TLS version or cipher suite in common.
        Incompatible => "incompatible",
        /// Anything else the client did wrong (an alert it sent, a malformed message).
        Error => "error",
    }
}

/// Why a handshake failed: its label and a sentence for the log.
#[derive(Debug)]
pub(crate) struct Failure {
    /// The metric label.
    pub(crate) kind: Handshake,
    /// Why, for the log.
    pub(crate) reason: String,
}

impl Failure {
    fn io(e: &io::Error, timeout: Duration) -> Failure {
        match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => Failure {
                kind: Handshake::Timeout,
                reason: format!("no complete handshake within {}s", timeout.as_secs_f64()),
            },
            ErrorKind::UnexpectedEof
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe => Failure {
                kind: Handshake::Closed,
                reason: "the client closed the connection during the handshake".to_string(),
            },
            _ => Failure {
                kind: Handshake::Error,
                reason: e.to_string(),
            },
        }
    }

    fn tls(e: &rustls::Error, first: bool) -> Failure {
        use rustls::Error as E;
        let kind = match e {
            E::InvalidMessage(_) | E::InappropriateMessage { .. } if first => Handshake::NotTls,
            E::NoCertificatesPresented | E::InvalidCertificate(_) => Handshake::ClientCertificate,
            E::NoApplicationProtocol => Handshake::NoApplicationProtocol,
            E::PeerIncompatible(_) => Handshake::Incompatible,
            _ => Handshake::Error,
        };
        let reason = match kind {
            Handshake::NotTls => format!("not TLS: the first bytes are not a TLS handshake ({e})"),
            Handshake::ClientCertificate => format!("client certificate refused: {e}"),
            Handshake::NoApplicationProtocol => {
                "no ALPN protocol in common with --tls-alpn".to_string()
            }
            _ => e.to_string(),
        };
        Failure { kind, reason }
    }
}

/// What a handshake agreed, as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Seen {
    /// `TLSv1.3` or `TLSv1.2`.
    pub(crate) version: String,
    /// The cipher suite (`TLS13_AES_128_GCM_SHA256`).
    pub(crate) cipher: String,
    /// The server name the client asked for (SNI).
    pub(crate) sni: Option<String>,
    /// The ALPN protocols the client offered, in its order.
    pub(crate) offered: Vec<Vec<u8>>,
    /// The ALPN protocol agreed.
    pub(crate) alpn: Option<Vec<u8>>,
    /// The subject of the client's certificate.
    pub(crate) client: Option<String>,
}

/// An ALPN protocol name as the log shows it: printable ASCII as itself, other bytes (and
/// space, comma, quote, backslash) as `\xNN`.
fn protocol(p: &[u8]) -> String {
    let mut out = String::with_capacity(p.len());
    for &b in p {
        if b.is_ascii_graphic() && !matches!(b, b',' | b'"' | b'\\') {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

impl fmt::Display for Seen {
    /// `version=TLSv1.3 cipher=... sni=... alpn=... offered=a,b client="CN=..."`, with `none`
    /// for what is absent: the same facts in the log record and at the end of the banner.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let offered = if self.offered.is_empty() {
            "none".to_string()
        } else {
            self.offered
                .iter()
                .map(|p| protocol(p))
                .collect::<Vec<_>>()
                .join(",")
        };
        write!(
            f,
            "version={} cipher={} sni={} alpn={} offered={offered} client=",
            self.version,
            self.cipher,
            self.sni.as_deref().unwrap_or("none"),
            self.alpn.as_deref().map_or("none".to_string(), protocol),
        )?;
        match &self.client {
            Some(subject) => write!(f, "\"{}\"", subject.replace(['"', '\n', '\r'], "'")),
            None => f.write_str("none"),
        }
    }
}

/// The certificate a handshake gets: the current one, replaced when its files change.
#[derive(Debug)]
struct Certificates {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&threads::read(&self.current)))
    }
}

/// What identifies a version of a file, read through its path: a Secret volume replaces
/// the file behind a symlink (new inode), an editor or cert-manager rewrites it (new mtime or
/// size).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Version {
    inode: u64,
    modified: Option<std::time::SystemTime>,
    changed: i64,
    len: u64,
}

fn version(path: &Path) -> Option<Version> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(path).ok()?;
    Some(Version {
        inode: m.ino(),
        modified: m.modified().ok(),
        changed: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
        len: m.len(),
    })
}

/// The TLS side of a server: its configuration, its certificate, and the handshake.
#[derive(Debug)]
pub(crate) struct Tls {
    provider: Arc<CryptoProvider>,
    certificates: Arc<Certificates>,
    /// The configuration of every handshake, but for ALPN when it follows the client.
    config: Arc<ServerConfig>,
    /// Whether ALPN follows the client (no `--tls-alpn`).
    alpn_follows_client: bool,
    handshake_timeout: Duration,
    /// The files watched, and the versions last loaded or tried.
    files: Option<(PathBuf, PathBuf)>,
    seen: std::sync::Mutex<Option<(Version, Version)>>,
}

/// A setting that makes the TLS side unusable: the flag and why.
#[derive(Debug)]
pub(crate) struct SettingError {
    /// The clap id of the setting.
    pub(crate) setting: &'static str,
    /// The file or value.
    pub(crate) value: String,
    /// Why.
    pub(crate) reason: String,
}

impl Tls {
    /// The TLS side for `settings`: loads (or makes) the certificate and the client CA.
    pub(crate) fn new(settings: &Settings) -> Result<Tls, SettingError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = match &settings.files {
            Some((cert, key)) => {
                load(cert, key, &provider).map_err(|(setting, path, reason)| SettingError {
                    setting,
                    value: path.display().to_string(),
                    reason,
                })?
            }
            None => self_signed(&settings.names, &provider).map_err(|reason| SettingError {
                setting: "tls_names",
                value: settings.names.join(","),
                reason,
            })?,
        };
        let certificates = Arc::new(Certificates {
            current: RwLock::new(Arc::new(key)),
        });
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| SettingError {
                setting: "tls_port",
                value: String::new(),
                reason: e.to_string(),
            })?;
        let builder = match &settings.client_ca {
            None => builder.with_no_client_auth(),
            Some((path, auth)) => {
                let shown = path.display().to_string();
                let bad = |reason: String| SettingError {
                    setting: "tls_client_ca",
                    value: shown.clone(),
                    reason,
                };
                let mut roots = RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(pem_error(&e)))? {
                    let cert = cert.map_err(|e| bad(pem_error(&e)))?;
                    roots
                        .add(cert)
                        .map_err(|e| bad(format!("not a CA certificate: {e}")))?;
                }
                if roots.is_empty() {
                    return Err(bad("no certificate in the file".to_string()));
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    Arc::clone(&provider),
                );
                let verifier = match auth {
                    ClientAuth::Required => verifier,
                    ClientAuth::Optional => verifier.allow_unauthenticated(),
                };
                builder.with_client_cert_verifier(verifier.build().map_err(|e| bad(e.to_string()))?)
            }
        };
        let mut config = builder.with_cert_resolver(Arc::clone(&certificates) as _);
        config.alpn_protocols = settings.alpn.clone().unwrap_or_default();
        // No session tickets or resumption: every connection shows its full handshake.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        let seen = settings
            .files
            .as_ref()
            .and_then(|(c, k)| Some((version(c)?, version(k)?)));
        Ok(Tls {
            provider,
            certificates,
            config: Arc::new(config),
            alpn_follows_client: settings.alpn.is_none(),
            handshake_timeout: settings.handshake_timeout,
            files: settings.files.clone(),
            seen: std::sync::Mutex::new(seen),
        })
    }

    /// The SHA-256 fingerprint and subject of the current certificate, for the log.
    pub(crate) fn describe(&self) -> String {
        let key = Arc::clone(&threads::read(&self.certificates.current));
        describe(&key)
    }

    /// Whether the certificate is made at start (no `--tls-cert`).
    pub(crate) fn self_signed(&self) -> bool {
        self.files.is_none()
    }

    /// Loads the certificate files again if they changed since they were last read. Returns
    /// what happened, for the log: `Ok(Some(description))` when a new certificate is in use,
    /// `Err(why)` when the new files are bad (the old certificate stays), `Ok(None)` when
    /// nothing changed. A bad version is not tried again until the files change again.
    pub(crate) fn reload_if_changed(&self) -> Result<Option<String>, String> {
        let Some((cert, key)) = &self.files else {
            return Ok(None);
        };
        let now = match (version(cert), version(key)) {
            (Some(c), Some(k)) => Some((c, k)),
            _ => None,
        };
        {
            let mut seen = threads::lock(&self.seen);
            if *seen == now {
                return Ok(None);
            }
            *seen = now;
        }
        match load(cert, key, &self.provider) {
            Ok(loaded) => {
                let text = describe(&loaded);
                *threads::write(&self.certificates.current) = Arc::new(loaded);
                Ok(Some(text))
            }
            Err((_, path, reason)) => Err(format!("{}: {reason}", path.display())),
        }
    }

    /// Runs the handshake on `socket`, whose first bytes (read with a PROXY header) are
    /// `early`, within the handshake timeout from `accepted`.
    pub(crate) fn handshake<'a>(
        &self,
        socket: &'a TcpStream,
        early: &[u8],
        accepted: Instant,
    ) -> Result<(Session<'a>, Seen), Failure> {
        let until = accepted + self.handshake_timeout;
        let timeout = self.handshake_timeout;
        let mut io = Timed { socket, until };
        let mut acceptor = Acceptor::default();
        let mut early = early;
        let hello = loop {
            let n = if early.is_empty() {
                acceptor.read_tls(&mut io)
            } else {
                acceptor.read_tls(&mut early)
            };
            match n {
                Ok(0) => return Err(Failure::io(&ErrorKind::UnexpectedEof.into(), timeout)),
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(Failure::io(&e, timeout)),
            }
            match acceptor.accept() {
                Ok(Some(accepted)) => break accepted,
                Ok(None) => {}
                Err((e, mut alert)) => {
                    let _ = alert.write_all(&mut io);
                    return Err(Failure::tls(&e, true));
                }
            }
        };
        let client_hello = hello.client_hello();
        let sni = client_hello.server_name().map(str::to_string);
        let offered: Vec<Vec<u8>> = client_hello
            .alpn()
            .map(|protocols| protocols.map(<[u8]>::to_vec).collect())
            .unwrap_or_default();
        let config = match offered.first() {
            Some(first) if self.alpn_follows_client => {
                let mut config = ServerConfig::clone(&self.config);
                config.alpn_protocols = vec![first.clone()];
                Arc::new(config)
            }
            _ => Arc::clone(&self.config),
        };
        let mut conn = hello.into_connection(config).map_err(|(e, mut alert)| {
            let _ = alert.write_all(&mut io);
            Failure::tls(&e, false)
        })?;
        conn.set_buffer_limit(Some(BUFFER_LIMIT));
        while conn.is_handshaking() {
            while conn.wants_write() {
                conn.write_tls(&mut io)
                    .map_err(|e| Failure::io(&e, timeout))?;
            }
            if !conn.is_handshaking() {
                break;
            }
            match conn.read_tls(&mut io) {
                Ok(0) => return Err(Failure::io(&ErrorKind::UnexpectedEof.into(), timeout)),
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(Failure::io(&e, timeout)),
            }
            if let Err(e) = conn.process_new_packets() {
                // The alert that says why goes out before the connection closes.
                while conn.wants_write() && conn.write_tls(&mut io).is_ok_and(|n| n > 0) {}
                return Err(Failure::tls(&e, false));
            }
        }
        // The last flight (and TLS 1.3's tickets, none here) leaves before the echo begins.
        while conn.wants_write() {
            conn.write_tls(&mut io)
                .map_err(|e| Failure::io(&e, timeout))?;
        }
        let _ = socket.set_read_timeout(None);
        let seen = Seen {
            version: match conn.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
                Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
                Some(v) => format!("{v:?}"),
                None => "unknown".to_string(),
            },
            cipher: conn
                .negotiated_cipher_suite()
                .map_or("unknown".to_string(), |s| {
                    s.suite()
                        .as_str()
                        .map_or_else(|| format!("{:?}", s.suite()), str::to_string)
                }),
            sni,
            offered,
            alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
            client: conn
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|cert| subject(cert).unwrap_or_else(|| "(unreadable)".to_string())),
        };
        Ok((
            Session {
                conn: RefCell::new(conn),
                socket,
                buffered: Cell::new(0),
            },
            seen,
        ))
    }
}

/// A socket read and written against one deadline: each call waits only for what is left.
struct Timed<'a> {
    socket: &'a TcpStream,
    until: Instant,
}

impl Timed<'_> {
    fn left(&self) -> io::Result<Duration> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err(ErrorKind::TimedOut.into())
        } else {
            Ok(left)
        }
    }
}

impl Read for Timed<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.socket.set_read_timeout(Some(self.left()?))?;
        (&mut &*self.socket).read(buf)
    }
}

impl Write for Timed<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.socket.set_write_timeout(Some(self.left()?))?;
        (&mut &*self.socket).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A TLS connection after its handshake: its plaintext, read and written on a shared
/// reference.
pub(crate) struct Session<'a> {
    conn: RefCell<ServerConnection>,
    socket: &'a TcpStream,
    /// Plaintext decrypted and not read yet, as of the last records processed.
    buffered: Cell<usize>,
}

impl fmt::Debug for Session<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

impl<'a> Session<'a> {
    /// The socket under the TLS.
    pub(crate) fn socket(&self) -> &'a TcpStream {
        self.socket
    }

    /// Plaintext bytes decrypted and not yet read.
    pub(crate) fn buffered(&self) -> u64 {
        self.buffered.get() as u64
    }

    /// Writes everything rustls has encrypted to the socket.
    fn flush_tls(&self, conn: &mut ServerConnection) -> io::Result<()> {
        while conn.wants_write() {
            conn.write_tls(&mut socket::Sender(self.socket))?;
        }
        Ok(())
    }

    /// Sends `close_notify`, the TLS end of the stream (before the TCP FIN).
    pub(crate) fn close_notify(&self) {
        let mut conn = self.conn.borrow_mut();
        conn.send_close_notify();
        let _ = self.flush_tls(&mut conn);
    }

    /// Reads plaintext into `buf`: what is decrypted already, or else the next records from
    /// the socket (blocking as the socket does). A TCP end without `close_notify` is an end
    /// like any other (most clients never send one).
    pub(crate) fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut conn = self.conn.borrow_mut();
        loop {
            match conn.reader().read(buf) {
                Ok(n) => {
                    self.buffered.set(self.buffered.get().saturating_sub(n));
                    return Ok(n);
                }
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            // Whatever the records read last asked for (a key update's answer) goes first.
            self.flush_tls(&mut conn)?;
            if conn.read_tls(&mut &*self.socket)? == 0 {
                // The end of the TCP stream: records still buffered are processed, then the
                // reader says end-of-file.
                conn.process_new_packets()
                    .map_err(|e| io::Error::new(ErrorKind::InvalidData, e))?;
                return match conn.reader().read(buf) {
                    Ok(n) => Ok(n),
                    Err(e) if e.kind() == ErrorKind::UnexpectedEof => Ok(0),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(0),
                    Err(e) => Err(e),
                };
            }
            match conn.process_new_packets() {
                Ok(state) => self.buffered.set(state.plaintext_bytes_to_read()),
                Err(e) => {
                    let _ = self.flush_tls(&mut conn);
                    return Err(io::Error::new(ErrorKind::InvalidData, e));
                }
            }
        }
    }

    /// Encrypts as much of `bufs` as rustls takes (at most [`BUFFER_LIMIT`] in flight) and
    /// writes it to the socket; returns the plaintext bytes taken.
    pub(crate) fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut conn = self.conn.borrow_mut();
        // Earlier records first: what the last call could not write (a write timeout) is
        // still owed.
        self.flush_tls(&mut conn)?;
        let n = conn.writer().write_vectored(bufs)?;
        self.flush_tls(&mut conn)?;
        Ok(n)
    }
}

/// Loads a certificate chain and its key, and checks that they belong together; on failure,
/// the setting, the file and why.
fn load(
    cert: &Path,
    key: &Path,
    provider: &Arc<CryptoProvider>,
) -> Result<CertifiedKey, (&'static str, PathBuf, String)> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect())
        .map_err(|e| ("tls_cert", cert.to_path_buf(), pem_error(&e)))?;
    if chain.is_empty() {
        return Err((
            "tls_cert",
            cert.to_path_buf(),
            "no certificate in the file".to_string(),
        ));
    }
    let der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| ("tls_key", key.to_path_buf(), pem_error(&e)))?;
    let certified = CertifiedKey::from_der(chain, der, provider).map_err(|e| {
        let why = match e {
            rustls::Error::InconsistentKeys(_) => {
                "the key does not match the certificate".to_string()
            }
            other => format!("not a usable key: {other}"),
        };
        ("tls_key", key.to_path_buf(), why)
    })?;
    Ok(certified)
}

/// A PEM reading error as a reader wants it.
fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error as E;
    match e {
        E::NoItemsFound => "no PEM item of the right kind in the file".to_string(),
        E::Io(io) => io.to_string(),
        other => format!("not valid PEM: {other:?}"),
    }
}

/// A self-signed certificate for `names` (ECDSA P-256).
fn self_signed(names: &[String], provider: &Arc<CryptoProvider>) -> Result<CertifiedKey, String> {
    let made = rcgen::generate_simple_self_signed(names.to_vec()).map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::Pkcs8(made.signing_key.serialize_der().into());
    CertifiedKey::from_der(vec![made.cert.der().clone()], key, provider).map_err(|e| e.to_string())
}

/// `subject="CN=..." sha256=AB:CD:...` of a certificate.
fn describe(key: &CertifiedKey) -> String {
    let Some(cert) = key.cert.first() else {
        return "no certificate".to_string();
    };
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    let hex: Vec<String> = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect();
    format!(
        "subject=\"{}\" sha256={}",
        subject(cert).unwrap_or_default(),
        hex.join(":")
    )
}

/// The subject of a certificate as an RFC 4514 string (`CN=client,O=Example`), most
/// specific first; `None` when the DER cannot be read.
pub(crate) fn subject(cert: &[u8]) -> Option<String> {
    // Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL,
    //   serialNumber, signature, issuer, validity, subject, ... }, ... }
    let (_, cert, _) = der::read(cert)?;
    let (_, mut tbs, _) = der::read(cert)?;
    let (tag, _, rest) = der::read(tbs)?;
    if tag == 0xa0 {
        tbs = rest;
    }
    for _ in 0..4 {
        tbs = der::read(tbs)?.2; // serial, signature, issuer, validity
    }
    let (_, mut name, _) = der::read(tbs)?;
    let mut parts = Vec::new();
    while !name.is_empty() {
        let (_, rdn, rest) = der::read(name)?;
        name = rest;
        let (_, atv, _) = der::read(rdn)?;
        let (_, oid, value) = der::read(atv)?;
        let (tag, value, _) = der::read(value)?;
        let text = match tag {
            // UTF8String, PrintableString, IA5String, T61String
            0x0c | 0x13 | 0x16 | 0x14 => String::from_utf8_lossy(value).into_owned(),
            _ => format!(
                "#{}",
                value.iter().map(|b| format!("{b:02x}")).collect::<String>()
            ),
        };
        let key = match oid {
            [0x55, 0x04, 0x03] => "CN".to_string(),
            [0x55, 0x04, 0x06] => "C".to_string(),
            [0x55, 0x04, 0x07] => "L".to_string(),
            [0x55, 0x04, 0x08] => "ST".to_string(),
            [0x55, 0x04, 0x0a] => "O".to_string(),
            [0x55, 0x04, 0x0b] => "OU".to_string(),
            other => der::oid(other),
        };
        parts.push(format!("{key}={}", escape_dn(&text)));
    }
    parts.reverse();
    Some(parts.join(","))
}

/// Escapes an attribute value as RFC 4514 does (and control characters, for the log).
fn escape_dn(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for (i, c) in v.chars().enumerate() {
        match c {
            ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=' => {
                out.push('\\');
                out.push(c);
            }
            '#' | ' ' if i == 0 => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push_str(&format!("\\{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Just enough DER to walk to a certificate's subject.
mod der {
    /// Reads one TLV: (tag, contents, the bytes after it).
    pub(super) fn read(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |len, &b| (len << 8) | usize::from(b));
            (len, &rest[n..])
        };
        (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
    }

    /// An OID in dotted form.
    pub(super) fn oid(bytes: &[u8]) -> String {
        let Some((&first, rest)) = bytes.split_first() else {
            return String::new();
        };
        let mut parts = vec![u64::from(first / 40), u64::from(first % 40)];
        let mut value = 0u64;
        for &b in rest {
            value = (value << 7) | u64::from(b & 0x7f);
            if b & 0x80 == 0 {
                parts.push(value);
                value = 0;
            }
        }
        parts
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(".")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subject_is_read_from_a_certificate_most_specific_first() {
        let mut params = rcgen::CertificateParams::new(vec!["client.example".into()]).unwrap();
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CountryName, "DE");
        dn.push(rcgen::DnType::OrganizationName, "Example, Inc.");
        dn.push(rcgen::DnType::CommonName, "probe");
        params.distinguished_name = dn;
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let subject = subject(cert.der()).unwrap();
        assert_eq!(subject, "CN=probe,O=Example\\, Inc.,C=DE");
        assert_eq!(super::subject(b"\x30\x03\x02"), None, "truncated DER");
    }

    #[test]
    fn what_the_handshake_saw_is_one_line_of_key_value_pairs() {
        let seen = Seen {
            version: "TLSv1.3".into(),
            cipher: "TLS13_AES_128_GCM_SHA256".into(),
            sni: Some("v1.example.com".into()),
            offered: vec![b"h2".to_vec(), b"http/1.1".to_vec(), b"a b,\x01".to_vec()],
            alpn: Some(b"h2".to_vec()),
            client: Some("CN=probe".into()),
        };
        assert_eq!(
            seen.to_string(),
            "version=TLSv1.3 cipher=TLS13_AES_128_GCM_SHA256 sni=v1.example.com alpn=h2 \
             offered=h2,http/1.1,a\\x20b\\x2c\\x01 client=\"CN=probe\""
        );
        let bare = Seen {
            sni: None,
            offered: vec![],
            alpn: None,
            client: None,
            ..seen
        };
        assert_eq!(
            bare.to_string(),
            "version=TLSv1.3 cipher=TLS13_AES_128_GCM_SHA256 sni=none alpn=none offered=none \
             client=none"
        );
    }

    #[test]
    fn default_names_end_with_localhost() {
        let names = default_names();
        assert_eq!(names.last().map(String::as_str), Some("localhost"));
    }
}
