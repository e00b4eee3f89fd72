//! CPU time and resident memory from `/proc`, of this process or another.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_and_rss_are_readable() {
        assert!(cpu_seconds().unwrap() >= 0.0);
        assert!(rss_kb(None).unwrap() > 0);
        assert!(rss_kb(Some(std::process::id())).unwrap() > 0);
        assert!(peak_rss_kb().unwrap() >= rss_kb(None).unwrap() / 2);
        assert_eq!(rss_kb(Some(u32::MAX)), None);
    }
}
