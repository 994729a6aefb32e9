//! Reading a process's resources from /proc, and pinning to cores.

use std::time::Duration;

/// CPU time (user + system) of `pid`, all its threads, including those that have ended: from
/// the process's CPU clock (nanoseconds), or /proc/PID/stat (clock ticks) if that is refused.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let mut clock: libc::clockid_t = 0;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: both pointers are to valid locals.
    let ok = unsafe {
        libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) == 0
            && libc::clock_gettime(clock, &mut ts) == 0
    };
    if ok {
        return Some(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32));
    }
    let (user, system) = user_system_ticks(pid)?;
    let ticks = user + system;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Some(Duration::from_micros(ticks * 1_000_000 / hz))
}

/// User and system CPU time of `pid` in clock ticks (/proc/PID/stat): coarse, but it splits
/// the two.
pub fn user_system_ticks(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?))
}

/// Context switches (voluntary and not) of the threads of `pid` alive now.
pub fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    let mut total = 0;
    for task in tasks.flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        total += status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum::<u64>();
    }
    total
}

/// A numeric field of /proc/PID/status (`VmRSS:` in kB, `Threads:`).
pub fn status(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The cores `pid` may run on, as /proc/PID/status lists them (`0`, `1`, `0-1`).
pub fn allowed_cores(pid: u32) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("Cpus_allowed_list:"))?;
    Some(line.split_whitespace().nth(1)?.to_string())
}

/// `syscw` (write-type syscalls) from /proc/PID/io.
pub fn write_syscalls(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    s.lines()
        .find(|l| l.starts_with("syscw:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// `KernelStack:` from /proc/meminfo, kB (the whole machine's).
pub fn kernel_stack_kb() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    s.lines()
        .find(|l| l.starts_with("KernelStack:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A TcpExt counter from /proc/net/netstat (e.g. `ListenOverflows`).
pub fn tcp_ext(name: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = s.lines();
    while let (Some(head), Some(vals)) = (lines.next(), lines.next()) {
        if head.starts_with("TcpExt:") {
            let i = head.split_whitespace().position(|h| h == name)?;
            return vals.split_whitespace().nth(i)?.parse().ok();
        }
    }
    None
}

/// Pins the calling process (and threads it starts later) to `core`.
pub fn pin_self(core: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET within its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// The machine's online cores. Not `available_parallelism`, which counts the cores this
/// process may run on: once the load generator has pinned itself, that is 1.
pub fn cores() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).map_or(1, |n| n.max(1))
}

/// Kernel memory of the established TCP sockets whose local port is `port` (a server's side of
/// its connections), from `ss -tm`: receive queue, send queue and forward allocation (`r + w +
/// f` of `skmem`), in bytes, and how many sockets.
pub fn socket_memory(port: u16) -> (usize, u64) {
    let out = std::process::Command::new("ss")
        .args([
            "-tmnH",
            "state",
            "established",
            &format!("( sport = :{port} )"),
        ])
        .output()
        .expect("ss (make bench installs iproute2)");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut sockets = 0;
    let mut bytes = 0;
    for skmem in text.split("skmem:(").skip(1) {
        let fields = skmem.split(')').next().unwrap_or_default();
        for f in fields.split(',') {
            let (key, value) = f.split_at(f.find(|c: char| c.is_ascii_digit()).unwrap_or(0));
            if matches!(key, "r" | "w" | "f") {
                bytes += value.parse::<u64>().unwrap_or(0);
            }
        }
        sockets += 1;
    }
    (sockets, bytes)
}

/// The port `pid` listens on (its first listening TCP socket), from /proc: the socket inodes
/// among its descriptors, looked up in /proc/PID/net/tcp and tcp6.
pub fn listening_port(pid: u32) -> Option<u16> {
    let inodes: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(|e| {
            let link = std::fs::read_link(e.ok()?.path()).ok()?;
            let link = link.to_str()?;
            link.strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl, local_address, rem_address, st, ..., inode (field 9); 0A is LISTEN.
            let (Some(local), Some(&"0A"), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            if inode.parse().is_ok_and(|i: u64| inodes.contains(&i)) {
                return u16::from_str_radix(local.rsplit(':').next()?, 16).ok();
            }
        }
    }
    None
}
