//! `diffusion fid`: FID (and optionally KID, IS, precision/recall) of image samples against
//! reference statistics or reference images, with pytorch-fid's Inception network; and the
//! seed ranges that shard a 50k-sample evaluation across processes.

use std::ops::Range;
use std::path::PathBuf;

use burn::tensor::{DType, Tensor, TensorData};
use clap::Args;
use diffusion_core::DeviceSpec;
use diffusion_core::npy::NpyArray;
use diffusion_core::tensor::to_f64;
use diffusion_metrics::frechet::{FeatureStats, frechet_distance};
use diffusion_metrics::inception::{CLASSES, FEATURES, InceptionV3};
use diffusion_metrics::inception_score::{inception_score, softmax_rows};

use diffusion_cli::{CliError, Result};

/// `--seeds a-b --shard i/n`: sample indices a..=b, of which shard i (0-based) of n takes a
/// contiguous part; the shards' outputs concatenated in order are the whole range.
pub fn seed_range(seeds: &str, shard: Option<&str>) -> Result<Range<u64>> {
    let bad = |what: &str| {
        CliError::Usage(format!(
            "{what}: expected --seeds A-B (inclusive) and --shard I/N"
        ))
    };
    let (a, b) = seeds.split_once('-').ok_or_else(|| bad(seeds))?;
    let (a, b): (u64, u64) = (
        a.trim().parse().map_err(|_| bad(seeds))?,
        b.trim().parse().map_err(|_| bad(seeds))?,
    );
    if b < a {
        return Err(CliError::Usage(format!("--seeds {seeds}: the range is empty")));
    }
    let total = b - a + 1;
    let Some(shard) = shard else {
        return Ok(a..b + 1);
    };
    let (i, n) = shard.split_once('/').ok_or_else(|| bad(shard))?;
    let (i, n): (u64, u64) = (
        i.trim().parse().map_err(|_| bad(shard))?,
        n.trim().parse().map_err(|_| bad(shard))?,
    );
    if n == 0 || i >= n {
        return Err(CliError::Usage(format!("--shard {shard}: need 0 ≤ I < N")));
    }
    Ok(a + total * i / n..a + total * (i + 1) / n)
}

#[derive(Args)]
pub(crate) struct FidArgs {
    /// Generated images (.npy, [n, 3, h, w] or [n, 3·h·w], values in [−1, 1] as `diffusion
    /// sample` writes them); several files (shards) are concatenated in order.
    #[arg(long, required = true, num_args = 1..)]
    samples: Vec<PathBuf>,
    /// Reference statistics (.npz with mu and sigma, pytorch-fid's or ADM's format).
    #[arg(long, required_unless_present = "ref_samples")]
    ref_stats: Option<PathBuf>,
    /// Reference images instead (.npy as --samples).
    #[arg(long, conflicts_with = "ref_stats")]
    ref_samples: Option<PathBuf>,
    /// pytorch-fid's Inception weights, pt_inception-2015-12-05-6726825d.pth (or a safetensors
    /// export with the same names).
    #[arg(long)]
    inception_weights: PathBuf,
    /// Write the statistics of --samples here (.npz), to reuse as a reference.
    #[arg(long)]
    save_stats: Option<PathBuf>,
    /// Also report the Inception Score (10 splits).
    #[arg(long)]
    inception_score: bool,
    /// Images per forward pass.
    #[arg(long, default_value_t = 50)]
    batch_size: usize,
    /// Backend: flex, ndarray, wgpu, cuda (optionally with `:index`), as compiled in.
    #[arg(long, default_value = "flex")]
    backend: DeviceSpec,
}

/// Images `[n, 3, h, w]` in [−1, 1] from .npy files, concatenated.
fn read_images(paths: &[PathBuf]) -> Result<(Vec<f64>, [usize; 3])> {
    let mut all = Vec::new();
    let mut shape: Option<[usize; 3]> = None;
    for path in paths {
        let a = NpyArray::read(path)?;
        let chw = match a.shape.as_slice() {
            [_, 3, h, w] => [3, *h, *w],
            [_, f] if f % 3 == 0 && ((f / 3) as f64).sqrt().fract() == 0.0 => {
                let s = ((f / 3) as f64).sqrt() as usize;
                [3, s, s]
            }
            other => {
                return Err(CliError::Input(format!(
                    "{}: expected RGB images [n, 3, h, w] or [n, 3·s·s], got {other:?}",
                    path.display()
                )));
            }
        };
        if shape.is_some_and(|s| s != chw) {
            return Err(CliError::Input(format!(
                "{}: image size differs from the first file",
                path.display()
            )));
        }
        shape = Some(chw);
        all.extend(a.to_f64());
    }
    Ok((all, shape.expect("at least one file")))
}

