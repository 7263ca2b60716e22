//! Training checkpoints: `run/checkpoints/step-00001000/` holds the model, every EMA and the
//! optimiser state (burnpack, which keeps parameter ids), and `state.json` (the step, the
//! training configuration and the log so far). The learning rate is a function of the step and
//! every batch is drawn from streams seeded by (seed, step), so nothing else is needed to resume
//! exactly. A checkpoint is written into a temporary folder and renamed into place, so it is
//! either complete or absent; the last K are kept.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::ModuleOptimizer;
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::ema::Ema;
use crate::error::{Result, TrainError};
use crate::trainer::LogRecord;

/// What `state.json` holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckpointState {
    /// Optimiser steps completed.
    pub step: usize,
    /// The configuration of the run (JSON of [`TrainConfig`]).
    pub config: serde_json::Value,
    /// The log so far (its numbers as exact decimal strings, which parse back bit for bit).
    #[serde(with = "exact")]
    pub log: Vec<LogRecord>,
    /// Steps whose loss was not finite and that were skipped.
    pub skipped: Vec<usize>,
}

/// The log with every number as the shortest decimal string that parses back to the same bits:
/// a resumed run's log is then the uninterrupted run's, bit for bit (a JSON number would go
/// through serde_json's fast float parser, which may round the last bit).
mod exact {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::trainer::LogRecord;

    #[derive(Serialize, Deserialize)]
    struct Saved {
        step: usize,
        loss: String,
        lr: String,
        elapsed_s: String,
        steps_per_s: String,
        #[serde(default)]
        grad_norm: Option<String>,
    }

    fn text(v: f64) -> String {
        format!("{v:?}")
    }

    fn number<E: serde::de::Error>(s: &str) -> Result<f64, E> {
        s.parse().map_err(|_| E::custom(format!("`{s}` is not a number")))
    }

    pub fn serialize<S: Serializer>(log: &[LogRecord], s: S) -> Result<S::Ok, S::Error> {
        log.iter()
            .map(|r| Saved {
                step: r.step,
                loss: text(r.loss),
                lr: text(r.lr),
                elapsed_s: text(r.elapsed_s),
                steps_per_s: text(r.steps_per_s),
                grad_norm: r.grad_norm.map(text),
            })
            .collect::<Vec<_>>()
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<LogRecord>, D::Error> {
        Vec::<Saved>::deserialize(d)?
            .into_iter()
            .map(|r| {
                Ok(LogRecord {
                    step: r.step,
                    loss: number(&r.loss)?,
                    lr: number(&r.lr)?,
                    elapsed_s: number(&r.elapsed_s)?,
                    steps_per_s: number(&r.steps_per_s)?,
                    grad_norm: r.grad_norm.as_deref().map(number).transpose()?,
                })
            })
            .collect()
    }
}

fn io(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Checkpoint {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// The checkpoint folder of `step` under `run_dir`.
pub fn checkpoint_dir(run_dir: &Path, step: usize) -> PathBuf {
    run_dir.join("checkpoints").join(format!("step-{step:08}"))
}

/// The complete checkpoints under `run_dir`, oldest first.
pub fn list_checkpoints(run_dir: &Path) -> Vec<(usize, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(run_dir.join("checkpoints")) else {
        return Vec::new();
    };
    let mut found: Vec<(usize, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("step-")?.parse().ok()?;
            Some((step, e.path()))
        })
        .collect();
    found.sort();
    found
}

/// The latest complete checkpoint under `run_dir`.
pub fn latest_checkpoint(run_dir: &Path) -> Option<(usize, PathBuf)> {
    list_checkpoints(run_dir).pop()
}

/// Writes a checkpoint atomically and keeps the last `keep`; returns its folder.
pub fn save_checkpoint<M: Module>(
    run_dir: &Path,
    model: &M,
    optim: &ModuleOptimizer,
    emas: &[Ema<M>],
    state: &CheckpointState,
    keep: usize,
) -> Result<PathBuf> {
    let final_dir = checkpoint_dir(run_dir, state.step);
    let tmp = run_dir
        .join("checkpoints")
        .join(format!(".tmp-step-{:08}-{}", state.step, std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    model
        .clone()
        .save_file(tmp.join("model.bpk"))
        .map_err(|e| io(&tmp, e))?;
    optim.save(tmp.join("optim.bpk")).map_err(|e| io(&tmp, e))?;
    for ema in emas {
        let path = tmp.join(format!("ema-{}.bpk", ema.name));
        ema.model.clone().save_file(&path).map_err(|e| io(&path, e))?;
    }
    let json = serde_json::to_vec_pretty(state).map_err(|e| io(&tmp, e))?;
    std::fs::write(tmp.join("state.json"), json).map_err(|e| io(&tmp, e))?;
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(|e| io(&final_dir, e))?;
    }
    std::fs::rename(&tmp, &final_dir).map_err(|e| io(&final_dir, e))?;
    let all = list_checkpoints(run_dir);
    for (_, old) in all.iter().take(all.len().saturating_sub(keep)) {
        std::fs::remove_dir_all(old).map_err(|e| io(old, e))?;
    }
    Ok(final_dir)
}

/// A checkpoint read back: the model, the optimiser, the EMAs and the state.
pub struct Restored<M> {
    /// The model.
    pub model: M,
    /// The optimiser with its state.
    pub optim: ModuleOptimizer,
    /// The EMAs, in the configuration's order.
    pub emas: Vec<Ema<M>>,
    /// `state.json`.
    pub state: CheckpointState,
}

/// Reads the checkpoint in `dir` into copies of `model`, `optim` and `emas` (which give the
/// architecture and the EMA schedules). The run's configuration must agree with the one saved,
/// except for the number of steps (a run may be extended).
pub fn load_checkpoint<M: Module>(
    dir: &Path,
    model: M,
    optim: ModuleOptimizer,
    emas: Vec<Ema<M>>,
    config: &TrainConfig,
) -> Result<Restored<M>> {
    let state_path = dir.join("state.json");
    let text = std::fs::read_to_string(&state_path).map_err(|e| io(&state_path, e))?;
    let state: CheckpointState =
        serde_json::from_str(&text).map_err(|e| io(&state_path, format!("corrupt state.json: {e}")))?;
    let mut saved = state.config.clone();
    let mut current = serde_json::to_value(config).map_err(|e| io(dir, e))?;
    for v in [&mut saved, &mut current] {
        if let Some(o) = v.as_object_mut() {
            o.remove("steps");
        }
    }
    if saved != current {
        return Err(TrainError::Mismatch {
            path: dir.to_path_buf(),
            reason: format!(
                "the checkpoint was written with another training configuration:\n  saved:   {saved}\n  current: {current}"
            ),
        });
    }
    let model_path = dir.join("model.bpk");
    let model = model
        .try_load_file(&model_path)
        .map_err(|e| TrainError::Mismatch {
            path: model_path.clone(),
            reason: format!("the model does not fit this checkpoint: {e}"),
        })?;
    let optim_path = dir.join("optim.bpk");
    let optim = optim.load(&optim_path).map_err(|e| io(&optim_path, e))?;
    let emas = emas
        .into_iter()
        .map(|ema| {
            let path = dir.join(format!("ema-{}.bpk", ema.name));
            let model = ema.model.try_load_file(&path).map_err(|e| TrainError::Mismatch {
                path: path.clone(),
                reason: format!("EMA `{}` does not fit this checkpoint: {e}", ema.name),
            })?;
            Ok(Ema { model, ..ema })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Restored {
        model,
        optim,
        emas,
        state,
    })
}
