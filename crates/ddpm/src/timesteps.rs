//! Drawing training timesteps: uniformly (Ho et al. 2020), or by importance with the loss-
//! aware sampler of Improved DDPM (Nichol & Dhariwal 2021, §3.3), which draws t with
//! probability ∝ √E\[L_t²\] and reweights by 1/(T p_t) so that the estimate of L_vlb stays
//! unbiased with lower variance.

use std::collections::VecDeque;

use rand::Rng;

/// A way of drawing training timesteps with importance weights.
pub trait TimestepSampler {
    /// `n` timesteps and their weights 1/(T p_t) (all 1 for uniform sampling).
    fn sample(&self, rng: &mut dyn Rng, n: usize) -> (Vec<usize>, Vec<f64>);
}

/// Timesteps drawn uniformly from {0, …, T−1} (Ho et al. 2020, Algorithm 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UniformTimesteps {
    /// T.
    pub num_timesteps: usize,
}

impl UniformTimesteps {
    /// `n` timesteps, each uniform on {0, …, T−1}, without modulo bias.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R, n: usize) -> Vec<usize> {
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

impl TimestepSampler for UniformTimesteps {
    fn sample(&self, rng: &mut dyn Rng, n: usize) -> (Vec<usize>, Vec<f64>) {
        (UniformTimesteps::sample(self, rng, n), vec![1.0; n])
    }
}

/// Improved DDPM's `LossSecondMomentResampler`: a history of the last `history_per_term`
/// losses of every t; until every t has a full history the sampling is uniform, then
/// p_t ∝ √(mean of L_t²), mixed with a uniform floor `uniform_prob`.
#[derive(Clone, Debug, PartialEq)]
pub struct LossAwareTimesteps {
    history: Vec<VecDeque<f64>>,
    history_per_term: usize,
    uniform_prob: f64,
}

impl LossAwareTimesteps {
    /// A sampler over T timesteps with the paper's history of 10 and floor 0.001.
    pub fn new(num_timesteps: usize) -> Self {
        Self::with_options(num_timesteps, 10, 0.001)
    }

    /// A sampler with an explicit history length and uniform floor.
    pub fn with_options(num_timesteps: usize, history_per_term: usize, uniform_prob: f64) -> Self {
        Self {
            history: vec![VecDeque::with_capacity(history_per_term); num_timesteps],
            history_per_term: history_per_term.max(1),
            uniform_prob,
        }
    }

    /// Whether every timestep has a full history.
    pub fn warmed_up(&self) -> bool {
        self.history.iter().all(|h| h.len() == self.history_per_term)
    }

    /// Records the losses of a batch at its timesteps.
    pub fn update(&mut self, t: &[usize], losses: &[f64]) {
        for (&ti, &l) in t.iter().zip(losses) {
            let h = &mut self.history[ti];
            if h.len() == self.history_per_term {
                h.pop_front();
            }
            h.push_back(l);
        }
    }

    /// The sampling weights (unnormalised: uniform 1 before warm-up).
    pub fn weights(&self) -> Vec<f64> {
        let t_len = self.history.len();
        if !self.warmed_up() {
            return vec![1.0; t_len];
        }
        let raw: Vec<f64> = self
            .history
            .iter()
            .map(|h| (h.iter().map(|l| l * l).sum::<f64>() / h.len() as f64).sqrt())
            .collect();
        let sum: f64 = raw.iter().sum();
        raw.iter()
            .map(|w| w / sum * (1.0 - self.uniform_prob) + self.uniform_prob / t_len as f64)
            .collect()
    }
}

impl TimestepSampler for LossAwareTimesteps {
    fn sample(&self, rng: &mut dyn Rng, n: usize) -> (Vec<usize>, Vec<f64>) {
        let w = self.weights();
        let total: f64 = w.iter().sum();
        let p: Vec<f64> = w.iter().map(|x| x / total).collect();
        let mut cdf = Vec::with_capacity(p.len());
        let mut acc = 0.0;
        for &pi in &p {
            acc += pi;
            cdf.push(acc);
        }
        let t_len = p.len() as f64;
        (0..n)
            .map(|_| {
                let u = diffusion_core::noise::uniform(rng) * acc;
                let t = cdf.partition_point(|&c| c <= u).min(p.len() - 1);
                (t, 1.0 / (t_len * p[t]))
            })
            .unzip()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covers_every_timestep_evenly() {
        let mut rng = diffusion_core::noise::sample_rng(0, 0);
        let draws = UniformTimesteps { num_timesteps: 10 }.sample(&mut rng, 100_000);
        let draws: Vec<usize> = draws;
        let mut counts = [0usize; 10];
        draws.iter().for_each(|&t| counts[t] += 1);
        // Each count is Binomial(1e5, 0.1): standard deviation ≈ 95.
        assert!(counts.iter().all(|&c| (9_500..10_500).contains(&c)), "{counts:?}");
    }
}

#[cfg(test)]
mod loss_aware_tests {
    use super::*;

    #[test]
    fn draws_in_proportion_to_the_loss_second_moment() {
        let mut s = LossAwareTimesteps::with_options(4, 2, 0.0);
        assert_eq!(s.weights(), vec![1.0; 4]);
        for _ in 0..2 {
            s.update(&[0, 1, 2, 3], &[1.0, 1.0, 2.0, 4.0]);
        }
        assert!(s.warmed_up());
        let w = s.weights();
        assert!(
            (w[3] - 0.5).abs() < 1e-12 && (w[0] - 0.125).abs() < 1e-12,
            "{w:?}"
        );
        let mut rng = diffusion_core::noise::sample_rng(1, 0);
        let (t, iw) = TimestepSampler::sample(&s, &mut rng, 40_000);
        let share3 = t.iter().filter(|&&x| x == 3).count() as f64 / 40_000.0;
        assert!((share3 - 0.5).abs() < 0.01, "{share3}");
        // Importance weights make the estimator unbiased: E[w] = 1.
        let mean_w = iw.iter().sum::<f64>() / iw.len() as f64;
        assert!((mean_w - 1.0).abs() < 0.03, "{mean_w}");
    }
}
