//! `cifar-edm`: EDM on CIFAR-10 (Karras et al. 2022). The pipeline is `diffusion_experiments::image`; the settings are
//! `experiments/configs/cifar-edm.toml` (see docs/experiments.md).

use clap::Parser;
use diffusion_experiments::exit_on_error;
use diffusion_experiments::image::{ImageArgs, run_image};

#[derive(Parser)]
#[command(about = "EDM on CIFAR-10 (Karras et al. 2022)")]
struct Args {
    #[command(flatten)]
    image: ImageArgs,
}

fn main() {
    let args = Args::parse();
    exit_on_error(run_image(
        "cifar-edm",
        include_str!("configs/cifar-edm.toml"),
        &args.image,
    ));
}
