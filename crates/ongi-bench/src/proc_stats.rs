//! CPU time and resident memory from `/proc`, of this process or another.

use std::collections::HashMap;

use anyhow::{Context, Result};
use procfs::process::{ClearRefs, Process};

/// This process's CPU time (utime + stime, all threads) in seconds.
pub fn cpu_seconds() -> Result<f64> {
    let stat = Process::myself()
        .and_then(|p| p.stat())
        .context("reading /proc/self/stat")?;
    Ok((stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64)
}

/// `VmRSS` of `pid` (this process when `None`), in kB.
pub fn rss_kb(pid: Option<u32>) -> Option<u64> {
    let process = match pid {
        Some(pid) => Process::new(i32::try_from(pid).ok()?),
        None => Process::myself(),
    };
    process.and_then(|p| p.status()).ok()?.vmrss
}

/// This process's peak RSS (`VmHWM`), in kB.
pub fn peak_rss_kb() -> Option<u64> {
    Process::myself().and_then(|p| p.status()).ok()?.vmhwm
}

/// Resets `VmHWM` to the current RSS; false if the kernel does not allow it.
pub fn reset_peak_rss() -> bool {
    Process::myself()
        .and_then(|p| p.clear_refs(ClearRefs::PeakRSS))
        .is_ok()
        && peak_rss_kb().is_some()
}

/// One thread's scheduler counters: nanoseconds on a CPU and nanoseconds
/// runnable but waiting for one (`/proc/self/task/TID/schedstat`).
#[derive(Clone, Debug)]
struct ThreadClock {
    name: String,
    on_cpu_ns: u64,
    waiting_ns: u64,
}

/// Every thread of this process at one instant, by thread id. Taken twice
/// around a run, the difference says which threads used the cores and which
/// queued for them: the process's CPU total cannot tell a stage that computes
/// from one that is merely preempted by another.
#[derive(Clone, Debug, Default)]
pub struct ThreadClocks(HashMap<i32, ThreadClock>);

/// CPU and run-queue seconds of one group of threads between two snapshots.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GroupTime {
    pub on_cpu_s: f64,
    pub waiting_s: f64,
}

impl ThreadClocks {
    /// Reads every thread's counters now. A thread that exits while being
    /// read is left out (its time is then missing from both snapshots' diff).
    pub fn now() -> Result<Self> {
        let me = Process::myself().context("reading /proc/self")?;
        let tasks = me.tasks().context("listing /proc/self/task")?;
        let mut threads = HashMap::new();
        for task in tasks.flatten() {
            let (Ok(stat), Ok(sched)) = (task.stat(), task.schedstat()) else {
                continue;
            };
            threads.insert(
                task.tid,
                ThreadClock {
                    name: stat.comm,
                    on_cpu_ns: sched.sum_exec_runtime,
                    waiting_ns: sched.run_delay,
                },
            );
        }
        if threads.is_empty() {
            anyhow::bail!("no thread of this process has readable /proc/self/task/*/schedstat");
        }
        Ok(Self(threads))
    }

    /// Time since `earlier`, summed per group (`group` maps a thread name to
    /// its group). Threads started after `earlier` count from zero.
    pub fn since(
        &self,
        earlier: &ThreadClocks,
        group: impl Fn(&str) -> &'static str,
    ) -> HashMap<&'static str, GroupTime> {
        let mut out: HashMap<&'static str, GroupTime> = HashMap::new();
        for (tid, now) in &self.0 {
            let (cpu0, wait0) = earlier
                .0
                .get(tid)
                .map_or((0, 0), |t| (t.on_cpu_ns, t.waiting_ns));
            let g = out.entry(group(&now.name)).or_default();
            g.on_cpu_s += now.on_cpu_ns.saturating_sub(cpu0) as f64 * 1e-9;
            g.waiting_s += now.waiting_ns.saturating_sub(wait0) as f64 * 1e-9;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_clocks_split_cpu_time_by_thread_name() {
        let before = ThreadClocks::now().unwrap();
        // Spins until the thread itself has run `secs` on a CPU (however
        // long other tests keep it waiting for one).
        let spin = |secs: f64| {
            let on_cpu = || {
                let mut ts = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                // SAFETY: a valid clock id and a pointer to a live timespec.
                assert_eq!(
                    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) },
                    0
                );
                ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
            };
            let start = on_cpu();
            let mut x = 0u64;
            while on_cpu() - start < secs {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        };
        // Only a live thread's counters can be read, so the measured thread
        // waits for the second snapshot before it exits.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        let live = std::thread::Builder::new()
            .name("clock-test-live".into())
            .spawn(move || {
                spin(0.2);
                ready_tx.send(()).unwrap_or(());
                rx.recv().unwrap_or(());
            })
            .unwrap();
        ready_rx.recv().unwrap();
        let after = ThreadClocks::now().unwrap();
        tx.send(()).unwrap();
        live.join().unwrap();
        let groups = after.since(&before, |name| {
            if name.starts_with("clock-test") {
                "test"
            } else {
                "other"
            }
        });
        let test = groups["test"];
        assert!(
            (0.2..2.0).contains(&test.on_cpu_s),
            "the live thread spun 0.2 s, its clock says {test:?}"
        );
        assert!(test.waiting_s >= 0.0);
    }

    #[test]
    fn cpu_time_and_rss_are_readable() {
        assert!(cpu_seconds().unwrap() >= 0.0);
        assert!(rss_kb(None).unwrap() > 0);
        assert!(rss_kb(Some(std::process::id())).unwrap() > 0);
        assert!(peak_rss_kb().unwrap() >= rss_kb(None).unwrap() / 2);
        assert_eq!(rss_kb(Some(u32::MAX)), None);
    }
}
