//! TLS ports (`--tls-port`), against the binary, with real TLS clients: rustls (the tests' own
//! client, whose every setting is chosen here) and `openssl s_client` (`make test` installs
//! openssl, which also makes every certificate and key these tests use).

mod support;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, StreamOwned};

use support::{field, run_to_exit, Server, DEADLINE};

// ---- certificates, made by openssl -----------------------------------------------------------

/// Runs openssl in `dir`; panics with its output when it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (make test installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The kinds of private key a server may be given.
#[derive(Debug, Clone, Copy)]
enum Key {
    /// ECDSA P-256, PKCS#8 (`BEGIN PRIVATE KEY`).
    EcdsaPkcs8,
    /// ECDSA P-256, SEC1 (`BEGIN EC PRIVATE KEY`).
    EcdsaSec1,
    /// RSA 2048, PKCS#1 (`BEGIN RSA PRIVATE KEY`).
    RsaPkcs1,
    /// RSA 2048, PKCS#8.
    RsaPkcs8,
    /// Ed25519, PKCS#8.
    Ed25519,
}

/// A test CA and what it issues, in a scratch directory.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// A fresh CA named `tag`.
    fn new(tag: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("tcp-echo-tls-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        openssl(
            &dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                &format!("/CN={tag} test CA"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        Pki { dir }
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A certificate for `names` (the first is its CN) signed by the CA, with a `key` key, for
    /// a server or (`client`) a client; its chain and key files.
    fn issue(&self, file: &str, key: Key, names: &[&str], client: bool) -> (PathBuf, PathBuf) {
        let key_file = format!("{file}.key");
        let keygen: Vec<&str> = match key {
            Key::EcdsaPkcs8 => vec![
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ],
            Key::EcdsaSec1 => vec!["ecparam", "-name", "prime256v1", "-genkey", "-noout"],
            Key::RsaPkcs1 => vec!["genrsa", "-traditional"],
            Key::RsaPkcs8 => vec![
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ],
            Key::Ed25519 => vec!["genpkey", "-algorithm", "ed25519"],
        };
        let mut args = keygen;
        args.extend(["-out", &key_file]);
        openssl(&self.dir, &args);
        let ext = format!("{file}.ext");
        let sans: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
        std::fs::write(
            self.dir.join(&ext),
            format!(
                "subjectAltName={}\nbasicConstraints=CA:FALSE\nextendedKeyUsage={}\n",
                sans.join(","),
                if client { "clientAuth" } else { "serverAuth" }
            ),
        )
        .unwrap();
        let csr = format!("{file}.csr");
        openssl(
            &self.dir,
            &[
                "req",
                "-new",
                "-key",
                &key_file,
                "-out",
                &csr,
                "-subj",
                &format!("/O=tcp-echo tests/CN={}", names[0]),
            ],
        );
        let pem = format!("{file}.pem");
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        );
        (self.dir.join(pem), self.dir.join(key_file))
    }

    /// A server certificate for `localhost` and `v1.example.com` (ECDSA).
    fn server(&self) -> (PathBuf, PathBuf) {
        self.issue(
            "server",
            Key::EcdsaPkcs8,
            &["localhost", "v1.example.com"],
            false,
        )
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

// ---- the tests' own TLS client ---------------------------------------------------------------

/// Accepts any server certificate (for self-signed ones), and keeps the last one presented.
#[derive(Debug)]
struct AcceptAny {
    seen: Mutex<Option<CertificateDer<'static>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.seen.lock().unwrap() = Some(end_entity.clone().into_owned());
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// How the tests' client connects.
#[derive(Default)]
struct Client {
    /// Trust these CA certificates (or this certificate); none: accept any certificate.
    roots: Vec<CertificateDer<'static>>,
    /// ALPN protocols offered.
    alpn: Vec<&'static str>,
    /// Only this TLS version (12 or 13); any when 0.
    version: u8,
    /// A client certificate and key.
    identity: Option<(PathBuf, PathBuf)>,
}

impl Client {
    fn trusting(ca: &Path) -> Client {
        Client {
            roots: CertificateDer::pem_file_iter(ca)
                .unwrap()
                .map(Result::unwrap)
                .collect(),
            ..Client::default()
        }
    }

    fn config(&self) -> (Arc<ClientConfig>, Option<Arc<AcceptAny>>) {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: &[&rustls::SupportedProtocolVersion] = match self.version {
            12 => &[&rustls::version::TLS12],
            13 => &[&rustls::version::TLS13],
            _ => rustls::DEFAULT_VERSIONS,
        };
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(versions)
            .unwrap();
        let mut any = None;
        let builder = if self.roots.is_empty() {
            let verifier = Arc::new(AcceptAny {
                seen: Mutex::new(None),
                provider,
            });
            any = Some(Arc::clone(&verifier));
            builder
                .dangerous()
                .with_custom_certificate_verifier(verifier)
        } else {
            let mut roots = RootCertStore::empty();
            for r in &self.roots {
                roots.add(r.clone()).unwrap();
            }
            builder.with_root_certificates(roots)
        };
        let mut config = match &self.identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    CertificateDer::pem_file_iter(cert)
                        .unwrap()
                        .map(Result::unwrap)
                        .collect(),
                    PrivateKeyDer::from_pem_file(key).unwrap(),
                )
                .unwrap(),
        };
        config.alpn_protocols = self.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        (Arc::new(config), any)
    }

    /// Connects to `addr` asking for `sni` and completes the handshake.
    fn connect(&self, addr: SocketAddr, sni: &str) -> io::Result<Tls> {
        let (config, any) = self.config();
        let name = ServerName::try_from(sni.to_string()).unwrap();
        let conn = ClientConnection::new(config, name).map_err(io::Error::other)?;
        let sock = support::connect(addr);
        let mut tls = StreamOwned::new(conn, sock);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        Ok(Tls {
            stream: BufReader::new(tls),
            any,
        })
    }
}

/// A connected TLS client.
struct Tls {
    stream: BufReader<StreamOwned<ClientConnection, TcpStream>>,
    any: Option<Arc<AcceptAny>>,
}

impl Tls {
    fn conn(&self) -> &ClientConnection {
        &self.stream.get_ref().conn
    }

    fn send(&mut self, data: &[u8]) {
        self.stream.get_mut().write_all(data).unwrap();
        self.stream.get_mut().flush().unwrap();
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.stream.read_line(&mut line).unwrap();
        line
    }

    /// Reads exactly `n` bytes.
    fn exactly(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        self.stream.read_exact(&mut buf).unwrap();
        buf
    }

    /// The certificate the server presented (with a client that accepts any).
    fn server_certificate(&self) -> CertificateDer<'static> {
        let any = self
            .any
            .as_ref()
            .expect("a client that accepts any certificate");
        any.seen.lock().unwrap().clone().expect("a certificate")
    }

    /// Sends `close_notify` and half-closes; reads everything until the server's end.
    fn finish(mut self) -> Vec<u8> {
        self.stream.get_mut().conn.send_close_notify();
        let s = self.stream.get_mut();
        let _ = s.conn.complete_io(&mut s.sock);
        let _ = s.sock.shutdown(std::net::Shutdown::Write);
        let mut rest = Vec::new();
        match self.stream.read_to_end(&mut rest) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {}
            Err(e) => panic!(
                "reading to the end: {e} after {:?}",
                String::from_utf8_lossy(&rest)
            ),
        }
        rest
    }
}

