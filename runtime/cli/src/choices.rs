//! The command line's closed choices as clap value enums, so `--help` lists them and a typo
//! is refused by the parser with the valid values; each maps onto the library's own type.

use clap::ValueEnum;
use engine::backend::WeightDtype;
use scheduler::PreemptionMode;

/// `--device`: where the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Device {
    Cpu,
    /// GPU 0 (f32 weights and cache for now).
    Cuda,
    /// CUDA when a GPU and its libraries are present, else the CPU.
    Auto,
    /// A testing device: the CUDA backend on the CUDA-on-CPU emulator (every kernel, launch
    /// and copy of `cuda`, run on the host; correct and slow, for CI and debugging).
    CudaEmu,
}

/// `--dtype`: how the weight matrices are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Dtype {
    F32,
    Bf16,
}

impl Dtype {
    pub fn weights(self) -> WeightDtype {
        match self {
            Dtype::F32 => WeightDtype::F32,
            Dtype::Bf16 => WeightDtype::Bf16,
        }
    }
}

/// `--policy`: who is scheduled first (`scheduler::policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Policy {
    Fcfs,
    Priority,
    Sjf,
    PrefixAware,
}

impl Policy {
    /// The scheduler's name for it (`scheduler::policy::by_name`).
    pub fn name(self) -> &'static str {
        match self {
            Policy::Fcfs => "fcfs",
            Policy::Priority => "priority",
            Policy::Sjf => "sjf",
            Policy::PrefixAware => "prefix-aware",
        }
    }
}

/// `--preemption-mode`: what happens to a preempted sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Preemption {
    Recompute,
    Swap,
    Auto,
}

impl Preemption {
    pub fn mode(self) -> PreemptionMode {
        match self {
            Preemption::Recompute => PreemptionMode::Recompute,
            Preemption::Swap => PreemptionMode::Swap,
            Preemption::Auto => PreemptionMode::Auto,
        }
    }
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    /// One JSON object per line.
    Json,
}

/// `--tool-call-parser`: the tool-call format `tool_choice: auto` parses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ToolCallParser {
    /// The format the model's chat template shows (Hermes `<tool_call>`), if any.
    Auto,
    /// Hermes `<tool_call>` blocks, whatever the template.
    Hermes,
    /// None: `tool_choice: auto` is refused.
    None,
}

impl ToolCallParser {
    pub fn server(self) -> server::ToolCallParser {
        match self {
            ToolCallParser::Auto => server::ToolCallParser::Auto,
            ToolCallParser::Hermes => server::ToolCallParser::Hermes,
            ToolCallParser::None => server::ToolCallParser::None,
        }
    }
}

/// `simulate --router`: vllm-router's policies (`scheduler::sim::router`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RouterChoice {
    RoundRobin,
    PowerOfTwo,
    LeastLoaded,
    CacheAware,
    KvAware,
}

impl RouterChoice {
    pub fn policy(self) -> scheduler::sim::router::RouterPolicy {
        use scheduler::sim::router::RouterPolicy as P;
        match self {
            RouterChoice::RoundRobin => P::RoundRobin,
            RouterChoice::PowerOfTwo => P::PowerOfTwo,
            RouterChoice::LeastLoaded => P::LeastLoaded,
            RouterChoice::CacheAware => P::CacheAware,
            RouterChoice::KvAware => P::KvAware,
        }
    }
}

/// `--kv-events-encoding`: how KV-cache events are laid out (`engine::kv_events::wire`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KvEventsEncoding {
    /// Each event a map tagged by `"type"` (what `vllm-router` 0.1.17 parses).
    Map,
    /// Each event an array led by its tag (msgspec `array_like` structs of earlier vLLM).
    Array,
}

impl KvEventsEncoding {
    pub fn encoding(self) -> engine::kv_events::EventEncoding {
        match self {
            KvEventsEncoding::Map => engine::kv_events::EventEncoding::Map,
            KvEventsEncoding::Array => engine::kv_events::EventEncoding::Array,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_policy_is_one_the_scheduler_knows() {
        for p in Policy::value_variants() {
            assert!(scheduler::policy::by_name(p.name()).is_some(), "{p:?}");
            let clap_name = p.to_possible_value().map(|v| v.get_name().to_string());
            assert_eq!(clap_name.as_deref(), Some(p.name()));
        }
        assert_eq!(
            Policy::value_variants().len(),
            scheduler::policy::POLICY_NAMES.len()
        );
    }
}
