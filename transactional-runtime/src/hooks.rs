//! Transaction hooks: code that runs before commit, after commit, after rollback and after
//! completion of the current transaction.
//!
//! Rules (docs/SEMANTICS.md, "Hooks"):
//! - A hook attaches to the transaction current for its data source when it is registered; hooks
//!   of joined scopes run when the owning transaction completes.
//! - Hooks registered inside a NESTED scope are kept if its savepoint is released and
//!   **discarded** if it is rolled back.
//! - REQUIRES_NEW and NOT_SUPPORTED scopes suspend the outer transaction's hooks; hooks of a
//!   REQUIRES_NEW transaction run when it completes, before the outer scope resumes.
//! - After-commit, after-rollback and after-completion hooks run once the transaction is over
//!   and its connection is back in the pool, with no transaction current on that data source:
//!   a REQUIRED scope called from one begins a new transaction.
//! - Outside any transaction, `after_commit` and `after_completion` hooks run at once (the work
//!   around them autocommits), `before_commit` runs at once, and `after_rollback` never runs.
//! - Order: before-commit hooks in registration order; then after-commit (or after-rollback)
//!   hooks in registration order; then after-completion hooks in registration order. Each runs
//!   exactly once. A before-commit hook registered by a before-commit hook runs in the same pass;
//!   an after-* hook registered while after-* hooks run finds no transaction and runs at once.
//! - A failing before-commit hook rolls the transaction back and the scope returns
//!   [`Error::BeforeCommit`]; the later before-commit hooks do not run. A failing or panicking
//!   after-* hook is logged with `tracing` at error level and changes nothing else.

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Mutex;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use crate::error::{BoxError, Error};

/// How a transaction ended, as told to after-completion hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The commit succeeded on the server.
    Committed,
    /// The transaction was rolled back.
    RolledBack,
    /// It may or may not have been committed: the connection failed during COMMIT, or the
    /// database ended the transaction by itself in a way it cannot be asked about (MySQL's
    /// implicit commit before DDL looks like its rollback of a deadlock; see
    /// [`Error::EndedUnderneath`]).
    Unknown,
}

/// Why a transaction was rolled back, as told to after-rollback hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RollbackCause {
    /// The body returned `Err`.
    Error,
    /// The body panicked.
    Panic,
    /// The scope's future was dropped before it finished.
    Cancelled,
    /// The scope ran past its timeout.
    Timeout,
    /// The owning scope called `set_rollback_only()`.
    RollbackOnly,
    /// A joined scope failed or marked the transaction rollback-only, and the owner returned
    /// `Ok`: the owner gets [`Error::UnexpectedRollback`].
    UnexpectedRollback,
    /// A before-commit hook failed.
    BeforeCommitFailed,
    /// COMMIT failed on the server, which rolled the transaction back.
    CommitFailed,
    /// The database had already rolled the transaction back (or aborted it) when its scope
    /// ended: on PostgreSQL a statement inside it failed, on MySQL a deadlock, on SQLite an
    /// `INSERT OR ROLLBACK` or an interrupted write.
    Aborted,
    /// A connection guard outlived the scope.
    GuardOutlivedScope,
}

impl fmt::Display for RollbackCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RollbackCause::Error => "the body returned an error",
            RollbackCause::Panic => "the body panicked",
            RollbackCause::Cancelled => "the scope was cancelled",
            RollbackCause::Timeout => "the scope timed out",
            RollbackCause::RollbackOnly => "set_rollback_only() was called",
            RollbackCause::UnexpectedRollback => "a joined scope marked it rollback-only",
            RollbackCause::BeforeCommitFailed => "a before-commit hook failed",
            RollbackCause::CommitFailed => "COMMIT failed",
            RollbackCause::Aborted => "the database had already rolled it back",
            RollbackCause::GuardOutlivedScope => "a connection guard outlived the scope",
        })
    }
}

/// What a hook may return: `()` or a `Result` whose error is logged.
pub trait HookResult: Send + 'static {
    /// The error to log, if any.
    fn into_error(self) -> Option<String>;
}

impl HookResult for () {
    fn into_error(self) -> Option<String> {
        None
    }
}

impl<E: fmt::Display + Send + 'static> HookResult for Result<(), E> {
    fn into_error(self) -> Option<String> {
        self.err().map(|e| e.to_string())
    }
}

type After = BoxFuture<'static, Option<String>>;

pub(crate) enum Hook {
    BeforeCommit(Box<dyn FnOnce() -> BoxFuture<'static, Result<(), BoxError>> + Send>),
    AfterCommit(Box<dyn FnOnce() -> After + Send>),
    AfterRollback(Box<dyn FnOnce(RollbackCause) -> After + Send>),
    AfterCompletion(Box<dyn FnOnce(Outcome) -> After + Send>),
}

impl Hook {
    pub(crate) fn before_commit<F, Fut, E>(f: F) -> Hook
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        Hook::BeforeCommit(Box::new(move || {
            Box::pin(f().map(|r| r.map_err(Into::into)))
        }))
    }

    pub(crate) fn after_commit<F, Fut>(f: F) -> Hook
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: HookResult,
    {
        Hook::AfterCommit(Box::new(move || Box::pin(f().map(HookResult::into_error))))
    }

