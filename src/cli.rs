//! The program: parse the settings, start logging, bind, serve until a signal, report.
//!
//! Exit codes: 0 after a clean shutdown (and for `--help`/`--version`); 2 for an invalid
//! setting, before anything is bound; 1 when the server cannot start (a port in use);
//! [`crate::shutdown::FORCED_EXIT_CODE`] when a second signal cuts the drain short.

use std::ffi::OsString;
use std::process::ExitCode;

use log::{info, warn};

use crate::config::{self, Command};
use crate::{limits, logging, shutdown, Server};

/// The `tcp-echo` program: runs it with these arguments (the first is the program name), the
/// server, or with `probe` first, the client that checks which versions answer (see
/// `tcp-echo probe --help`). Returns the exit code.
pub fn main<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    if args.get(1).is_some_and(|a| a == "probe") {
        return tcp_echo_probe::main(&args[1..], &crate::banner::BANNER_LINES);
    }
    let (config, warnings, clap) = match config::from_args(args) {
        Ok(Command::Serve(config, warnings, clap)) => (config, warnings, clap),
        Ok(Command::Print(text)) => {
            print!("{text}");
            if !text.ends_with('\n') {
                println!();
            }
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("tcp-echo: {e}");
            return ExitCode::from(2);
        }
    };
    let config = *config;
    logging::init();
    for w in &warnings {
        warn!("{w}");
    }
    limits::raise_open_files(&config);
    limits::check_threads(&config);
    let result = Server::bind(config).and_then(|mut server| {
        shutdown::install_signal_handler(server.shutdown_handle())?;
        server.drop_once_started(clap);
        server.run()
    });
    match result {
        Ok(summary) => {
            info!("tcp-echo stopped: {summary}");
            ExitCode::SUCCESS
        }
        Err(e @ crate::Error::Setting(_)) => {
            eprintln!("tcp-echo: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("tcp-echo: {e}");
            ExitCode::FAILURE
        }
    }
}