/// The banner's TLS line: `TLS: version=... sni=...`, as a map.
fn tls_line(line: &str) -> std::collections::BTreeMap<String, String> {
    let facts = line
        .trim_end()
        .strip_prefix("TLS: ")
        .unwrap_or_else(|| panic!("not the TLS line: {line:?}"));
    let mut out = std::collections::BTreeMap::new();
    let mut rest = facts;
    while let Some((key, after)) = rest.split_once('=') {
        let (value, next) = match after.strip_prefix('"') {
            Some(quoted) => {
                let (v, n) = quoted.split_once('"').unwrap();
                (v, n.trim_start())
            }
            None => after.split_once(' ').unwrap_or((after, "")),
        };
        out.insert(key.trim().to_string(), value.to_string());
        rest = next;
    }
    out
}

/// A server with a TLS port only, started with `args` after its ports.
fn tls_server(args: &[&str]) -> Server {
    let mut all = vec!["--port", "none", "--tls-port", "0"];
    all.extend_from_slice(args);
    Server::start(&all, &[])
}

/// The SHA-256 of `der` as the server logs it (`AB:CD:...`).
fn fingerprint(der: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    d.as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

// ---- the tests -------------------------------------------------------------------------------

#[test]
fn a_self_signed_certificate_is_made_for_the_names_and_its_fingerprint_logged() {
    let s = tls_server(&["--tls-names", "a.example,b.example", "--prefix", "one"]);
    let warning = s.log.wait_for("self-signed warning", DEADLINE, |l| {
        l.contains(" WARN ") && l.contains("self-signed")
    });
    let mut c = Client::default()
        .connect(s.tls_addrs[0], "a.example")
        .unwrap();
    let facts = tls_line(&c.line());
    assert_eq!(facts["sni"], "a.example");
    c.send(b"hello\n");
    assert_eq!(c.line(), "one hello\n");
    let cert = c.server_certificate();
    assert!(
        warning.contains(&format!("sha256={}", fingerprint(&cert))),
        "{warning}"
    );
    // The certificate holds both names, and no other: a client that trusts it (and only it)
    // accepts it for either name.
    let trusting = Client {
        roots: vec![cert],
        ..Client::default()
    };
    for name in ["a.example", "b.example"] {
        trusting.connect(s.tls_addrs[0], name).expect(name);
    }
    assert!(trusting.connect(s.tls_addrs[0], "c.example").is_err());
}

#[test]
fn given_certificates_of_every_key_type_and_format_serve_tls_1_2_and_1_3() {
    let pki = Pki::new("keys");
    for key in [
        Key::EcdsaPkcs8,
        Key::EcdsaSec1,
        Key::RsaPkcs1,
        Key::RsaPkcs8,
        Key::Ed25519,
    ] {
        let (cert, key_file) = pki.issue(&format!("{key:?}"), key, &["localhost"], false);
        let s = tls_server(&[
            "--tls-cert",
            path(&cert),
            "--tls-key",
            path(&key_file),
            "--prefix",
            "one",
        ]);
        for version in [12, 13] {
            let client = Client {
                version,
                ..Client::trusting(&pki.ca())
            };
            let mut c = client
                .connect(s.tls_addrs[0], "localhost")
                .unwrap_or_else(|e| panic!("{key:?} TLS 1.{}: {e}", version - 10));
            let facts = tls_line(&c.line());
            assert_eq!(
                facts["version"],
                format!("TLSv1.{}", version - 10),
                "{key:?}"
            );
            c.send(b"PING");
            assert_eq!(
                c.exactly(8),
                b"one PING",
                "{key:?}: prompt, no newline needed"
            );
            c.send(b"\nx\n");
            assert_eq!(c.finish(), b"\none x\n", "{key:?}");
        }
    }
}

#[test]
fn bad_certificate_files_at_start_exit_2_with_one_line() {
    let pki = Pki::new("bad");
    let (cert, key) = pki.server();
    let (_, other_key) = pki.issue("other", Key::EcdsaPkcs8, &["localhost"], false);
    let missing = pki.dir.join("missing.pem");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--tls-cert", path(&missing), "--tls-key", path(&key)],
            "--tls-cert",
        ),
        (
            vec!["--tls-cert", path(&cert), "--tls-key", path(&cert)],
            "--tls-key",
        ),
        (
            vec!["--tls-cert", path(&cert), "--tls-key", path(&other_key)],
            "does not match",
        ),
        (
            vec!["--tls-cert", path(&key), "--tls-key", path(&key)],
            "--tls-cert",
        ),
        (vec!["--tls-cert", path(&cert)], "--tls-key"),
        (vec!["--tls-client-ca", path(&key)], "--tls-client-ca"),
    ];
    for (extra, needle) in cases {
        let mut args = vec!["--port", "none", "--tls-port", "0"];
        args.extend(&extra);
        let (code, _, err) = run_to_exit(&args, &[]);
        assert_eq!(code, Some(2), "{extra:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{extra:?}: {err}");
        assert!(err.contains(needle), "{extra:?}: {err}");
        assert!(!err.contains("listening"), "{err}");
    }
    // TLS settings without a TLS port are a mistake too.
    let (code, _, err) = run_to_exit(&["--tls-cert", path(&cert)], &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("without --tls-port"), "{err}");
    // And so is no port at all.
    let (code, _, err) = run_to_exit(&["--port", "none"], &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--port none needs --tls-port"), "{err}");
}

