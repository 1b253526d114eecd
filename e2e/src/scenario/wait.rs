//! Bounded waiting: every wait of a scenario names what it awaits, has a deadline, and on
//! timeout says what it saw last.

use std::future::Future;
use std::time::{Duration, Instant};

use super::ScenarioError;

/// How often a condition is checked again.
pub const POLL: Duration = Duration::from_millis(500);

/// The answer of one check.
pub enum Check<T> {
    /// The condition holds.
    Done(T),
    /// Not yet: what was seen instead.
    NotYet(String),
}

/// Checks `check` every [`POLL`] until it is [`Check::Done`], fails, or `timeout` passes (then
/// [`ScenarioError::Timeout`] names `what` and the last answer).
pub async fn wait_until<T, F, Fut>(
    what: &str,
    timeout: Duration,
    mut check: F,
) -> Result<T, ScenarioError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Check<T>, ScenarioError>>,
{
    let started = Instant::now();
    loop {
        let last = match tokio::time::timeout(Duration::from_secs(30), check()).await {
            Ok(Ok(Check::Done(value))) => return Ok(value),
            Ok(Ok(Check::NotYet(why))) => why,
            Ok(Err(err)) => err.to_string(),
            Err(_) => "the check itself took over 30 s".into(),
        };
        if started.elapsed() >= timeout {
            return Err(ScenarioError::Timeout {
                what: what.to_owned(),
                after: timeout,
                last,
            });
        }
        tokio::time::sleep(POLL).await;
    }
}
