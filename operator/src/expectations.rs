//! The operator's own writes that the caches have not shown yet.
//!
//! A plan made while a cache still shows an object as it was before the operator's own write
//! is made from a stale view: it would, for example, issue a certificate again because the
//! Secret just written is not in the cache yet, or scale a Deployment a second time. So a
//! reconcile first waits until the caches show every write it made, as the ReplicaSet
//! controller waits for its expectations. Each write is kept with the resourceVersion the cache
//! showed before it (`None`: the object was not there); the cache has caught up as soon as it
//! shows anything else. A second write of the same object before the cache showed the first
//! (a LongConnService's status, then its scale) adds its own: the cache has caught up once it
//! shows neither. A write the cache never shows (its watch is broken) is given up on
//! after [`EXPECT_FOR`], the ReplicaSet controller's expectations timeout: on a busy API
//! server a watch runs many seconds behind, and giving up sooner brings back exactly the
//! stale plans this exists to prevent.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::runtime::reflector::ObjectRef;

use crate::crd::LongConnService;
use crate::kinds::Kind;

/// How long a write may take to show in the cache before it is no longer waited for.
pub const EXPECT_FOR: Duration = Duration::from_secs(5 * 60);

/// An object written: its kind (`None`: the LongConnService itself) and name.
type Written = (Option<Kind>, String);

/// Per LongConnService, the writes the caches do not show yet: the resourceVersion before
/// each, and when it was made.
#[derive(Default)]
pub struct Expectations(Mutex<HashMap<ObjectRef<LongConnService>, HashMap<Written, Expected>>>);

struct Expected {
    /// The versions the writes not shown yet started from.
    before: Vec<Option<String>>,
    at: Instant,
}

impl Expectations {
    /// Whether the caches show every write made for `lcs` by `now`; `current` gives the
    /// resourceVersion a cache shows for an object. Forgets the writes that show.
    pub fn settled(
        &self,
        lcs: &ObjectRef<LongConnService>,
        now: Instant,
        current: impl Fn(Option<Kind>, &str) -> Option<String>,
    ) -> bool {
        let Ok(mut all) = self.0.lock() else {
            return true;
        };
        let Some(writes) = all.get_mut(lcs) else {
            return true;
        };
        writes.retain(|(kind, name), expected| {
            now.saturating_duration_since(expected.at) < EXPECT_FOR
                && expected.before.contains(&current(*kind, name))
        });
        let settled = writes.is_empty();
        if settled {
            all.remove(lcs);
        }
        settled
    }

    /// Notes a write of `name` (`kind`; None: the LongConnService) made at `at` that changed
    /// its resourceVersion from `before` to `after`. A write that changed nothing is not
    /// waited for; one that follows a write not shown yet is waited for with it.
    pub fn wrote(
        &self,
        lcs: &ObjectRef<LongConnService>,
        (kind, name): (Option<Kind>, &str),
        before: Option<&str>,
        after: Option<&str>,
        at: Instant,
    ) {
        if before == after {
            return;
        }
        if let Ok(mut all) = self.0.lock() {
            let expected = all
                .entry(lcs.clone())
                .or_default()
                .entry((kind, name.to_owned()))
                .or_insert_with(|| Expected {
                    before: Vec::new(),
                    at,
                });
            expected.before.push(before.map(str::to_owned));
            expected.at = at;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service() -> ObjectRef<LongConnService> {
        ObjectRef::new("chat").within("default")
    }

    const SECRET: (Option<Kind>, &str) = (Some(Kind::Secret), "chat-tls");

    /// The cache of Secrets as a function: the resourceVersion of `chat-tls`, if any.
    fn secrets(rv: Option<&str>) -> impl Fn(Option<Kind>, &str) -> Option<String> {
        move |kind, name| (kind == SECRET.0 && name == SECRET.1).then_some(rv?.to_owned())
    }

    #[test]
    fn nothing_written_is_settled() {
        let expectations = Expectations::default();
        assert!(expectations.settled(&service(), Instant::now(), secrets(None)));
    }

    #[test]
    fn a_created_object_is_waited_for_until_the_cache_shows_it() {
        let expectations = Expectations::default();
        let t0 = Instant::now();
        expectations.wrote(&service(), SECRET, None, Some("7"), t0);
        assert!(!expectations.settled(&service(), t0, secrets(None)));
        assert!(expectations.settled(&service(), t0, secrets(Some("7"))));
        // Forgotten once shown: a later look at an emptied cache does not wait again.
        assert!(expectations.settled(&service(), t0, secrets(None)));
    }

    #[test]
    fn an_update_is_settled_by_any_newer_version() {
        let expectations = Expectations::default();
        let t0 = Instant::now();
        expectations.wrote(&service(), SECRET, Some("7"), Some("9"), t0);
        assert!(!expectations.settled(&service(), t0, secrets(Some("7"))));
        // Someone else wrote after us: the cache is past our write all the same.
        assert!(expectations.settled(&service(), t0, secrets(Some("12"))));
    }

    /// The status written, then the scale: a cache that shows only the first is still behind.
    #[test]
    fn two_writes_of_one_object_are_settled_only_by_a_version_past_both() {
        let expectations = Expectations::default();
        let t0 = Instant::now();
        expectations.wrote(&service(), SECRET, Some("7"), Some("9"), t0);
        expectations.wrote(&service(), SECRET, Some("9"), Some("11"), t0);
        assert!(!expectations.settled(&service(), t0, secrets(Some("7"))));
        assert!(!expectations.settled(&service(), t0, secrets(Some("9"))));
        assert!(expectations.settled(&service(), t0, secrets(Some("11"))));
    }

    #[test]
    fn a_write_that_changed_nothing_is_not_waited_for() {
        let expectations = Expectations::default();
        let t0 = Instant::now();
        expectations.wrote(&service(), SECRET, Some("7"), Some("7"), t0);
        assert!(expectations.settled(&service(), t0, secrets(Some("7"))));
    }

    /// A watch that lags half a minute behind (a busy API server) must not be taken for one
    /// that lost the write: a plan made then would issue the certificate again.
    #[test]
    fn a_lagging_cache_is_waited_for_and_a_lost_write_is_given_up_on_at_last() {
        let expectations = Expectations::default();
        let t0 = Instant::now();
        expectations.wrote(&service(), SECRET, None, Some("7"), t0);
        let lagging = t0 + Duration::from_secs(30);
        assert!(!expectations.settled(&service(), lagging, secrets(None)));
        let overdue = t0 + EXPECT_FOR;
        assert!(expectations.settled(&service(), overdue, secrets(None)));
    }

    #[test]
    fn each_service_waits_only_for_its_own_writes() {
        let expectations = Expectations::default();
        let other = ObjectRef::new("feed").within("default");
        let t0 = Instant::now();
        expectations.wrote(&other, SECRET, None, Some("7"), t0);
        assert!(expectations.settled(&service(), t0, secrets(None)));
        assert!(!expectations.settled(&other, t0, secrets(None)));
    }
}
