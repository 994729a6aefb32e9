//! The statistics `tcp-echo probe` reports: binomial intervals for the share of each version,
//! a goodness-of-fit test of the observed split against expected weights, and percentiles.
//! Pure functions, no I/O.

/// The Wilson score interval for `k` successes in `n` trials at 95% (z = 1.96): a share's
/// plausible range, sensible even near 0% and 100% (where the normal approximation is not).
pub fn wilson_95(k: u64, n: u64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (k, n, z) = (k as f64, n as f64, 1.959_963_984_540_054);
    let p = k / n;
    let denom = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denom;
    let half = z * ((p * (1.0 - p) + z * z / (4.0 * n)) / n).sqrt() / denom;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// Pearson's chi-square test of `observed` counts against expected `weights` (same order; any
/// scale): the statistic, its degrees of freedom and the p-value (the probability of a split
/// at least this far from the weights if the weights are right). `None` when it cannot be
/// computed: no observations, or a count where the weight is 0.
pub fn chi_square(observed: &[u64], weights: &[f64]) -> Option<(f64, usize, f64)> {
    let n: u64 = observed.iter().sum();
    let total: f64 = weights.iter().sum();
    if n == 0 || total <= 0.0 || observed.len() != weights.len() {
        return None;
    }
    let mut statistic = 0.0;
    let mut cells = 0usize;
    for (&o, &w) in observed.iter().zip(weights) {
        let expected = n as f64 * w / total;
        if expected == 0.0 {
            if o > 0 {
                return None;
            }
            continue;
        }
        statistic += (o as f64 - expected).powi(2) / expected;
        cells += 1;
    }
    let df = cells.saturating_sub(1);
    let p = if df == 0 {
        1.0
    } else {
        gamma_q(df as f64 / 2.0, statistic / 2.0)
    };
    Some((statistic, df, p))
}

/// The regularised upper incomplete gamma function Q(a, x) = Γ(a, x) / Γ(a): the chi-square
/// survival function with 2a degrees of freedom at 2x. A series below a + 1, a continued
/// fraction (modified Lentz) above, to about 1e-14.
pub fn gamma_q(a: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    let ln_prefix = a * x.ln() - x - ln_gamma(a);
    if x < a + 1.0 {
        // P(a, x) by its series; Q = 1 - P.
        let (mut term, mut sum, mut ap) = (1.0 / a, 1.0 / a, a);
        for _ in 0..1000 {
            ap += 1.0;
            term *= x / ap;
            sum += term;
            if term.abs() < sum.abs() * 1e-15 {
                break;
            }
        }
        (1.0 - sum * ln_prefix.exp()).max(0.0)
    } else {
        let tiny = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / tiny;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..1000 {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            if d.abs() < tiny {
                d = tiny;
            }
            c = b + an / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            let delta = d * c;
            h *= delta;
            if (delta - 1.0).abs() < 1e-15 {
                break;
            }
        }
        (ln_prefix.exp() * h).min(1.0)
    }
}

/// ln Γ(x) for x ≥ 0.5 (Lanczos, g = 7, n = 9: about 15 digits). Chi-square needs no less:
/// its argument is half the degrees of freedom.
fn ln_gamma(x: f64) -> f64 {
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    debug_assert!(x >= 0.5, "ln_gamma({x})");
    let x = x - 1.0;
    let mut sum = C[0];
    for (i, &c) in C.iter().enumerate().skip(1) {
        sum += c / (x + i as f64);
    }
    let t = x + 7.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

/// The `q`-quantile (0 to 1) of `sorted` values, by the nearest rank; `None` when empty.
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil().max(1.0) as usize;
    Some(sorted[rank.min(sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tolerance: f64) -> bool {
        (a - b).abs() <= tolerance * b.abs().max(1e-300)
    }

    #[test]
    fn wilson_intervals_match_published_values() {
        // 160 of 200: 0.8, Wilson 95% interval 0.7391 to 0.8495.
        let (lo, hi) = wilson_95(160, 200);
        assert!(
            (lo - 0.7391).abs() < 1e-4 && (hi - 0.8495).abs() < 1e-4,
            "{lo} {hi}"
        );
        // 0 of 20: the interval still has width.
        let (lo, hi) = wilson_95(0, 20);
        assert_eq!(lo, 0.0);
        assert!((hi - 0.1611).abs() < 1e-4, "{hi}");
        assert_eq!(wilson_95(0, 0), (0.0, 1.0));
    }

    #[test]
    fn chi_square_survival_matches_known_values() {
        // Q(df/2, x/2) for the chi-square distribution: tabulated critical values.
        for (df, x, p) in [
            (1.0, 3.841_458_820_694_124, 0.05),
            (1.0, 23.928_127_205_503_4, 1e-6),
            (2.0, 27.631_021_115_928_5, 1e-6),
            (3.0, 7.814_727_903_251_178, 0.05),
            (10.0, 18.307_038_053_275_146, 0.05),
        ] {
            let q = gamma_q(df / 2.0, x / 2.0);
            assert!(close(q, p, 1e-6), "df {df}, x {x}: {q} instead of {p}");
        }
        assert_eq!(gamma_q(1.0, 0.0), 1.0);
    }

    #[test]
    fn a_correct_split_holds_and_an_even_one_does_not() {
        // 200 connections at 80/20: exactly expected, and a typical deviation.
        let (s, df, p) = chi_square(&[160, 40], &[80.0, 20.0]).unwrap();
        assert_eq!((s, df, p), (0.0, 1, 1.0));
        let (_, _, p) = chi_square(&[150, 50], &[80.0, 20.0]).unwrap();
        assert!(p > 0.01, "{p}");
        // An even split of 200 is far outside: chi-square 112.5.
        let (s, _, p) = chi_square(&[100, 100], &[80.0, 20.0]).unwrap();
        assert!((s - 112.5).abs() < 1e-9 && p < 1e-20, "{s} {p}");
        // Weights of any scale; a count where the weight is 0 cannot fit.
        assert_eq!(chi_square(&[8, 2], &[0.8, 0.2]).map(|r| r.1), Some(1));
        assert_eq!(chi_square(&[10, 1], &[1.0, 0.0]), None);
        assert_eq!(chi_square(&[0, 0], &[1.0, 1.0]), None);
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), Some(50.0));
        assert_eq!(quantile(&v, 0.99), Some(99.0));
        assert_eq!(quantile(&v, 1.0), Some(100.0));
        assert_eq!(quantile(&[7.0], 0.99), Some(7.0));
        assert_eq!(quantile(&[], 0.5), None);
    }
}
