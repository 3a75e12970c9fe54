//! Work that finishes even when whoever awaits it goes away.
//!
//! Control statements (BEGIN, SAVEPOINT, COMMIT, ROLLBACK) and the end of a scope change the
//! state of a transaction only once the server has answered. If the future awaiting them is
//! dropped half-way, the work moves to a task of its own and finishes there, in the same order,
//! instead of leaving the transaction in a state nobody knows. See docs/ARCHITECTURE.md
//! ("Cancellation").

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

/// A boxed `'static` future that is spawned onto the runtime, to run to completion, if it is
/// dropped before it completes. Without a runtime it is dropped: everything it owns then
/// cleans up on drop (a [`Conn`](crate::driver::Conn) that is not clean is closed).
pub(crate) struct Detachable<T: Send + 'static> {
    future: Option<Pin<Box<dyn Future<Output = T> + Send>>>,
}

impl<T: Send + 'static> Detachable<T> {
    pub(crate) fn new(future: impl Future<Output = T> + Send + 'static) -> Self {
        Detachable {
            future: Some(Box::pin(future)),
        }
    }

    /// Lets the work go on by itself, now.
    pub(crate) fn detach(mut self) {
        self.spawn_rest();
    }

    fn spawn_rest(&mut self) {
        if let Some(future) = self.future.take() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(future);
            }
        }
    }
}

impl<T: Send + 'static> Future for Detachable<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let future = self
            .future
            .as_mut()
            .expect("Detachable polled after completion");
        let output = ready!(future.as_mut().poll(cx));
        self.future = None;
        Poll::Ready(output)
    }
}

impl<T: Send + 'static> Drop for Detachable<T> {
    fn drop(&mut self) {
        self.spawn_rest();
    }
}

/// Whether the caller of a scope's end has gone (its future dropped, or its deadline's cutoff
/// answered it): read right before COMMIT or RELEASE is sent, so that an end nobody waits for
/// any more does not commit what was not yet sent.
#[derive(Debug, Default)]
pub(crate) struct Detached(std::sync::atomic::AtomicBool);

impl Detached {
    /// An end that no caller awaits from the start (a scope dropped while its body ran).
    pub(crate) fn already() -> Detached {
        Detached(std::sync::atomic::AtomicBool::new(true))
    }

    pub(crate) fn set(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }

    pub(crate) fn is_set(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn dropped_work_finishes_on_its_own() {
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let work = Detachable::new(async move {
            started_tx.send(()).unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            flag.store(true, Ordering::SeqCst);
        });
        let waiter = tokio::spawn(work);
        started.await.unwrap();
        waiter.abort();
        let _ = waiter.await;
        assert!(!done.load(Ordering::SeqCst));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            done.load(Ordering::SeqCst),
            "the work went on after its waiter was dropped"
        );
    }
}
