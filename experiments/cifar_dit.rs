//! `cifar-dit`: Class-conditional DiT-S/2 on CIFAR-10 with classifier-free guidance (Peebles & Xie 2023). The pipeline is `diffusion_experiments::image`; the settings are
//! `experiments/configs/cifar-dit.toml` (see docs/experiments.md).

use clap::Parser;
use diffusion_experiments::exit_on_error;
use diffusion_experiments::image::{ImageArgs, run_image};

#[derive(Parser)]
#[command(about = "Class-conditional DiT-S/2 on CIFAR-10 with classifier-free guidance (Peebles & Xie 2023)")]
struct Args {
    #[command(flatten)]
    image: ImageArgs,
}

fn main() {
    let args = Args::parse();
    exit_on_error(run_image(
        "cifar-dit",
        include_str!("configs/cifar-dit.toml"),
        &args.image,
    ));
}
