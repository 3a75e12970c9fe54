//! Which public types and futures are `Send`, `Sync`, `Unpin`, checked by the compiler: a
//! regression is a build error here, not a surprise in a user's `tokio::spawn`. The futures are
//! built and dropped, never run. `assert_not_send!` compiles only for a type that is not
//! `Send`: its trait has two impls, one for every type and one for `Send` types, so the call is
//! ambiguous (an error) exactly when the type is `Send`. (The runtime's `unsafe impl Send for
//! Scope` states its bounds on the body, its output and its rule: the `!Send` checks below are
//! what keep them honest.)
#![allow(clippy::unused_async)]

use std::rc::Rc;

use transactional_runtime::{
    connection, data_source, testing, ConnectionGuard, DataSourceRef, Error, Isolation, Outcome,
    PoolStatus, Propagation, RollbackCause, Transactional, TxOptions,
};

fn send<T: Send>(_: &T) {}
fn sync<T: Sync>(_: &T) {}
fn send_sync_static<T: Send + Sync + 'static>() {}

#[allow(dead_code)]
trait AmbiguousIfSend<Marker> {
    fn check(&self) {}
}
impl<T: ?Sized> AmbiguousIfSend<()> for T {}
impl<T: ?Sized + Send> AmbiguousIfSend<u8> for T {}

/// Compiles only if the value's type is not `Send`.
macro_rules! assert_not_send {
    ($value:expr) => {{
        let value = $value;
        <_ as AmbiguousIfSend<_>>::check(&value);
        drop(value);
    }};
}

type Result<T> = std::result::Result<T, Error>;

async fn body_ok() -> Result<i64> {
    Ok(1)
}

/// A body that holds an `Rc` across an await: its future is not `Send`.
async fn body_with_rc() -> Result<i64> {
    let shared = Rc::new(1);
    tokio::task::yield_now().await;
    Ok(*shared)
}

#[test]
fn plain_values_are_send_and_sync() {
    send_sync_static::<Error>();
    send_sync_static::<TxOptions>();
    send_sync_static::<Transactional>();
    send_sync_static::<Propagation>();
    send_sync_static::<Isolation>();
    send_sync_static::<Outcome>();
    send_sync_static::<RollbackCause>();
    send_sync_static::<PoolStatus>();
    send_sync_static::<testing::MockDataSource>();
    // Captured hooks are run once, by their owner: `Send`, not `Sync` (a hook is an `FnOnce`).
    fn send_static<T: Send + 'static>() {}
    send_static::<testing::CapturedHooks>();
    let named: DataSourceRef<'_> = data_source("default");
    send(&named);
    sync(&named);
}

#[test]
fn a_connection_guard_is_send_and_so_is_asking_for_one() {
    fn guard_is_send<DB: sqlx::Database>()
    where
        ConnectionGuard<DB>: Send,
    {
    }
    guard_is_send::<sqlx::Postgres>();
    guard_is_send::<sqlx::MySql>();
    guard_is_send::<sqlx::Sqlite>();
    send(&connection::<sqlx::Postgres>());
    send(&data_source("audit").connection::<sqlx::Sqlite>());
}

#[test]
fn a_scope_is_send_exactly_when_its_body_and_output_are() {
    send(&Transactional::new().run(body_ok()));
    send(
        &Transactional::new()
            .propagation(Propagation::Nested)
            .run_with_no_rollback_for(|_: &Error| false, body_ok()),
    );
    send(&Transactional::new().retry(2).run(body_ok));
    assert_not_send!(Transactional::new().run(body_with_rc()));
    assert_not_send!(Transactional::new().retry(2).run(body_with_rc));
    // The output crosses the end (which may finish on a task of its own): it must be `Send`.
    assert_not_send!(Transactional::new().run(async { Ok::<_, Error>(Rc::new(1)) }));
}

#[test]
fn hook_registration_and_test_support_futures_are_send() {
    send(&transactional_runtime::after_commit(|| async {}));
    send(&transactional_runtime::before_commit(|| async {
        Ok::<_, Error>(())
    }));
    send(&transactional_runtime::after_completion(
        |_: Outcome| async {},
    ));
    send(&testing::rollback_after(body_ok()));
    send(&testing::mocked(body_ok()));
    send(&testing::capture_after_commit(body_ok()));
    assert_not_send!(testing::rollback_after(body_with_rc()));
}

#[cfg(feature = "axum")]
#[test]
fn the_web_layer_and_its_futures_are_send() {
    use std::convert::Infallible;
    use std::future::Ready;
    use std::task::{Context, Poll};

    use tower_service::Service;
    use transactional_runtime::web::{TransactionLayer, TransactionService};

    #[derive(Clone)]
    struct Handler;
    impl Service<http::Request<axum::body::Body>> for Handler {
        type Response = http::Response<axum::body::Body>;
        type Error = Infallible;
        type Future = Ready<std::result::Result<Self::Response, Infallible>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::result::Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: http::Request<axum::body::Body>) -> Self::Future {
            std::future::ready(Ok(http::Response::new(axum::body::Body::empty())))
        }
    }

    send_sync_static::<TransactionLayer>();
    let mut service: TransactionService<Handler> =
        tower_layer::Layer::layer(&TransactionLayer::new(), Handler);
    send(&service);
    let response = service.call(http::Request::new(axum::body::Body::empty()));
    send(&response);
}
