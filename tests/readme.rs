//! The README's library example, kept compiling and correct.

use diffusion_core::noise::{NoiseSource, SampleNoise};
use diffusion_core::{DeviceSpec, Precision};
use diffusion_samplers::{Ddim, GaussianMixture, Sampler, successive_steps};
use diffusion_schedules::{DiscreteSchedule, TimestepSpacing, timesteps};

#[test]
fn readme_example_samples_the_mixture() -> Result<(), Box<dyn std::error::Error>> {
    let spec = diffusion_tests::spec();
    let precision = if spec.backend.computes_in(Precision::F64) {
        Precision::F64
    } else {
        Precision::F32
    };
    let device = spec.open()?;
    let _ = "flex".parse::<DeviceSpec>()?;
    let schedule = DiscreteSchedule::linear(1000, 1e-4, 0.02)?;
    let steps = successive_steps(&schedule, &timesteps(1000, 50, TimestepSpacing::Trailing, 0)?);
    let oracle = GaussianMixture::new(
        vec![0.5, 0.5],
        vec![vec![-2.0, 0.0], vec![2.0, 0.0]],
        vec![0.3, 0.3],
    )?;
    let mut noise = SampleNoise::range(0, 0..1000);
    let x = noise.normal_tensor(1000, 2, &device, precision.dtype());
    let out = Ddim::new(steps, 0.0).sample(&oracle, x, &mut noise)?;
    assert_eq!(out.nfe, 50);
    // Half the samples on each side, each mode at ±2 with spread 0.3.
    let v = diffusion_core::tensor::to_f64(&out.x);
    let right = v.chunks(2).filter(|p| p[0] > 0.0).count();
    assert!((400..600).contains(&right), "{right} of 1000 on the right");
    let spread = v.chunks(2).map(|p| (p[0].abs() - 2.0).powi(2)).sum::<f64>() / 1000.0;
    assert!((spread.sqrt() - 0.3).abs() < 0.05, "spread {}", spread.sqrt());
    Ok(())
}
