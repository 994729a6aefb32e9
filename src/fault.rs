//! Faults on demand (`--fault SPEC`, and `PUT /fault` on the admin port with
//! `--admin-control`): the server itself misbehaves, per connection or for a share of them,
//! so that what a proxy does about it can be tested.
//!
//! A SPEC is a comma-separated list of items (durations in seconds or with `ms`/`s`, sizes in
//! bytes or with `KiB`/`MiB`): `delay=DUR`, `jitter=DUR`, `connect-delay=DUR`, `rate=SIZE`,
//! `close-after=SIZE` or `close-after=DUR`, `reset`, `hang`, `refuse`, `percent=P`. Every item
//! but `refuse` is drawn per connection (with probability `percent`), when it is accepted; a
//! connection keeps what it drew. `refuse` closes the echo listeners while it is set.
//!
//! No thread is added: the worker that serves a connection sleeps, stops reading, closes or
//! resets it; the time limits of any connection (idle timeout, maximum duration, the drain at
//! shutdown) end a faulted one too.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::metrics::labelled;
use crate::threads;

labelled! {
    /// A per-connection fault, for `/metrics` (connections that drew it).
    pub(crate) enum Kind {
        /// `delay` (and `jitter`).
        Delay => "delay",
        /// `connect-delay`.
        ConnectDelay => "connect_delay",
        /// `rate`.
        Rate => "rate",
        /// `close-after`.
        CloseAfter => "close_after",
        /// `reset`.
        Reset => "reset",
        /// `hang`.
        Hang => "hang",
    }
}

/// When `close-after` closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseAfter {
    /// After echoing exactly this many bytes.
    Bytes(u64),
    /// This long after accept.
    Time(Duration),
}

/// A fault specification.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Spec {
    pub(crate) delay: Option<Duration>,
    pub(crate) jitter: Option<Duration>,
    pub(crate) connect_delay: Option<Duration>,
    /// Bytes a second.
    pub(crate) rate: Option<u64>,
    pub(crate) close_after: Option<CloseAfter>,
    pub(crate) reset: bool,
    pub(crate) hang: bool,
    pub(crate) refuse: bool,
    /// The share of new connections that draw the per-connection items, 0 to 100.
    pub(crate) percent: f64,
}

/// The longest duration an item takes (a day): longer ones are mistakes.
const MAX_DURATION: Duration = Duration::from_secs(86_400);

fn duration(item: &str, text: &str) -> Result<Duration, String> {
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else {
        (text, 1.0)
    };
    let v: f64 = number
        .trim()
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| format!("{item}: expected a duration such as 250ms or 1.5s"))?;
    let d = Duration::from_secs_f64(v * scale);
    if d > MAX_DURATION {
        return Err(format!("{item}: at most a day"));
    }
    if d.is_zero() {
        return Err(format!("{item}: expected more than 0"));
    }
    Ok(d)
}

fn size(item: &str, text: &str) -> Result<u64, String> {
    let (number, scale) = if let Some(n) = text.strip_suffix("KiB") {
        (n, 1024)
    } else if let Some(n) = text.strip_suffix("MiB") {
        (n, 1024 * 1024)
    } else {
        (text, 1)
    };
    number
        .trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{item}: expected a size such as 4096, 64KiB or 1MiB"))
}

impl FromStr for Spec {
    type Err = String;

