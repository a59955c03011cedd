//! Engine options shared by `generate`, `bench throughput` (and `serve`).

use clap::Args;
use kernels::KvDtype;
use scheduler::SchedulerConfig;

use crate::choices::{Device, Dtype, Policy, Preemption};

use std::sync::Arc;

use engine::backend::cpu::CpuBackend;
use engine::backend::cuda::memory_plan::{describe as describe_plan, plan_kv_cache, ProfileShape};
use engine::backend::cuda::{CudaBackend, CudaDevice, EmulatedCudaBackend};
use engine::backend::WeightDtype;
use engine::model::KvSpec;
use engine::{EngineConfig, EngineCore};
use models::dummy::dummy_config;
use models::resolve::{resolve_source, ModelSource};
use models::tokenizer::Tokenizer;
use tools::engines::engine_over;

#[derive(Args, Debug, Clone)]
pub struct EngineArgs {
    /// A model directory, a pulled model name, dummy:<preset> (random weights of a real
    /// model's shape: llama-3-8b, llama-3.2-1b, qwen2-0.5b, smollm2-135m, tiny (2 layers, 64 wide), or a config.json
    /// path), or nothing for the default model.
    #[arg(long)]
    pub model: Option<String>,
    /// Tokens per KV page.
    #[arg(long, default_value_t = 16)]
    pub block_size: usize,
    /// KV cache size in bytes (e.g. 2GiB, 512MiB). Default: 2GiB on the CPU; on a CUDA
    /// device, what --gpu-memory-utilization leaves after the weights and a profiling pass.
    #[arg(long)]
    pub kv_cache_memory: Option<String>,
    /// On a CUDA device without --num-blocks or --kv-cache-memory: the share of the device's
    /// memory this process may use. The weights are loaded, one forward pass runs at the
    /// largest step (--max-num-batched-tokens over --max-num-seqs), and the KV cache gets
    /// what is left of this share after the weights and twice that pass's activations.
    #[arg(long, default_value_t = 0.9)]
    pub gpu_memory_utilization: f64,
    /// KV pages (overrides --kv-cache-memory).
    #[arg(long)]
    pub num_blocks: Option<usize>,
    /// Host swap pages.
    #[arg(long, default_value_t = 0)]
    pub swap_blocks: usize,
    #[arg(long, default_value_t = 256)]
    pub max_num_seqs: usize,
    #[arg(long, default_value_t = 2048)]
    pub max_num_batched_tokens: usize,
    #[arg(long)]
    pub max_model_len: Option<usize>,
    #[arg(long, value_enum, default_value_t = Policy::Fcfs)]
    pub policy: Policy,
    #[arg(long, value_enum, default_value_t = Preemption::Recompute)]
    pub preemption_mode: Preemption,
    #[arg(long)]
    pub no_prefix_caching: bool,
    /// Where the model runs: cpu, cuda (GPU 0, f32 weights), auto (cuda when a GPU and
    /// its libraries are present, else cpu), or cuda-emu (a testing device: the CUDA backend
    /// on the CUDA-on-CPU emulator, slow).
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    pub device: Device,
    /// Storage of the weight matrices: f32, or bf16 (half the memory; on the CPU, decode
    /// reads half the bytes, and with AVX512-BF16 batched steps round their activations to
    /// bf16 for twice the f32 rate; single rows keep f32 activations).
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    pub dtype: Dtype,
    /// Storage of the KV cache: f32, or f16 (half the bytes per token: twice the tokens in
    /// the same --kv-cache-memory, and decode attention reads half as much; CPU only).
    /// Default: f16 on the CPU (logits within a few hundredths of f32's, benches/RESULTS.md),
    /// f32 on CUDA.
    #[arg(long)]
    pub kv_cache_dtype: Option<KvDtype>,
    /// Refuse new requests (429, Retry-After) while this many are waiting.
    #[arg(long)]
    pub max_queue: Option<usize>,
    /// Back every KV page with memory at start-up, as llama.cpp does: no step then waits
    /// for a page's first write, and missing memory fails at start-up, not mid-run. Costs
    /// start-up time (0.2-8 s per 2 GiB on the VMs here, more where the host has not yet
    /// backed the memory).
    #[arg(long)]
    pub kv_prefault: bool,
}

