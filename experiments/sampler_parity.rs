//! `sampler-parity`: every reference case of `tests/fixtures/samplers.json` (diffusers and
//! k-diffusion run on the Gaussian-mixture oracle) through the same code paths as the
//! `diffusion` command — the diffusers loader, or the sampler named by the k-diffusion
//! function — in f64 and f32, writing the table of maximum relative deviations and NFE
//! (`parity.md`, `parity.json`).

use burn::tensor::DType;
use clap::Parser;
use diffusion_cli::{OracleForm, SamplerOptions, default_vp_schedule, oracle_denoiser};
use diffusion_core::noise::Replay;
use diffusion_core::tensor::{from_f64, max_rel_deviation, to_f64};
use diffusion_experiments::{CommonArgs, Result, Run, RunError, exit_on_error};
use diffusion_samplers::{
    Churn, DiffusersScheduler, DiscreteModel, FlowConvention, FlowModel, GaussianMixture, ModelForm, Sampler,
    StepOptions, TimestepInterpolation,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Serialize, Deserialize, Debug)]
struct Config {
    seed: u64,
    fixture: String,
}

#[derive(Parser)]
#[command(about = "Deviation of every sampler from diffusers / k-diffusion on the reference fixture")]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() {
    exit_on_error(run(&Args::parse().common));
}

#[derive(Serialize)]
struct Row {
    case: String,
    nfe: usize,
    deviation_f64: Option<f64>,
    deviation_f32: f64,
}

fn matrix(v: &Value) -> (Vec<f64>, usize) {
    let rows = v.as_array().map(Vec::as_slice).unwrap_or_default();
    (
        rows.iter()
            .flat_map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap_or(f64::NAN))
            })
            .collect(),
        rows.len(),
    )
}

fn replay(v: &Value) -> Replay {
    Replay::new(
        v.as_array()
            .map(|l| l.iter().map(|a| matrix(a).0).collect())
            .unwrap_or_default(),
    )
}

/// The `diffusion sample --sampler` name and options of a k-diffusion case.
fn k_diffusion_sampler(case: &Value) -> std::result::Result<Box<dyn Sampler>, String> {
    let family = case["name"]
        .as_str()
        .unwrap_or("")
        .split('/')
        .nth(1)
        .unwrap_or("");
    let kw = &case["kwargs"];
    let f = |k: &str| kw[k].as_f64();
    let sigmas = case["sigmas"]
        .as_array()
        .map(|s| s.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(","));
    let mut o = SamplerOptions {
        sigmas,
        ..SamplerOptions::default()
    };
    let name = match family {
        "euler" => "euler",
        "heun" => "heun",
        "heun_churn" => {
            o.churn = Some(Churn {
                s_churn: f("s_churn").unwrap_or(0.0),
                s_tmin: f("s_tmin").unwrap_or(0.0),
                s_tmax: f("s_tmax").unwrap_or(f64::INFINITY),
                s_noise: f("s_noise").unwrap_or(1.0),
            });
            "heun"
        }
        "dpm_2" => "dpm2",
        "euler_ancestral" => "euler-ancestral",
        "dpm_2_ancestral" => "dpm2-ancestral",
        "dpmpp_2s_ancestral" => "dpmpp-2s-ancestral",
        "lms" => {
            o.order = Some(4);
            "lms"
        }
        "dpmpp_2m" => "dpmpp-2m",
        "dpmpp_2m_sde_midpoint" | "dpmpp_2m_sde_heun" => {
            o.solver_type = kw["solver_type"].as_str().map(String::from);
            "dpmpp-2m-sde"
        }
        "dpmpp_3m_sde" => "dpmpp-3m-sde",
        "dpm_fast" | "dpm_adaptive" => {
            o.sigmas = None;
            o.sigma_min = f("sigma_min");
            o.sigma_max = f("sigma_max");
            if family == "dpm_fast" {
                o.nfe = kw["n"].as_u64().map(|n| n as usize);
                "dpm-fast"
            } else {
                o.rtol = f("rtol");
                o.atol = f("atol");
                "dpm-adaptive"
            }
        }
        other => return Err(format!("no sampler for k-diffusion family {other}")),
    };
    o.build(name).map(|b| b.sampler).map_err(|e| e.to_string())
}

