//! Figures over rounds: a cell is the median of the rounds with the min-max beside it, and a
//! target is judged on the median, with the count of rounds that met it.

pub(crate) use herd_bench::figures::median;

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

/// `median (min-max)unit`, each number written by `f`; a single number when min and max are
/// written the same (a count that did not vary).
pub(crate) fn cell(v: &[f64], f: impl Fn(f64) -> String, unit: &str) -> String {
    if v.is_empty() {
        return "-".into();
    }
    let (lo, hi) = min_max(v);
    let (lo, hi) = (f(lo), f(hi));
    if lo == hi {
        return format!("{lo}{unit}");
    }
    format!("{} ({lo}-{hi}){unit}", f(median(v)))
}

/// [`cell`] with `decimals` decimals.
pub(crate) fn fixed(v: &[f64], decimals: usize, unit: &str) -> String {
    cell(v, |x| format!("{x:.decimals$}"), unit)
}

/// [`cell`] of whole numbers with thousands separators.
pub(crate) fn count(v: &[f64]) -> String {
    cell(v, herd_bench::sections::thousands, "")
}

/// [`cell`] of byte counts, in MB.
pub(crate) fn megabytes(v: &[f64]) -> String {
    cell(v, |b| format!("{:.0}", b / super::MB as f64), " MB")
}

/// A target's verdict: met when the median meets it, with how many rounds met it.
pub(crate) fn verdict(median_ok: bool, per_round: &[bool]) -> String {
    let met = per_round.iter().filter(|&&ok| ok).count();
    let word = if median_ok { "met" } else { "**not met**" };
    format!("{word} ({met} of {} rounds)", per_round.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells() {
        assert_eq!(fixed(&[3.0, 1.0, 2.0], 0, " ms"), "2 (1-3) ms");
        assert_eq!(count(&[20.0, 20.0]), "20");
        assert_eq!(median(&[1.0, 4.0, 2.0, 3.0]), 2.5);
        assert_eq!(verdict(true, &[true, false, true]), "met (2 of 3 rounds)");
    }
}
