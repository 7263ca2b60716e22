//! `shapes`: A small class-conditional diffusion model (EDM, guided) on generated shapes, trained on a CPU. The pipeline is `diffusion_experiments::image`; the settings are
//! `experiments/configs/shapes.toml` (see docs/experiments.md).

fn main() {
    diffusion_experiments::image::image_main(
        "shapes",
        "A small class-conditional diffusion model (EDM, guided) on generated shapes, trained on a CPU",
        include_str!("configs/shapes.toml"),
    );
}
