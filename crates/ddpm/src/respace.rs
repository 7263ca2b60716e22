//! Respacing (Nichol & Dhariwal 2021, §4): sample with K < T steps on a subset S of the
//! training timesteps, with the betas recomputed so that the marginals are unchanged:
//! β'_k = 1 − ᾱ_{s_k}/ᾱ_{s_{k−1}}. The model is still called with the original timesteps.

use diffusion_schedules::DiscreteSchedule;
use diffusion_schedules::numeric::round_half_even;

use crate::error::{DdpmError, Result};

/// Improved DDPM's `space_timesteps`: the kept timesteps for `spec`, either `"ddimN"` (an
/// integer stride giving exactly N steps from 0) or comma-separated counts, one per equal
/// section of [0, T) (`"10"`, `"10,15,20"`), each section's steps evenly spread with
/// half-to-even rounding. Returned sorted.
pub fn space_timesteps(num_timesteps: usize, spec: &str) -> Result<Vec<usize>> {
    let bad = |reason: String| DdpmError::InvalidRespacing {
        spec: spec.into(),
        reason,
    };
    if let Some(count) = spec.strip_prefix("ddim") {
        let desired: usize = count
            .parse()
            .map_err(|_| bad("expected ddim followed by a number".into()))?;
        for stride in 1..num_timesteps {
            if num_timesteps.div_ceil(stride) == desired {
                return Ok((0..num_timesteps).step_by(stride).collect());
            }
        }
        return Err(bad(format!(
            "no integer stride gives exactly {desired} of {num_timesteps} steps"
        )));
    }
    let counts: Vec<usize> = spec
        .split(',')
        .map(|c| c.trim().parse().map_err(|_| bad(format!("`{c}` is not a count"))))
        .collect::<Result<_>>()?;
    if counts.is_empty() || counts.contains(&0) {
        return Err(bad("every section needs at least one step".into()));
    }
    let size_per = num_timesteps / counts.len();
    let extra = num_timesteps % counts.len();
    let mut start = 0;
    let mut steps = Vec::new();
    for (i, &count) in counts.iter().enumerate() {
        let size = size_per + usize::from(i < extra);
        if size < count {
            return Err(bad(format!(
                "cannot divide a section of {size} steps into {count}"
            )));
        }
        let stride = if count <= 1 {
            1.0
        } else {
            (size - 1) as f64 / (count - 1) as f64
        };
        let mut cur = 0.0;
        for _ in 0..count {
            steps.push(start + round_half_even(cur) as usize);
            cur += stride;
        }
        start += size;
    }
    steps.sort_unstable();
    steps.dedup();
    Ok(steps)
}

/// A schedule restricted to a subset of its timesteps.
#[derive(Clone, Debug, PartialEq)]
pub struct Respaced {
    /// The schedule over the kept timesteps (β recomputed, ᾱ unchanged).
    pub schedule: DiscreteSchedule,
    /// The original timestep of each new one.
    pub timestep_map: Vec<usize>,
}

impl Respaced {
    /// Keeps the timesteps `keep` (sorted, distinct, within the schedule) of `base`.
    pub fn new(base: &DiscreteSchedule, keep: &[usize]) -> Result<Self> {
        let ab = base.alphas_cumprod();
        if keep.is_empty() || keep.windows(2).any(|w| w[0] >= w[1]) {
            return Err(DdpmError::InvalidRespacing {
                spec: format!("{keep:?}"),
                reason: "the kept timesteps must be distinct and increasing".into(),
            });
        }
        if let Some(&t) = keep.iter().find(|&&t| t >= ab.len()) {
            return Err(DdpmError::TimestepOutOfRange { t, max: ab.len() - 1 });
        }
        let mut last = 1.0;
        let betas = keep
            .iter()
            .map(|&t| {
                let beta = 1.0 - ab[t] / last;
                last = ab[t];
                beta
            })
            .collect();
        Ok(Self {
            schedule: DiscreteSchedule::from_betas(betas).map_err(|e| DdpmError::InvalidRespacing {
                spec: format!("{keep:?}"),
                reason: e.to_string(),
            })?,
            timestep_map: keep.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spacing_follows_improved_ddpm() {
        assert_eq!(
            space_timesteps(1000, "ddim10").unwrap(),
            (0..1000).step_by(100).collect::<Vec<_>>()
        );
        let s = space_timesteps(1000, "10").unwrap();
        assert_eq!(s.len(), 10);
        assert_eq!((s[0], s[9]), (0, 999));
        assert_eq!(space_timesteps(300, "10,15,20").unwrap().len(), 45);
        assert!(space_timesteps(10, "20").is_err());
        assert!(space_timesteps(1000, "ddim999").is_err());
        assert!(space_timesteps(1000, "ten").is_err());
    }

    #[test]
    fn respacing_keeps_the_marginals() {
        let base = DiscreteSchedule::linear(1000, 1e-4, 0.02).unwrap();
        let keep = space_timesteps(1000, "ddim50").unwrap();
        let r = Respaced::new(&base, &keep).unwrap();
        for (k, &t) in keep.iter().enumerate() {
            assert!((r.schedule.alphas_cumprod()[k] - base.alphas_cumprod()[t]).abs() < 1e-15);
        }
    }
}
