//! `shapes`: A small DDPM on generated shapes, trained on a CPU. The pipeline is `diffusion_experiments::image`; the settings are
//! `experiments/configs/shapes.toml` (see docs/experiments.md).

use clap::Parser;
use diffusion_experiments::exit_on_error;
use diffusion_experiments::image::{ImageArgs, run_image};

#[derive(Parser)]
#[command(about = "A small DDPM on generated shapes, trained on a CPU")]
struct Args {
    #[command(flatten)]
    image: ImageArgs,
}

fn main() {
    let args = Args::parse();
    exit_on_error(run_image(
        "shapes",
        include_str!("configs/shapes.toml"),
        &args.image,
    ));
}
