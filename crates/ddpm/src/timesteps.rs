//! Drawing training timesteps.

use rand::Rng;

/// Timesteps drawn uniformly from {0, …, T−1} (Ho et al. 2020, Algorithm 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UniformTimesteps {
    /// T.
    pub num_timesteps: usize,
}

impl UniformTimesteps {
    /// `n` timesteps, each uniform on {0, …, T−1}, without modulo bias.
    pub fn sample(&self, rng: &mut impl Rng, n: usize) -> Vec<usize> {
        let t = self.num_timesteps as u64;
        // Accept x < 2⁶⁴ − (2⁶⁴ mod T), a whole number of blocks of T values.
        let rem = (u64::MAX % t + 1) % t;
        let zone = u64::MAX - rem;
        (0..n)
            .map(|_| {
                loop {
                    let x = rng.next_u64();
                    if x <= zone {
                        break (x % t) as usize;
                    }
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covers_every_timestep_evenly() {
        let mut rng = diffusion_core::noise::sample_rng(0, 0);
        let draws = UniformTimesteps { num_timesteps: 10 }.sample(&mut rng, 100_000);
        let mut counts = [0usize; 10];
        draws.iter().for_each(|&t| counts[t] += 1);
        // Each count is Binomial(1e5, 0.1): standard deviation ≈ 95.
        assert!(counts.iter().all(|&c| (9_500..10_500).contains(&c)), "{counts:?}");
    }
}