    /// Parses a SPEC; an error names the item and why.
    fn from_str(text: &str) -> Result<Spec, String> {
        let mut spec = Spec {
            percent: 100.0,
            ..Spec::default()
        };
        if text.trim().is_empty() {
            return Err("expected comma-separated items such as delay=200ms,percent=50".into());
        }
        for item in text.split(',') {
            let item = item.trim();
            let (key, value) = match item.split_once('=') {
                Some((k, v)) => (k.trim(), Some(v.trim())),
                None => (item, None),
            };
            let given = value.is_some();
            let value = |what: &str| {
                value.ok_or_else(|| format!("{item}: {key} needs a value ({key}={what})"))
            };
            match key {
                "delay" => spec.delay = Some(duration(item, value("DUR")?)?),
                "jitter" => spec.jitter = Some(duration(item, value("DUR")?)?),
                "connect-delay" => spec.connect_delay = Some(duration(item, value("DUR")?)?),
                "rate" => spec.rate = Some(size(item, value("SIZE")?)?),
                "close-after" => {
                    let v = value("SIZE or DUR")?;
                    let is_time = v.ends_with("ms")
                        || (v.ends_with('s') && !v.ends_with("iB"))
                        || v.contains('.');
                    spec.close_after = Some(if is_time {
                        CloseAfter::Time(duration(item, v)?)
                    } else {
                        CloseAfter::Bytes(size(item, v)?)
                    });
                }
                "percent" => {
                    spec.percent = value("P")?
                        .parse::<f64>()
                        .ok()
                        .filter(|p| (0.0..=100.0).contains(p))
                        .ok_or_else(|| format!("{item}: expected a share from 0 to 100"))?;
                }
                "reset" | "hang" | "refuse" if given => {
                    return Err(format!("{item}: {key} takes no value"))
                }
                "reset" => spec.reset = true,
                "hang" => spec.hang = true,
                "refuse" => spec.refuse = true,
                _ => return Err(format!("{item}: not a fault (delay, jitter, connect-delay, rate, close-after, reset, hang, refuse, percent)")),
            }
        }
        if spec.jitter.is_some() && spec.delay.is_none() {
            return Err("jitter: adds to delay, which is not set".to_string());
        }
        Ok(spec)
    }
}

