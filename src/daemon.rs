//! The `--interval` service loop shared by leader and follower.
//!
//! - The first run comes at a random offset within the interval (splay), so a fleet started
//!   together does not hit the store together; every later wait is the interval ±10 %.
//! - After a failed run the wait is 5 s, then 10 s, 20 s, ... doubling up to the interval
//!   (each shortened by up to 10 % at random, so it never exceeds the interval); one success
//!   returns to the normal interval.
//! - SIGTERM and SIGINT stop the loop: a run in progress (an apply) is finished first, a
//!   wait is cut short at once; the process then exits 0.
//! - SIGHUP reloads the config file; a config that does not load is reported and the old
//!   one kept.
//! - Under systemd (`Type=notify`): `READY=1` once the signals are in place and the config
//!   loaded, `WATCHDOG=1` at half the watchdog timeout while waiting and after each run,
//!   `STOPPING=1` on the way out.
//!
//! The three signals are blocked in every thread and taken synchronously with `sigtimedwait`
//! while waiting; arriving during a run, they stay pending until the run is over. The timing
//! is [`Schedule`], a pure state machine, so its sequence is unit-tested.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::Config;
use crate::error::{CmdResult, Failure};
use crate::sdnotify::Notifier;

/// First wait after a failed run.
pub const BACKOFF_START: Duration = Duration::from_secs(5);
/// Random spread of every wait, as a fraction of it.
pub const JITTER: f64 = 0.10;

/// A source of uniform numbers in `[0, 1)`.
pub trait Rng {
    /// The next number.
    fn unit(&mut self) -> f64;
}

/// splitmix64: small, fast, good enough to spread a fleet (not for secrets).
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    /// Seeded with `seed`.
    pub fn new(seed: u64) -> SplitMix {
        SplitMix(seed)
    }

    /// Seeded from the clock and the pid, so hosts differ.
    pub fn from_entropy() -> SplitMix {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        SplitMix(nanos ^ (u64::from(std::process::id()) << 32))
    }
}

impl Rng for SplitMix {
    fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The longest interval between runs: a year.
pub const MAX_INTERVAL: Duration = Duration::from_secs(365 * 24 * 3600);

/// When the next run is: splay, jitter and backoff.
#[derive(Debug, Clone)]
pub struct Schedule {
    interval: Duration,
    failures: u32,
}

impl Schedule {
    /// For runs every `interval`, at most [`MAX_INTERVAL`] (a longer one runs at that: the
    /// waits stay within what the clock can add).
    pub fn new(interval: Duration) -> Schedule {
        Schedule {
            interval: interval.min(MAX_INTERVAL),
            failures: 0,
        }
    }

    /// Wait before the first run: uniform in `[0, interval)`.
    pub fn first(&self, rng: &mut dyn Rng) -> Duration {
        self.interval.mul_f64(rng.unit().clamp(0.0, 1.0))
    }

