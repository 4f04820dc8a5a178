//! Order statistics and a least-squares fit over timing samples (milliseconds).

/// The samples in ascending order (NaN never occurs: every sample is a measured duration).
pub fn sorted(v: &[f64]) -> Vec<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s
}

/// The `p`-th percentile (0–100) with linear interpolation between closest ranks.
pub fn percentile(v: &[f64], p: f64) -> Option<f64> {
    let s = sorted(v);
    if s.is_empty() {
        return None;
    }
    let rank = (p / 100.0) * (s.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    let (a, b) = (s.get(lo)?, s.get(hi)?);
    Some(a + (b - a) * (rank - lo as f64))
}

/// The median.
pub fn median(v: &[f64]) -> Option<f64> {
    percentile(v, 50.0)
}

/// The slope of the least-squares line through `(x, y)` points.
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

/// The least-squares line as (intercept, slope).
pub fn fit(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    let b = slope(points)?;
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    Some((my - b * mx, b))
}

/// A running median of `y` over `window` consecutive points, placed at the window's centre.
pub fn rolling_median(points: &[(f64, f64)], window: usize) -> Vec<(f64, f64)> {
    let w = window.clamp(1, points.len().max(1));
    points
        .windows(w)
        .filter_map(|win| {
            let ys: Vec<f64> = win.iter().map(|p| p.1).collect();
            let x = (win.first()?.0 + win.last()?.0) / 2.0;
            Some((x, median(&ys)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate() {
        let v = [4.0, 1.0, 3.0, 2.0];
        assert_eq!(median(&v), Some(2.5));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&v, 100.0), Some(4.0));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn slope_of_a_line() {
        let pts: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 3.0 + 0.5 * i as f64)).collect();
        let (a, b) = fit(&pts).unwrap();
        assert!((a - 3.0).abs() < 1e-9 && (b - 0.5).abs() < 1e-9);
        assert_eq!(slope(&[(1.0, 1.0)]), None);
        assert_eq!(rolling_median(&pts, 3).len(), 8);
    }
}