/// A directory laid out as Kubernetes mounts a Secret: `tls.crt` and `tls.key` are symlinks
/// through `..data`, which is swapped atomically to a new timestamped directory on update.
struct SecretVolume {
    dir: PathBuf,
    version: usize,
}

impl SecretVolume {
    fn new(dir: PathBuf, cert: &Path, key: &Path) -> SecretVolume {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut v = SecretVolume { dir, version: 0 };
        v.update(&std::fs::read(cert).unwrap(), &std::fs::read(key).unwrap());
        std::os::unix::fs::symlink("..data/tls.crt", v.dir.join("tls.crt")).unwrap();
        std::os::unix::fs::symlink("..data/tls.key", v.dir.join("tls.key")).unwrap();
        v
    }

    /// Writes a new version and swaps `..data` to it, as the kubelet does.
    fn update(&mut self, cert: &[u8], key: &[u8]) {
        self.version += 1;
        let name = format!("..2026_12_05_{:02}", self.version);
        let new = self.dir.join(&name);
        std::fs::create_dir_all(&new).unwrap();
        std::fs::write(new.join("tls.crt"), cert).unwrap();
        std::fs::write(new.join("tls.key"), key).unwrap();
        let tmp = self.dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&name, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
    }

    fn cert(&self) -> PathBuf {
        self.dir.join("tls.crt")
    }

