//! A broadcast wake-up that its listeners check with one atomic load.
//!
//! Besides its two sockets, a session waits on two process-wide events: the [`Ticker`] and a
//! change of the drain phase. Its task is polled on every socket readiness, and polling a
//! `tokio::sync::Notified` that is already waiting takes the `Notify`'s lock to compare wakers,
//! so waiting on both with plain `Notified` futures costs two lock round trips per relayed burst.
//! A [`Listener`] registers its task once per firing and otherwise only compares a counter.
//!
//! [`Ticker`]: crate::limits::Ticker

use std::{
    future::{Future, poll_fn},
    pin::Pin,
    sync::atomic::{AtomicU64, Ordering},
    task::{Context, Poll, Waker},
};

use pin_project_lite::pin_project;
use tokio::sync::{Notify, futures::Notified};

/// Wakes every [`Listener`] each time it is fired.
#[derive(Debug, Default)]
pub struct Beacon {
    fired: AtomicU64,
    notify: Notify,
}

impl Beacon {
    /// Wakes every listener; each sees the firing once.
    pub fn fire(&self) {
        // Counted before waking, so a listener that registers after the wake-up still sees it.
        self.fired.fetch_add(1, Ordering::AcqRel);
        self.notify.notify_waiters();
    }

    /// A listener that sees the firings from now on.
    pub fn listen(&self) -> Listener<'_> {
        Listener {
            notified: self.notify.notified(),
            seen: self.fired.load(Ordering::Acquire),
            beacon: self,
            waker: None,
        }
    }
}

pin_project! {
    /// Waits for the firings of one [`Beacon`]; see the module documentation.
    #[derive(Debug)]
    pub struct Listener<'a> {
        beacon: &'a Beacon,
        seen: u64,
        // Created before `seen` is read, so no firing is missed: one that `seen` does not count
        // came after this future was created and completes it.
        #[pin]
        notified: Notified<'a>,
        // The waker `notified` was last polled with; `None` until it has been polled.
        waker: Option<Waker>,
    }
}

impl<'a> Listener<'a> {
    /// `Ready` when the beacon fired since the last `Ready` (several firings in between count as
    /// one). A firing that overlaps a `Ready` may be reported once more by the next poll, so a
    /// caller re-reads whatever state it watches rather than counting firings.
    pub fn poll_fired(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        let fired = this.beacon.fired.load(Ordering::Acquire);
        if fired == *this.seen {
            if this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                return Poll::Pending;
            }
            if this.notified.as_mut().poll(cx).is_pending() {
                *this.waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
        }
        this.notified.set(this.beacon.notify.notified());
        *this.seen = this.beacon.fired.load(Ordering::Acquire);
        *this.waker = None;
        Poll::Ready(())
    }

    /// Resolves at the next firing (see [`Listener::poll_fired`]).
    pub fn fired(mut self: Pin<&mut Self>) -> impl Future<Output = ()> + '_ {
        poll_fn(move |cx| self.as_mut().poll_fired(cx))
    }
}

#[cfg(test)]
mod tests {
    use std::{pin::pin, sync::Arc, task::Wake};

    use super::*;

    /// Counts its wake-ups.
    #[derive(Default)]
    struct CountingWaker(AtomicU64);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll(listener: Pin<&mut Listener<'_>>, waker: &Arc<CountingWaker>) -> Poll<()> {
        let waker = Waker::from(Arc::clone(waker));
        listener.poll_fired(&mut Context::from_waker(&waker))
    }

    #[test]
    fn each_firing_is_seen_once_and_wakes_the_registered_task() {
        let beacon = Beacon::default();
        let task = Arc::new(CountingWaker::default());
        let mut listener = pin!(beacon.listen());
        assert!(poll(listener.as_mut(), &task).is_pending());
        assert!(poll(listener.as_mut(), &task).is_pending());
        beacon.fire();
        assert_eq!(
            task.0.load(Ordering::SeqCst),
            1,
            "the registered task is woken"
        );
        assert!(poll(listener.as_mut(), &task).is_ready());
        assert!(poll(listener.as_mut(), &task).is_pending(), "seen once");
        beacon.fire();
        beacon.fire();
        assert_eq!(
            task.0.load(Ordering::SeqCst),
            2,
            "registered again after a firing"
        );
        assert!(poll(listener.as_mut(), &task).is_ready());
        assert!(poll(listener.as_mut(), &task).is_pending());
    }

    #[test]
    fn a_firing_before_the_first_poll_is_not_lost() {
        let beacon = Beacon::default();
        let task = Arc::new(CountingWaker::default());
        let mut listener = pin!(beacon.listen());
        beacon.fire();
        assert!(poll(listener.as_mut(), &task).is_ready());
        assert!(poll(listener.as_mut(), &task).is_pending());
    }

    #[test]
    fn a_firing_before_listening_is_not_seen() {
        let beacon = Beacon::default();
        beacon.fire();
        let task = Arc::new(CountingWaker::default());
        let mut listener = pin!(beacon.listen());
        assert!(poll(listener.as_mut(), &task).is_pending());
    }

    #[test]
    fn a_new_waker_is_registered() {
        let beacon = Beacon::default();
        let first = Arc::new(CountingWaker::default());
        let second = Arc::new(CountingWaker::default());
        let mut listener = pin!(beacon.listen());
        assert!(poll(listener.as_mut(), &first).is_pending());
        assert!(poll(listener.as_mut(), &second).is_pending());
        beacon.fire();
        assert_eq!(first.0.load(Ordering::SeqCst), 0);
        assert_eq!(
            second.0.load(Ordering::SeqCst),
            1,
            "the waker of the last poll is woken"
        );
    }

    #[tokio::test]
    async fn a_task_waiting_on_a_listener_wakes_when_fired_from_another_task() {
        let beacon = Arc::new(Beacon::default());
        let waiter = {
            let beacon = Arc::clone(&beacon);
            tokio::spawn(async move {
                let mut listener = pin!(beacon.listen());
                for _ in 0..3 {
                    listener.as_mut().fired().await;
                }
            })
        };
        let fire = async {
            for _ in 0..100 {
                if waiter.is_finished() {
                    break;
                }
                beacon.fire();
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        };
        fire.await;
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .expect("the waiter saw three firings")
            .expect("the waiter did not panic");
    }
}