/// pool3 features and logits of images in [−1, 1].
fn features(
    net: &InceptionV3,
    images: &[f64],
    chw: [usize; 3],
    batch: usize,
    device: &burn::tensor::Device,
) -> (Vec<f64>, Vec<f64>) {
    let per = chw.iter().product::<usize>();
    let n = images.len() / per;
    let (mut pool3, mut logits) = (Vec::with_capacity(n * FEATURES), Vec::with_capacity(n * CLASSES));
    for start in (0..n).step_by(batch.max(1)) {
        let end = (start + batch.max(1)).min(n);
        // [−1, 1] → [0, 1], pytorch-fid's input range.
        let values: Vec<f32> = images[start * per..end * per]
            .iter()
            .map(|v| ((v + 1.0) / 2.0) as f32)
            .collect();
        let x = Tensor::<4>::from_data(
            TensorData::new(values, [end - start, chw[0], chw[1], chw[2]]),
            (device, DType::F32),
        );
        let out = net.forward(x);
        pool3.extend(to_f64(&out.pool3));
        logits.extend(to_f64(&out.logits));
        eprint!("\rInception features: {end}/{n}");
    }
    eprintln!();
    (pool3, logits)
}

pub(crate) fn fid(args: &FidArgs) -> Result<()> {
    let device = args.backend.open_with(diffusion_core::Precision::F32)?;
    let net =
        InceptionV3::load(&device, &args.inception_weights).map_err(|e| CliError::Input(e.to_string()))?;
    let metric = |e: diffusion_metrics::MetricsError| CliError::Input(e.to_string());
    let (images, chw) = read_images(&args.samples)?;
    let (pool3, logits) = features(&net, &images, chw, args.batch_size, &device);
    let stats = FeatureStats::from_features(&pool3, FEATURES).map_err(metric)?;
    if let Some(path) = &args.save_stats {
        stats.write_npz(path).map_err(metric)?;
        eprintln!("wrote {}", path.display());
    }
    let reference = match (&args.ref_stats, &args.ref_samples) {
        (Some(path), _) => FeatureStats::read_npz(path).map_err(metric)?,
        (None, Some(path)) => {
            let (images, chw) = read_images(std::slice::from_ref(path))?;
            let (pool3, _) = features(&net, &images, chw, args.batch_size, &device);
            FeatureStats::from_features(&pool3, FEATURES).map_err(metric)?
        }
        (None, None) => return Err(CliError::Usage("give --ref-stats or --ref-samples".into())),
    };
    let mut report = serde_json::json!({
        "samples": stats.count,
        "fid": frechet_distance(&stats, &reference).map_err(metric)?,
    });
    if args.inception_score {
        let (mean, std) = inception_score(&softmax_rows(&logits, CLASSES), CLASSES, 10, 0).map_err(metric)?;
        report["inception_score"] = serde_json::json!({"mean": mean, "std": std});
    }
    println!("{}", serde_json::to_string_pretty(&report).expect("JSON"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_the_seed_range() {
        assert_eq!(seed_range("0-49999", None).unwrap(), 0..50000);
        let parts: Vec<Range<u64>> = (0..7)
            .map(|i| seed_range("10-109", Some(&format!("{i}/7"))).unwrap())
            .collect();
        assert_eq!(parts[0].start, 10);
        assert_eq!(parts[6].end, 110);
        for w in parts.windows(2) {
            assert_eq!(w[0].end, w[1].start);
        }
        assert!(seed_range("5-4", None).is_err());
        assert!(seed_range("0-9", Some("3/3")).is_err());
        assert!(seed_range("x", None).unwrap_err().to_string().contains("--seeds"));
    }
}
