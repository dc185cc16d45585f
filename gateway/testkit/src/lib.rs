//! What Ringway's tests share. See `README.md`.

pub mod cluster;
pub mod process;
pub mod redis;

use std::fmt::{self, Display};
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// What a check of [`eventually`] answers: `true` / `Some(value)` when
/// the condition holds.
pub trait Outcome {
    type Value;
    fn holds(self) -> Option<Self::Value>;
}

impl Outcome for bool {
    type Value = ();
    fn holds(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Outcome for Option<T> {
    type Value = T;
    fn holds(self) -> Option<T> {
        self
    }
}

/// A steady pace for what a test does periodically (a node's heartbeat, a
/// publisher's stream): the first tick at once, then one per `period`,
/// late ticks delayed rather than bunched. Periodic work, not a wait: a
/// test that waits for something uses [`eventually`].
pub fn pace(period: Duration) -> tokio::time::Interval {
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval
}

/// A description computed only when a wait fails: what the test waited
/// for, with the state that shows why it did not come (a log, the
/// requests seen).
pub struct Describe<F>(pub F);

impl<F: Fn() -> String> Display for Describe<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&(self.0)())
    }
}

/// The first pause between two checks, and the longest.
const FIRST_PAUSE: Duration = Duration::from_millis(5);
const LONGEST_PAUSE: Duration = Duration::from_millis(100);

/// Runs `check` until it holds and returns what it gave; `None` when it
/// still does not hold after `within`. Checks back off from 5 ms to
/// 100 ms apart, so a condition met at once costs next to nothing and a
/// slow one does not spin. For a wait whose end is not a failure (a
/// process that may not exit in time); a test's wait is [`eventually`].
pub async fn poll_until<F, Fut>(
    within: Duration,
    mut check: F,
) -> Option<<Fut::Output as Outcome>::Value>
where
    F: FnMut() -> Fut,
    Fut: Future,
    Fut::Output: Outcome,
{
    let deadline = Instant::now() + within;
    let mut pause = FIRST_PAUSE;
    loop {
        if let Some(value) = check().await.holds() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(LONGEST_PAUSE);
    }
}

/// Runs `check` until it holds and returns what it gave; fails the test
/// (a panic naming `what`, formatted then: see [`Describe`]) when it still
/// does not hold after `within`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::time::Duration;
/// let start = std::time::Instant::now();
/// let waited = ringway_testkit::eventually(Duration::from_secs(5), "20 ms to pass", || async {
///     (start.elapsed() >= Duration::from_millis(20)).then(|| start.elapsed())
/// })
/// .await;
/// assert!(waited >= Duration::from_millis(20));
/// # }
/// ```
pub async fn eventually<F, Fut>(
    within: Duration,
    what: impl Display,
    check: F,
) -> <Fut::Output as Outcome>::Value
where
    F: FnMut() -> Fut,
    Fut: Future,
    Fut::Output: Outcome,
{
    match poll_until(within, check).await {
        Some(value) => value,
        None => panic!("not true within {within:?}: {what}"),
    }
}

/// [`poll_until`] for code without a runtime (a helper that starts a
/// process and waits for it to listen, or to exit), on the calling thread.
pub fn poll_until_blocking<F, O>(within: Duration, mut check: F) -> Option<O::Value>
where
    F: FnMut() -> O,
    O: Outcome,
{
    let deadline = std::time::Instant::now() + within;
    let mut pause = FIRST_PAUSE;
    loop {
        if let Some(value) = check().holds() {
            return Some(value);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(LONGEST_PAUSE);
    }
}

/// [`eventually`] for code without a runtime.
pub fn eventually_blocking<F, O>(within: Duration, what: impl Display, check: F) -> O::Value
where
    F: FnMut() -> O,
    O: Outcome,
{
    match poll_until_blocking(within, check) {
        Some(value) => value,
        None => panic!("not true within {within:?}: {what}"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn returns_what_the_check_gave_once_it_holds() {
        let calls = AtomicU32::new(0);
        let got = eventually(Duration::from_secs(5), "three calls", || async {
            let n = calls.fetch_add(1, Ordering::Relaxed) + 1;
            (n == 3).then_some(n * 10)
        })
        .await;
        assert_eq!(got, 30);
        eventually(Duration::from_secs(5), "true", || async { true }).await;
    }

    #[test]
    fn blocking_twin_returns_and_fails_the_same_way() {
        let mut n = 0;
        let got = eventually_blocking(Duration::from_secs(5), "n to reach 2", || {
            n += 1;
            (n == 2).then_some(n)
        });
        assert_eq!(got, 2);
        let failed = std::panic::catch_unwind(|| {
            eventually_blocking(Duration::from_millis(20), "never", || false)
        });
        assert!(failed.is_err());
    }

    #[test]
    fn a_description_is_computed_when_the_wait_fails_only() {
        let calls = std::cell::Cell::new(0);
        let what = Describe(|| {
            calls.set(calls.get() + 1);
            "the state".to_owned()
        });
        eventually_blocking(Duration::from_secs(1), &what, || true);
        assert_eq!(calls.get(), 0);
        let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            eventually_blocking(Duration::from_millis(10), &what, || false)
        }));
        let message = failed.expect_err("fails");
        let message = message
            .downcast_ref::<String>()
            .expect("a formatted message");
        assert!(message.ends_with(": the state"), "{message}");
        assert_eq!(calls.get(), 1);
    }

    #[tokio::test]
    async fn poll_until_gives_up_quietly() {
        assert_eq!(
            poll_until(Duration::from_millis(20), || async { None::<u8> }).await,
            None
        );
        assert_eq!(
            poll_until_blocking(Duration::from_millis(20), || false),
            None
        );
    }

    #[tokio::test]
    #[should_panic(expected = "not true within 50ms: the impossible")]
    async fn fails_naming_what_it_waited_for() {
        eventually(Duration::from_millis(50), "the impossible", || async {
            false
        })
        .await;
    }
}
