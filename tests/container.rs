//! The image, run for real through the Docker engine, and the arm64 binary under qemu.
//! Run by `make image-test`, which builds the images and passes their names:
//! `TCP_ECHO_IMAGE`, `TCP_ECHO_IMAGE_ARM64`, `TCP_ECHO_STATIC` (the x86_64 binary the image
//! holds), `TCP_ECHO_STATIC_ARM64`.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::{connect, read_exactly, read_to_eof, wait_until, DEADLINE};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run `make image-test`"))
}

fn docker(args: &[&str]) -> Output {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("run docker");
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn docker_text(args: &[&str]) -> String {
    String::from_utf8(docker(args).stdout)
        .unwrap()
        .trim()
        .to_string()
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A container removed (with force) when dropped.
struct Container {
    name: String,
}

impl Container {
    /// `docker run -d --name UNIQUE {options} IMAGE {args}`.
    fn run(options: &[&str], image: &str, args: &[&str]) -> Container {
        let name = format!(
            "tcp-echo-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let mut all = vec!["run", "-d", "--name", &name];
        all.extend_from_slice(options);
        all.push(image);
        all.extend_from_slice(args);
        docker(&all);
        Container { name }
    }

    fn logs(&self) -> String {
        let out = docker(&["logs", &self.name]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    fn inspect(&self, format: &str) -> String {
        docker_text(&["inspect", "-f", format, &self.name])
    }

    fn wait_listening(&self, listeners: usize) {
        wait_until("the container to listen", DEADLINE, || {
            self.logs().matches("listening on").count() >= listeners
        });
    }

    /// The host address Docker published `port/tcp` on.
    fn published(&self, port: u16) -> SocketAddr {
        let text = docker_text(&["port", &self.name, &format!("{port}/tcp")]);
        let first = text.lines().next().unwrap_or_default();
        first
            .parse()
            .unwrap_or_else(|_| panic!("docker port said {text:?}"))
    }

    fn wait_exit(&self) -> i64 {
        wait_until("the container to exit", DEADLINE, || {
            self.inspect("{{.State.Running}}") == "false"
        });
        self.inspect("{{.State.ExitCode}}").parse().unwrap()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.name])
            .output();
    }
}

fn exchange(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut s = connect(addr);
    s.write_all(data).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    read_to_eof(&mut s)
}

#[test]
fn run_with_a_banner_and_echo() {
    let c = Container::run(
        &[
            "-e",
            "TCP_PORT=3333",
            "-e",
            "NODE_NAME=EchoNode",
            "-p",
            "127.0.0.1::3333",
        ],
        &env("TCP_ECHO_IMAGE"),
        &[],
    );
    c.wait_listening(1);
    let mut s = connect(c.published(3333));
    let banner = "Welcome, you are connected to node EchoNode.\n";
    assert_eq!(read_exactly(&mut s, banner.len()), banner.as_bytes());
    s.write_all(b"hello\nlast").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_eof(&mut s), b"hello\nlast");
}

#[test]
fn the_istio_sample_invocation_works_unchanged() {
    let c = Container::run(
        &["-p", "127.0.0.1::9000", "-p", "127.0.0.1::9001"],
        &env("TCP_ECHO_IMAGE"),
        &["9000,9001", "one"],
    );
    c.wait_listening(2);
    for port in [9000, 9001] {
        assert_eq!(
            exchange(c.published(port), b"hello\n"),
            b"one hello\n",
            "port {port}"
        );
    }
}

#[test]
fn docker_stop_is_fast_and_exits_0() {
    let c = Container::run(&["-p", "127.0.0.1::3333"], &env("TCP_ECHO_IMAGE"), &[]);
    c.wait_listening(1);
    // An idle client connected, as a person with nc would be.
    let mut idle = connect(c.published(3333));
    idle.write_all(b"hi\n").unwrap();
    assert_eq!(read_exactly(&mut idle, 3), b"hi\n");
    let start = Instant::now();
    docker(&["stop", &c.name]);
    let took = start.elapsed();
    println!("docker stop took {took:?}");
    assert!(
        took < Duration::from_secs(2),
        "docker stop took {took:?}: SIGTERM not handled as PID 1?"
    );
    assert_eq!(c.inspect("{{.State.ExitCode}}"), "0");
    assert!(c.logs().contains("tcp-echo stopped"));
}

#[test]
fn runs_read_only_without_capabilities_as_uid_65532() {
    let c = Container::run(
        &[
            "--read-only",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "-p",
            "127.0.0.1::3333",
        ],
        &env("TCP_ECHO_IMAGE"),
        &["--prefix", "locked"],
    );
    c.wait_listening(1);
    assert_eq!(exchange(c.published(3333), b"down\n"), b"locked down\n");
    assert_eq!(c.inspect("{{.Config.User}}"), "65532:65532");
    // The process itself, seen from the host.
    let pid = c.inspect("{{.State.Pid}}");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap()
            .to_string()
    };
    assert!(
        field("Uid:")
            .split_whitespace()
            .skip(1)
            .all(|u| u == "65532"),
        "{}",
        field("Uid:")
    );
    assert!(
        field("Gid:")
            .split_whitespace()
            .skip(1)
            .all(|g| g == "65532"),
        "{}",
        field("Gid:")
    );
    assert!(
        field("CapEff:").ends_with("0000000000000000"),
        "{}",
        field("CapEff:")
    );
    assert!(
        field("NoNewPrivs:").ends_with('1'),
        "{}",
        field("NoNewPrivs:")
    );
}

#[test]
fn the_image_holds_exactly_the_binary() {
    let image = env("TCP_ECHO_IMAGE");
    let dir = std::env::temp_dir().join(format!("tcp-echo-save-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let tar = dir.join("image.tar");
    docker(&["save", "-o", tar.to_str().unwrap(), &image]);
    let untar = |archive: &PathBuf, into: &PathBuf| {
        let ok = Command::new("tar")
            .arg("-xf")
            .arg(archive)
            .arg("-C")
            .arg(into)
            .status()
            .unwrap();
        assert!(ok.success());
    };
    untar(&tar, &dir);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let layers = manifest[0]["Layers"].as_array().expect("layers");
    let mut files = Vec::new();
    for layer in layers {
        let list = Command::new("tar")
            .arg("-tvf")
            .arg(dir.join(layer.as_str().unwrap()))
            .output()
            .unwrap();
        files.extend(
            String::from_utf8_lossy(&list.stdout)
                .lines()
                .map(str::to_string),
        );
    }
    assert_eq!(files.len(), 1, "image files: {files:#?}");
    assert!(
        files[0].ends_with(" tcp-echo") && files[0].starts_with("-rwx"),
        "{files:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);

    let size: u64 = docker_text(&["image", "inspect", "-f", "{{.Size}}", &image])
        .parse()
        .unwrap();
    println!("image {image}: {size} bytes");
    // The server (about 1.0 MB) and its client mode, `tcp-echo probe` (about 150 KB, built
    // for size): the image runs both, so that no other image is needed in the cluster.
    // TLS (rustls and ring) included: under 2.5 MiB.
    assert!(size < 5 << 19, "image is {size} bytes, over 2.5 MiB");

    let inspect = |f: &str| docker_text(&["image", "inspect", "-f", f, &image]);
    assert_eq!(inspect("{{json .Config.Entrypoint}}"), r#"["/tcp-echo"]"#);
    assert_eq!(
        inspect("{{json .Config.ExposedPorts}}"),
        r#"{"3333/tcp":{}}"#
    );
    let labels: serde_json::Value =
        serde_json::from_str(&inspect("{{json .Config.Labels}}")).unwrap();
    for key in ["title", "description", "version", "source", "licenses"] {
        let v = labels[format!("org.opencontainers.image.{key}")]
            .as_str()
            .unwrap_or_default();
        assert!(!v.is_empty(), "label {key} missing: {labels}");
    }
    assert_eq!(
        labels["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );
}

#[test]
fn a_probe_from_the_image_itself_in_the_pod_network_reaches_the_server_on_localhost() {
    // The image is FROM scratch: no shell, no nc. Its own client mode answers the
    // walkthroughs' question from a second container in the pod's network namespace.
    let server = Container::run(
        &["-e", "POD_NAME=tcp-echo-v1-pod"],
        &env("TCP_ECHO_IMAGE"),
        &["3333", "one"],
    );
    server.wait_listening(1);
    let probe = Container::run(
        &["--network", &format!("container:{}", server.name)],
        &env("TCP_ECHO_IMAGE"),
        &[
            "probe",
            "127.0.0.1:3333",
            "--connections",
            "20",
            "--expect",
            "one=1",
            "--json",
        ],
    );
    assert_eq!(probe.wait_exit(), 0, "probe failed: {}", probe.logs());
    let json = probe.logs();
    for field in [
        "\"connections\":20,\"ok\":20,\"failed\":0",
        "\"versions\":{\"one\":20}",
        "\"pods\":{\"tcp-echo-v1-pod\":20}",
        "\"expect_ok\":true",
    ] {
        assert!(json.contains(field), "{field} missing: {json}");
    }
    // And against an address nothing listens on: exit 1, not a hang.
    let failing = Container::run(
        &["--network", &format!("container:{}", server.name)],
        &env("TCP_ECHO_IMAGE"),
        &[
            "probe",
            "127.0.0.1:4444",
            "--connections",
            "1",
            "--timeout",
            "1",
        ],
    );
    assert_eq!(failing.wait_exit(), 1, "{}", failing.logs());
}

#[test]
fn bad_configuration_exits_2_with_one_line() {
    let c = Container::run(&["-e", "TCP_PORT=notaport"], &env("TCP_ECHO_IMAGE"), &[]);
    assert_eq!(c.wait_exit(), 2);
    let logs = c.logs();
    assert_eq!(logs.lines().count(), 1, "{logs:?}");
    assert!(
        logs.contains("TCP_PORT") && logs.contains("--port") && logs.contains("notaport"),
        "{logs}"
    );
}

#[test]
fn the_arm64_image_is_built_for_arm64() {
    let image = env("TCP_ECHO_IMAGE_ARM64");
    assert_eq!(
        docker_text(&[
            "image",
            "inspect",
            "-f",
            "{{.Os}}/{{.Architecture}}",
            &image
        ]),
        "linux/arm64"
    );
    println!(
        "image {image}: {} bytes",
        docker_text(&["image", "inspect", "-f", "{{.Size}}", &image])
    );
}

/// The sizes of the relocation tables an ELF64 little-endian executable's dynamic section
/// names: (`DT_RELASZ`, `DT_RELRSZ`); `None` without a dynamic section.
fn relocation_tables(elf: &[u8]) -> Option<(u64, u64)> {
    let u16_at = |at: usize| u16::from_le_bytes(elf[at..at + 2].try_into().unwrap());
    let u32_at = |at: usize| u32::from_le_bytes(elf[at..at + 4].try_into().unwrap());
    let u64_at = |at: usize| u64::from_le_bytes(elf[at..at + 8].try_into().unwrap());
    assert_eq!(
        &elf[..6],
        b"\x7fELF\x02\x01",
        "not an ELF64 little-endian file"
    );
    let (phoff, phentsize, phnum) = (u64_at(32) as usize, u16_at(54) as usize, u16_at(56));
    const PT_DYNAMIC: u32 = 2;
    const DT_RELASZ: u64 = 8;
    const DT_RELRSZ: u64 = 35;
    let dynamic = (0..phnum as usize)
        .map(|i| phoff + i * phentsize)
        .find(|&h| u32_at(h) == PT_DYNAMIC)?;
    let (offset, size) = (u64_at(dynamic + 8) as usize, u64_at(dynamic + 32) as usize);
    let (mut rela, mut relr) = (0, 0);
    for entry in (offset..offset + size).step_by(16) {
        match u64_at(entry) {
            0 => break,
            DT_RELASZ => rela = u64_at(entry + 8),
            DT_RELRSZ => relr = u64_at(entry + 8),
            _ => {}
        }
    }
    Some((rela, relr))
}

#[test]
fn the_static_binary_packs_its_relocations() {
    // A static-pie binary relocates itself at start; packed (DT_RELR) its table is under
    // 1 KB instead of 80 KB of RELA entries paged in at every start (.cargo/config.toml).
    let binary = std::fs::read(env("TCP_ECHO_STATIC")).unwrap();
    let (rela, relr) =
        relocation_tables(&binary).expect("a static-pie binary has a dynamic section");
    println!("RELA {rela} bytes, RELR {relr} bytes");
    assert_eq!(rela, 0, "relocations left unpacked");
    assert!(relr > 0 && relr < 4096, "RELR table of {relr} bytes");
}

#[test]
fn the_arm64_binary_echoes_under_qemu() {
    let binary = env("TCP_ECHO_STATIC_ARM64");
    let mut head = [0u8; 20];
    std::fs::File::open(&binary)
        .unwrap()
        .read_exact(&mut head)
        .unwrap();
    assert_eq!(
        u16::from_le_bytes([head[18], head[19]]),
        183,
        "e_machine is not EM_AARCH64"
    );
    let mut cmd = Command::new("qemu-aarch64-static");
    cmd.args([
        binary.as_str(),
        "--port",
        "0",
        "--bind",
        "127.0.0.1",
        "--prefix",
        "arm64",
    ]);
    for var in support::SERVER_VARS {
        cmd.env_remove(var);
    }
    cmd.env("NODE_NAME", "qemu");
    let s = support::Server::spawn(cmd);
    let mut c = TcpStream::connect(s.addrs[0]).unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    c.write_all(b"hello\nlast").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    assert_eq!(
        read_to_eof(&mut c),
        b"Welcome, you are connected to node qemu.\narm64 hello\narm64 last"
    );
}

#[test]
fn under_a_pid_limit_the_server_says_why_it_refuses() {
    // 24 tasks for the container: the main thread, the signal handler and the acceptor leave
    // about 21 workers, far below the default --max-connections 1024.
    let c = Container::run(
        &[
            "--pids-limit",
            "24",
            "-e",
            "ECHO_BANNER=off",
            "-p",
            "127.0.0.1::3333",
        ],
        &env("TCP_ECHO_IMAGE"),
        &[],
    );
    c.wait_listening(1);
    let warning = c.logs();
    assert!(
        warning.contains("the thread limit (pids.max 24) is below what --max-connections 1024"),
        "{warning}"
    );
    let addr = c.published(3333);
    let mut held = Vec::new();
    let mut refused = None;
    for i in 0..60 {
        let mut s = connect(addr);
        s.write_all(format!("{i}\n").as_bytes()).unwrap();
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        while !got.ends_with(b"\n") && s.read(&mut byte).unwrap_or(0) == 1 {
            got.push(byte[0]);
        }
        if got == format!("{i}\n").as_bytes() {
            held.push(s);
        } else {
            refused = Some((i, String::from_utf8_lossy(&got).into_owned()));
            break;
        }
    }
    let (at, reply) = refused.expect("the pid limit was never reached");
    assert!(at < 30, "{at} connections served under a limit of 24 tasks");
    // The refusal names the real cause, not "busy (1024 connections)".
    assert!(
        reply.contains("cannot start a worker") && !reply.contains("busy"),
        "{reply:?}"
    );
    let log = c.logs();
    let line = log
        .lines()
        .find(|l| l.contains("no worker thread could be started"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains(&format!("with {at} connections open")),
        "{line}"
    );
    // Room again once a client leaves.
    drop(held.pop());
    wait_until("a slot to free", DEADLINE, || {
        c.logs().matches("TCP connection closed.").count() >= 1
    });
    let mut s = connect(addr);
    s.write_all(b"again\n").unwrap();
    assert_eq!(read_exactly(&mut s, 6), b"again\n");
}
