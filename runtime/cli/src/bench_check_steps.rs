//! `pagedrt bench check-steps`: cost a server's step log with a cost model (see
//! `tools::step_check` for what the ratios say).

use std::path::PathBuf;

use clap::Args;

use tools::calibrate::load_step_log;
use tools::step_check::check_steps;

#[derive(Args, Debug, Clone)]
pub struct CheckStepsArgs {
    /// A step log (`pagedrt serve --step-log FILE`).
    #[arg(long)]
    steps: PathBuf,
    /// The cost model (a preset name or a JSON file from `pagedrt bench calibrate`).
    #[arg(long)]
    cost_model: String,
    /// Also write the result as JSON (`ratio` is what `pagedrt simulate --cost-scale` takes).
    #[arg(long)]
    json: Option<PathBuf>,
}

pub fn run(a: CheckStepsArgs) -> anyhow::Result<()> {
    let path = &a.steps;
    let samples = load_step_log(path)?;
    let model = tools::sim_inputs::load_cost_model(&a.cost_model)?;
    let r =
        check_steps(&samples, &model).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    println!("| steps | measured / predicted (median) |");
    println!("|---|---:|");
    for c in &r.classes {
        println!("| {} ({}) | {:.3} |", c.class, c.steps, c.median_ratio);
    }
    println!(
        "\n{} steps: measured {:.2} s, predicted {:.2} s, ratio {:.4}",
        r.steps, r.measured_s, r.predicted_s, r.ratio
    );
    if let Some(p) = &a.json {
        let j = serde_json::to_string_pretty(&r)?;
        std::fs::write(p, j + "\n").map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
    }
    Ok(())
}
