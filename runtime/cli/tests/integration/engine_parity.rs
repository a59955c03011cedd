//! Backend parity (`engine::parity`): the comparison accepts identical engines, rejects a
//! different model, and, on a machine with a GPU, holds the CUDA backend to the CPU's tokens.

use crate::common;

use common::http::{small_llama_config, tiny_model_config};
use engine::backend::cpu::CpuBackend;
use engine::backend::Backend;
use engine::EngineCore;
use models::resolve::ModelSource;
use tools::parity::{compare, parity_engine, test_prompts};

fn engine<B: Backend + 'static>(backend: B, spec: &str, seed: u64) -> EngineCore<B> {
    parity_engine(backend, &ModelSource::Dummy(spec.into()), seed).unwrap()
}

#[test]
fn identical_engines_agree_and_a_different_model_does_not() {
    let spec = tiny_model_config();
    let spec = spec.to_str().unwrap();
    let prompts = test_prompts(259, 1);
    let (mut a, mut b) = (engine(CpuBackend, spec, 5), engine(CpuBackend, spec, 5));
    let r = compare(&mut a, &mut b, &prompts, 12, 1e-3, 1e-4).unwrap();
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.divergences.len(), 0);
    assert_eq!(r.steps_compared, prompts.len() * 12);
    assert_eq!(r.max_logprob_diff, 0.0);

    let (mut a, mut c) = (engine(CpuBackend, spec, 5), engine(CpuBackend, spec, 6));
    let r = compare(&mut a, &mut c, &prompts, 12, 1e-3, 1e-4).unwrap();
    assert!(!r.ok(), "a different model passed: {r:?}");
    assert!(r.bad_divergences > 0, "{r:?}");
}

#[test]
fn the_cuda_backend_reproduces_the_cpu_tokens() {
    let cuda = match engine::backend::cuda::CudaBackend::new(0) {
        Ok(b) => b,
        Err(e) => {
            report_skip!("the_cuda_backend_reproduces_the_cpu_tokens: no GPU: {e}");
            return;
        }
    };
    // head_dim 64 (the CUDA attention kernels take 64, 128 and 256), GQA 2:1, 2 layers.
    let spec = small_llama_config("hd64", 128, 2, 1);
    let spec = spec.to_str().unwrap();
    let prompts = test_prompts(259, 2);
    let (mut a, mut b) = (engine(CpuBackend, spec, 5), engine(cuda, spec, 5));
    let r = compare(&mut a, &mut b, &prompts, 24, 1e-3, 1e-3).unwrap();
    assert!(r.ok(), "{r:?}");
    assert_eq!(a.scheduler().kv_stats().device.used_blocks, 0);
    assert_eq!(b.scheduler().kv_stats().device.used_blocks, 0);
}
