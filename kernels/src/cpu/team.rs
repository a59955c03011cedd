//! The thread team that runs the forward pass's parallel kernels.
//!
//! Why not rayon: a decode step runs about 130 parallel kernels, each a few tens of
//! microseconds to a millisecond, with short single-threaded work in between. rayon's idle
//! workers yield, then sleep on a futex, and the next kernel waits for them to wake. With
//! the forward pass on a rayon worker, a single-sequence bf16 profile still had ~10 % of
//! its samples in the kernel's scheduler. The team's workers spin for a while after each
//! job (as llama.cpp's threads do between graph nodes) and only then sleep, so a job posted
//! within a forward pass starts on every core at once: single-sequence decode 1.00-1.20x
//! in six interleaved pairs (benches/RESULTS.md).
//!
//! A job is `tasks` calls of one closure, `f(0..tasks)`, claimed one at a time by the
//! caller and the workers; the caller returns when all have run. One job runs at a time:
//! concurrent callers (several engines in one process, as in the tests) take turns, and a
//! job posted from inside a task runs on the posting thread alone.

use super::isa::{self, Isa};
use parking_lot::{Condvar, Mutex};
use std::any::Any;
use std::cell::Cell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle worker spins before it sleeps: longer than the single-threaded gaps
/// between a forward pass's kernels, far shorter than the engine's idle time.
const SPIN: Duration = Duration::from_micros(300);

/// Bits of the job state word: job id (high), task count, next task to claim (low).
const TASK_BITS: u32 = 20;
const TASK_MASK: u64 = (1 << TASK_BITS) - 1;
/// At most this many tasks per job (the state word's task fields).
pub const MAX_TASKS: usize = TASK_MASK as usize;

type TaskFn<'a> = dyn Fn(usize) + Sync + 'a;

struct Shared {
    /// `id << 40 | tasks << 20 | next`: claiming a task is one compare-and-swap of the
    /// word a job was posted with, so a late worker can never claim a task of a newer job
    /// by mistake, and a claimed task keeps its job (and `job`) alive until it is done.
    state: AtomicU64,
    /// The current job's closure (a pointer to a fat pointer on the caller's stack).
    job: AtomicPtr<&'static TaskFn<'static>>,
    done: AtomicUsize,
    /// The poster's `isa::with_isa` override (`isa_code`), which the workers run the
    /// job's tasks under, so a test that runs an engine on a lower path runs all of it there.
    isa: AtomicU8,
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    sleepers: AtomicUsize,
    sleep_lock: Mutex<()>,
    wake: Condvar,
}

/// The process's team: `rayon::current_num_threads()` threads (so `RAYON_NUM_THREADS`
/// sizes both), the caller being one of them.
pub struct Team {
    shared: Arc<Shared>,
    threads: usize,
    submit: Mutex<()>,
}

thread_local! {
    /// Set on team workers and on a caller while its job runs: a nested job runs inline.
    static IN_TEAM: Cell<bool> = const { Cell::new(false) };
}

fn team() -> &'static Team {
    static TEAM: OnceLock<Team> = OnceLock::new();
    TEAM.get_or_init(|| Team::new(rayon::current_num_threads().max(1)))
}

/// Threads a job is split over (the caller included).
pub fn threads() -> usize {
    team().threads
}

/// Runs `f(i)` for every `i` in `0..tasks` on the team and returns when all have run.
/// A panic in a task is re-raised here once the other tasks have finished.
pub fn for_each_task(tasks: usize, f: impl Fn(usize) + Sync) {
    team().run(tasks, &f);
}

/// Splits `out` into consecutive chunks of `chunk` elements (the last may be shorter) and
/// runs `f(index, chunk)` for each on the team.
pub fn for_each_chunk_mut<T: Send>(
    out: &mut [T],
    chunk: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    let chunk = chunk.max(1);
    let len = out.len();
    let base = SendPtr(out.as_mut_ptr());
    for_each_task(len.div_ceil(chunk), |i| {
        let start = i * chunk;
        let n = chunk.min(len - start);
        // SAFETY: chunk `i` covers [start, start + n) of `out`, disjoint from every other
        // chunk, and `out` stays borrowed until all tasks have run.
        let part = unsafe { std::slice::from_raw_parts_mut(base.get().add(start), n) };
        f(i, part);
    });
}

