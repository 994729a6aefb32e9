//! What the server counts, and its rendering in Prometheus's text format (`/metrics`).
//!
//! Every labelled counter is indexed by a fieldless enum defined with [`labelled!`]: the
//! variant's metric label, its place in the counter array and the list of all of them come
//! from that one definition, so a new reason cannot be left out of the metrics or counted
//! under another's label. Counters are relaxed atomics: bytes one add per read, the rest one
//! add per connection.

use std::fmt::Write as _;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};

/// An enum whose variants are the label values of a counter family.
pub(crate) trait Labelled: Copy + 'static {
    /// Every variant, in declaration order (which is also its counter index).
    const ALL: &'static [Self];
    /// The variant's place in [`Labelled::ALL`].
    fn index(self) -> usize;
    /// The variant's label value in the metrics.
    fn label(self) -> &'static str;
}

/// Defines a fieldless enum and its [`Labelled`] implementation from one list of
/// `Variant => "label"` pairs.
macro_rules! labelled {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $label:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant, )*
        }

        impl $crate::metrics::Labelled for $name {
            const ALL: &'static [$name] = &[$($name::$variant,)*];
            fn index(self) -> usize {
                self as usize
            }
            fn label(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)*
                }
            }
        }
    };
}

pub(crate) use labelled;

/// One counter per variant of `L`.
#[derive(Debug)]
pub(crate) struct Counters<L> {
    counts: Box<[AtomicU64]>,
    _labels: PhantomData<L>,
}

impl<L: Labelled> Default for Counters<L> {
    fn default() -> Self {
        Counters {
            counts: L::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            _labels: PhantomData,
        }
    }
}

