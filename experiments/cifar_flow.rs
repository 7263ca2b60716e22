//! `cifar-flow`: OT-CFM and rectified flow on CIFAR-10 (Tong et al. 2023; Liu et al. 2022). The pipeline is `diffusion_experiments::image`; the settings are
//! `experiments/configs/cifar-flow.toml` (see docs/experiments.md).

use clap::Parser;
use diffusion_experiments::exit_on_error;
use diffusion_experiments::image::{ImageArgs, run_image};

#[derive(Parser)]
#[command(about = "OT-CFM and rectified flow on CIFAR-10 (Tong et al. 2023; Liu et al. 2022)")]
struct Args {
    #[command(flatten)]
    image: ImageArgs,
}

fn main() {
    let args = Args::parse();
    exit_on_error(run_image(
        "cifar-flow",
        include_str!("configs/cifar-flow.toml"),
        &args.image,
    ));
}
