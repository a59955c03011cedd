//! The fragmentation study's driver: every allocator of a study replayed on its own thread
//! (the allocator models themselves are pure and live in `scheduler::frag`).

use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use scheduler::frag::{run_allocator, AllocatorReport, AllocatorSpec, FragConfig};
use scheduler::sim::{SimError, SimRequest};

/// Runs every allocator in `specs` over `requests` (prepared), on all cores, in `specs`
/// order. `progress` receives the number of requests finished since its last call.
pub fn run_study(
    cfg: &FragConfig,
    specs: &[AllocatorSpec],
    requests: &[SimRequest],
    progress: &(dyn Fn(usize) + Sync),
) -> Result<Vec<AllocatorReport>, SimError> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<AllocatorReport, SimError>>>> =
        Mutex::new(vec![None; specs.len()]);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(specs.len());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&spec) = specs.get(i) else { break };
                let mut seen = 0;
                let r = run_allocator(
                    spec,
                    cfg,
                    requests,
                    &mut |done| {
                        progress(done.saturating_sub(seen));
                        seen = seen.max(done);
                    },
                    &mut |_| {},
                );
                results.lock()[i] = Some(r);
            });
        }
    });
    results
        .into_inner()
        .into_iter()
        .zip(specs)
        .map(|(r, spec)| {
            r.unwrap_or_else(|| Err(SimError::Config(format!("{}: did not run", spec.name()))))
        })
        .collect()
}
