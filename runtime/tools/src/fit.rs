//! Least-squares fits of measured times to cost formulas (context scaling, calibration).
//!
//! Times span orders of magnitude, so the fit minimises *relative* residuals
//! (Σ ((model − y) / y)²): a large point does not drown the small ones, and the fit reads
//! well on a log-log plot.

use crate::error::ToolError;
use serde::Serialize;

/// A fitted linear model `y ≈ Σ coef[j] · x[j]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fit {
    pub coef: Vec<f64>,
    /// Root mean square of the relative residuals.
    pub rms_rel_residual: f64,
    /// Largest relative residual, |model − y| / y.
    pub max_rel_residual: f64,
}

impl Fit {
    pub fn predict(&self, x: &[f64]) -> f64 {
        self.coef.iter().zip(x).map(|(c, x)| c * x).sum()
    }
}

/// Fits `y ≈ Σ coef[j] · rows[i][j]` by relative least squares. Needs at least as many
/// points as coefficients, positive `y`, and independent columns.
pub fn fit_relative(rows: &[Vec<f64>], y: &[f64]) -> Result<Fit, ToolError> {
    let k = rows.first().map_or(0, Vec::len);
    if k == 0 || rows.len() < k || rows.len() != y.len() {
        return Err(ToolError::Fit(format!(
            "need at least {k} points with {k} features each, got {}",
            rows.len()
        )));
    }
    if y.iter().any(|&v| v <= 0.0 || !v.is_finite()) {
        return Err(ToolError::Fit(
            "every measured value must be positive".into(),
        ));
    }
    // Normal equations of the weighted problem: rows and targets divided by y.
    let mut a = vec![vec![0.0f64; k + 1]; k];
    for (r, &yi) in rows.iter().zip(y) {
        let w: Vec<f64> = r.iter().map(|x| x / yi).collect();
        for i in 0..k {
            for j in 0..k {
                a[i][j] += w[i] * w[j];
            }
            a[i][k] += w[i];
        }
    }
    let coef = solve(a)?;
    let fit = Fit {
        coef,
        rms_rel_residual: 0.0,
        max_rel_residual: 0.0,
    };
    let rel: Vec<f64> = rows
        .iter()
        .zip(y)
        .map(|(r, &yi)| (fit.predict(r) - yi) / yi)
        .collect();
    Ok(Fit {
        rms_rel_residual: (rel.iter().map(|e| e * e).sum::<f64>() / rel.len() as f64).sqrt(),
        max_rel_residual: rel.iter().fold(0.0, |m, e| m.max(e.abs())),
        ..fit
    })
}

/// Gaussian elimination with partial pivoting on an augmented `k × (k + 1)` matrix.
fn solve(mut a: Vec<Vec<f64>>) -> Result<Vec<f64>, ToolError> {
    let k = a.len();
    for col in 0..k {
        let piv = (col..k)
            .max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))
            .unwrap_or(col);
        let scale = a.iter().map(|r| r[col].abs()).fold(0.0, f64::max);
        if a[piv][col].abs() <= 1e-12 * scale.max(f64::MIN_POSITIVE) {
            return Err(ToolError::Fit(
                "the features are not independent (singular fit)".into(),
            ));
        }
        a.swap(col, piv);
        let pivot_row = a[col].clone();
        for (r, row) in a.iter_mut().enumerate() {
            if r != col {
                let f = row[col] / pivot_row[col];
                for (x, p) in row.iter_mut().zip(&pivot_row).skip(col) {
                    *x -= f * p;
                }
            }
        }
    }
    Ok((0..k).map(|i| a[i][k] / a[i][i]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_known_coefficients_exactly() {
        let xs: Vec<f64> = (0..8).map(|i| 64.0 * 2f64.powi(i)).collect();
        let rows: Vec<Vec<f64>> = xs.iter().map(|&t| vec![1.0, t, t * t]).collect();
        let y: Vec<f64> = xs.iter().map(|&t| 0.02 + 3e-6 * t + 4e-9 * t * t).collect();
        let f = fit_relative(&rows, &y).unwrap();
        for (got, want) in f.coef.iter().zip([0.02, 3e-6, 4e-9]) {
            assert!(
                (got - want).abs() <= 1e-9 * want.abs().max(1e-12) + 1e-15,
                "{got} vs {want}"
            );
        }
        assert!(f.max_rel_residual < 1e-9);
    }

    #[test]
    fn reports_residuals_of_a_bad_model() {
        // A quadratic fitted by a line leaves large residuals.
        let rows: Vec<Vec<f64>> = (1..10).map(|t| vec![1.0, t as f64]).collect();
        let y: Vec<f64> = (1..10).map(|t| (t * t) as f64).collect();
        let f = fit_relative(&rows, &y).unwrap();
        assert!(f.max_rel_residual > 0.2);
        assert!(fit_relative(&rows[..1], &y[..1]).is_err());
        let dup: Vec<Vec<f64>> = (1..5).map(|t| vec![t as f64, 2.0 * t as f64]).collect();
        assert!(fit_relative(&dup, &[1.0, 2.0, 3.0, 4.0]).is_err());
    }
}