    fn key(&self) -> PathBuf {
        self.dir.join("tls.key")
    }
}

#[test]
fn a_renewed_certificate_reaches_new_connections_and_open_ones_carry_on() {
    let pki = Pki::new("renew");
    let (first, first_key) = pki.issue("first", Key::EcdsaPkcs8, &["first", "localhost"], false);
    let (second, second_key) = pki.issue("second", Key::RsaPkcs1, &["second", "localhost"], false);
    let mut volume = SecretVolume::new(pki.dir.join("secret"), &first, &first_key);
    let s = tls_server(&[
        "--tls-cert",
        path(&volume.cert()),
        "--tls-key",
        path(&volume.key()),
        "--prefix",
        "one",
    ]);
    let subject = |c: &Tls| {
        let cert = c.server_certificate();
        s.log.wait_for("fingerprint", DEADLINE, |l| {
            l.contains(&format!("sha256={}", fingerprint(&cert)))
        })
    };
    let any = Client::default();
    let mut open = any.connect(s.tls_addrs[0], "localhost").unwrap();
    assert!(subject(&open).contains("CN=first"));
    open.line(); // the TLS line
    open.send(b"before\n");
    assert_eq!(open.line(), "one before\n");

    volume.update(
        &std::fs::read(&second).unwrap(),
        &std::fs::read(&second_key).unwrap(),
    );
    let swapped = Instant::now();
    let renewed = loop {
        let c = any.connect(s.tls_addrs[0], "localhost").unwrap();
        if c.server_certificate().as_ref()
            == CertificateDer::pem_file_iter(&second)
                .unwrap()
                .next()
                .unwrap()
                .unwrap()
                .as_ref()
        {
            break swapped.elapsed();
        }
        assert!(
            swapped.elapsed() < DEADLINE,
            "the renewed certificate was never served"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(renewed < Duration::from_secs(5), "served after {renewed:?}");
    s.log.wait_for("reload record", DEADLINE, |l| {
        l.contains("TLS certificate reloaded") && l.contains("CN=second")
    });
    // The connection opened before carries on with the old certificate.
    open.send(b"after\n");
    assert_eq!(open.line(), "one after\n");

    // A bad renewal (a key that does not match) is logged; the good certificate stays.
    volume.update(
        &std::fs::read(&first).unwrap(),
        &std::fs::read(&second_key).unwrap(),
    );
    s.log.wait_for("failed reload", DEADLINE, |l| {
        l.contains(" ERROR ") && l.contains("not reloaded") && l.contains("does not match")
    });
    let c = any.connect(s.tls_addrs[0], "localhost").unwrap();
    let served = c.server_certificate();
    assert_eq!(
        served.as_ref(),
        CertificateDer::pem_file_iter(&second)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .as_ref()
    );
}

#[test]
fn client_certificates_required_and_optional() {
    let pki = Pki::new("mtls");
    let (cert, key) = pki.server();
    let client_id = pki.issue("client", Key::EcdsaPkcs8, &["probe-client"], true);
    let stranger = Pki::new("stranger");
    let stranger_id = stranger.issue("stranger", Key::EcdsaPkcs8, &["stranger"], true);
    let base = |auth: &str| {
        tls_server(&[
            "--tls-cert",
            path(&cert),
            "--tls-key",
            path(&key),
            "--tls-client-ca",
            path(&pki.ca()),
            "--tls-client-auth",
            auth,
            "--admin-port",
            "0",
        ])
    };
    let trusting = || Client::trusting(&pki.ca());

    // Required: a signed certificate is served, its subject reported.
    let s = base("required");
    let with_id = Client {
        identity: Some(client_id.clone()),
        ..trusting()
    };
    let mut c = with_id.connect(s.tls_addrs[0], "localhost").unwrap();
    let facts = tls_line(&c.line());
    assert_eq!(facts["client"], "CN=probe-client,O=tcp-echo tests");
    c.send(b"hi\n");
    assert_eq!(c.line(), "hi\n");
    // No certificate, or one from another CA: an alert, and a record that says why.
    for (who, client) in [
        ("no certificate", trusting()),
        (
            "a stranger's",
            Client {
                identity: Some(stranger_id.clone()),
                ..trusting()
            },
        ),
    ] {
        let refused = client
            .connect(s.tls_addrs[0], "localhost")
            .and_then(|mut c| {
                // TLS 1.3: the client learns of the refusal on its first read.
                let mut b = [0u8; 1];
                c.stream.read(&mut b).map(|_| c)
            });
        let e = match refused {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{who}: served"),
        };
        assert!(
            e.contains("alert") || e.contains("Alert"),
            "{who}: the client saw {e}"
        );
    }
    let refusals = s.log.wait_count(
        "TLS handshake failed: client certificate refused",
        2,
        DEADLINE,
    );
    assert!(refusals[0].contains("peer="), "{}", refusals[0]);
    let (_, metrics) = support::http_get(s.admin(), "/metrics").unwrap();
    assert!(
        metrics.contains("tcp_echo_tls_handshakes_total{result=\"client_certificate\"} 2"),
        "{metrics}"
    );

    // Optional: no certificate is served; a stranger's is still refused.
    let s = base("optional");
    let mut c = trusting().connect(s.tls_addrs[0], "localhost").unwrap();
    assert_eq!(tls_line(&c.line())["client"], "none");
    c.send(b"anonymous\n");
    assert_eq!(c.line(), "anonymous\n");
    let stranger_client = Client {
        identity: Some(stranger_id),
        ..trusting()
    };
    let refused = stranger_client
        .connect(s.tls_addrs[0], "localhost")
        .and_then(|mut c| {
            let mut b = [0u8; 1];
            c.stream.read(&mut b).map(|_| c)
        });
    assert!(refused.is_err(), "a stranger's certificate was accepted");
}

#[test]
fn alpn_follows_the_client_by_default_and_the_servers_list_when_given() {
    let s = tls_server(&[]);
    let offer = |s: &Server, alpn: Vec<&'static str>| {
        Client {
            alpn,
            ..Client::default()
        }
        .connect(s.tls_addrs[0], "localhost")
    };
    let mut c = offer(&s, vec!["h2", "http/1.1"]).unwrap();
    assert_eq!(c.conn().alpn_protocol(), Some(&b"h2"[..]));
    let facts = tls_line(&c.line());
    assert_eq!(
        (facts["alpn"].as_str(), facts["offered"].as_str()),
        ("h2", "h2,http/1.1")
    );
    let mut c = offer(&s, vec!["x-custom/7"]).unwrap();
    assert_eq!(tls_line(&c.line())["alpn"], "x-custom/7");
    let mut c = offer(&s, vec![]).unwrap();
    let facts = tls_line(&c.line());
    assert_eq!(
        (facts["alpn"].as_str(), facts["offered"].as_str()),
        ("none", "none")
    );

    // Restricted: the server's order of preference, and no overlap is a failed handshake.
    let s = tls_server(&["--tls-alpn", "http/1.1,h2", "--admin-port", "0"]);
    let mut c = offer(&s, vec!["h2", "http/1.1"]).unwrap();
    assert_eq!(c.conn().alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(tls_line(&c.line())["alpn"], "http/1.1");
    let e = offer(&s, vec!["spdy/3"])
        .err()
        .expect("no overlap must fail");
    assert!(e.to_string().contains("NoApplicationProtocol"), "{e}");
    s.log.wait_for("no ALPN record", DEADLINE, |l| {
        l.contains("TLS handshake failed: no ALPN protocol in common")
    });
    let (_, metrics) = support::http_get(s.admin(), "/metrics").unwrap();
    assert!(
        metrics.contains("tcp_echo_tls_handshakes_total{result=\"no_application_protocol\"} 1"),
        "{metrics}"
    );
}

/// The first bytes of a TLS 1.3 ClientHello, as a client would send them.
fn client_hello() -> Vec<u8> {
    let (config, _) = Client::default().config();
    let mut conn =
        ClientConnection::new(config, ServerName::try_from("localhost").unwrap()).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    hello
}

#[test]
fn a_handshake_must_finish_within_its_deadline() {
    let s = tls_server(&["--tls-handshake-timeout", "1", "--admin-port", "0"]);
    let hello = client_hello();
    // A client that connects and says nothing; one that trickles its hello, a byte a 100 ms.
    let silent = std::thread::spawn({
        let addr = s.tls_addrs[0];
        move || {
            let mut c = support::connect(addr);
            let start = Instant::now();
            let mut b = [0u8; 64];
            let _ = c.read(&mut b);
            start.elapsed()
        }
    });
    let mut slow = support::connect(s.tls_addrs[0]);
    let start = Instant::now();
    let mut closed = None;
    for byte in &hello {
        if slow.write_all(&[*byte]).is_err() {
            closed = Some(start.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100)); // the trickle's pace
        if start.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
    let mut b = [0u8; 64];
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = slow.read(&mut b);
    let closed = closed.unwrap_or_else(|| start.elapsed());
    assert!(
        closed < Duration::from_millis(2500),
        "the trickler was closed after {closed:?}"
    );
    let silent = silent.join().unwrap();
    assert!(
        silent >= Duration::from_millis(900) && silent < Duration::from_millis(2500),
        "the silent client was closed after {silent:?}"
    );
    s.log.wait_count(
        "TLS handshake failed: no complete handshake within 1s",
        2,
        DEADLINE,
    );
    let (_, metrics) = support::http_get(s.admin(), "/metrics").unwrap();
    assert!(
        metrics.contains("tcp_echo_tls_handshakes_total{result=\"timeout\"} 2"),
        "{metrics}"
    );
}

#[test]
fn plaintext_and_garbage_on_a_tls_port_fail_alone() {
    let s = Server::start(
        &[
            "--port",
            "0",
            "--tls-port",
            "0",
            "--admin-port",
            "0",
            "--prefix",
            "one",
        ],
        &[],
    );
    // A TLS client is connected throughout.
    let mut tls = Client::default()
        .connect(s.tls_addrs[0], "localhost")
        .unwrap();
    tls.line();
    for (what, bytes) in [
        ("plaintext", b"hello\n".to_vec()),
        ("HTTP", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("garbage", (0..200u8).map(|i| i.wrapping_mul(37)).collect()),
    ] {
        let mut c = support::connect(s.tls_addrs[0]);
        let _ = c.write_all(&bytes);
        let mut got = Vec::new();
        let _ = c.read_to_end(&mut got);
        assert!(
            !got.windows(5).any(|w| w == b"hello"),
            "{what}: something was echoed: {got:?}"
        );
    }
    s.log
        .wait_count("TLS handshake failed: not TLS", 3, DEADLINE);
    // Nobody else noticed: the TLS client and the plain port carry on.
    tls.send(b"still\n");
    assert_eq!(tls.line(), "one still\n");
    assert_eq!(support::exchange(s.addrs[0], b"plain\n"), b"one plain\n");
    let (_, metrics) = support::http_get(s.admin(), "/metrics").unwrap();
    assert!(
        metrics.contains("tcp_echo_tls_handshakes_total{result=\"not_tls\"} 3")
            && metrics.contains("tcp_echo_tls_handshakes_total{result=\"ok\"} 1"),
        "{metrics}"
    );
}

#[test]
fn inside_tls_the_echo_is_as_on_a_plain_port() {
    let pod = [("POD_NAME", "tcp-echo-v1-abc")];
    // The banner first, with what the handshake agreed at its end.
    let s = Server::start(
        &[
            "--port",
            "none",
            "--tls-port",
            "0",
            "--prefix",
            "one",
            "--tls-alpn",
            "h2",
        ],
        &pod,
    );
    let mut c = Client {
        alpn: vec!["h2"],
        ..Client::default()
    }
    .connect(s.tls_addrs[0], "v1.example.com")
    .unwrap();
    assert_eq!(c.line(), "Running on Pod tcp-echo-v1-abc.\n");
    let facts = tls_line(&c.line());
    assert_eq!(facts["sni"], "v1.example.com");
    assert_eq!(facts["alpn"], "h2");
    let record = s.log.wait_for("handshake record", DEADLINE, |l| {
        l.contains("TLS handshake done.")
    });
    assert!(
        record.contains("sni=v1.example.com alpn=h2 offered=h2 client=none")
            && record.contains("version=TLSv1.3"),
        "{record}"
    );
    // 64 KiB of lines in one go, and a last line without newline after the half-close.
    let input: Vec<u8> = (0..5000)
        .flat_map(|i| format!("line {i}\n").into_bytes())
        .collect();
    c.send(&input);
    c.send(b"last");
    let mut got = c.exactly(support::expected_echo(&input, Some("one")).len());
    got.extend(c.finish());
    let mut all = input.clone();
    all.extend_from_slice(b"last");
    assert_eq!(got, support::expected_echo(&all, Some("one")));

    // First-read banner: nothing before the client speaks.
    let s = Server::start(
        &[
            "--port",
            "none",
            "--tls-port",
            "0",
            "--banner",
            "first-read",
        ],
        &pod,
    );
    let mut c = Client::default()
        .connect(s.tls_addrs[0], "localhost")
        .unwrap();
    c.send(b"x\n");
    assert_eq!(c.line(), "Running on Pod tcp-echo-v1-abc.\n");
    assert!(c.line().starts_with("TLS: "));
    assert_eq!(c.line(), "x\n");
}

#[test]
fn a_proxy_header_comes_before_the_handshake() {
    let s = tls_server(&["--proxy-protocol", "required", "--banner-client"]);
    let sock = support::connect(s.tls_addrs[0]);
    (&sock)
        .write_all(b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 3333\r\n")
        .unwrap();
    let (config, _) = Client::default().config();
    let conn = ClientConnection::new(config, ServerName::try_from("localhost").unwrap()).unwrap();
    let mut tls = BufReader::new(StreamOwned::new(conn, sock));
    let mut line = String::new();
    tls.read_line(&mut line).unwrap();
    assert_eq!(line, "Your address is 192.0.2.7:56324.\n");
    line.clear();
    tls.read_line(&mut line).unwrap();
    assert!(line.starts_with("TLS: version="), "{line}");
    let open = s
        .log
        .wait_for("open", DEADLINE, |l| l.contains("TCP connection open."));
    assert_eq!(field(&open, "client="), "192.0.2.7:56324");
}

#[test]
fn idle_tls_connections_time_out_and_the_drain_delivers_every_reply() {
    let s = tls_server(&["--idle-timeout", "0.5", "--banner", "off"]);
    let idle = Client::default()
        .connect(s.tls_addrs[0], "localhost")
        .unwrap();
    let start = Instant::now();
    let rest = idle.finish_after_server_close();
    assert!(rest.is_empty());
    assert!(start.elapsed() < Duration::from_secs(3));
    s.log.wait_for("idle close", DEADLINE, |l| {
        l.contains("reason=idle timeout")
    });

    // SIGTERM: what was sent is echoed, then close_notify and the end; exit 0.
    let mut s = tls_server(&["--banner", "off", "--drain-timeout", "5"]);
    let mut c = Client::default()
        .connect(s.tls_addrs[0], "localhost")
        .unwrap();
    c.send(b"first\n");
    assert_eq!(c.line(), "first\n");
    let input: Vec<u8> = (0..2000)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect();
    c.send(&input);
    s.signal(libc::SIGTERM);
    let got = c.finish_after_server_close();
    assert!(
        input.starts_with(&got),
        "the echo is not a prefix of the input"
    );
    let closed = s.log.wait_for("close", DEADLINE, |l| {
        l.contains("TCP connection closed.") && l.contains("reason=shutdown")
    });
    let echoed: usize = field(&closed, "bytes=").parse().unwrap();
    assert_eq!(
        got.len() + "first\n".len(),
        echoed,
        "every byte read was delivered"
    );
    assert_eq!(s.wait_exit(DEADLINE).code(), Some(0));
}

impl Tls {
    /// Reads until the server ends the stream (its `close_notify`, or the TCP end).
    fn finish_after_server_close(mut self) -> Vec<u8> {
        let mut rest = Vec::new();
        match self.stream.read_to_end(&mut rest) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {}
            Err(e) => panic!("{e} after {} bytes", rest.len()),
        }
        rest
    }
}

#[test]
fn openssl_s_client_sees_the_banner_and_its_echo() {
    let pki = Pki::new("openssl");
    let (cert, key) = pki.server();
    let client_id = pki.issue("client", Key::RsaPkcs1, &["openssl-client"], true);
    let s = tls_server(&[
        "--tls-cert",
        path(&cert),
        "--tls-key",
        path(&key),
        "--tls-client-ca",
        path(&pki.ca()),
        "--tls-client-auth",
        "optional",
        "--prefix",
        "one",
    ]);
    let run = |extra: &[&str]| {
        let mut child = Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &s.tls_addrs[0].to_string(),
                "-servername",
                "v1.example.com",
            ])
            .args([
                "-alpn",
                "h2,http/1.1",
                "-CAfile",
                path(&pki.ca()),
                "-verify_return_error",
            ])
            // -quiet alone would keep the connection open after the input ends.
            .args(["-quiet", "-no_ign_eof"])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("openssl (make test installs it)");
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"hello from openssl\n").unwrap();
        // s_client ends when its input does; give the echo the time to come back first.
        let out = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(out).lines() {
                let line = line.unwrap();
                let done = line.starts_with("one ");
                lines.push(line);
                if done {
                    break;
                }
            }
            lines
        });
        let lines = reader.join().unwrap();
        drop(stdin);
        let _ = child.wait();
        lines
    };
    let lines = run(&[]);
    assert_eq!(
        lines.last().map(String::as_str),
        Some("one hello from openssl"),
        "{lines:?}"
    );
    let facts = tls_line(lines.iter().find(|l| l.starts_with("TLS: ")).unwrap());
    assert_eq!(facts["sni"], "v1.example.com");
    assert_eq!(facts["alpn"], "h2");
    assert_eq!(facts["client"], "none");
    let lines = run(&["-cert", path(&client_id.0), "-key", path(&client_id.1)]);
    let facts = tls_line(lines.iter().find(|l| l.starts_with("TLS: ")).unwrap());
    assert_eq!(facts["client"], "CN=openssl-client,O=tcp-echo tests");
    assert_eq!(
        lines.last().map(String::as_str),
        Some("one hello from openssl")
    );
}

