//! `cifar-ncsn`: NCSNv2 on CIFAR-10 (Song & Ermon 2020). The pipeline is `diffusion_experiments::image`; the settings are
//! `experiments/configs/cifar-ncsn.toml` (see docs/experiments.md).

use clap::Parser;
use diffusion_experiments::exit_on_error;
use diffusion_experiments::image::{ImageArgs, run_image};

#[derive(Parser)]
#[command(about = "NCSNv2 on CIFAR-10 (Song & Ermon 2020)")]
struct Args {
    #[command(flatten)]
    image: ImageArgs,
}

fn main() {
    let args = Args::parse();
    exit_on_error(run_image(
        "cifar-ncsn",
        include_str!("configs/cifar-ncsn.toml"),
        &args.image,
    ));
}