impl<L: Labelled> Counters<L> {
    /// Counts one `l`.
    pub(crate) fn add(&self, l: L) {
        self.counts[l.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// The count of `l`.
    pub(crate) fn get(&self, l: L) -> u64 {
        self.counts[l.index()].load(Ordering::Relaxed)
    }

    /// The sum over every label.
    pub(crate) fn total(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// `{name="label"} count` for every label, in declaration order.
    fn samples(&self, name: &str) -> Vec<(String, f64)> {
        L::ALL
            .iter()
            .map(|&l| (format!("{{{name}=\"{}\"}}", l.label()), self.get(l) as f64))
            .collect()
    }
}

labelled! {
    /// Why a connection was not served.
    pub(crate) enum Refusal {
        /// `--max-connections` were open.
        Busy => "busy",
        /// No worker thread could be started (a thread or pid limit).
        NoWorker => "no_worker",
        /// No valid PROXY header.
        ProxyProtocol => "proxy_protocol",
    }
}

labelled! {
    /// Why a served connection ended, as its close record and the metrics say it.
    pub(crate) enum Close {
        /// The client closed its side.
        Eof => "eof",
        /// It moved no data for `--idle-timeout`.
        IdleTimeout => "idle_timeout",
        /// It was open for `--max-duration`.
        MaxDuration => "max_duration",
        /// The client did not take its replies for the write timeout.
        WriteTimeout => "write_timeout",
        /// The server is shutting down.
        Shutdown => "shutdown",
        /// The server closed it at the drain deadline.
        DrainDeadline => "drain_deadline",
        /// The client reset it.
        Reset => "reset",
        /// Another I/O error.
        Error => "error",
        /// The TLS handshake failed (see `tcp_echo_tls_handshakes_total` for why).
        Handshake => "tls_handshake",
        /// The fault `close-after` closed it.
        FaultCloseAfter => "fault_close_after",
        /// The fault `reset` reset it at once.
        FaultReset => "fault_reset",
    }
}

impl Close {
    /// How the close record says it (`reason=...`).
    pub(crate) fn text(self) -> &'static str {
        match self {
            Close::Eof => "EOF",
            Close::IdleTimeout => "idle timeout",
            Close::MaxDuration => "max duration",
            Close::WriteTimeout => "write timeout (client not reading)",
            Close::Shutdown => "shutdown",
            Close::DrainDeadline => "shutdown (closed at the drain deadline)",
            Close::Reset => "reset by peer",
            Close::Error => "error",
            Close::Handshake => "TLS handshake failed",
            Close::FaultCloseAfter => "fault close-after",
            Close::FaultReset => "fault reset",
        }
    }
}

/// What the server has done: the exit summary and the counters of `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    /// Connections handed to a worker.
    pub(crate) accepted: AtomicU64,
    /// Connections served to their end.
    pub(crate) served: AtomicU64,
    /// Connections refused, by why.
    pub(crate) refused: Counters<Refusal>,
    /// Connections closed, by why.
    pub(crate) closed: Counters<Close>,
    /// Bytes received and echoed.
    pub(crate) bytes: AtomicU64,
    /// Connections that drew each fault.
    pub(crate) faulted: Counters<crate::fault::Kind>,
    /// The UDP echo's datagrams and bytes.
    pub(crate) udp: crate::udp::Counters,
    /// TLS handshakes, by how they ended.
    #[cfg(feature = "tls")]
    pub(crate) handshakes: Counters<crate::tls::Handshake>,
}

/// The gauges `/metrics` shows besides the counters, read when it is asked.
pub(crate) struct Gauges {
    /// Connections open now.
    pub(crate) open: u64,
    /// Worker threads alive.
    pub(crate) workers: u64,
    /// `--max-connections`.
    pub(crate) max_connections: u64,
    /// `Received` records the log budget kept out of the log.
    pub(crate) log_suppressed: u64,
    /// When the server started, in seconds since the Unix epoch.
    pub(crate) started: f64,
    /// Whether the fault `refuse` holds the echo listeners closed.
    pub(crate) refusing: bool,
}

/// Writes one metric family: HELP, TYPE and its samples.
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

fn one(v: u64) -> Vec<(String, f64)> {
    vec![(String::new(), v as f64)]
}

impl Metrics {
    /// The metrics in Prometheus's text format (version 0.0.4).
    pub(crate) fn render(&self, g: &Gauges) -> String {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::new();
        let o = &mut out;
        family(
            o,
            "tcp_echo_connections_accepted_total",
            "counter",
            "Connections handed to a worker (those then refused for their PROXY header included).",
            &one(load(&self.accepted)),
        );
        family(
            o,
            "tcp_echo_connections_refused_total",
            "counter",
            "Connections refused: busy (--max-connections open), no_worker (no thread could be started), proxy_protocol (no valid PROXY header).",
            &self.refused.samples("reason"),
        );
        family(
            o,
            "tcp_echo_connections_open",
            "gauge",
            "Connections open now.",
            &one(g.open),
        );
        family(
            o,
            "tcp_echo_connections_closed_total",
            "counter",
            "Connections served to their end, by why they ended.",
            &self.closed.samples("reason"),
        );
        family(
            o,
            "tcp_echo_bytes_echoed_total",
            "counter",
            "Bytes received and echoed.",
            &one(load(&self.bytes)),
        );
        family(
            o,
            "tcp_echo_udp_datagrams_received_total",
            "counter",
            "UDP datagrams received on --udp ports.",
            &one(load(&self.udp.received)),
        );
        family(
            o,
            "tcp_echo_udp_datagrams_total",
            "counter",
            "UDP datagrams received on --udp ports, by result: answered, too_large (the reply would not fit in one datagram), send_failed.",
            &self.udp.by_result.samples("result"),
        );
        family(
            o,
            "tcp_echo_udp_bytes_total",
            "counter",
            "Bytes received in UDP datagrams.",
            &one(load(&self.udp.bytes)),
        );
        #[cfg(feature = "tls")]
        family(
            o,
            "tcp_echo_tls_handshakes_total",
            "counter",
            "TLS handshakes on --tls-port ports, by result: ok, timeout, closed (by the client), not_tls, client_certificate (missing or refused), no_application_protocol, incompatible (no version or cipher in common), error.",
            &self.handshakes.samples("result"),
        );
        family(
            o,
            "tcp_echo_connections_faulted_total",
            "counter",
            "Connections that drew each fault of --fault or PUT /fault: delay, connect_delay, rate, close_after, reset, hang.",
            &self.faulted.samples("fault"),
        );
        family(
            o,
            "tcp_echo_fault_refusing",
            "gauge",
            "1 while the fault refuse keeps the echo listeners closed, else 0.",
            &one(u64::from(g.refusing)),
        );
        family(
            o,
            "tcp_echo_log_records_suppressed_total",
            "counter",
            "Received records (pieces) the log budget kept out of the log.",
            &one(g.log_suppressed),
        );
        family(
            o,
            "tcp_echo_worker_threads",
            "gauge",
            "Worker threads alive.",
            &one(g.workers),
        );
        family(
            o,
            "tcp_echo_max_connections",
            "gauge",
            "The --max-connections setting.",
            &one(g.max_connections),
        );
        family(
            o,
            "tcp_echo_start_time_seconds",
            "gauge",
            "When the server started, in seconds since the Unix epoch.",
            &[(String::new(), g.started)],
        );
        family(
            o,
            "tcp_echo_build_info",
            "gauge",
            "The version of tcp-echo, as a label.",
            &[(
                format!("{{version=\"{}\"}}", env!("CARGO_PKG_VERSION")),
                1.0,
            )],
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    labelled! {
        enum Colour {
            Red => "red",
            Blue => "blue",
        }
    }

    #[test]
    fn labels_and_indices_come_from_one_list() {
        assert_eq!(Colour::ALL, &[Colour::Red, Colour::Blue]);
        assert_eq!(Colour::Blue.index(), 1);
        assert_eq!(Colour::Blue.label(), "blue");
        let c = Counters::<Colour>::default();
        c.add(Colour::Blue);
        c.add(Colour::Blue);
        assert_eq!(
            (c.get(Colour::Red), c.get(Colour::Blue), c.total()),
            (0, 2, 2)
        );
        assert_eq!(
            c.samples("colour"),
            vec![
                ("{colour=\"red\"}".to_string(), 0.0),
                ("{colour=\"blue\"}".to_string(), 2.0)
            ]
        );
    }

    #[test]
    fn every_close_reason_has_its_own_label_and_text() {
        let labels: Vec<&str> = Close::ALL.iter().map(|c| c.label()).collect();
        let texts: Vec<&str> = Close::ALL.iter().map(|c| c.text()).collect();
        for list in [&labels, &texts] {
            let mut unique = list.to_vec();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), list.len(), "{list:?}");
        }
    }
}
