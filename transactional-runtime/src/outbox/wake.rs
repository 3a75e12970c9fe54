//! How a commit wakes the relays of its process: each running relay listens on its table's
//! name, and `publish`'s after-commit hook nudges every relay listening on the table.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use once_cell::sync::Lazy;
use tokio::sync::Notify;

static LISTENERS: Lazy<Mutex<HashMap<String, Vec<Weak<Notify>>>>> = Lazy::new(Mutex::default);

/// A relay's wake-up for `table`, nudged until it is dropped.
pub(super) fn listen(table: &str) -> Arc<Notify> {
    let notify = Arc::new(Notify::new());
    let mut listeners = LISTENERS.lock().unwrap_or_else(|e| e.into_inner());
    let list = listeners.entry(table.to_owned()).or_default();
    list.retain(|l| l.strong_count() > 0);
    list.push(Arc::downgrade(&notify));
    notify
}

/// Wakes the relays of `table` (a relay busy with a round runs another one right after it).
pub(super) fn nudge(table: &str) {
    let listeners = LISTENERS.lock().unwrap_or_else(|e| e.into_inner());
    for notify in listeners.get(table).into_iter().flatten() {
        if let Some(notify) = notify.upgrade() {
            notify.notify_one();
        }
    }
}
