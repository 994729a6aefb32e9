//! tcp-echo: a small, fast and hardened TCP echo server for testing TCP routing in Kubernetes
//! and Istio.
//!
//! A [`Server`] binds one listener per port; an acceptor thread per listener admits connections
//! (at most `--max-connections`, one more is told `busy`) and hands them over a
//! `crossbeam-channel` to a bounded pool of worker threads, each serving one connection at a
//! time. See `ARCHITECTURE.md` for the map and the invariants.
//!
//! ```no_run
//! use tcp_echo::{Config, Server};
//! let config = Config::new(&[0]).and_then(|c| c.with_prefix("one")).expect("settings");
//! let server = Server::bind(config).expect("bind");
//! println!("listening on {:?}", server.local_addrs());
//! let stop = server.shutdown_handle();
//! # stop.shutdown();
//! let summary = server.run().expect("run");
//! println!("{summary}");
//! ```

#[cfg(not(unix))]
compile_error!("tcp-echo runs on Unix-like systems: Linux, macOS and the BSDs");

mod admin;
mod banner;
mod cli;
mod config;
mod connection;
mod drain;
mod echo;
mod error;
mod fault;
mod limits;
mod listener;
mod log_budget;
mod logging;
mod metrics;
mod pool;
mod proxy;
mod registry;
mod server;
mod shutdown;
mod socket;
mod threads;
#[cfg(feature = "tls")]
mod tls;
mod udp;

pub use crate::banner::BannerMode;
pub use crate::cli::main;
pub use crate::config::{Config, ConfigError};
pub use crate::error::Error;
pub use crate::fault::Spec as FaultSpec;
pub use crate::proxy::Mode as ProxyProtocol;
pub use crate::server::{Server, Summary};
pub use crate::shutdown::ShutdownHandle;
