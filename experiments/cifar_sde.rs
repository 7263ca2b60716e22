//! `cifar-sde`: Score SDEs on CIFAR-10 (Song et al. 2021). The pipeline is `diffusion_experiments::image`; the settings are
//! `experiments/configs/cifar-sde.toml` (see docs/experiments.md).

use clap::Parser;
use diffusion_experiments::exit_on_error;
use diffusion_experiments::image::{ImageArgs, run_image};

#[derive(Parser)]
#[command(about = "Score SDEs on CIFAR-10 (Song et al. 2021)")]
struct Args {
    #[command(flatten)]
    image: ImageArgs,
}

fn main() {
    let args = Args::parse();
    exit_on_error(run_image(
        "cifar-sde",
        include_str!("configs/cifar-sde.toml"),
        &args.image,
    ));
}