    /// Wait after a run that succeeded (`ok`) or failed.
    pub fn after(&mut self, ok: bool, rng: &mut dyn Rng) -> Duration {
        let u = rng.unit().clamp(0.0, 1.0);
        if ok {
            self.failures = 0;
            return self.interval.mul_f64(1.0 + JITTER * (2.0 * u - 1.0));
        }
        self.failures = self.failures.saturating_add(1);
        let doublings = (self.failures - 1).min(30);
        let backoff = BACKOFF_START
            .saturating_mul(1u32 << doublings)
            .min(self.interval);
        backoff.mul_f64(1.0 - JITTER * u)
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// What interrupted a wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM or SIGINT.
    Stop(&'static str),
    /// SIGHUP.
    Reload,
}

/// SIGTERM, SIGINT and SIGHUP, blocked in this thread (and every thread it starts later) and
/// taken with `sigtimedwait`.
pub struct Signals {
    set: libc::sigset_t,
}

impl Signals {
    /// Block the three signals. Call before any other thread exists, or a signal may be
    /// delivered to a thread that has them unblocked and kill the process.
    pub fn block() -> std::io::Result<Signals> {
        // SAFETY: sigset_t is plain data that sigemptyset initialises.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid sigset_t; the signal numbers are valid.
        let rc = unsafe {
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGHUP);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        Ok(Signals { set })
    }

    /// Wait up to `timeout` for one of the signals (zero: only look at pending ones).
    pub fn wait(&self, timeout: Duration) -> Option<Signal> {
        let ts = libc::timespec {
            tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        loop {
            // SAFETY: `set` was initialised in `block`; a null siginfo is allowed.
            let sig = unsafe { libc::sigtimedwait(&self.set, std::ptr::null_mut(), &ts) };
            return match sig {
                libc::SIGTERM => Some(Signal::Stop("SIGTERM")),
                libc::SIGINT => Some(Signal::Stop("SIGINT")),
                libc::SIGHUP => Some(Signal::Reload),
                _ if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => {
                    continue
                }
                _ => None,
            };
        }
    }
}

/// Wait until `deadline`, sending `WATCHDOG=1` on the way; returns the signal that cut it
/// short, if any.
fn wait_until(signals: &Signals, notifier: &Notifier, deadline: Instant) -> Option<Signal> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let slice = notifier.watchdog_every().map_or(left, |w| w.min(left));
        if let Some(s) = signals.wait(slice) {
            return Some(s);
        }
        notifier.notify("WATCHDOG=1");
        if Instant::now() >= deadline {
            return None;
        }
    }
}

/// Run `cycle` every `interval` until SIGTERM/SIGINT, reloading `cfg` from `path` on SIGHUP.
/// `cycle` returns whether the run succeeded (failures back off). Returns `Ok` on a stop
/// signal: a service stopped on purpose exits 0.
pub fn run(
    path: &Path,
    mut cfg: Config,
    interval: Duration,
    mut cycle: impl FnMut(&Config) -> bool,
) -> CmdResult<()> {
    let signals = Signals::block().map_err(|e| {
        Failure::runtime(anyhow::anyhow!("cannot block SIGTERM/SIGINT/SIGHUP: {e}"))
    })?;
    let notifier = Notifier::from_env();
    let mut rng = SplitMix::from_entropy();
    let mut schedule = Schedule::new(interval);
    let mut delay = schedule.first(&mut rng);
    notifier.notify("READY=1");
    tracing::info!(interval = %humantime::format_duration(interval), first_run_in = %secs(delay), "service started");
    loop {
        let deadline = Instant::now() + delay;
        loop {
            match wait_until(&signals, &notifier, deadline) {
                None => break,
                Some(Signal::Stop(name)) => return stop(&notifier, name),
                Some(Signal::Reload) => match Config::load(path) {
                    Ok(c) => {
                        cfg = c;
                        tracing::info!(config = %path.display(), "SIGHUP: config reloaded");
                    }
                    Err(e) => {
                        tracing::error!(config = %path.display(), error = %e, "SIGHUP: the config does not load; keeping the previous config");
                    }
                },
            }
        }
        let ok = cycle(&cfg);
        notifier.notify("WATCHDOG=1");
        delay = schedule.after(ok, &mut rng);
        if ok {
            tracing::info!(next_run_in = %secs(delay), "run done");
        } else {
            tracing::warn!(failures = schedule.failures(), next_run_in = %secs(delay), "run failed; backing off");
        }
        // A stop signal that arrived during the run ends the service now, not after the wait.
        if let Some(Signal::Stop(name)) = signals.wait(Duration::ZERO) {
            return stop(&notifier, name);
        }
    }
}

fn stop(notifier: &Notifier, name: &str) -> CmdResult<()> {
    notifier.notify("STOPPING=1");
    tracing::info!(signal = name, "stopping");
    Ok(())
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Always the same number.
    struct Fixed(f64);
    impl Rng for Fixed {
        fn unit(&mut self) -> f64 {
            self.0
        }
    }

    #[test]
    fn an_interval_too_long_for_the_clock_is_capped_at_a_year() {
        let mut s = Schedule::new(Duration::MAX);
        let wait = s.after(true, &mut Fixed(1.0));
        assert_eq!(wait, MAX_INTERVAL.mul_f64(1.1));
        assert!(Instant::now().checked_add(wait).is_some());
        assert_eq!(s.first(&mut Fixed(0.5)), MAX_INTERVAL / 2);
    }

    #[test]
    fn backoff_doubles_from_5s_to_the_interval_and_resets_on_success() {
        let mut s = Schedule::new(Duration::from_secs(60));
        // u = 0: no shortening of the backoff; +-10 % at the ends for normal runs.
        let mut zero = Fixed(0.0);
        let seq: Vec<u64> = (0..6)
            .map(|_| s.after(false, &mut zero).as_secs())
            .collect();
        assert_eq!(seq, [5, 10, 20, 40, 60, 60]);
        assert_eq!(s.failures(), 6);
        let mut mid = Fixed(0.5);
        assert_eq!(s.after(true, &mut mid), Duration::from_secs(60));
        assert_eq!(s.failures(), 0);
        assert_eq!(s.after(false, &mut zero), Duration::from_secs(5));
    }

    #[test]
    fn backoff_is_capped_by_a_short_interval_and_never_exceeds_it() {
        let mut s = Schedule::new(Duration::from_secs(8));
        let mut r = SplitMix::new(1);
        for _ in 0..50 {
            let d = s.after(false, &mut r);
            assert!(d <= Duration::from_secs(8), "{d:?}");
        }
        let mut top = Fixed(0.999_999);
        let d = s.after(false, &mut top);
        assert!(d >= Duration::from_secs_f64(7.2) && d < Duration::from_secs_f64(7.21));
    }

    #[test]
    fn jitter_stays_within_ten_percent_and_spreads() {
        let mut s = Schedule::new(Duration::from_secs(100));
        let mut r = SplitMix::new(42);
        let waits: Vec<f64> = (0..1000)
            .map(|_| s.after(true, &mut r).as_secs_f64())
            .collect();
        let (lo, hi) = waits
            .iter()
            .fold((f64::MAX, f64::MIN), |(l, h), &w| (l.min(w), h.max(w)));
        assert!(lo >= 90.0 && hi <= 110.0, "{lo} {hi}");
        // Spread over the whole band, not clustered.
        assert!(lo < 91.0 && hi > 109.0, "{lo} {hi}");
        let mean = waits.iter().sum::<f64>() / waits.len() as f64;
        assert!((mean - 100.0).abs() < 1.0, "{mean}");
        assert_eq!(
            Schedule::new(Duration::from_secs(100)).after(true, &mut Fixed(0.0)),
            Duration::from_secs(90)
        );
    }

    #[test]
    fn splay_covers_the_interval() {
        let s = Schedule::new(Duration::from_secs(60));
        assert_eq!(s.first(&mut Fixed(0.0)), Duration::ZERO);
        assert_eq!(s.first(&mut Fixed(0.5)), Duration::from_secs(30));
        let mut r = SplitMix::new(7);
        let firsts: Vec<Duration> = (0..200).map(|_| s.first(&mut r)).collect();
        assert!(firsts.iter().all(|d| *d < Duration::from_secs(60)));
        assert!(firsts.iter().any(|d| *d < Duration::from_secs(6)));
        assert!(firsts.iter().any(|d| *d > Duration::from_secs(54)));
    }

    #[test]
    fn rng_is_in_unit_interval_and_seeded() {
        let mut a = SplitMix::new(3);
        let mut b = SplitMix::new(3);
        for _ in 0..1000 {
            let x = a.unit();
            assert!((0.0..1.0).contains(&x));
            assert_eq!(x, b.unit());
        }
        assert_ne!(SplitMix::new(4).unit(), SplitMix::new(3).unit());
    }
}
