//! `--batch`: how many items each request carries, fixed or drawn like address-book sizes.

use rand::Rng;

/// How batch sizes are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BatchSizes {
    /// Always this many.
    Fixed(usize),
    /// Log-normal with this median and sigma (of the natural log), at least 1.
    LogNormal {
        /// Median batch size.
        median: f64,
        /// Spread of ln(size).
        sigma: f64,
    },
}

impl std::str::FromStr for BatchSizes {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        if let Some(rest) = text.strip_prefix("lognormal:") {
            let (median, sigma) = rest
                .split_once(':')
                .ok_or("expected lognormal:MEDIAN:SIGMA")?;
            let median: f64 = median.parse().map_err(|_| "bad median")?;
            let sigma: f64 = sigma.parse().map_err(|_| "bad sigma")?;
            if !(median >= 1.0 && (0.0..=5.0).contains(&sigma)) {
                return Err("median must be >= 1 and sigma in 0..=5".into());
            }
            return Ok(BatchSizes::LogNormal { median, sigma });
        }
        match text.parse::<usize>() {
            Ok(n) if n > 0 => Ok(BatchSizes::Fixed(n)),
            _ => Err("expected a positive number or lognormal:MEDIAN:SIGMA".into()),
        }
    }
}

/// The flag's own spelling (`1000`, `lognormal:300:1`), for titles and headers.
impl std::fmt::Display for BatchSizes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BatchSizes::Fixed(n) => write!(f, "{n}"),
            BatchSizes::LogNormal { median, sigma } => write!(f, "lognormal:{median}:{sigma}"),
        }
    }
}

impl BatchSizes {
    /// Draws one size in `1..=max`.
    pub fn sample(self, rng: &mut impl Rng, max: usize) -> usize {
        let size = match self {
            BatchSizes::Fixed(n) => n,
            BatchSizes::LogNormal { median, sigma } => {
                // Box–Muller: one standard normal from two uniforms.
                let u1: f64 = rng.random_range(f64::EPSILON..1.0);
                let u2: f64 = rng.random();
                let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                (median * (sigma * z).exp()).round() as usize
            }
        };
        size.clamp(1, max.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn batch_sizes_parse_and_stay_in_range() {
        assert_eq!("1000".parse::<BatchSizes>(), Ok(BatchSizes::Fixed(1000)));
        assert!("0".parse::<BatchSizes>().is_err());
        assert!("lognormal:300".parse::<BatchSizes>().is_err());
        let dist: BatchSizes = "lognormal:300:1.0".parse().unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut sizes: Vec<usize> = (0..10_001).map(|_| dist.sample(&mut rng, 5_000)).collect();
        sizes.sort_unstable();
        assert!(sizes.iter().all(|s| (1..=5_000).contains(s)));
        let median = sizes[5_000];
        assert!((250..=360).contains(&median), "median {median}");
        assert!(sizes[9_990] > 2_000, "a long tail towards the cap");
        assert_eq!(BatchSizes::Fixed(9_000).sample(&mut rng, 5_000), 5_000);
    }
}
