//! The standard 2-D toy distributions of the generative-modelling literature (as in FFJORD,
//! Grathwohl et al. 2019, and the flow-matching papers), drawn on the host, seeded.
//!
//! Sample `i` of seed `s` uses its own random stream ([`sample_rng`]), so a data set of
//! n points is the first n points of any larger one with the same seed.

use std::f64::consts::{FRAC_1_SQRT_2, PI};
use std::str::FromStr;

use burn::tensor::{DType, Device, Tensor};
use diffusion_core::noise::{fill_normal, sample_rng, uniform};
use diffusion_core::tensor::from_f64;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// A 2-D toy distribution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Toy2d {
    /// A spiral sheet seen from above: (t cos t, t sin t)/5 + noise, t ∈ [1.5π, 4.5π].
    SwissRoll,
    /// Two interleaved half circles, scaled by 2 and centred.
    Moons,
    /// Eight Gaussians (std 0.5) on a circle of radius 4, the whole scaled by 1/1.414.
    EightGaussians,
    /// Uniform on the black squares of a 4×4 checkerboard on [−4, 4]².
    Checkerboard,
    /// Five curved arms (radial std 0.3, tangential std 0.1, rate 0.25).
    Pinwheel,
    /// Two interleaved spirals.
    TwoSpirals,
}

impl Toy2d {
    /// Every toy, in a fixed order.
    pub const ALL: [Toy2d; 6] = [
        Self::SwissRoll,
        Self::Moons,
        Self::EightGaussians,
        Self::Checkerboard,
        Self::Pinwheel,
        Self::TwoSpirals,
    ];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::SwissRoll => "swissroll",
            Self::Moons => "moons",
            Self::EightGaussians => "8gaussians",
            Self::Checkerboard => "checkerboard",
            Self::Pinwheel => "pinwheel",
            Self::TwoSpirals => "2spirals",
        }
    }

    /// Points `range` of the data set with `seed`, row-major `[len, 2]`.
    pub fn sample_host(self, seed: u64, range: std::ops::Range<u64>) -> Vec<f64> {
        range
            .flat_map(|i| {
                let mut rng = sample_rng(seed, i);
                self.point(&mut rng)
            })
            .collect()
    }

    /// `n` points (indices `0..n`) as a `[n, 2]` tensor.
    pub fn sample(self, seed: u64, n: usize, device: &Device, dtype: DType) -> Tensor<2> {
        from_f64(self.sample_host(seed, 0..n as u64), [n, 2], device, dtype)
    }

    /// One point from `rng`.
    pub fn point(self, rng: &mut impl Rng) -> [f64; 2] {
        let mut z = [0.0; 2];
        fill_normal(rng, &mut z);
        match self {
            Self::SwissRoll => {
                let t = 1.5 * PI * (1.0 + 2.0 * uniform(rng));
                [(t * t.cos() + z[0]) / 5.0, (t * t.sin() + z[1]) / 5.0]
            }
            Self::Moons => {
                let theta = PI * uniform(rng);
                let (x, y) = if uniform(rng) < 0.5 {
                    (theta.cos(), theta.sin())
                } else {
                    (1.0 - theta.cos(), 0.5 - theta.sin())
                };
                [2.0 * (x + 0.1 * z[0]) - 1.0, 2.0 * (y + 0.1 * z[1]) - 0.2]
            }
            Self::EightGaussians => {
                let k = (uniform(rng) * 8.0) as usize % 8;
                let (cx, cy) = match k {
                    0 => (1.0, 0.0),
                    1 => (-1.0, 0.0),
                    2 => (0.0, 1.0),
                    3 => (0.0, -1.0),
                    4 => (FRAC_1_SQRT_2, FRAC_1_SQRT_2),
                    5 => (FRAC_1_SQRT_2, -FRAC_1_SQRT_2),
                    6 => (-FRAC_1_SQRT_2, FRAC_1_SQRT_2),
                    _ => (-FRAC_1_SQRT_2, -FRAC_1_SQRT_2),
                };
                [(4.0 * cx + 0.5 * z[0]) / 1.414, (4.0 * cy + 0.5 * z[1]) / 1.414]
            }
            Self::Checkerboard => {
                let x1 = 4.0 * uniform(rng) - 2.0;
                let shift = if uniform(rng) < 0.5 { 0.0 } else { -2.0 };
                let x2 = uniform(rng) + shift + x1.floor().rem_euclid(2.0);
                [2.0 * x1, 2.0 * x2]
            }
            Self::Pinwheel => {
                let class = (uniform(rng) * 5.0) as usize % 5;
                let (r, tangent) = (0.3 * z[0] + 1.0, 0.1 * z[1]);
                let angle = 2.0 * PI * class as f64 / 5.0 + 0.25 * r.exp();
                let (s, c) = angle.sin_cos();
                [2.0 * (r * c - tangent * s), 2.0 * (r * s + tangent * c)]
            }
            Self::TwoSpirals => {
                let n = uniform(rng).sqrt() * 540.0 * (2.0 * PI) / 360.0;
                let x = -n.cos() * n + 0.5 * uniform(rng);
                let y = n.sin() * n + 0.5 * uniform(rng);
                let sign = if uniform(rng) < 0.5 { 1.0 } else { -1.0 };
                [sign * x / 3.0 + 0.1 * z[0], sign * y / 3.0 + 0.1 * z[1]]
            }
        }
    }
}

