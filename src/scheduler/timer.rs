//! The batcher's wake-up timer. tokio's timer wheel has millisecond resolution, so a
//! `max_queue_delay_microseconds: 100` waited on it ends about a millisecond late. On Linux the
//! batcher thread instead waits on a `timerfd` registered with its runtime's epoll (`AsyncFd`):
//! the kernel's high-resolution timer wakes epoll at the deadline, within microseconds, and an
//! idle batcher still sleeps in epoll (no spinning). The thread's timer slack is lowered too,
//! so the runtime's own epoll timeouts are not rounded up by Linux's default 50 µs slack.
//!
//! Tests that run the batcher on a paused-time runtime use the tokio timer (`Timer::tokio`):
//! paused time advances only through tokio's clock, which a kernel timer does not see.

use std::io;

use tokio::time::Instant;

/// The timer slack asked for on the batcher thread (Linux defaults to 50 µs).
const TIMER_SLACK_NS: u64 = 1_000;

/// Lowers the calling thread's timer slack so sleeps and epoll timeouts end within ~1 µs of
/// their deadline. Best effort: without it waits are at most ~50 µs later.
pub(crate) fn set_thread_timer_slack() {
    #[cfg(target_os = "linux")]
    {
        let slack = std::num::NonZeroU64::new(TIMER_SLACK_NS);
        if let Err(e) = rustix::thread::set_current_timer_slack(slack) {
            tracing::debug!("PR_SET_TIMERSLACK failed: {e}");
        }
    }
}

/// Sleeps until an instant, precisely where the platform allows.
pub(crate) enum Timer {
    /// tokio's timer (millisecond resolution; follows paused time in tests).
    Tokio,
    /// A monotonic `timerfd` in the current runtime's epoll (microsecond resolution).
    #[cfg(target_os = "linux")]
    Precise(tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>),
}

impl Timer {
    /// The tokio timer.
    pub(crate) fn tokio() -> Timer {
        Timer::Tokio
    }

    /// A precise timer registered with the current runtime (which must have its I/O driver
    /// enabled); falls back to the tokio timer where none can be made.
    pub(crate) fn precise() -> Timer {
        #[cfg(target_os = "linux")]
        match Self::timerfd() {
            Ok(fd) => return Timer::Precise(fd),
            Err(e) => tracing::warn!(
                "no timerfd for the batcher ({e}); batching delays have millisecond resolution"
            ),
        }
        Timer::Tokio
    }

    #[cfg(target_os = "linux")]
    fn timerfd() -> io::Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
        use rustix::time::{TimerfdClockId, TimerfdFlags, timerfd_create};
        // CLOCK_MONOTONIC is the clock of std's (and unpaused tokio's) `Instant` on Linux.
        let fd = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )?;
        let interest = tokio::io::Interest::READABLE;
        // SAFETY (tokio's contract for registering a raw fd): `fd` is an `OwnedFd` just returned
        // by timerfd_create, so it is valid and open; the `AsyncFd` owns it, nothing else can
        // close or replace it, `OwnedFd::as_raw_fd` always returns that same descriptor, and we
        // never take it back out (`into_inner`), so it stays open until the `AsyncFd` drops.
        #[allow(unsafe_code)]
        let registered = unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, interest) };
        registered.map_err(io::Error::from)
    }

    /// Returns at `deadline` (at once if it has passed). Cancel-safe: dropping the future
    /// leaves the timer armed, and the next call re-arms it (which resets its expirations).
    pub(crate) async fn sleep_until(&mut self, deadline: Instant) {
        match self {
            Timer::Tokio => tokio::time::sleep_until(deadline).await,
            #[cfg(target_os = "linux")]
            Timer::Precise(fd) => {
                if let Err(e) = Self::wait_fd(fd, deadline).await {
                    // Never reached on a working kernel; the coarse timer keeps the batcher
                    // correct (a delay ends late, never early).
                    tracing::warn!("batcher timerfd failed ({e}); using the tokio timer");
                    *self = Timer::Tokio;
                    tokio::time::sleep_until(deadline).await;
                }
            }
        }
    }

    #[cfg(target_os = "linux")]
    async fn wait_fd(
        fd: &tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
        deadline: Instant,
    ) -> io::Result<()> {
        use rustix::time::{Itimerspec, TimerfdTimerFlags, Timespec, timerfd_settime};
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            // A zero it_value would disarm the timer instead of firing it.
            return Ok(());
        }
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let value = Timespec::try_from(left).map_err(|_| io::Error::other("delay too long"))?;
        timerfd_settime(
            fd.get_ref(),
            TimerfdTimerFlags::empty(),
            &Itimerspec {
                it_interval: zero,
                it_value: value,
            },
        )?;
        loop {
            let mut ready = fd.readable().await?;
            let mut ticks = [0u8; 8];
            match ready.try_io(|fd| Ok(rustix::io::read(fd.get_ref(), &mut ticks)?)) {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => return Err(e),
                // Readiness left over from an earlier (cancelled) wait: wait again.
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The precise timer never ends a wait early, also when an earlier wait was cancelled
    /// while armed (its leftover expiry must not end the next wait).
    #[test]
    fn precise_waits_end_at_or_after_their_deadline() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut timer = Timer::precise();
            #[cfg(target_os = "linux")]
            assert!(matches!(timer, Timer::Precise(_)));
            for us in [0, 1, 50, 100, 300] {
                let deadline = Instant::now() + Duration::from_micros(us);
                timer.sleep_until(deadline).await;
                assert!(Instant::now() >= deadline, "{us} µs ended early");
            }
            // Cancel an armed 50 µs wait, let it expire unread, then wait for a later deadline.
            let soon = Instant::now() + Duration::from_micros(50);
            tokio::select! {
                biased;
                _ = std::future::ready(()) => {}
                _ = timer.sleep_until(soon) => {}
            }
            let mut armed = Timer::precise();
            armed.sleep_until(soon + Duration::from_micros(50)).await;
            let later = Instant::now() + Duration::from_millis(2);
            timer.sleep_until(later).await;
            assert!(
                Instant::now() >= later,
                "a stale expiry ended the wait early"
            );
        });
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_slack_is_lowered_on_the_calling_thread() {
        std::thread::spawn(|| {
            set_thread_timer_slack();
            assert_eq!(
                rustix::thread::current_timer_slack().unwrap(),
                TIMER_SLACK_NS
            );
        })
        .join()
        .unwrap();
    }
}
