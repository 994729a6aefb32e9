//! The peer servers tcp-echo is measured against. All print `listening on ADDR` to stderr, as
//! tcp-echo does. The line servers echo each line with the prefix and a space; the copy servers
//! echo every byte as it arrives (RFC 862, what fortio's `tcp://` client needs), without prefix.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};

/// The naive design: std's listener (backlog 128), a thread spawned per connection,
/// `read_line` then `write_all` per line.
pub fn naive(port: u16, prefix: &str) {
    let listener = TcpListener::bind(("0.0.0.0", port)).expect("bind");
    eprintln!("listening on {}", listener.local_addr().expect("addr"));
    let prefix = if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix} ")
    };
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let prefix = prefix.clone();
        std::thread::spawn(move || naive_connection(stream, &prefix));
    }
}

fn naive_connection(stream: TcpStream, prefix: &str) {
    let _ = stream.set_nodelay(true);
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let mut reply = Vec::with_capacity(prefix.len() + line.len());
                reply.extend_from_slice(prefix.as_bytes());
                reply.extend_from_slice(&line);
                if writer.write_all(&reply).is_err() {
                    return;
                }
            }
        }
    }
}

/// A tokio line-echo server with batched writes: read what is there, frame every complete
/// line into one buffer, and write it when no more input is waiting.
pub fn tokio_batched(port: u16, prefix: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let prefix = if prefix.is_empty() {
        Vec::new()
    } else {
        format!("{prefix} ").into_bytes()
    };
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("0.0.0.0", port))
            .await
            .expect("bind");
        eprintln!("listening on {}", listener.local_addr().expect("addr"));
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let prefix = prefix.clone();
            tokio::spawn(async move { tokio_connection(stream, &prefix).await });
        }
    });
}

async fn tokio_connection(mut stream: tokio::net::TcpStream, prefix: &[u8]) {
    use tokio::io::AsyncWriteExt;
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; 16 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    let mut out: Vec<u8> = Vec::new();
    loop {
        if stream.readable().await.is_err() {
            return;
        }
        // Read everything that is waiting, framing as we go (bounded), then write once.
        let mut eof = false;
        while out.len() < 256 * 1024 {
            match stream.try_read(&mut buf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    let mut data = &buf[..n];
                    while let Some(i) = data.iter().position(|&b| b == b'\n') {
                        out.extend_from_slice(prefix);
                        out.extend_from_slice(&pending);
                        out.extend_from_slice(&data[..=i]);
                        pending.clear();
                        data = &data[i + 1..];
                    }
                    pending.extend_from_slice(data);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => return,
            }
        }
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        if eof {
            return;
        }
    }
}

/// The naive prompt echo: std's listener, a thread spawned per connection, `read` then
/// `write_all` of whatever arrived (go-echo's design).
pub fn naive_copy(port: u16) {
    let listener = TcpListener::bind(("0.0.0.0", port)).expect("bind");
    eprintln!("listening on {}", listener.local_addr().expect("addr"));
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        std::thread::spawn(move || {
            use std::io::Read;
            let _ = stream.set_nodelay(true);
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if stream.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
}

/// The tokio prompt echo: a task per connection, `read` then `write_all`.
pub fn tokio_copy(port: u16) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
}