impl std::fmt::Display for Toy2d {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown toy name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown 2-D data set `{0}`: expected one of swissroll, moons, 8gaussians, checkerboard, pinwheel, 2spirals"
)]
pub struct UnknownToy(pub String);

impl FromStr for Toy2d {
    type Err = UnknownToy;
    fn from_str(s: &str) -> Result<Self, UnknownToy> {
        let key = s.trim().to_ascii_lowercase().replace(['-', '_'], "");
        let key = match key.as_str() {
            "eightgaussians" => "8gaussians",
            "twospirals" => "2spirals",
            "twomoons" => "moons",
            other => other,
        }
        .to_string();
        Self::ALL
            .into_iter()
            .find(|t| t.name() == key)
            .ok_or_else(|| UnknownToy(s.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_agree_and_seeds_differ() {
        for toy in Toy2d::ALL {
            let big = toy.sample_host(3, 0..100);
            let tail = toy.sample_host(3, 90..100);
            assert_eq!(&big[180..], &tail[..], "{toy}");
            assert_ne!(big, toy.sample_host(4, 0..100), "{toy}");
            assert!(big.iter().all(|v| v.is_finite()));
        }
    }

    #[test]
    fn shapes_are_where_they_should_be() {
        let n = 20_000;
        let mean_norm = |toy: Toy2d| {
            let p = toy.sample_host(0, 0..n);
            p.chunks(2)
                .map(|c| (c[0] * c[0] + c[1] * c[1]).sqrt())
                .sum::<f64>()
                / n as f64
        };
        // 8 Gaussians: E|μ + 0.5 z| ≈ |μ| + 0.5²/(2|μ|) = 4.03125 for |μ| = 4, over 1.414;
        // the standard error of the mean is 0.35/√n = 0.0025.
        assert!((mean_norm(Toy2d::EightGaussians) - 4.03125 / 1.414).abs() < 0.01);
        // Checkerboard: every point on a black square, i.e. floor(x/2) + floor(y/2) even.
        let p = Toy2d::Checkerboard.sample_host(0, 0..n);
        assert!(
            p.chunks(2)
                .all(|c| ((c[0] / 2.0).floor() + (c[1] / 2.0).floor()).rem_euclid(2.0) == 0.0)
        );
        assert!(p.iter().all(|v| v.abs() <= 4.0));
        // Moons: half the points on each moon; the data are roughly centred.
        let m = Toy2d::Moons.sample_host(0, 0..n);
        let mean_x = m.chunks(2).map(|c| c[0]).sum::<f64>() / n as f64;
        assert!(mean_x.abs() < 0.05, "{mean_x}");
    }

    #[test]
    fn names_round_trip() {
        for toy in Toy2d::ALL {
            assert_eq!(toy.name().parse::<Toy2d>().unwrap(), toy);
        }
        assert_eq!("two-moons".parse::<Toy2d>().unwrap(), Toy2d::Moons);
        assert!("circles".parse::<Toy2d>().is_err());
    }
}
