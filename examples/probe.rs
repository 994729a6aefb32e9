//! A minimal TCP client for container tests: `probe ADDR LINE` connects, sends LINE and a
//! newline, half-closes, and prints everything the server sends until it closes. Built static
//! and run as a second container in the server's network namespace (a pod's sidecar).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(addr), Some(line)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: probe ADDR LINE");
        return ExitCode::from(2);
    };
    let run = || -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(format!("{line}\n").as_bytes())?;
        s.shutdown(Shutdown::Write)?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)?;
        Ok(out)
    };
    match run() {
        Ok(out) => {
            let _ = std::io::stdout().write_all(&out);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("probe {addr}: {e}");
            ExitCode::FAILURE
        }
    }
}
