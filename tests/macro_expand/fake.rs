//! The stand-in for the `transactional` crate's builder API: the real builder's signatures
//! (and so the same type inference), recording the calls it gets.

use super::LOG;
use std::future::Future;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    Required,
    Supports,
    Mandatory,
    RequiresNew,
    NotSupported,
    Never,
    Nested,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    Default,
    ReadUncommitted,
    ReadCommitted,
    RepeatableRead,
    Serializable,
}

/// Never built: only its `From` impl matters.
#[allow(dead_code)]
#[derive(Debug)]
pub struct Error;

pub struct Transactional(());

fn record(call: String) {
    LOG.with(|log| log.borrow_mut().push(call));
}

#[allow(clippy::new_without_default)]
impl Transactional {
    pub fn new() -> Self {
        record("new".into());
        Transactional(())
    }
    pub fn name(self, name: &'static str) -> Self {
        record(format!("name({name})"));
        self
    }
    pub fn propagation(self, p: Propagation) -> Self {
        record(format!("propagation({p:?})"));
        self
    }
    pub fn isolation(self, i: Isolation) -> Self {
        record(format!("isolation({i:?})"));
        self
    }
    pub fn read_only(self, read_only: bool) -> Self {
        record(format!("read_only({read_only})"));
        self
    }
    pub fn timeout(self, timeout: Duration) -> Self {
        record(format!("timeout({timeout:?})"));
        self
    }
    pub fn data_source(self, name: &'static str) -> Self {
        record(format!("data_source({name})"));
        self
    }
    pub async fn run<F, T, E>(self, body: F) -> Result<T, E>
    where
        F: Future<Output = Result<T, E>>,
        E: From<Error>,
    {
        record("run".into());
        let out = body.await;
        record(if out.is_ok() { "ok" } else { "err" }.into());
        out
    }
    pub async fn run_with_no_rollback_for<F, T, E, P>(self, commit_on: P, body: F) -> Result<T, E>
    where
        F: Future<Output = Result<T, E>>,
        E: From<Error>,
        P: Fn(&E) -> bool,
    {
        record("run_with_no_rollback_for".into());
        let out = body.await;
        match &out {
            Ok(_) => record("ok".into()),
            Err(e) => record(format!("err(commit_on = {})", commit_on(e))),
        }
        out
    }
}

/// What the expansion calls; the real ones differ only in how they hold the body.
pub mod __private {
    use super::{record, Error, Transactional};
    use std::future::Future;

    // How the expansion reads an error: the runtime's own.
    pub use transactional::__private::{
        Facts, Inspect, ViaDisplay, ViaDynError, ViaError, ViaNothing, ViaRetryable,
        ViaSendSyncDynError,
    };

    pub type Describe<R> = fn(&R, bool) -> Option<Facts>;

    /// Records how the expansion read an error: its words, and the database's error in it.
    async fn described<R>(describe: Option<Describe<R>>, out: impl Future<Output = R>) -> R {
        let out = out.await;
        if let Some(facts) = describe.and_then(|describe| describe(&out, true)) {
            if let Some(text) = facts.text() {
                record(format!("described({text})"));
            }
            if let Some(database) = facts.database_error() {
                record(format!("database({database})"));
            }
        }
        out
    }

    /// What the attribute says besides its options and body.
    pub struct Spec<R, P> {
        pub rule: Option<P>,
        pub describe: Option<Describe<R>>,
        pub classify: Option<fn(&R) -> bool>,
    }

    /// A body the expansion found surely `Send`: it must be.
    pub struct SendBody<F>(pub F);

    /// A body whose `Send`-ness is unknown.
    pub struct LocalBody<F>(pub F);

    pub trait Body {
        type Future: Future;
        fn into_future(self) -> Self::Future;
    }

    impl<F: Future + Send> Body for SendBody<F> {
        type Future = F;
        fn into_future(self) -> F {
            self.0
        }
    }

    impl<F: Future> Body for LocalBody<F> {
        type Future = F;
        fn into_future(self) -> F {
            self.0
        }
    }

    pub fn scope<B, T, E, P>(
        tx: Transactional,
        body: B,
        spec: Spec<Result<T, E>, P>,
    ) -> impl Future<Output = Result<T, E>>
    where
        B: Body,
        B::Future: Future<Output = Result<T, E>>,
        E: From<Error>,
        P: Fn(&E) -> bool,
    {
        assert!(spec.classify.is_none(), "a classifier only with `retry`");
        let body = body.into_future();
        async move {
            match spec.rule {
                Some(rule) => {
                    described(spec.describe, tx.run_with_no_rollback_for(rule, body)).await
                }
                None => described(spec.describe, tx.run(body)).await,
            }
        }
    }
}
