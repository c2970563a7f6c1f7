//! Push notification of instance state changes to callers blocked in
//! `WaitForInstanceStart` / `WaitForInstanceCompletion`: no polling.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use tokio::sync::Notify;

#[derive(Default)]
pub struct Waiters {
    map: Mutex<HashMap<String, Weak<Notify>>>,
}

impl Waiters {
    /// The notifier of an instance; hold it while waiting.
    pub fn subscribe(&self, instance_id: &str) -> Arc<Notify> {
        let mut map = self.map.lock();
        if let Some(n) = map.get(instance_id).and_then(Weak::upgrade) {
            return n;
        }
        if map.len() > 1024 {
            map.retain(|_, w| w.strong_count() > 0);
        }
        let n = Arc::new(Notify::new());
        map.insert(instance_id.to_string(), Arc::downgrade(&n));
        n
    }

    /// Wakes everyone waiting on the instance.
    pub fn notify(&self, instance_id: &str) {
        let mut map = self.map.lock();
        match map.get(instance_id).map(Weak::upgrade) {
            Some(Some(n)) => n.notify_waiters(),
            Some(None) => {
                map.remove(instance_id);
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn notify_wakes_a_subscribed_waiter() {
        let w = Arc::new(Waiters::default());
        let n = w.subscribe("a");
        let notified = n.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        w.notify("a");
        tokio::time::timeout(Duration::from_secs(1), notified).await.expect("woken");
    }

    #[tokio::test]
    async fn notify_of_other_instance_does_not_wake() {
        let w = Waiters::default();
        let n = w.subscribe("a");
        let notified = n.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        w.notify("b");
        assert!(tokio::time::timeout(Duration::from_millis(50), notified).await.is_err());
    }

    #[test]
    fn dropped_subscriptions_are_forgotten() {
        let w = Waiters::default();
        drop(w.subscribe("a"));
        w.notify("a");
        assert!(w.map.lock().is_empty());
    }
}
