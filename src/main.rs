//! The `tcp-echo` binary; everything lives in the library (see `cli`).

fn main() -> std::process::ExitCode {
    tcp_echo::main(std::env::args_os())
}
