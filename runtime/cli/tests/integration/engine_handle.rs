//! The engine on its own thread: requests stream their tokens; dropping a stream aborts the
//! request and frees its pages; refused requests are refused with a reason.

use std::sync::{Arc, Mutex};

use crate::common;

use engine::handle::EngineHandle;
use engine::sampler::SamplingParams;
use engine::{EngineConfig, GenerateRequest};
use tools::engines::cpu_dummy_engine;

fn req(id: u64, max_tokens: usize) -> GenerateRequest {
    common::request(
        id,
        vec![1, 72, 105, 33, 10],
        SamplingParams {
            ignore_eos: true,
            ..SamplingParams::greedy(max_tokens)
        },
    )
}

/// (pages in use, sequences running) after each step.
type StepUsage = Arc<Mutex<Vec<(usize, usize)>>>;

/// The dummy SmolLM2 engine on its thread, and after every step (pages in use, sequences
/// running), so a test can check that nothing is held at the end.
fn spawn_tracked() -> (EngineHandle, StepUsage) {
    let core = cpu_dummy_engine("smollm2-135m", EngineConfig::default(), 1)
        .unwrap()
        .0;
    let used = Arc::new(Mutex::new(Vec::new()));
    let u = used.clone();
    let h = EngineHandle::spawn(core, move |c, _| {
        let s = c.scheduler().kv_stats();
        u.lock()
            .unwrap()
            .push((s.device.used_blocks, c.scheduler().num_running()));
    });
    (h, used)
}

#[tokio::test(flavor = "current_thread")]
async fn streams_complete_and_a_dropped_stream_frees_its_pages() {
    let (h, used) = spawn_tracked();
    assert!(h.is_alive());
    let mut a = h.submit(req(1, 6)).await.unwrap();
    let mut b = h.submit(req(2, 400)).await.unwrap();
    // Request 2 is abandoned after its first token.
    assert!(b.recv().await.is_some());
    drop(b);
    let mut got = vec![];
    while let Some(t) = a.recv().await {
        got.push(t);
    }
    assert_eq!(got.len(), 6);
    assert!(got.last().unwrap().finish.is_some());
    // A request that can never fit is refused with the reason.
    let e = h.submit(req(3, 1 << 30)).await.unwrap_err();
    assert!(e.to_string().contains("exceeds max_model_len"), "{e}");
    // Both are gone: one more tiny request runs alone, and afterwards nothing is held.
    let mut c = h.submit(req(4, 2)).await.unwrap();
    while c.recv().await.is_some() {}
    let last = *used.lock().unwrap().last().unwrap();
    assert_eq!(last, (0, 0), "pages or sequences left behind");
    h.shutdown();
}

/// `n > 1` whose first sample ends on its first token (here `max_tokens: 1`; EOS or a stop
/// string do the same): every sibling still forks from the prompt and ends, and nothing is
/// held afterwards. (The fuzzer found this: the siblings were never started, so their
/// choices never finished and the server answered 500.)
#[tokio::test(flavor = "current_thread")]
async fn parallel_samples_whose_first_ends_at_once_all_finish() {
    let (h, used) = spawn_tracked();
    for max_tokens in [1, 2] {
        let params = SamplingParams {
            n: 3,
            ignore_eos: true,
            ..SamplingParams::greedy(max_tokens)
        };
        let r = common::request(10 + max_tokens as u64, vec![1, 72, 105, 33, 10], params);
        let mut rx = h.submit(r).await.unwrap();
        let mut per_sample = [0usize; 3];
        let mut finished = [false; 3];
        while let Some(t) = rx.recv().await {
            per_sample[t.index] += 1;
            finished[t.index] |= t.finish.is_some();
        }
        assert_eq!(per_sample, [max_tokens; 3], "tokens per sample");
        assert_eq!(finished, [true; 3], "every sample finishes");
    }
    let last = *used.lock().unwrap().last().unwrap();
    assert_eq!(last, (0, 0), "pages or sequences left behind");
    h.shutdown();
}