fn run(args: &CommonArgs) -> Result<()> {
    args.one_device("sampler-parity")?;
    let run: Run<Config> = Run::start(
        "sampler-parity",
        include_str!("configs/sampler-parity.toml"),
        args,
    )?;
    let fail = |e: &dyn std::fmt::Display| RunError::Failed(e.to_string());
    let text = std::fs::read_to_string(&run.config.fixture)
        .map_err(|e| fail(&format!("{}: {e}", run.config.fixture)))?;
    let fixture: Value = serde_json::from_str(&text).map_err(|e| fail(&e))?;
    let o = &fixture["oracle"];
    let raw: GaussianMixture = serde_json::from_value(o.clone()).map_err(|e| fail(&e))?;
    let gm = GaussianMixture::new(raw.weights, raw.means, raw.stds).map_err(|e| fail(&e))?;
    let device = run.device.clone();
    let f64_ok = run.precision == diffusion_core::Precision::F64;
    let mut rows = Vec::new();
    for case in fixture["cases"].as_array().into_iter().flatten() {
        let name = case["name"].as_str().unwrap_or("").to_string();
        if name.contains("ddim_inverse")
            || name.contains("discrete_eps")
            || case["reference_nonfinite"] == true
        {
            continue;
        }
        let mut deviations = Vec::new();
        let mut nfe = 0;
        let dtypes: &[DType] = if f64_ok {
            &[DType::F64, DType::F32]
        } else {
            &[DType::F32]
        };
        for &dtype in dtypes {
            let (z, n) = matrix(&case["z"]);
            let x = from_f64(z.clone(), [n, z.len() / n], &device, dtype);
            let mut noise = replay(&case["noise"]);
            let out = if case["library"] == "diffusers" {
                let s = DiffusersScheduler::from_value(case["config"].clone()).map_err(|e| fail(&e))?;
                let options = StepOptions {
                    eta: case["step_kwargs"]["eta"].as_f64().unwrap_or(0.0),
                    lms_order: case["step_kwargs"]["order"].as_u64().unwrap_or(4) as usize,
                };
                let plan = s
                    .plan(
                        case["num_inference_steps"].as_u64().unwrap_or(0) as usize,
                        options,
                    )
                    .map_err(|e| fail(&e))?;
                let x = x.mul_scalar(plan.sampler.init_noise_sigma());
                let schedule = s.schedule().clone();
                match s.model_form().map_err(|e| fail(&e))? {
                    ModelForm::Discrete(p) => {
                        let model = gm.discrete_model(&schedule, p, TimestepInterpolation::Sigma);
                        plan.sampler
                            .sample(&DiscreteModel::new(model, schedule.clone(), p), x, &mut noise)
                    }
                    ModelForm::Flow => {
                        let model = gm.velocity_model(FlowConvention::DataToNoise, 1000.0);
                        plan.sampler.sample(
                            &FlowModel::new(model, FlowConvention::DataToNoise, 1000.0),
                            x,
                            &mut noise,
                        )
                    }
                }
            } else {
                let sampler = k_diffusion_sampler(case).map_err(|e| fail(&e))?;
                let x = x.mul_scalar(sampler.init_noise_sigma());
                let schedule = default_vp_schedule();
                let denoiser = oracle_denoiser(&gm, OracleForm::Ve, &schedule);
                sampler.sample(denoiser.as_ref(), x, &mut noise)
            }
            .map_err(|e| fail(&format!("{name}: {e}")))?;
            nfe = out.nfe;
            // f32 is compared with diffusers' own float32 run where there is one.
            let key = if dtype == DType::F32 && !case["x_final_f32"].is_null() {
                "x_final_f32"
            } else {
                "x_final"
            };
            deviations.push(max_rel_deviation(&to_f64(&out.x), &matrix(&case[key]).0));
        }
        let (d64, d32) = if f64_ok {
            (Some(deviations[0]), deviations[1])
        } else {
            (None, deviations[0])
        };
        rows.push(Row {
            case: name,
            nfe,
            deviation_f64: d64,
            deviation_f32: d32,
        });
    }
    let mut md = String::from(
        "| case | NFE | max rel. deviation f64 | max rel. deviation f32 |\n|---|---:|---:|---:|\n",
    );
    for r in &rows {
        md.push_str(&format!(
            "| `{}` | {} | {} | {:.1e} |\n",
            r.case,
            r.nfe,
            r.deviation_f64.map_or("—".into(), |d| format!("{d:.1e}")),
            r.deviation_f32
        ));
    }
    let worst64 = rows.iter().filter_map(|r| r.deviation_f64).fold(0.0, f64::max);
    let worst32 = rows.iter().map(|r| r.deviation_f32).fold(0.0, f64::max);
    md.push_str(&format!(
        "\n{} cases; worst f64 {worst64:.1e}, worst f32 {worst32:.1e}.\n",
        rows.len()
    ));
    run.write_text("parity.md", &md)?;
    run.write_json("parity.json", &rows)?;
    print!("{md}");
    Ok(())
}
