//! A fixed team of compute threads that spin between the fused forward's
//! passes.
//!
//! One image through ViT-B/32 is ~85 parallel passes of 0.1–1 ms each, every
//! one ending in a barrier. On rayon's pool a worker that waits more than a
//! few dozen microseconds at a barrier goes to sleep and must be woken by the
//! next pass: measured, two threads then computed only ~180 % of the time at
//! batch 1 (ONNX Runtime's spinning pool: 199 %). No maintained crate offers a
//! fork-join team with a spin-then-park policy, so this is ~100 lines of it:
//! the caller runs share 0 itself, `threads - 1` helpers run the others and
//! spin for [`SPIN`] after each pass before parking, so an idle server does
//! not burn CPU.

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::ModelError;

/// How long a helper spins for the next pass before parking.
const SPIN: Duration = Duration::from_millis(2);

/// One pass: called once with every share index `0..threads`.
type Job<'a> = &'a (dyn Fn(usize) + Sync);

struct Shared {
    /// Bumped once per pass; helpers start a pass when they see it change.
    epoch: AtomicU64,
    /// `*const Job` of the current pass (valid while `pending > 0`).
    job: AtomicPtr<()>,
    /// Helpers that have not finished the current pass.
    pending: AtomicUsize,
    /// A helper's share panicked during the current pass.
    panicked: AtomicBool,
    shutdown: AtomicBool,
    park: Mutex<()>,
    wake: Condvar,
}

/// The team; [`Team::run`] is one parallel pass.
pub(crate) struct Team {
    threads: usize,
    shared: Arc<Shared>,
    helpers: Vec<JoinHandle<()>>,
    /// Serialises passes from concurrent callers (the model may be shared).
    running: Mutex<()>,
}

impl std::fmt::Debug for Team {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Team")
            .field("threads", &self.threads)
            .finish()
    }
}