/// Parses `2GiB`, `512MiB`, `1.5GB`, `1000000`.
pub fn parse_bytes(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num.parse().map_err(|_| format!("'{s}' is not a size"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        u => return Err(format!("'{s}': unknown unit '{u}'")),
    };
    Ok((v * mult) as usize)
}

impl EngineArgs {
    /// Resolves the model (pulling it if needed) and builds an engine on `--device`; the
    /// tokenizer comes with it (the engine decodes with it, callers encode with it).
    pub fn build(&self) -> anyhow::Result<(AnyEngine, Arc<Tokenizer>)> {
        let on_cuda = matches!(self.device, Device::Cuda | Device::CudaEmu);
        if on_cuda && self.dtype.weights() != WeightDtype::F32 {
            anyhow::bail!("--device cuda takes --dtype f32 for now (bf16 weights are CPU-only)")
        }
        if on_cuda && self.kv_cache_dtype.is_some_and(|d| d != KvDtype::F32) {
            anyhow::bail!(
                "--device cuda takes --kv-cache-dtype f32 for now (an f16 cache is CPU-only)"
            )
        }
        let cuda = match self.device {
            Device::Cpu => None,
            Device::CudaEmu => Some(Cuda::Emulated(Box::new(EmulatedCudaBackend::emulated()))),
            Device::Cuda => {
                let b = CudaBackend::new(0).map_err(|e| {
                    anyhow::anyhow!("--device cuda: {e} (pagedrt doctor says more)")
                })?;
                Some(Cuda::Gpu(Box::new(b)))
            }
            Device::Auto
                if self.dtype.weights() != WeightDtype::F32
                    || self.kv_cache_dtype.is_some_and(|d| d != KvDtype::F32) =>
            {
                None
            }
            Device::Auto => match CudaBackend::new(0) {
                Ok(b) => Some(Cuda::Gpu(Box::new(b))),
                Err(e) => {
                    eprintln!("--device auto: using the CPU ({e})");
                    None
                }
            },
        };
        let kv_dtype = self.kv_cache_dtype.unwrap_or(match cuda {
            None => KvDtype::F16,
            Some(_) => KvDtype::F32,
        });
        let source = resolve_source(self.model.as_deref(), &mut |l| eprintln!("{l}"))?;
        let mc = match &source {
            ModelSource::Dir(dir) => models::config::from_file(&models::config::config_path(dir)),
            ModelSource::Dummy(spec) => dummy_config(spec),
        }?;
        if !(self.gpu_memory_utilization > 0.0 && self.gpu_memory_utilization <= 1.0) {
            anyhow::bail!(
                "--gpu-memory-utilization {} is not in (0, 1]",
                self.gpu_memory_utilization
            );
        }
        let spec = KvSpec::of(&mc, kv_dtype);
        // Pages by flag; on a CUDA device without a flag, measured below (0 until then).
        let num_blocks = match (self.num_blocks, &self.kv_cache_memory, &cuda) {
            (Some(n), _, _) => n,
            (None, None, Some(_)) => 0,
            (None, mem, _) => {
                let bytes =
                    parse_bytes(mem.as_deref().unwrap_or("2GiB")).map_err(anyhow::Error::msg)?;
                let n = bytes / spec.bytes_per_block(self.block_size);
                if n == 0 {
                    anyhow::bail!("the KV cache holds no page: raise --kv-cache-memory");
                }
                n
            }
        };
        let cfg = EngineConfig {
            block_size: self.block_size,
            num_blocks,
            num_host_blocks: self.swap_blocks,
            kv_dtype,
            watermark: 0.01,
            enable_prefix_caching: !self.no_prefix_caching,
            scheduler: SchedulerConfig {
                max_num_batched_tokens: self.max_num_batched_tokens,
                max_num_seqs: self.max_num_seqs,
                preemption_mode: self.preemption_mode.mode(),
                max_model_len: self.max_model_len,
                ..SchedulerConfig::default()
            },
            policy: self.policy.name().into(),
            max_queue: self.max_queue,
            kv_prefault: self.kv_prefault,
        };
        match cuda {
            None => {
                eprintln!("CPU kernels: {}", kernels::cpu::isa::describe());
                let (model, tok) =
                    models::load_model(&CpuBackend, &source, 0, self.dtype.weights())?;
                let e = engine_over(CpuBackend, model, &tok, cfg)?;
                Ok((AnyEngine::Cpu(Box::new(e)), tok))
            }
            Some(Cuda::Gpu(b)) => {
                eprintln!("device: {} ({})", b.gpu().info().name, b.gpu().info().arch);
                let (e, tok) = self.cuda_engine(*b, &source, &spec, cfg)?;
                Ok((AnyEngine::Cuda(Box::new(e)), tok))
            }
            Some(Cuda::Emulated(b)) => {
                eprintln!(
                    "device: {} (a testing device: every kernel runs on the host, slowly)",
                    kernels::cuda::Device::describe(b.device())
                );
                let (e, tok) = self.cuda_engine(*b, &source, &spec, cfg)?;
                Ok((AnyEngine::CudaEmu(Box::new(e)), tok))
            }
        }
    }

    /// Loads the model onto a CUDA device and builds the engine; without a page count from
    /// the flags, sizes the KV cache from the device's memory after a profiling pass.
    fn cuda_engine<D: CudaDevice>(
        &self,
        b: CudaBackend<D>,
        source: &ModelSource,
        spec: &KvSpec,
        mut cfg: EngineConfig,
    ) -> anyhow::Result<(EngineCore<CudaBackend<D>>, Arc<Tokenizer>)> {
        let (model, tok) = models::load_model(&b, source, 0, self.dtype.weights())?;
        if cfg.num_blocks == 0 {
            let shape = ProfileShape {
                max_num_batched_tokens: self.max_num_batched_tokens,
                max_num_seqs: self.max_num_seqs,
                block_size: self.block_size,
                utilization: self.gpu_memory_utilization,
            };
            let plan = plan_kv_cache(&b, &model, spec, shape)?;
            let max_len = self
                .max_model_len
                .unwrap_or(model.config.max_position_embeddings);
            eprintln!("{}", describe_plan(&plan, self.block_size, max_len));
            if plan.num_blocks == 0 {
                anyhow::bail!(
                    "the KV cache holds no page after the weights and activations: raise \
                     --gpu-memory-utilization or lower --max-num-batched-tokens"
                );
            }
            cfg.num_blocks = plan.num_blocks;
        }
        Ok((engine_over(b, model, &tok, cfg)?, tok))
    }
}

/// The CUDA backend on the device `--device` chose.
enum Cuda {
    Gpu(Box<CudaBackend>),
    Emulated(Box<EmulatedCudaBackend>),
}

/// An engine on whichever device `--device` chose (boxed: engines are large and moved).
pub enum AnyEngine {
    Cpu(Box<EngineCore<CpuBackend>>),
    Cuda(Box<EngineCore<CudaBackend>>),
    CudaEmu(Box<EngineCore<EmulatedCudaBackend>>),
}

impl AnyEngine {
    /// The engine, if it runs on backend `B` (a rebuilt engine must match the one it
    /// replaces).
    pub fn into_core<B: engine::backend::Backend + 'static>(self) -> Option<EngineCore<B>> {
        let any: Box<dyn std::any::Any> = match self {
            AnyEngine::Cpu(e) => e,
            AnyEngine::Cuda(e) => e,
            AnyEngine::CudaEmu(e) => e,
        };
        any.downcast::<EngineCore<B>>().ok().map(|e| *e)
    }
}

/// Runs `$body` with `$e` bound to the engine inside an [`AnyEngine`], whatever its backend
/// (the body is compiled once per backend).
macro_rules! with_engine {
    ($any:expr, $e:ident => $body:expr) => {
        match $any {
            $crate::engine_args::AnyEngine::Cpu($e) => {
                let $e = *$e;
                $body
            }
            $crate::engine_args::AnyEngine::Cuda($e) => {
                let $e = *$e;
                $body
            }
            $crate::engine_args::AnyEngine::CudaEmu($e) => {
                let $e = *$e;
                $body
            }
        }
    };
}
pub(crate) use with_engine;

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
        assert_eq!(parse_bytes("512 MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("1.5GB"), Ok(1_500_000_000));
        assert_eq!(parse_bytes("1000"), Ok(1000));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("3 parsecs").is_err());
    }
}
