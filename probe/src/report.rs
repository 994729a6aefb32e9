//! The answers tallied: by version and pod, with intervals and latencies; the failures by
//! kind and version; the expectation tested; as a table or one JSON object.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use crate::exchange::{Answer, Failure, Kind};
use crate::{stats, Probe, EXPECT_P_MIN};

/// The answers tallied.
pub(crate) struct Report<'a> {
    probe: &'a Probe,
    answers: Vec<&'a Answer>,
    /// Failures by what they said.
    failures: BTreeMap<&'a str, usize>,
    /// Failures by version (`None`: not known) and kind.
    kinds: BTreeMap<Option<String>, BTreeMap<Kind, usize>>,
    /// (version, pod) -> answers.
    rows: BTreeMap<(&'a str, &'a str), Vec<&'a Answer>>,
    versions: BTreeMap<&'a str, u64>,
    pods: BTreeMap<&'a str, u64>,
    /// (statistic, degrees of freedom, p), when an expectation was given and can be tested.
    test: Option<(f64, usize, f64)>,
    /// Versions answered but not expected.
    unexpected: Vec<&'a str>,
}

impl<'a> Report<'a> {
    pub(crate) fn new(probe: &'a Probe, results: &'a [Result<Answer, Failure>]) -> Report<'a> {
        let mut r = Report {
            probe,
            answers: Vec::new(),
            failures: BTreeMap::new(),
            kinds: BTreeMap::new(),
            rows: BTreeMap::new(),
            versions: BTreeMap::new(),
            pods: BTreeMap::new(),
            test: None,
            unexpected: Vec::new(),
        };
        for result in results {
            match result {
                Ok(a) => {
                    let pod = a.pod.as_deref().unwrap_or("");
                    r.answers.push(a);
                    r.rows.entry((&a.version, pod)).or_default().push(a);
                    *r.versions.entry(&a.version).or_default() += 1;
                    if let Some(p) = &a.pod {
                        *r.pods.entry(p).or_default() += 1;
                    }
                }
                Err(f) => *r.failures.entry(&f.detail).or_default() += 1,
            }
        }
        // A failure's version: what its echo showed, else what its pod answered as.
        let pod_versions: BTreeMap<&str, &str> = r
            .answers
            .iter()
            .filter_map(|a| Some((a.pod.as_deref()?, a.version.as_str())))
            .collect();
        for f in results.iter().filter_map(|r| r.as_ref().err()) {
            let version = f.version.clone().or_else(|| {
                let pod = f.pod.as_deref()?;
                pod_versions.get(pod).map(|v| v.to_string())
            });
            *r.kinds
                .entry(version)
                .or_default()
                .entry(f.kind)
                .or_default() += 1;
        }
        if let Some(expect) = &probe.expect {
            let observed: Vec<u64> = expect
                .iter()
                .map(|(v, _)| r.versions.get(v.as_str()).copied().unwrap_or(0))
                .collect();
            let weights: Vec<f64> = expect.iter().map(|(_, w)| *w).collect();
            r.test = stats::chi_square(&observed, &weights);
            r.unexpected = r
                .versions
                .keys()
                .filter(|v| !expect.iter().any(|(e, _)| e == *v))
                .copied()
                .collect();
        }
        r
    }

    fn failed(&self) -> usize {
        self.failures.values().sum()
    }

    /// Whether the expectation, if any, holds.
    fn expect_ok(&self) -> Option<bool> {
        self.probe.expect.as_ref()?;
        Some(self.unexpected.is_empty() && self.test.is_some_and(|(_, _, p)| p >= EXPECT_P_MIN))
    }

    pub(crate) fn ok(&self) -> bool {
        self.failed() == 0 && self.expect_ok() != Some(false)
    }

    fn millis(answers: &[&Answer], f: fn(&Answer) -> Duration, q: f64) -> Option<f64> {
        let mut v: Vec<f64> = answers
            .iter()
            .map(|a| f(a).as_secs_f64() * 1000.0)
            .collect();
        v.sort_by(f64::total_cmp);
        stats::quantile(&v, q)
    }

    /// The median time to connect (none over UDP, which does not connect).
    fn connect_p50(&self, answers: &[&Answer]) -> Option<f64> {
        if self.probe.udp {
            return None;
        }
        Self::millis(answers, |a| a.connect, 0.5)
    }

    fn expectation_line(&self) -> Option<String> {
        let expect = self.probe.expect.as_ref()?;
        let split = expect
            .iter()
            .map(|(v, w)| format!("{v}={w}"))
            .collect::<Vec<_>>()
            .join(",");
        let verdict = if self.expect_ok() == Some(true) {
            "holds"
        } else {
            "does not hold"
        };
        let detail = match (&self.test, self.unexpected.is_empty()) {
            (_, false) => format!("versions not expected answered: {:?}", self.unexpected),
            (Some((s, df, p)), true) => {
                let unit = if *df == 1 { "degree" } else { "degrees" };
                format!("chi-square {s:.2} with {df} {unit} of freedom, p = {p:.2e}")
            }
            (None, true) => "no answer to test, or an answer where the weight is 0".into(),
        };
        Some(format!(
            "expect {split}: {detail}: {verdict} (it fails below p = {EXPECT_P_MIN:e})"
        ))
    }

    /// The human-readable report.
    pub(crate) fn table(&self) -> String {
        let mut out = String::new();
        let total = self.probe.connections;
        let _ = writeln!(
            out,
            "tcp-echo probe {}: {total} {}, {} ok, {} failed",
            self.probe.addr,
            if self.probe.udp {
                "UDP datagrams"
            } else {
                "connections"
            },
            self.answers.len(),
            self.failed()
        );
        let n = self.answers.len() as u64;
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2} ms"));
        let tls = self.answers.iter().any(|a| a.tls.is_some());
        let mut head: Vec<String> = [
            "VERSION",
            "POD",
            "COUNT",
            "SHARE",
            "95% INTERVAL",
            "CONNECT P50",
            "RTT P50",
            "RTT P99",
        ]
        .map(String::from)
        .to_vec();
        if tls {
            head.extend(["TLS", "SNI", "ALPN"].map(String::from));
        }
        let mut rows = vec![head];
        for ((version, pod), answers) in &self.rows {
            let k = answers.len() as u64;
            let (lo, hi) = stats::wilson_95(k, n);
            let mut row = vec![
                if version.is_empty() {
                    "(none)".into()
                } else {
                    version.to_string()
                },
                if pod.is_empty() {
                    "-".into()
                } else {
                    pod.to_string()
                },
                k.to_string(),
                format!("{:.1}%", 100.0 * k as f64 / n as f64),
                format!("{:.1}-{:.1}%", 100.0 * lo, 100.0 * hi),
                ms(self.connect_p50(answers)),
                ms(Self::millis(answers, |a| a.round_trip, 0.5)),
                ms(Self::millis(answers, |a| a.round_trip, 0.99)),
            ];
            if tls {
                let facts = seen(answers);
                row.extend([facts.0, facts.1, facts.2]);
            }
            rows.push(row);
        }
        if rows.len() > 1 {
            let widths: Vec<usize> = (0..rows[0].len())
                .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
                .collect();
            for row in &rows {
                let mut line = String::new();
                for (c, cell) in row.iter().enumerate() {
                    // Text columns to the left, numbers to the right.
                    if !(2..8).contains(&c) {
                        let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
                    } else {
                        let _ = write!(line, "{cell:>w$}  ", w = widths[c]);
                    }
                }
                let _ = writeln!(out, "{}", line.trim_end());
            }
        }
        for (version, kinds) in &self.kinds {
            let counts: Vec<String> = Kind::ALL
                .iter()
                .filter_map(|k| Some(format!("{} {}", kinds.get(k)?, k.label())))
                .collect();
            let version = match version.as_deref() {
                None => "(unknown)",
                Some("") => "(none)",
                Some(v) => v,
            };
            let _ = writeln!(out, "failures of {version}: {}", counts.join(", "));
        }
        for (reason, count) in &self.failures {
            let _ = writeln!(out, "failed: {count} x {reason}");
        }
        if let Some(line) = self.expectation_line() {
            let _ = writeln!(out, "{line}");
        }
        out
    }

    /// The report as one JSON object.
    pub(crate) fn json(&self) -> String {
        let map = |m: &BTreeMap<&str, u64>| {
            let items: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{}:{v}", json_str(k)))
                .collect();
            format!("{{{}}}", items.join(","))
        };
        let failures: Vec<String> = self
            .failures
            .iter()
            .map(|(k, v)| format!("{}:{v}", json_str(k)))
            .collect();
        let num = |v: Option<f64>| v.map_or("null".to_string(), |v| format!("{v:.3}"));
        let mut out = format!(
            "{{\"addr\":{},\"protocol\":\"{}\",\"connections\":{},\"ok\":{},\"failed\":{},\"versions\":{},\"pods\":{},\
             \"failures\":{{{}}},\"connect_ms_p50\":{},\"rtt_ms_p50\":{},\"rtt_ms_p99\":{}",
            json_str(&self.probe.addr),
            if self.probe.udp { "udp" } else { "tcp" },
            self.probe.connections,
            self.answers.len(),
            self.failed(),
            map(&self.versions),
            map(&self.pods),
            failures.join(","),
            num(self.connect_p50(&self.answers)),
            num(Self::millis(&self.answers, |a| a.round_trip, 0.5)),
            num(Self::millis(&self.answers, |a| a.round_trip, 0.99)),
        );
        let kinds: Vec<String> = self
            .kinds
            .iter()
            .map(|(version, kinds)| {
                let counts: Vec<String> = kinds
                    .iter()
                    .map(|(k, n)| format!("\"{}\":{n}", k.label()))
                    .collect();
                let key = version.as_deref().unwrap_or("(unknown)");
                format!("{}:{{{}}}", json_str(key), counts.join(","))
            })
            .collect();
        let _ = write!(out, ",\"failure_kinds\":{{{}}}", kinds.join(","));
        let mut tls: BTreeMap<&str, Vec<&Answer>> = BTreeMap::new();
        for a in self.answers.iter().filter(|a| a.tls.is_some()) {
            tls.entry(&a.version).or_default().push(a);
        }
        if !tls.is_empty() {
            let items: Vec<String> = tls
                .iter()
                .map(|(v, answers)| {
                    let (version, sni, alpn) = seen(answers);
                    format!(
                        "{}:{{\"version\":{},\"sni\":{},\"alpn\":{}}}",
                        json_str(v),
                        json_str(&version),
                        json_str(&sni),
                        json_str(&alpn)
                    )
                })
                .collect();
            let _ = write!(out, ",\"tls\":{{{}}}", items.join(","));
        }
        if let Some(ok) = self.expect_ok() {
            let _ = write!(out, ",\"expect_ok\":{ok}");
            if let Some((s, df, p)) = self.test {
                let _ = write!(
                    out,
                    ",\"chi_square\":{s:.4},\"degrees_of_freedom\":{df},\"p_value\":{p:e}"
                );
            }
        }
        out.push('}');
        out
    }
}

/// What the answers' servers reported of TLS: (version, SNI, ALPN), each the values seen,
/// comma-separated when they differ.
fn seen(answers: &[&Answer]) -> (String, String, String) {
    let values = |f: fn(&crate::exchange::TlsFacts) -> &str| {
        let mut v: Vec<&str> = answers
            .iter()
            .filter_map(|a| a.tls.as_ref().map(f))
            .collect();
        v.sort_unstable();
        v.dedup();
        if v.is_empty() {
            "-".to_string()
        } else {
            v.join(",")
        }
    };
    (
        values(|t| &t.version),
        values(|t| &t.sni),
        values(|t| &t.alpn),
    )
}

/// `s` as a JSON string.
pub(crate) fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_str("a\"b\\c\nd"), "\"a\\\"b\\\\c\\u000ad\"");
    }
}
