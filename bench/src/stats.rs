//! Summaries of repeated measurements: median and spread. Pure arithmetic, no I/O.
//!
//! The headline of every figure is the median over rounds (robust to one disturbed round);
//! the spread is `(max - min) / median` in percent, so a reader sees at once how much the
//! machine's noise moved it.

/// The median of `xs` (the mean of the two middle values for an even count); `None` if empty
/// or if any value is not a number.
pub fn median(xs: &[f64]) -> Option<f64> {
    if xs.is_empty() || xs.iter().any(|x| x.is_nan()) {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v.get(mid).copied()
    } else {
        Some((v.get(mid - 1)? + v.get(mid)?) / 2.0)
    }
}

/// Median, extremes and relative spread of one figure over the rounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// `(max - min) / median x 100`; 0 when the median is 0.
    pub spread_pct: f64,
    pub samples: usize,
}

pub fn summarize(xs: &[f64]) -> Option<Summary> {
    let median = median(xs)?;
    let min = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let spread_pct = if median == 0.0 { 0.0 } else { (max - min) / median.abs() * 100.0 };
    Some(Summary { median, min, max, spread_pct, samples: xs.len() })
}

/// `a / b`, `None` when `b` is 0 or either is not finite.
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (b != 0.0 && a.is_finite() && b.is_finite()).then(|| a / b)
}

/// Element-wise `a[i] / b[i]` over the rounds both have: paired ratios, one per round, which
/// cancel drift that affects both arms of a round alike.
pub fn paired_ratios(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).filter_map(|(x, y)| ratio(*x, *y)).collect()
}

/// Rounds `x` to `digits` decimals (for readable JSON).
pub fn round_to(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// `x` rounded to `digits` decimals, or `None` when it is not a number (JSON has no NaN: a
/// figure that could not be measured is `null`).
pub fn rounded(x: f64, digits: i32) -> Option<f64> {
    x.is_finite().then(|| round_to(x, digits))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_an_odd_count_is_the_middle_value() {
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
    }

    #[test]
    fn median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn median_of_nothing_or_of_nan_is_none() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[1.0, f64::NAN]), None);
    }

    #[test]
    fn one_disturbed_round_does_not_move_the_median() {
        let s = summarize(&[100.0, 101.0, 99.0, 100.0, 10.0]).unwrap();
        assert_eq!(s.median, 100.0);
        assert_eq!((s.min, s.max, s.samples), (10.0, 101.0, 5));
        assert!((s.spread_pct - 91.0).abs() < 1e-9);
    }

    #[test]
    fn spread_of_a_zero_median_is_zero_not_infinite() {
        assert_eq!(summarize(&[0.0, 0.0, 0.0]).unwrap().spread_pct, 0.0);
    }

    #[test]
    fn ratio_refuses_a_zero_denominator() {
        assert_eq!(ratio(9.0, 10.0), Some(0.9));
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(ratio(f64::INFINITY, 1.0), None);
    }

    #[test]
    fn paired_ratios_divide_round_by_round_and_skip_zero_rounds() {
        assert_eq!(paired_ratios(&[90.0, 80.0, 5.0], &[100.0, 100.0, 0.0]), vec![0.9, 0.8]);
    }

    #[test]
    fn rounding_keeps_the_given_decimals() {
        assert_eq!(round_to(0.123_456, 3), 0.123);
        assert_eq!(round_to(2.5e4, 0), 25_000.0);
    }

    #[test]
    fn a_figure_that_is_not_a_number_rounds_to_none() {
        assert_eq!(rounded(1.234_56, 2), Some(1.23));
        assert_eq!(rounded(f64::NAN, 2), None);
        assert_eq!(rounded(f64::INFINITY, 0), None);
    }
}