/// Runs `tcp-echo probe ARGS`; (exit code, stdout).
fn probe(args: &[&str]) -> (Option<i32>, String) {
    let mut all = vec!["probe"];
    all.extend_from_slice(args);
    let out = support::command(&all, &[])
        .stdin(Stdio::null())
        .output()
        .expect("run tcp-echo probe");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn the_probe_speaks_tls_and_shows_what_each_version_was_offered() {
    let pki = Pki::new("probe");
    let (cert, key) = pki.server();
    let client_id = pki.issue("probe", Key::EcdsaSec1, &["probe-client"], true);
    let v1 = Server::start(
        &[
            "--port",
            "none",
            "--tls-port",
            "0",
            "--prefix",
            "one",
            "--tls-cert",
            path(&cert),
            "--tls-key",
            path(&key),
            "--tls-client-ca",
            path(&pki.ca()),
        ],
        &[("POD_NAME", "tcp-echo-v1-abc")],
    );
    let addr = v1.tls_addrs[0].to_string();
    let (code, out) = probe(&[
        &addr,
        "--tls",
        "--sni",
        "v1.example.com",
        "--alpn",
        "h2,http/1.1",
        "--ca",
        path(&pki.ca()),
        "--cert",
        path(&client_id.0),
        "--key",
        path(&client_id.1),
        "--connections",
        "6",
        "--expect",
        "one=1",
    ]);
    assert_eq!(code, Some(0), "{out}");
    let row = out
        .lines()
        .find(|l| l.starts_with("one "))
        .unwrap_or_else(|| panic!("{out}"));
    for cell in ["tcp-echo-v1-abc", "TLSv1.3", "v1.example.com", "h2"] {
        assert!(row.contains(cell), "{cell} missing: {out}");
    }
    let (code, json) = probe(&[
        &addr,
        "--tls",
        "--sni",
        "v1.example.com",
        "--ca",
        path(&pki.ca()),
        "--cert",
        path(&client_id.0),
        "--key",
        path(&client_id.1),
        "--connections",
        "2",
        "--json",
    ]);
    assert_eq!(code, Some(0), "{json}");
    assert!(
        json.contains(
            "\"tls\":{\"one\":{\"version\":\"TLSv1.3\",\"sni\":\"v1.example.com\",\"alpn\":\"none\"}}"
        ),
        "{json}"
    );
    // Without the client certificate the server refuses the handshake: a TLS failure.
    let (code, json) = probe(&[
        &addr,
        "--tls",
        "--ca",
        path(&pki.ca()),
        "--connections",
        "2",
        "--json",
    ]);
    assert_eq!(code, Some(1), "{json}");
    assert!(
        json.contains("\"failure_kinds\":{\"(unknown)\":{\"tls\":2}}"),
        "{json}"
    );
    // A self-signed server, accepted with --insecure; without --ca or --insecure, a usage error.
    let s = tls_server(&["--prefix", "two"]);
    let (code, out) = probe(&[
        &s.tls_addrs[0].to_string(),
        "--tls",
        "--insecure",
        "--connections",
        "2",
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("two ") && l.contains("TLSv1.3")),
        "{out}"
    );
    let (code, _) = probe(&[&s.tls_addrs[0].to_string(), "--tls"]);
    assert_eq!(code, Some(2));
}

/// The walkthroughs' certificate, made by the script docs/tls.md tells users to run: the
/// server serves it, and the probe and `openssl s_client` trust it for each routed name.
#[test]
fn the_walkthroughs_certificate_script_makes_a_certificate_clients_trust() {
    let dir = std::env::temp_dir().join(format!("tcp-echo-tls-{}-script", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("k8s/components/tls/certificate.sh");
    let out = Command::new("sh")
        .arg(&script)
        .arg(&dir)
        .output()
        .expect("run the certificate script");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    let s = Server::start(
        &[
            "--port",
            "none",
            "--tls-port",
            "0",
            "--prefix",
            "one",
            "--tls-cert",
            path(&cert),
            "--tls-key",
            path(&key),
        ],
        &[],
    );
    let addr = s.tls_addrs[0].to_string();
    for name in ["v1.example.com", "v2.example.com", "echo.example.com"] {
        let (code, out) = probe(&[
            &addr,
            "--tls",
            "--sni",
            name,
            "--ca",
            path(&cert),
            "--connections",
            "2",
        ]);
        assert_eq!(code, Some(0), "{name}: {out}");
        assert!(out.contains(name), "{out}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