    /// An after-commit hook that runs on a task of its own: the scope returns without waiting
    /// for it. Its failure or panic is logged, under the span current when it was spawned.
    pub(crate) fn after_commit_detached<F, Fut>(f: F) -> Hook
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: HookResult,
    {
        Hook::AfterCommit(Box::new(move || {
            Box::pin(async move {
                let make = move || -> After { Box::pin(f().map(HookResult::into_error)) };
                let logged = run_made(Box::new(make), "after_commit_detached", "detached");
                tokio::spawn(tracing::Instrument::in_current_span(logged));
                None
            })
        }))
    }

    pub(crate) fn after_rollback<F, Fut>(f: F) -> Hook
    where
        F: FnOnce(RollbackCause) -> Fut + Send + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: HookResult,
    {
        Hook::AfterRollback(Box::new(move |c| {
            Box::pin(f(c).map(HookResult::into_error))
        }))
    }

    pub(crate) fn after_completion<F, Fut>(f: F) -> Hook
    where
        F: FnOnce(Outcome) -> Fut + Send + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: HookResult,
    {
        Hook::AfterCompletion(Box::new(move |o| {
            Box::pin(f(o).map(HookResult::into_error))
        }))
    }

    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Hook::BeforeCommit(_) => "before_commit",
            Hook::AfterCommit(_) => "after_commit",
            Hook::AfterRollback(_) => "after_rollback",
            Hook::AfterCompletion(_) => "after_completion",
        }
    }
}

/// The hooks of one transaction level, in registration order.
#[derive(Default)]
pub(crate) struct HookList {
    hooks: Mutex<Vec<Hook>>,
}

impl HookList {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Hook>> {
        self.hooks.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn push(&self, hook: Hook) {
        self.lock().push(hook);
    }

    /// Moves every hook to `parent` (a savepoint was released into it).
    pub(crate) fn move_into(&self, parent: &HookList) {
        let hooks = std::mem::take(&mut *self.lock());
        parent.lock().extend(hooks);
    }

    pub(crate) fn take(&self) -> Vec<Hook> {
        std::mem::take(&mut *self.lock())
    }

    /// Takes the after-commit hooks out, leaving the others.
    pub(crate) fn take_after_commit(&self) -> Vec<Hook> {
        let mut hooks = self.lock();
        let (after_commit, rest) = std::mem::take(&mut *hooks)
            .into_iter()
            .partition(|hook| matches!(hook, Hook::AfterCommit(_)));
        *hooks = rest;
        after_commit
    }

    fn take_first_before_commit(&self) -> Option<Hook> {
        let mut hooks = self.lock();
        let at = hooks
            .iter()
            .position(|h| matches!(h, Hook::BeforeCommit(_)))?;
        Some(hooks.remove(at))
    }

    /// Runs the before-commit hooks in order, including any they register; stops at the first
    /// failure.
    pub(crate) async fn run_before_commit(&self) -> Result<(), Error> {
        while let Some(hook) = self.take_first_before_commit() {
            let Hook::BeforeCommit(f) = hook else {
                unreachable!()
            };
            match AssertUnwindSafe(f()).catch_unwind().await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(Error::BeforeCommit(e)),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        Ok(())
    }
}

/// How a finished transaction ended, for running its after-* hooks.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ending {
    Committed,
    RolledBack(RollbackCause),
    Unknown,
}

/// Runs the after-* hooks of a finished transaction. The caller makes sure no transaction is
/// current on the data source and the connection is back in the pool.
pub(crate) async fn run_after(
    hooks: Vec<Hook>,
    ending: Ending,
    scope: &str,
    ran: &(dyn Fn(&'static str) + Sync),
) {
    let outcome = match ending {
        Ending::Committed => Outcome::Committed,
        Ending::RolledBack(_) => Outcome::RolledBack,
        Ending::Unknown => Outcome::Unknown,
    };
    let mut completion = Vec::new();
    for hook in hooks {
        let kind = hook.kind();
        let make: Box<dyn FnOnce() -> After + Send> = match (hook, ending) {
            (Hook::AfterCommit(f), Ending::Committed) => f,
            (Hook::AfterRollback(f), Ending::RolledBack(cause)) => Box::new(move || f(cause)),
            (Hook::AfterCompletion(f), _) => {
                completion.push(f);
                continue;
            }
            _ => continue,
        };
        ran(kind);
        run_made(make, kind, scope).await;
    }
    for f in completion {
        ran("after_completion");
        run_made(Box::new(move || f(outcome)), "after_completion", scope).await;
    }
}

/// Makes a hook's future and runs it: a panic of the hook's closure (before it returns its
/// future) is the same to the rules as one of the future, logged like it.
async fn run_made(make: Box<dyn FnOnce() -> After + Send + '_>, kind: &'static str, scope: &str) {
    match std::panic::catch_unwind(AssertUnwindSafe(make)) {
        Ok(run) => run_logged(run, kind, scope).await,
        Err(panic) => log_panic(&*panic, kind, scope),
    }
}

async fn run_logged(run: After, kind: &'static str, scope: &str) {
    match AssertUnwindSafe(run).catch_unwind().await {
        Ok(None) => {}
        Ok(Some(error)) => {
            tracing::error!(target: crate::TARGET, scope, hook = kind, %error, "transaction hook failed");
        }
        Err(panic) => log_panic(&*panic, kind, scope),
    }
}

fn log_panic(panic: &(dyn std::any::Any + Send), kind: &'static str, scope: &str) {
    let message = panic_message(panic);
    tracing::error!(target: crate::TARGET, scope, hook = kind, panic = %message, "transaction hook panicked");
}

/// The message a panic was raised with.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}
