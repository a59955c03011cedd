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

#[tokio::test(flavor = "current_thread")]
async fn streams_complete_and_a_dropped_stream_frees_its_pages() {
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