/// A raw pointer tasks may share; each task touches only its own elements.
pub(crate) struct SendPtr<T>(pub(crate) *mut T);
impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SendPtr<T> {}
// SAFETY: users write disjoint elements through it.
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}
impl<T> SendPtr<T> {
    /// Through a method, so closures capture the `Sync` wrapper, not its raw field.
    pub(crate) fn get(self) -> *mut T {
        self.0
    }
}

impl Team {
    fn new(threads: usize) -> Team {
        let shared = Arc::new(Shared {
            state: AtomicU64::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            done: AtomicUsize::new(0),
            isa: AtomicU8::new(0),
            panic: Mutex::new(None),
            sleepers: AtomicUsize::new(0),
            sleep_lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let mut started = 1;
        for i in 1..threads {
            let s = shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("pagedrt-team-{i}"))
                .spawn(move || worker(&s));
            // Without the thread the team is smaller, not broken.
            if spawned.is_ok() {
                started += 1;
            }
        }
        Team {
            shared,
            threads: started,
            submit: Mutex::new(()),
        }
    }

    fn run(&self, tasks: usize, f: &TaskFn<'_>) {
        if tasks == 0 {
            return;
        }
        if tasks == 1 || self.threads == 1 || IN_TEAM.get() {
            return (0..tasks).for_each(f);
        }
        assert!(tasks <= MAX_TASKS, "{tasks} tasks in one job");
        let _turn = self.submit.lock();
        let s = &*self.shared;
        // SAFETY: the pointer is published below and read only by workers that claimed
        // one of this job's tasks; the job cannot finish, and this frame cannot return,
        // until every claimed task is done, so the closure outlives every use.
        let f_static: &'static TaskFn<'static> = unsafe { std::mem::transmute(f) };
        let mut slot = f_static;
        s.job.store(&mut slot, Ordering::Relaxed);
        s.done.store(0, Ordering::Relaxed);
        s.isa
            .store(isa_code(isa::thread_override()), Ordering::Relaxed);
        let id = (s.state.load(Ordering::Relaxed) >> (2 * TASK_BITS)) + 1;
        let posted = (id << (2 * TASK_BITS)) | ((tasks as u64) << TASK_BITS);
        s.state.store(posted, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = s.sleep_lock.lock();
            s.wake.notify_all();
        }
        IN_TEAM.set(true);
        while claim_and_run(s) {}
        IN_TEAM.set(false);
        while s.done.load(Ordering::Acquire) < tasks {
            std::hint::spin_loop();
        }
        if let Some(p) = s.panic.lock().take() {
            resume_unwind(p);
        }
    }
}

/// Claims the next task of the posted job and runs it; false when none is left.
fn claim_and_run(s: &Shared) -> bool {
    let mut cur = s.state.load(Ordering::Acquire);
    loop {
        let (tasks, next) = ((cur >> TASK_BITS) & TASK_MASK, cur & TASK_MASK);
        if next >= tasks {
            return false;
        }
        match s
            .state
            .compare_exchange_weak(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {
                // SAFETY: the job this task belongs to is still running (it needs this
                // task), so its closure, published before the state word, is alive.
                let f = unsafe { *s.job.load(Ordering::Acquire) };
                let isa = isa_from_code(s.isa.load(Ordering::Relaxed));
                let run = || isa::set_override(isa, || f(next as usize));
                if let Err(p) = catch_unwind(AssertUnwindSafe(run)) {
                    s.panic.lock().get_or_insert(p);
                }
                s.done.fetch_add(1, Ordering::Release);
                return true;
            }
            Err(now) => cur = now,
        }
    }
}

/// An ISA override as one byte: 0 for none.
fn isa_code(o: Option<Isa>) -> u8 {
    o.map_or(0, |i| i as u8 + 1)
}

fn isa_from_code(c: u8) -> Option<Isa> {
    Isa::ALL.get((c as usize).checked_sub(1)?).copied()
}

fn worker(s: &Shared) {
    IN_TEAM.set(true);
    loop {
        let idle_since = Instant::now();
        let mut spins = 0u32;
        loop {
            if claim_and_run(s) {
                break;
            }
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(256) && idle_since.elapsed() > SPIN {
                sleep_until_posted(s);
                break;
            }
        }
        // After a task, look for the next one at once (the loop restarts the clock).
    }
}

/// Sleeps until a job with unclaimed tasks is posted.
fn sleep_until_posted(s: &Shared) {
    let mut g = s.sleep_lock.lock();
    s.sleepers.fetch_add(1, Ordering::SeqCst);
    loop {
        let cur = s.state.load(Ordering::SeqCst);
        if cur & TASK_MASK < (cur >> TASK_BITS) & TASK_MASK {
            break;
        }
        s.wake.wait(&mut g);
    }
    s.sleepers.fetch_sub(1, Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn every_task_runs_exactly_once() {
        for tasks in [1usize, 2, 3, 7, 64, 1000] {
            let hits: Vec<AtomicU32> = (0..tasks).map(|_| AtomicU32::new(0)).collect();
            for_each_task(tasks, |i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(
                hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                "{tasks} tasks"
            );
        }
    }

    #[test]
    fn chunks_cover_the_slice_once_and_in_place() {
        let mut v = vec![0usize; 1001];
        for_each_chunk_mut(&mut v, 64, |c, part| {
            for (j, x) in part.iter_mut().enumerate() {
                *x += c * 64 + j;
            }
        });
        assert!(v.iter().enumerate().all(|(i, &x)| x == i));
    }

    #[test]
    fn concurrent_and_nested_callers_each_get_all_their_tasks() {
        let total = AtomicUsize::new(0);
        std::thread::scope(|sc| {
            for _ in 0..4 {
                sc.spawn(|| {
                    for _ in 0..200 {
                        for_each_task(8, |_| {
                            // A nested job runs inline on this task's thread.
                            for_each_task(3, |_| {
                                total.fetch_add(1, Ordering::Relaxed);
                            });
                        });
                    }
                });
            }
        });
        assert_eq!(total.load(Ordering::Relaxed), 4 * 200 * 8 * 3);
    }

    #[test]
    fn a_panicking_task_reaches_the_caller_and_the_team_keeps_working() {
        let r = catch_unwind(|| for_each_task(16, |i| assert!(i != 5, "task five")));
        assert!(r.is_err());
        let n = AtomicUsize::new(0);
        for_each_task(16, |_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 16);
    }

    #[test]
    fn workers_run_a_job_under_the_posters_isa_override() {
        for o in [None, Some(Isa::Portable)] {
            let want = o.unwrap_or_else(isa::selected);
            let seen: Vec<AtomicU32> = (0..64).map(|_| AtomicU32::new(u32::MAX)).collect();
            isa::set_override(o, || {
                for_each_task(64, |i| {
                    std::thread::sleep(Duration::from_micros(50));
                    seen[i].store(isa::selected() as u32, Ordering::Relaxed);
                })
            });
            assert!(seen
                .iter()
                .all(|s| s.load(Ordering::Relaxed) == want as u32));
        }
        assert_eq!(
            isa_from_code(isa_code(Some(Isa::Avx512))),
            Some(Isa::Avx512)
        );
        assert_eq!(isa_from_code(isa_code(None)), None);
    }

    #[test]
    fn workers_that_slept_wake_for_a_new_job() {
        for_each_task(4, |_| {});
        std::thread::sleep(SPIN * 4);
        let n = AtomicUsize::new(0);
        for_each_task(64, |_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 64);
    }
}