fn show(d: Duration) -> String {
    if d.subsec_nanos().is_multiple_of(1_000_000) && !d.as_millis().is_multiple_of(1000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

impl fmt::Display for Spec {
    /// The SPEC in its canonical form (what `GET /fault` answers and the log shows).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut items = Vec::new();
        if let Some(d) = self.delay {
            items.push(format!("delay={}", show(d)));
        }
        if let Some(d) = self.jitter {
            items.push(format!("jitter={}", show(d)));
        }
        if let Some(d) = self.connect_delay {
            items.push(format!("connect-delay={}", show(d)));
        }
        if let Some(r) = self.rate {
            items.push(format!("rate={r}"));
        }
        match self.close_after {
            Some(CloseAfter::Bytes(n)) => items.push(format!("close-after={n}")),
            Some(CloseAfter::Time(d)) => items.push(format!("close-after={}", show(d))),
            None => {}
        }
        for (on, name) in [
            (self.reset, "reset"),
            (self.hang, "hang"),
            (self.refuse, "refuse"),
        ] {
            if on {
                items.push(name.to_string());
            }
        }
        if self.percent != 100.0 {
            items.push(format!("percent={}", self.percent));
        }
        f.write_str(&items.join(","))
    }
}

impl Spec {
    /// The per-connection faults this SPEC holds (for the metrics).
    pub(crate) fn kinds(&self) -> Vec<Kind> {
        [
            (self.delay.is_some(), Kind::Delay),
            (self.connect_delay.is_some(), Kind::ConnectDelay),
            (self.rate.is_some(), Kind::Rate),
            (self.close_after.is_some(), Kind::CloseAfter),
            (self.reset, Kind::Reset),
            (self.hang, Kind::Hang),
        ]
        .into_iter()
        .filter_map(|(on, k)| on.then_some(k))
        .collect()
    }

    /// Whether it holds any per-connection item.
    pub(crate) fn per_connection(&self) -> bool {
        !self.kinds().is_empty()
    }
}

/// A small random number generator for one connection (xorshift64*), seeded from its uuid:
/// the percent draw and the jitter.
#[derive(Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator seeded from `seed` (a v4 uuid's random bits).
    pub(crate) fn new(seed: u128) -> Rng {
        Rng(((seed >> 64) as u64 ^ seed as u64) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A uniform number in [0, 1).
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// What a connection drew: the faults it has, and its generator for the jitter.
#[derive(Debug)]
pub(crate) struct Drawn {
    pub(crate) spec: Arc<Spec>,
    pub(crate) rng: Rng,
}

impl Drawn {
    /// How long an echo waits: `delay` plus a uniform share of `jitter`.
    pub(crate) fn echo_delay(&mut self) -> Option<Duration> {
        let delay = self.spec.delay?;
        let jitter = self
            .spec
            .jitter
            .map_or(Duration::ZERO, |j| j.mul_f64(self.rng.unit()));
        Some(delay + jitter)
    }
}

/// The fault set now, shared by every connection and the admin port.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    current: RwLock<Option<Arc<Spec>>>,
}

impl Faults {
    /// Faults set to `spec` from the start.
    #[cfg(test)]
    pub(crate) fn new(spec: Option<Spec>) -> Faults {
        Faults {
            current: RwLock::new(spec.map(Arc::new)),
        }
    }

    /// The SPEC set now.
    pub(crate) fn current(&self) -> Option<Arc<Spec>> {
        threads::read(&self.current).clone()
    }

    /// Sets (or clears) the SPEC.
    pub(crate) fn set(&self, spec: Option<Spec>) {
        *threads::write(&self.current) = spec.map(Arc::new);
    }

    /// Whether `refuse` is set.
    #[cfg(test)]
    pub(crate) fn refusing(&self) -> bool {
        threads::read(&self.current)
            .as_ref()
            .is_some_and(|s| s.refuse)
    }

    /// The faults a new connection gets, drawn with the generator `rng`: the per-connection
    /// items of the current SPEC with probability `percent`.
    pub(crate) fn draw(&self, mut rng: Rng) -> Option<Drawn> {
        let spec = self.current()?;
        if !spec.per_connection() || rng.unit() * 100.0 >= spec.percent {
            return None;
        }
        Some(Drawn { spec, rng })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_print_canonically() {
        let s: Spec = "delay=200ms, jitter=0.1s,rate=64KiB,close-after=1MiB,percent=50"
            .parse()
            .unwrap();
        assert_eq!(s.delay, Some(Duration::from_millis(200)));
        assert_eq!(s.jitter, Some(Duration::from_millis(100)));
        assert_eq!(s.rate, Some(65536));
        assert_eq!(s.close_after, Some(CloseAfter::Bytes(1 << 20)));
        assert_eq!(s.percent, 50.0);
        assert_eq!(
            s.to_string(),
            "delay=200ms,jitter=100ms,rate=65536,close-after=1048576,percent=50"
        );
        let s: Spec = "close-after=2s,reset,hang,refuse,connect-delay=3"
            .parse()
            .unwrap();
        assert_eq!(
            s.close_after,
            Some(CloseAfter::Time(Duration::from_secs(2)))
        );
        assert!(s.reset && s.hang && s.refuse);
        assert_eq!(
            s.to_string(),
            "connect-delay=3s,close-after=2s,reset,hang,refuse"
        );
        assert_eq!(s.to_string().parse::<Spec>().unwrap(), s);
        assert_eq!(
            "close-after=512".parse::<Spec>().unwrap().close_after,
            Some(CloseAfter::Bytes(512))
        );
    }

    #[test]
    fn a_bad_item_is_named() {
        for (spec, needle) in [
            ("delay=soon", "delay=soon"),
            ("dealy=1s", "dealy=1s: not a fault"),
            ("rate=0", "rate=0"),
            ("percent=150", "percent=150"),
            ("reset=1", "reset=1: reset takes no value"),
            ("delay", "delay: delay needs a value"),
            ("jitter=1s", "jitter: adds to delay"),
            ("delay=2d", "delay=2d"),
            ("", "expected comma-separated items"),
        ] {
            let e = spec.parse::<Spec>().unwrap_err();
            assert!(e.contains(needle), "{spec}: {e}");
            assert!(!e.contains('\n'));
        }
    }

    #[test]
    fn the_share_drawn_follows_percent() {
        let faults = Faults::new(Some("delay=1ms,percent=30".parse().unwrap()));
        let n = 10_000;
        let drawn = (0..n)
            .filter(|i| {
                faults
                    .draw(Rng::new(0x9e37_79b9_7f4a_7c15 * (*i as u128 + 1)))
                    .is_some()
            })
            .count();
        // 30% of 10,000: 3,000 with a standard deviation of 46; six of them either side.
        assert!((2725..=3275).contains(&drawn), "{drawn}");
        let none = Faults::new(Some("refuse".parse().unwrap()));
        assert!(
            none.draw(Rng::new(1)).is_none(),
            "refuse is no per-connection fault"
        );
        assert!(none.refusing());
    }
}
