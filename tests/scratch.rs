//! The scratch property without Docker: the static binary runs and echoes in an empty root
//! directory (no libc, no loader, no /etc, nothing), which is what a `FROM scratch` image gives
//! it. Run by `make test`, which builds the binary and passes its path in `TCP_ECHO_STATIC`.

mod support;

use std::path::PathBuf;
use std::process::Command;

use support::{exchange, Server};

fn static_binary() -> PathBuf {
    let path = std::env::var_os("TCP_ECHO_STATIC")
        .expect("TCP_ECHO_STATIC is not set: run `make test`, which builds the static binary");
    let path = PathBuf::from(path);
    assert!(
        path.is_file(),
        "{} does not exist: run `make static`",
        path.display()
    );
    path
}

fn u16_at(b: &[u8], at: usize) -> usize {
    u16::from_le_bytes([b[at], b[at + 1]]) as usize
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Reads an ELF64 file's program headers: (has PT_INTERP, number of DT_NEEDED entries).
fn elf_interp_and_needed(elf: &[u8]) -> (bool, usize) {
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(elf[4], 2, "not ELF64");
    let (phoff, phentsize, phnum) = (
        u64_at(elf, 0x20) as usize,
        u16_at(elf, 0x36),
        u16_at(elf, 0x38),
    );
    let mut interp = false;
    let mut needed = 0;
    for i in 0..phnum {
        let ph = &elf[phoff + i * phentsize..];
        let p_type = u32::from_le_bytes(ph[..4].try_into().unwrap());
        match p_type {
            3 => interp = true, // PT_INTERP
            2 => {
                // PT_DYNAMIC: count DT_NEEDED (tag 1) entries.
                let (off, size) = (u64_at(ph, 8) as usize, u64_at(ph, 32) as usize);
                for entry in elf[off..off + size].chunks_exact(16) {
                    match u64_at(entry, 0) {
                        0 => break,
                        1 => needed += 1,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    (interp, needed)
}

#[test]
fn the_static_binary_needs_no_interpreter_and_no_shared_library() {
    let elf = std::fs::read(static_binary()).unwrap();
    assert_eq!(elf_interp_and_needed(&elf), (false, 0));
    // The check itself sees a dynamic binary for what it is.
    let dynamic = std::fs::read("/bin/sh").unwrap();
    let (interp, needed) = elf_interp_and_needed(&dynamic);
    assert!(interp && needed > 0);
}

#[test]
fn the_static_binary_with_tls_stays_under_2_5_mib() {
    let size = std::fs::metadata(static_binary()).unwrap().len();
    assert!(
        size < 5 << 19,
        "the static binary is {size} bytes, over 2.5 MiB"
    );
    // It is the TLS build: the flags are there.
    let out = Command::new(static_binary())
        .arg("--help")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("--tls-port"));
}

#[test]
fn the_static_binary_echoes_in_an_empty_root() {
    let root = std::env::temp_dir().join(format!("tcp-echo-scratch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    std::fs::copy(static_binary(), root.join("tcp-echo")).unwrap();
    assert_eq!(
        std::fs::read_dir(&root).unwrap().count(),
        1,
        "the root holds only the binary"
    );

    // chroot needs root; elsewhere a user namespace maps us to root for it.
    let mut cmd = if unsafe { libc::geteuid() } == 0 {
        Command::new("chroot")
    } else {
        let mut c = Command::new("unshare");
        c.args(["--map-root-user", "chroot"]);
        c
    };
    cmd.arg(&root)
        .args(["/tcp-echo", "--port", "0", "--prefix", "scratch"]);
    for var in support::SERVER_VARS {
        cmd.env_remove(var);
    }
    cmd.env("NODE_NAME", "EmptyRoot");
    let s = Server::spawn(cmd);
    assert_eq!(
        exchange(s.addrs[0], b"hello\nlast"),
        b"Welcome, you are connected to node EmptyRoot.\nscratch hello\nscratch last"
    );
    drop(s);
    let _ = std::fs::remove_dir_all(&root);
}
