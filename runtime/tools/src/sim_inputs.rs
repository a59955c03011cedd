//! The simulator's inputs read from files: traces and cost models. The scheduler crate
//! parses them from text (it reads no files); this is where the files are opened.

use std::path::Path;

use scheduler::sim::{parse_trace, CostModel, SimError, SimRequest};

/// Loads a trace file: CSV when its extension is `.csv`, JSON lines otherwise (see
/// [`parse_trace`]); errors name the file.
pub fn load_trace(path: &Path) -> Result<Vec<SimRequest>, SimError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| SimError::BadTrace {
        source_name: name.clone(),
        problem: e.to_string(),
    })?;
    let is_csv = path.extension().is_some_and(|e| e == "csv");
    parse_trace(&text, is_csv, &name)
}

/// A cost model preset by name, or a path to a JSON file with a cost model's fields.
pub fn load_cost_model(name_or_path: &str) -> Result<CostModel, SimError> {
    if let Some(m) = CostModel::preset(name_or_path) {
        return Ok(m);
    }
    let text = std::fs::read_to_string(name_or_path).map_err(|e| SimError::BadCostModel {
        name: format!("'{name_or_path}'"),
        problem: format!(
            "not a preset ({}) and not a readable file: {e}",
            CostModel::PRESETS.join(", ")
        ),
    })?;
    CostModel::from_json(name_or_path, &text)
}
