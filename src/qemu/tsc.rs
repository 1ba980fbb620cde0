//! The host's TSC rate. Under TCG a guest's TSC runs at it, and a microvm guest (no PIT
//! calibration reference, no HPET) must be told it (`tsc_early_khz=`) or some boots hang.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The host TSC rate in kHz, measured once (100 ms against the monotonic clock); None
/// where there is no TSC or the figure is implausible.
pub fn host_khz() -> Option<u64> {
    static KHZ: OnceLock<Option<u64>> = OnceLock::new();
    *KHZ.get_or_init(measure)
}

#[cfg(target_arch = "x86_64")]
fn measure() -> Option<u64> {
    // Each end pairs a clock read with the mean of two TSC reads around it.
    let mark = || {
        // SAFETY: rdtsc reads a counter; it has no memory effects.
        let a = unsafe { core::arch::x86_64::_rdtsc() };
        let t = Instant::now();
        let b = unsafe { core::arch::x86_64::_rdtsc() };
        (t, a / 2 + b / 2)
    };
    let (t0, c0) = mark();
    std::thread::sleep(Duration::from_millis(100));
    let (t1, c1) = mark();
    let secs = t1.duration_since(t0).as_secs_f64();
    let khz = c1.checked_sub(c0)? as f64 / secs / 1000.0;
    (100_000.0..20_000_000.0).contains(&khz).then(|| khz.round() as u64)
}

#[cfg(not(target_arch = "x86_64"))]
fn measure() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn measures_a_plausible_rate_and_keeps_it() {
        let khz = super::host_khz().expect("an x86_64 host has a TSC");
        assert!((100_000..20_000_000).contains(&khz), "{khz}");
        assert_eq!(super::host_khz(), Some(khz));
    }
}
