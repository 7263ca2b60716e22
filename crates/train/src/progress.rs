//! What a run reports while it trains: a progress bar (steps/s, ETA, the last loss) when
//! stderr is a terminal and plain log lines otherwise; every log record also appended to
//! `metrics.jsonl` and the loss curve redrawn as `loss.png` in the run folder.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};

use crate::trainer::LogRecord;

/// The reporter of a run.
pub struct Progress {
    bar: Option<ProgressBar>,
    jsonl: Option<PathBuf>,
    plot: Option<PathBuf>,
    quiet: bool,
}

impl Progress {
    /// A reporter for a run of `steps` steps starting at `start`; files go to `run_dir`.
    pub fn new(steps: usize, start: usize, run_dir: Option<&Path>, quiet: bool) -> Self {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(steps as u64);
            bar.set_style(
                ProgressStyle::with_template("{bar:40} {pos}/{len} steps  {per_sec}  eta {eta}  {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_position(start as u64);
            bar
        });
        Self {
            bar,
            jsonl: run_dir.map(|d| d.join("metrics.jsonl")),
            plot: run_dir.map(|d| d.join("loss.png")),
            quiet,
        }
    }

    /// Rewrites `metrics.jsonl` to hold exactly `log` (the records of a restored run, or none),
    /// so that the file of a resumed run has one record per logged step.
    pub fn restart_log(&self, log: &[LogRecord]) {
        if let Some(path) = &self.jsonl {
            let text: String = log
                .iter()
                .filter_map(|r| serde_json::to_string(r).ok())
                .map(|l| l + "\n")
                .collect();
            let _ = diffusion_core::fs::write_atomic(path, text.as_bytes());
        }
    }

    /// One optimiser step done.
    pub fn tick(&self) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
    }

    /// Reports a log record (and the whole log, for the plot).
    pub fn record(&self, record: &LogRecord, log: &[LogRecord]) {
        match &self.bar {
            Some(bar) => bar.set_message(format!("loss {:.5}", record.loss)),
            None if !self.quiet => eprintln!(
                "step {:>8}  loss {:.5}  grad-norm {}  lr {:.3e}  {:.1} steps/s",
                record.step,
                record.loss,
                record.grad_norm.map_or("-".to_string(), |g| format!("{g:.3}")),
                record.lr,
                record.steps_per_s
            ),
            None => {}
        }
        if let Some(path) = &self.jsonl
            && let Ok(line) = serde_json::to_string(record)
            && let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(path)
        {
            let _ = writeln!(file, "{line}");
        }
        if let Some(path) = &self.plot {
            let steps: Vec<f64> = log.iter().map(|r| r.step as f64).collect();
            let losses: Vec<f64> = log.iter().map(|r| r.loss).collect();
            let _ = diffusion_viz::line_plot(
                path,
                "training loss",
                &[diffusion_viz::Curve {
                    label: "loss",
                    x: &steps,
                    y: &losses,
                    color: diffusion_viz::PALETTE[0],
                }],
                diffusion_viz::Axes {
                    x_label: "step",
                    y_label: "loss",
                    log_x: false,
                    log_y: losses.iter().all(|l| *l > 0.0),
                },
                (640, 400),
            );
        }
    }

    /// Prints a message without breaking the bar.
    pub fn say(&self, message: &str) {
        match &self.bar {
            Some(bar) => bar.println(message),
            None if !self.quiet => eprintln!("{message}"),
            None => {}
        }
    }

    /// Ends the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}