impl Team {
    /// A team of `threads` (at least 1): the calling thread plus
    /// `threads - 1` helpers named `ongi-vision-N`.
    pub(crate) fn new(threads: usize) -> Result<Self, ModelError> {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            pending: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            park: Mutex::new(()),
            wake: Condvar::new(),
        });
        let mut team = Self {
            threads,
            shared,
            helpers: Vec::with_capacity(threads - 1),
            running: Mutex::new(()),
        };
        for share in 1..threads {
            let shared = Arc::clone(&team.shared);
            let handle = std::thread::Builder::new()
                .name(format!("ongi-vision-{share}"))
                .spawn(move || helper(&shared, share))
                .map_err(|e| ModelError::Internal(format!("cannot start compute thread: {e}")))?;
            // Pushed as we go: on a spawn failure `Drop` stops the ones started.
            team.helpers.push(handle);
        }
        Ok(team)
    }

    /// Number of shares a pass is split into.
    pub(crate) fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `job(share)` for every share in `0..threads` in parallel and
    /// returns when all have finished. A panicking share is reported as an
    /// error after every share has stopped (nothing still uses `job` then).
    pub(crate) fn run(&self, job: impl Fn(usize) + Sync) -> Result<(), ModelError> {
        if self.threads == 1 {
            return panic::catch_unwind(AssertUnwindSafe(|| job(0))).map_err(|_| panicked());
        }
        let _one_pass = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        let job: Job<'_> = &job;
        s.job
            .store(&job as *const Job<'_> as *mut (), Ordering::Relaxed);
        s.pending.store(self.threads - 1, Ordering::Relaxed);
        // Release: helpers that see the new epoch see the job and the count.
        s.epoch.fetch_add(1, Ordering::Release);
        {
            let _g = s.park.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        let mine = panic::catch_unwind(AssertUnwindSafe(|| job(0)));
        // Every helper must be done with `job` (a borrow of this frame)
        // before returning or unwinding.
        let mut spins = 0u32;
        while s.pending.load(Ordering::Acquire) != 0 {
            spins = spins.saturating_add(1);
            back_off(spins);
        }
        s.job.store(std::ptr::null_mut(), Ordering::Relaxed);
        let helper_panicked = s.panicked.swap(false, Ordering::Relaxed);
        if mine.is_err() || helper_panicked {
            return Err(panicked());
        }
        Ok(())
    }
}

fn panicked() -> ModelError {
    ModelError::Internal("fused CPU forward: a compute thread panicked".into())
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        {
            let _g = self.shared.park.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for h in self.helpers.drain(..) {
            // A helper cannot panic outside a job (jobs are caught).
            let _ = h.join();
        }
    }
}

fn helper(s: &Shared, share: usize) {
    let mut seen = 0u64;
    loop {
        let started = Instant::now();
        let mut spins = 0u32;
        loop {
            let epoch = s.epoch.load(Ordering::Acquire);
            if epoch != seen {
                seen = epoch;
                break;
            }
            if s.shutdown.load(Ordering::Acquire) {
                return;
            }
            spins = spins.saturating_add(1);
            if spins.is_multiple_of(1024) && started.elapsed() > SPIN {
                // Park; the epoch is re-checked under the lock the caller
                // takes to notify, so no wake-up is lost.
                let mut g = s.park.lock().unwrap_or_else(|e| e.into_inner());
                while s.epoch.load(Ordering::Acquire) == seen && !s.shutdown.load(Ordering::Acquire)
                {
                    g = s.wake.wait(g).unwrap_or_else(|e| e.into_inner());
                }
            } else {
                back_off(spins);
            }
        }
        let job = s.job.load(Ordering::Relaxed) as *const Job<'_>;
        // SAFETY: the caller stored a pointer to a `Job` on its stack before
        // bumping the epoch (Release, paired with our Acquire load) and keeps
        // it alive until `pending` reaches zero, which needs our decrement
        // below. The job is `Sync`, so calling it from here is allowed.
        let ok = panic::catch_unwind(AssertUnwindSafe(|| unsafe { (*job)(share) })).is_ok();
        if !ok {
            s.panicked.store(true, Ordering::Relaxed);
        }
        s.pending.fetch_sub(1, Ordering::Release);
    }
}

/// One wait step: a few busy spins first (the next pass or the last share is
/// usually microseconds away), then yielding the core, so that with more
/// threads than cores the thread being waited for gets to run.
fn back_off(spins: u32) {
    if spins < 128 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

/// The `share`-th of `shares` contiguous, near-equal parts of `0..len`.
pub(crate) fn part(len: usize, share: usize, shares: usize) -> std::ops::Range<usize> {
    len * share / shares..len * (share + 1) / shares
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_share_runs_once_per_pass() {
        for threads in [1, 2, 3] {
            let team = Team::new(threads).unwrap();
            let hits: Vec<AtomicUsize> = (0..threads).map(|_| AtomicUsize::new(0)).collect();
            for _ in 0..1000 {
                team.run(|share| {
                    hits[share].fetch_add(1, Ordering::Relaxed);
                })
                .unwrap();
            }
            for h in &hits {
                assert_eq!(h.load(Ordering::Relaxed), 1000);
            }
        }
    }

    #[test]
    fn wakes_after_parking() {
        let team = Team::new(2).unwrap();
        let sum = AtomicUsize::new(0);
        team.run(|s| {
            sum.fetch_add(s + 1, Ordering::Relaxed);
        })
        .unwrap();
        std::thread::sleep(SPIN * 3);
        team.run(|s| {
            sum.fetch_add(s + 1, Ordering::Relaxed);
        })
        .unwrap();
        assert_eq!(sum.load(Ordering::Relaxed), 6);
    }

    #[test]
    fn a_panicking_share_is_an_error_and_the_team_survives() {
        let team = Team::new(2).unwrap();
        // A fault of ours, not the caller's input.
        let err = team.run(|s| assert!(s != 1, "boom")).unwrap_err();
        assert!(matches!(err, ModelError::Internal(_)), "{err:?}");
        assert!(team.run(|s| assert!(s != 0, "boom")).is_err());
        assert!(team.run(|_| {}).is_ok());
    }

    #[test]
    fn parts_cover_the_range() {
        let parts: Vec<_> = (0..3).map(|s| part(10, s, 3)).collect();
        assert_eq!(parts, vec![0..3, 3..6, 6..10]);
        assert_eq!(part(1, 0, 2), 0..0);
        assert_eq!(part(1, 1, 2), 0..1);
    }
}
