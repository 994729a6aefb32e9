//! TLS: the certificate both servers use, the tokio-rustls peer, and the load (full
//! handshakes, and streaming inside TLS). The client never resumes a session: every handshake
//! is a full one, the server's worst case.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::load::{runtime, Replies, Streaming};

/// Writes a self-signed ECDSA P-256 certificate for `localhost` (rcgen's default key, the kind
/// tcp-echo makes for itself) and its key into `dir`: (certificate, key).
pub fn certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let _ = std::fs::create_dir_all(dir);
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("a certificate");
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&c, cert.cert.pem()).expect("write the certificate");
    std::fs::write(&k, cert.signing_key.serialize_pem()).expect("write the key");
    (c, k)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_cert(path: &Path) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_file_iter(path)
        .expect("certificate file")
        .collect::<Result<_, _>>()
        .expect("certificate PEM")
}

/// The client: trusts the certificate at `cert`, sends SNI `localhost`, never resumes.
pub fn client(cert: &Path) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in read_cert(cert) {
        roots.add(c).expect("a root");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// The tokio-rustls peer: a task per connection, the handshake, then `read` and `write_all`
/// of whatever arrived (a copy echo inside TLS).
pub fn peer(port: u16, cert: &Path, key: &Path) {
    use rustls::pki_types::pem::PemObject;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            read_cert(cert),
            PrivateKeyDer::from_pem_file(key).expect("key PEM"),
        )
        .expect("certificate and key");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("0.0.0.0", port))
            .await
            .expect("bind");
        eprintln!("listening on {}", listener.local_addr().expect("addr"));
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if tls.write_all(&buf[..n]).await.is_err() || tls.flush().await.is_err()
                            {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
}

/// Full handshakes by `concurrency` clients for `dur`, each followed by one line and its echo
/// (so that the session is known to work): (handshakes, errors, elapsed).
pub fn handshakes(
    addr: SocketAddr,
    cert: &Path,
    concurrency: usize,
    dur: Duration,
) -> (u64, u64, Duration) {
    let connector = client(cert);
    runtime().block_on(async move {
        let start = Instant::now();
        let deadline = start + dur;
        let tasks: Vec<_> = (0..concurrency)
            .map(|i| {
                let connector = connector.clone();
                let l = crate::load::line(i, 64);
                tokio::spawn(async move {
                    let (mut n, mut errors) = (0u64, 0u64);
                    let mut got = vec![0u8; l.len()];
                    while Instant::now() < deadline {
                        let ok = async {
                            let s = TcpStream::connect(addr).await?;
                            s.set_nodelay(true)?;
                            let name = ServerName::try_from("localhost").expect("a name");
                            let mut tls = connector.connect(name, s).await?;
                            tls.write_all(&l).await?;
                            tls.flush().await?;
                            tls.read_exact(&mut got).await?;
                            Ok::<_, std::io::Error>(got == l)
                        }
                        .await;
                        match ok {
                            Ok(true) => n += 1,
                            _ => errors += 1,
                        }
                    }
                    (n, errors)
                })
            })
            .collect();
        let (mut n, mut e) = (0, 0);
        for t in tasks {
            let (a, b) = t.await.expect("handshake task");
            n += a;
            e += b;
        }
        (n, e, start.elapsed())
    })
}

/// `conns` TLS clients each pipeline `line_len`-byte lines for `dur` while a reader drains and
/// verifies the echo (no prefix: a copy echo), then each closes its writing side and reads the
/// rest.
pub fn streaming(
    addr: SocketAddr,
    cert: &Path,
    conns: usize,
    line_len: usize,
    dur: Duration,
) -> Streaming {
    let connector = client(cert);
    runtime().block_on(async move {
        let mut sessions = Vec::new();
        for _ in 0..conns {
            let s = TcpStream::connect(addr).await.expect("connect");
            s.set_nodelay(true).expect("nodelay");
            let name = ServerName::try_from("localhost").expect("a name");
            sessions.push(connector.connect(name, s).await.expect("handshake"));
        }
        let per_block = (64 * 1024 / line_len).max(1);
        let block: Vec<u8> = (0..per_block)
            .flat_map(|i| crate::load::line(i, line_len))
            .collect();
        let start = Instant::now();
        let deadline = start + dur;
        let mut tasks = Vec::new();
        for tls in sessions {
            let (mut r, mut w) = tokio::io::split(tls);
            let block = block.clone();
            tasks.push(tokio::spawn(async move {
                let expected = block.clone();
                let writer = tokio::spawn(async move {
                    let mut sent = 0u64;
                    while Instant::now() < deadline {
                        if w.write_all(&block).await.is_err() {
                            break;
                        }
                        sent += block.len() as u64;
                    }
                    let _ = w.shutdown().await;
                    sent
                });
                let mut buf = vec![0u8; 256 * 1024];
                let mut replies = Replies::new(expected);
                loop {
                    match r.read(&mut buf).await {
                        Ok(0) => break,
                        Ok(n) => replies.check(&buf[..n]),
                        // The server's close without close_notify ends the stream too.
                        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                        Err(_) => {
                            replies.errors += 1;
                            break;
                        }
                    }
                }
                let sent = writer.await.unwrap_or(0);
                if replies.got != sent {
                    replies.errors += 1;
                }
                (replies.got / line_len as u64, replies.errors)
            }));
        }
        let mut out = Streaming {
            lines: 0,
            bytes: 0,
            elapsed: Duration::ZERO,
            errors: 0,
        };
        for t in tasks {
            let (lines, errors) = t.await.expect("stream task");
            out.lines += lines;
            out.errors += errors;
        }
        out.bytes = out.lines * line_len as u64;
        out.elapsed = start.elapsed();
        out
    })
}
