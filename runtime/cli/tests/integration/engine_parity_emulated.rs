//! The CUDA backend end to end on the emulated device (`--device cuda-emu`): the real backend
//! code, kernels, launch shapes and copies, on the host. Held to the CPU backend's greedy
//! tokens (`engine::parity`) on every path a step can take: prefix-cache hits and chunked
//! prefill (the parity prompts), preemption by recompute and by swap (a cache too small for
//! the batch), and `n > 1` with copy-on-write; and afterwards no page in use and no device
//! buffer left allocated. Also the KV cache sized from the device's memory.

use crate::common;

use common::http::small_llama_config;
use engine::backend::cpu::CpuBackend;
use engine::backend::cuda::EmulatedCudaBackend;
use engine::EngineConfig;
use models::resolve::ModelSource;
use scheduler::PreemptionMode;
use tools::parity::{compare_samples, parity_config, parity_engine_with, test_prompts};

/// What one run did, for the assertions.
struct Run {
    preemptions: u64,
    swaps_out: u64,
}

/// Runs the parity prompts with `n` samples on the CPU and the emulated device under `cfg`,
/// asserts parity, no page in use and no device memory left, and says what the run did.
fn emulated_parity(tag: &str, cfg: EngineConfig, n: usize) -> Run {
    // head_dim 64 (the CUDA attention kernels take 64, 128 and 256), GQA 2:1, 2 layers.
    let spec = small_llama_config(tag, 128, 2, 1);
    let source = ModelSource::Dummy(spec.to_str().unwrap().into());
    let prompts = test_prompts(259, 2);
    let emu = EmulatedCudaBackend::emulated();
    let allocations = emu.device().allocations().clone();
    let mut cpu = parity_engine_with(CpuBackend, &source, 5, cfg.clone()).unwrap();
    let mut dev = parity_engine_with(emu, &source, 5, cfg).unwrap();
    let r = compare_samples(&mut cpu, &mut dev, &prompts, 16, n, (1e-3, 1e-3)).unwrap();
    assert!(r.ok(), "{tag}: {r:?}");
    assert_eq!(r.steps_compared, prompts.len() * n * 16, "{tag}: {r:?}");
    assert_eq!(dev.scheduler().kv_stats().device.used_blocks, 0, "{tag}");
    let c = dev.scheduler().counters();
    let (c_cpu, run) = (
        cpu.scheduler().counters(),
        Run {
            preemptions: c.preemptions,
            swaps_out: c.swaps_out,
        },
    );
    // The same schedule on both: the same steps, the same preemptions.
    assert_eq!(c, c_cpu, "{tag}");
    assert!(
        allocations.live().0 > 0,
        "{tag}: the engine allocated nothing?"
    );
    drop(dev);
    assert_eq!(
        allocations.live(),
        (0, 0),
        "{tag}: device memory left allocated"
    );
    run
}

#[test]
fn prefix_hits_and_chunked_prefill_on_the_emulated_device_match_the_cpu() {
    let run = emulated_parity("emu-parity", parity_config(), 1);
    assert_eq!(run.preemptions, 0);
}

/// 28 pages of 16 tokens for prompts of 588 tokens in all: sequences are preempted.
fn tight(mode: PreemptionMode) -> EngineConfig {
    let mut cfg = parity_config();
    cfg.num_blocks = 28;
    cfg.num_host_blocks = if mode == PreemptionMode::Swap { 64 } else { 0 };
    cfg.scheduler.preemption_mode = mode;
    cfg
}

#[test]
fn preemption_by_recompute_on_the_emulated_device_matches_the_cpu() {
    let run = emulated_parity("emu-recompute", tight(PreemptionMode::Recompute), 1);
    assert!(
        run.preemptions > 0,
        "no preemption: the test proves nothing"
    );
}

#[test]
fn preemption_by_swap_on_the_emulated_device_matches_the_cpu() {
    let run = emulated_parity("emu-swap", tight(PreemptionMode::Swap), 1);
    assert!(run.swaps_out > 0, "no swap: the test proves nothing");
}

#[test]
fn parallel_samples_with_copy_on_write_on_the_emulated_device_match_the_cpu() {
    emulated_parity("emu-cow", parity_config(), 3);
}

/// `--gpu-memory-utilization` on the emulated device (64 MiB): the profiling pass measures the
/// weights and the activations of the largest step, the KV cache takes what is left of half
/// the device, and a run of full-size steps afterwards never holds more than that half.
#[test]
fn the_kv_cache_takes_what_the_utilization_leaves_and_a_full_run_stays_within_it() {
    use engine::backend::cuda::memory_plan::{plan_kv_cache, ProfileShape};
    use engine::backend::cuda::CudaBackend;
    use engine::backend::WeightDtype;
    use engine::model::KvSpec;
    use kernels::cuda::Emu;
    use kernels::KvDtype;

    let spec = small_llama_config("emu-plan", 128, 2, 1);
    let source = ModelSource::Dummy(spec.to_str().unwrap().into());
    let capacity = 64usize << 20;
    let b = CudaBackend::on(Emu::new().with_capacity(capacity));
    let memory = b.device().allocations().clone();
    let (model, tok) = models::load_model(&b, &source, 5, WeightDtype::F32).unwrap();
    let kv = KvSpec::of(&model.config, KvDtype::F32);
    let shape = |utilization| ProfileShape {
        max_num_batched_tokens: 256,
        max_num_seqs: 16,
        block_size: 16,
        utilization,
    };
    let half = plan_kv_cache(&b, &model, &kv, shape(0.5)).unwrap();
    let more = plan_kv_cache(&b, &model, &kv, shape(0.9)).unwrap();
    assert!(
        half.weights_bytes > 0 && half.activation_bytes > 0,
        "{half:?}"
    );
    assert!(
        half.num_blocks > 0 && more.num_blocks > half.num_blocks,
        "{half:?} {more:?}"
    );
    let budget = capacity / 2;
    // Everything left of the budget goes to the cache, in whole pages.
    let used = half.weights_bytes + 2 * half.activation_bytes + half.kv_bytes;
    assert_eq!(used, budget, "{half:?}");
    assert_eq!(
        half.num_blocks,
        half.kv_bytes / kv.bytes_per_block(16),
        "{half:?}"
    );

    let mut cfg = parity_config();
    cfg.num_blocks = half.num_blocks;
    cfg.scheduler.max_num_batched_tokens = 256;
    cfg.scheduler.max_num_seqs = 16;
    let mut engine = tools::engines::engine_over(b, model, &tok, cfg).unwrap();
    let prompts: Vec<Vec<u32>> = (0..40u32)
        .map(|i| (0..30 + i).map(|t| 100 + (t * 7 + i) % 150).collect())
        .collect();
    let trace = tools::parity::greedy_trace(&mut engine, &prompts, 8, 1).unwrap();
    assert_eq!(trace.len(), prompts.len());
    assert!(
        memory.peak_bytes() <= budget,
        "peak {} bytes over the budget of {budget}: {half:?}",
        memory.peak_bytes()
    );
}
