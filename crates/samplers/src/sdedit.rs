//! SDEdit / img2img (Meng et al. 2022): a guide image is perturbed by the forward process to
//! an intermediate noise level and the reverse process is run from there; `strength` ∈ (0, 1]
//! chooses how far (1: from pure noise, the guide forgotten). On a discrete sampler the last
//! ⌊N · strength⌋ of its N timesteps are kept, as diffusers' img2img pipelines do, and the
//! guide is noised to the first kept timestep: x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε.

use burn::tensor::Tensor;
use diffusion_schedules::DiscreteSchedule;

/// The timesteps an img2img run of `strength` takes from a sampler's `timesteps`
/// (decreasing): the last min(⌊N · strength⌋, N).
pub fn img2img_timesteps(timesteps: &[usize], strength: f64) -> Result<Vec<usize>, String> {
    if !(strength > 0.0 && strength <= 1.0) {
        return Err(format!("strength = {strength} must lie in (0, 1]"));
    }
    let n = timesteps.len();
    let keep = ((n as f64 * strength) as usize).min(n);
    if keep == 0 {
        return Err(format!(
            "strength {strength} keeps none of {n} steps; raise it or take more steps"
        ));
    }
    Ok(timesteps[n - keep..].to_vec())
}

/// The guide `x0` noised to timestep `t` of `schedule` with `noise` (the forward process).
pub fn noise_to(schedule: &DiscreteSchedule, x0: Tensor<2>, noise: Tensor<2>, t: usize) -> Tensor<2> {
    let ab = schedule.alphas_cumprod()[t];
    x0.mul_scalar(ab.sqrt()) + noise.mul_scalar((1.0 - ab).sqrt())
}
