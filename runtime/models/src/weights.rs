//! Reading weights from safetensors files (one file or a sharded index), memory-mapped, in
//! f32, f16 or bf16, converted to f32.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::error::ModelError;

/// The safetensors files of a model and which file holds which tensor.
pub struct WeightFiles {
    maps: Vec<(PathBuf, Mmap)>,
    index: HashMap<String, usize>,
}

impl WeightFiles {
    /// Opens `model.safetensors`, or every shard named by `model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Self, ModelError> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if single.is_file() {
            vec![single]
        } else if index_path.is_file() {
            let text =
                std::fs::read_to_string(&index_path).map_err(|e| ModelError::io(&index_path, e))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| ModelError::format(&index_path, format!("invalid JSON: {e}")))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| ModelError::format(&index_path, "no `weight_map` object"))?;
            let mut names: Vec<&str> = map.values().filter_map(|f| f.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            names.into_iter().map(|n| dir.join(n)).collect()
        } else {
            return Err(ModelError::format(
                dir,
                "no model.safetensors or model.safetensors.index.json in the model directory",
            ));
        };
        let mut maps = Vec::new();
        let mut index = HashMap::new();
        for path in files {
            let f = std::fs::File::open(&path).map_err(|e| ModelError::io(&path, e))?;
            // SAFETY: read-only map; model files are not modified while being served.
            let map = unsafe { Mmap::map(&f) }.map_err(|e| ModelError::io(&path, e))?;
            let st = SafeTensors::deserialize(&map)
                .map_err(|e| ModelError::format(&path, format!("bad safetensors header: {e}")))?;
            for name in st.names() {
                index.insert(name.to_string(), maps.len());
            }
            maps.push((path, map));
        }
        Ok(WeightFiles { maps, index })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// A tensor as f32, checked against the expected shape.
    pub fn f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        let &i = self.index.get(name).ok_or_else(|| {
            let files: Vec<String> = self
                .maps
                .iter()
                .map(|m| m.0.display().to_string())
                .collect();
            ModelError::Other(format!("tensor `{name}` not found in {}", files.join(", ")))
        })?;
        let (path, map) = &self.maps[i];
        let st = SafeTensors::deserialize(map)
            .map_err(|e| ModelError::format(path, format!("bad safetensors header: {e}")))?;
        let t = st
            .tensor(name)
            .map_err(|e| ModelError::tensor(path, name, e.to_string()))?;
        if t.shape() != shape {
            return Err(ModelError::tensor(
                path,
                name,
                format!("shape {:?}, expected {shape:?}", t.shape()),
            ));
        }
        let b = t.data();
        Ok(match t.dtype() {
            Dtype::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => b
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => b
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => {
                return Err(ModelError::tensor(
                    path,
                    name,
                    format!("dtype {other:?} is not supported (f32, f16, bf16)"),
                ))
            }
        })
    }
}

impl engine::model::WeightSource for WeightFiles {
    fn contains(&self, name: &str) -> bool {
        WeightFiles::contains(self, name)
    }

    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, engine::model::SourceError> {
        self.f32(name, shape).map_err(Into::into)
    }
}
