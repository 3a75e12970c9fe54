//! One run of a transactional scope: decide, begin/join/nest/suspend, run the body, then
//! commit, roll back or mark, and run the hooks.

use std::any::Any;
use std::future::Future;
use std::panic::{resume_unwind, AssertUnwindSafe};
use std::sync::Arc;

use futures_util::FutureExt;
use tokio::time::Instant;

use crate::conn::Control;
use crate::context::Context;
use crate::data_source::DataSource;
use crate::error::Error;
use crate::events::EventKind;
use crate::hooks::{run_after, Ending, Hook, RollbackCause};
use crate::options::{Isolation, TxOptions};
use crate::propagation::{decide, Decision};
use crate::transaction::{Frame, Level, Role, Transaction};

/// How the body ended.
enum BodyEnd<T, E> {
    Ok(T),
    Err(E),
    Panic(Box<dyn Any + Send>),
    Timeout,
}

/// What to do with a transaction or savepoint once the body ended.
enum Verdict<T, E> {
    Commit(Result<T, E>),
    Rollback(Result<T, E>, RollbackCause),
    Panic(Box<dyn Any + Send>),
}

pub(crate) async fn execute<F, T, E, P>(
    options: &TxOptions,
    rule: Option<P>,
    body: F,
) -> Result<T, E>
where
    F: Future<Output = Result<T, E>>,
    E: From<Error>,
    P: Fn(&E) -> bool,
{
    let ctx = Context::current();
    if ctx.mocked().is_some() {
        // Mocked out (testing): no data source, no transaction, just the body.
        return body.await;
    }
    let data_source = ctx.data_source(options.data_source)?;
    let current = ctx.frame(options.data_source).cloned();
    let deadline = options.timeout.map(|t| Instant::now() + t);
    let scope = Scope {
        options,
        ctx,
        data_source,
        deadline,
    };
    match (decide(options.propagation, current.is_some()), current) {
        (Decision::Refuse, _) => {
            scope.emit(EventKind::Refused);
            Err(
                Error::propagation_refused(options.propagation, options.data_source, options.name)
                    .into(),
            )
        }
        (Decision::RunWithout, suspended) => {
            scope
                .suspending(suspended.is_some(), scope.run_without(body))
                .await
        }
        (Decision::Begin, suspended) => {
            let suspended = suspended.is_some();
            scope
                .suspending(suspended, scope.begin(suspended, rule, body))
                .await
        }
        (Decision::Join, Some(outer)) => scope.join(outer, rule, body).await,
        (Decision::Nest, Some(outer)) => scope.nest(outer, rule, body).await,
        (Decision::Join | Decision::Nest, None) => {
            unreachable!("decide() joins or nests only an existing transaction")
        }
    }
}

struct Scope<'a> {
    options: &'a TxOptions,
    ctx: Context,
    data_source: Arc<DataSource>,
    deadline: Option<Instant>,
}

impl Scope<'_> {
    fn emit(&self, kind: EventKind) {
        self.data_source.emit(self.options, kind);
    }

    /// Runs `fut`, reporting the suspension and resumption of the current transaction.
    async fn suspending<F: Future>(&self, suspends: bool, fut: F) -> F::Output {
        if !suspends {
            return fut.await;
        }
        self.emit(EventKind::Suspended);
        let output = fut.await;
        self.emit(EventKind::Resumed);
        output
    }

    fn timeout_error(&self) -> Error {
        Error::Timeout {
            scope: self.options.name,
            timeout: self.options.timeout.unwrap_or_default(),
        }
    }

    /// Runs the body with `frame` current, catching its panic and enforcing the deadline.
    async fn run_body<F, T, E>(&self, frame: Option<Arc<Frame>>, body: F) -> BodyEnd<T, E>
    where
        F: Future<Output = Result<T, E>>,
    {
        let ctx = self.ctx.with_frame(&self.data_source.name, frame);
        let body = ctx.scope(AssertUnwindSafe(body).catch_unwind());
        let ended = match self.deadline {
            None => body.await,
            Some(deadline) => match tokio::time::timeout_at(deadline, body).await {
                Ok(ended) => ended,
                Err(_) => return BodyEnd::Timeout,
            },
        };
        match ended {
            Ok(Ok(value)) => BodyEnd::Ok(value),
            Ok(Err(error)) => BodyEnd::Err(error),
            Err(panic) => BodyEnd::Panic(panic),
        }
    }

    /// SUPPORTS / NOT_SUPPORTED / NEVER without a transaction: the body autocommits.
    async fn run_without<F, T, E>(&self, body: F) -> Result<T, E>
    where
        F: Future<Output = Result<T, E>>,
        E: From<Error>,
    {
        self.emit(EventKind::RanWithout);
        match self.run_body(None, body).await {
            BodyEnd::Ok(value) => Ok(value),
            BodyEnd::Err(error) => Err(error),
            BodyEnd::Panic(panic) => resume_unwind(panic),
            BodyEnd::Timeout => Err(self.timeout_error().into()),
        }
    }

    /// REQUIRED / SUPPORTS / MANDATORY inside a transaction: a failure marks it rollback-only.
    async fn join<F, T, E, P>(self, outer: Arc<Frame>, rule: Option<P>, body: F) -> Result<T, E>
    where
        F: Future<Output = Result<T, E>>,
        E: From<Error>,
        P: Fn(&E) -> bool,
    {
        self.check_join(outer.tx())?;
        self.emit(EventKind::Joined);
        let level = outer.level.clone();
        let frame = Arc::new(Frame::new(level.clone(), Role::Participant, *self.options));
        let mut mark_on_drop = MarkOnDrop(Some(level.clone()));
        let ended = self.run_body(Some(frame), body).await;
        mark_on_drop.disarm();
        match ended {
            BodyEnd::Ok(value) => Ok(value),
            BodyEnd::Err(error) => {
                if !commits(&rule, &error) {
                    level.mark_rollback_only();
                }
                Err(error)
            }
            BodyEnd::Panic(panic) => {
                level.mark_rollback_only();
                resume_unwind(panic)
            }
            BodyEnd::Timeout => {
                level.mark_rollback_only();
                Err(self.timeout_error().into())
            }
        }
    }

    /// A joining scope's isolation and read-only must fit the transaction it joins: warn, or
    /// refuse under `validate_existing_transaction`.
    fn check_join(&self, tx: &Transaction) -> Result<(), Error> {
        let mut reasons = Vec::new();
        let asked = self.options.isolation;
        if asked != Isolation::Default && asked != tx.isolation {
            reasons.push(format!(
                "it asks for isolation {asked} but the transaction runs at {}",
                tx.isolation
            ));
        }
        if !self.options.read_only && tx.read_only {
            reasons.push("it is read-write but the transaction is read-only".to_owned());
        }
        if reasons.is_empty() {
            return Ok(());
        }
        let reason = reasons.join(", and ");
        if self.data_source.settings.validate_existing_transaction {
            return Err(Error::IncompatibleTransaction {
                scope: self.options.name,
                reason,
            });
        }
        tracing::warn!(scope = self.options.name, %reason, "joining a transaction whose options differ; the transaction's own options apply");
        Ok(())
    }

    /// Begins a physical transaction (REQUIRED, REQUIRES_NEW, NESTED without one), runs the
    /// body in it, and commits or rolls back.
    async fn begin<F, T, E, P>(&self, suspended: bool, rule: Option<P>, body: F) -> Result<T, E>
    where
        F: Future<Output = Result<T, E>>,
        E: From<Error>,
        P: Fn(&E) -> bool,
    {
        let begun = self.with_deadline(self.begin_transaction(suspended)).await;
        let tx = Arc::new(begun.unwrap_or_else(|| Err(self.timeout_error()))?);
        self.emit(EventKind::Began);
        let level = Arc::new(Level::root(tx.clone()));
        let frame = Arc::new(Frame::new(level.clone(), Role::Owner, *self.options));
        let mut abandon_on_drop = AbandonOnDrop {
            level: Some(level.clone()),
            scope: self.options.name,
            ctx: self.ctx.with_frame(&self.data_source.name, None),
            committing: false,
        };
        let ended = self.run_body(Some(frame.clone()), body).await;
        let mut verdict = judge(ended, &frame, &rule, || self.timeout_error().into());

        if let Verdict::Commit(_) = verdict {
            // Before-commit hooks still see the transaction: they may write in it, or fail it.
            let ctx = self
                .ctx
                .with_frame(&self.data_source.name, Some(frame.clone()));
            // A panicking hook fails the scope like a panicking body: roll back, then resume.
            let ran = AssertUnwindSafe(ctx.scope(level.hooks.run_before_commit()))
                .catch_unwind()
                .await;
            if let Err(panic) = ran {
                verdict = Verdict::Panic(panic);
            } else if let Ok(Err(error)) = ran {
                verdict = Verdict::Rollback(Err(error.into()), RollbackCause::BeforeCommitFailed);
            } else if frame.is_rollback_only() {
                let Verdict::Commit(result) = verdict else {
                    unreachable!()
                };
                verdict = judge_rollback_only(result, &frame);
            }
        }

        let name = self.options.name;
        let (result, ending) = match verdict {
            Verdict::Commit(result) => {
                // Cancelled from here on, the commit may or may not have happened.
                abandon_on_drop.committing = true;
                match end_transaction(&tx, Control::Commit, name).await {
                    Ok(()) => (result, Ending::Committed),
                    Err((error, ending)) => (Err(error.into()), ending),
                }
            }
            Verdict::Rollback(result, cause) => {
                match end_transaction(&tx, Control::Rollback, name).await {
                    Err((
                        error,
                        ending @ Ending::RolledBack(RollbackCause::GuardOutlivedScope),
                    )) => (Err(error.into()), ending),
                    _ => (result, Ending::RolledBack(cause)),
                }
            }
            Verdict::Panic(panic) => {
                let _ = end_transaction(&tx, Control::Rollback, name).await;
                abandon_on_drop.disarm();
                let cause = RollbackCause::Panic;
                self.emit(EventKind::RolledBack { cause });
                self.after(&level, Ending::RolledBack(cause)).await;
                resume_unwind(panic)
            }
        };
        abandon_on_drop.disarm();
        self.emit(match ending {
            Ending::Committed => EventKind::Committed,
            Ending::RolledBack(cause) => EventKind::RolledBack { cause },
            Ending::Unknown => EventKind::CommitFailed,
        });
        self.after(&level, ending).await;
        result
    }

    async fn begin_transaction(&self, suspended: bool) -> Result<Transaction, Error> {
        let ds = &self.data_source;
        let conn = ds.source.acquire().await.map_err(|source| Error::Acquire {
            data_source: ds.name.to_string(),
            hint: if suspended && matches!(source, sqlx::Error::PoolTimedOut) {
                " (a REQUIRES_NEW scope needs a second connection while the suspended transaction holds one: give the pool more connections than concurrent nested scopes)"
            } else {
                ""
            },
            source,
        })?;
        Transaction::begin(ds.clone(), self.options, conn).await
    }

    async fn with_deadline<F: Future>(&self, fut: F) -> Option<F::Output> {
        match self.deadline {
            None => Some(fut.await),
            Some(deadline) => tokio::time::timeout_at(deadline, fut).await.ok(),
        }
    }

    /// Runs the after-* hooks of a finished transaction, with no transaction current.
    async fn after(&self, level: &Level, ending: Ending) {
        let hooks = level.hooks.take();
        if hooks.is_empty() {
            return;
        }
        let ctx = self.ctx.with_frame(&self.data_source.name, None);
        let ran = |hook| self.emit(EventKind::HookRan { hook });
        ctx.scope(run_after(hooks, ending, self.options.name, &ran))
            .await;
    }

    /// NESTED inside a transaction: a savepoint that the body's failure rolls back to.
    async fn nest<F, T, E, P>(self, outer: Arc<Frame>, rule: Option<P>, body: F) -> Result<T, E>
    where
        F: Future<Output = Result<T, E>>,
        E: From<Error>,
        P: Fn(&E) -> bool,
    {
        if outer.level.is_rollback_only() {
            return Err(Error::RollbackOnlySavepoint {
                scope: self.options.name,
            }
            .into());
        }
        let tx = outer.tx().clone();
        let name = tx.next_savepoint_name();
        tx.savepoint(Control::Savepoint(&name)).await?;
        self.emit(EventKind::Nested {
            savepoint: name.clone(),
        });
        let level = Arc::new(Level::savepoint(outer.level.clone()));
        let frame = Arc::new(Frame::new(level.clone(), Role::Savepoint, *self.options));
        let mut abandon_on_drop = AbandonSavepointOnDrop(Some((tx.clone(), name.clone())));
        let ended = self.run_body(Some(frame.clone()), body).await;
        abandon_on_drop.disarm();
        let verdict = judge(ended, &frame, &rule, || self.timeout_error().into());
        if let Verdict::Commit(result) = verdict {
            return match tx.savepoint(Control::ReleaseSavepoint(&name)).await {
                Ok(()) => {
                    self.emit(EventKind::SavepointReleased { savepoint: name });
                    level.hooks.move_into(&outer.level.hooks);
                    result
                }
                Err(error) => {
                    outer.level.mark_rollback_only();
                    Err(error.into())
                }
            };
        }
        // Roll back to the savepoint; its hooks (and those of deeper savepoints) are discarded.
        drop(level.hooks.take());
        let rolled_back = async {
            tx.savepoint(Control::RollbackToSavepoint(&name)).await?;
            tx.savepoint(Control::ReleaseSavepoint(&name)).await
        }
        .await;
        self.emit(EventKind::RolledBackToSavepoint {
            savepoint: name.clone(),
        });
        if let Err(error) = &rolled_back {
            tracing::error!(scope = self.options.name, %error, "rolling back to a savepoint failed; the whole transaction is marked rollback-only");
            outer.level.mark_rollback_only();
        }
        match verdict {
            Verdict::Panic(panic) => resume_unwind(panic),
            Verdict::Rollback(result, _) => match (result, rolled_back) {
                (Ok(_), Err(error)) => Err(error.into()),
                (result, _) => result,
            },
            Verdict::Commit(_) => unreachable!("handled above"),
        }
    }
}

/// Whether `rule` says this error commits (Spring's `noRollbackFor`).
fn commits<E, P: Fn(&E) -> bool>(rule: &Option<P>, error: &E) -> bool {
    rule.as_ref().is_some_and(|commits| commits(error))
}

/// DESIGN §3 for a scope that owns a transaction or savepoint.
fn judge<T, E, P>(
    ended: BodyEnd<T, E>,
    frame: &Frame,
    rule: &Option<P>,
    timeout: impl FnOnce() -> E,
) -> Verdict<T, E>
where
    E: From<Error>,
    P: Fn(&E) -> bool,
{
    match ended {
        BodyEnd::Ok(value) if frame.is_rollback_only() => judge_rollback_only(Ok(value), frame),
        BodyEnd::Ok(value) => Verdict::Commit(Ok(value)),
        BodyEnd::Err(error) if commits(rule, &error) && !frame.is_rollback_only() => {
            Verdict::Commit(Err(error))
        }
        BodyEnd::Err(error) => Verdict::Rollback(Err(error), RollbackCause::Error),
        BodyEnd::Panic(panic) => Verdict::Panic(panic),
        BodyEnd::Timeout => Verdict::Rollback(Err(timeout()), RollbackCause::Timeout),
    }
}

/// The owner asked for the rollback itself: its `Ok` stands. A participant marked it: the
/// caller must not believe the work was saved.
fn judge_rollback_only<T, E: From<Error>>(result: Result<T, E>, frame: &Frame) -> Verdict<T, E> {
    if frame.rollback_requested() {
        Verdict::Rollback(result, RollbackCause::RollbackOnly)
    } else {
        Verdict::Rollback(
            Err(Error::UnexpectedRollback.into()),
            RollbackCause::UnexpectedRollback,
        )
    }
}

/// Commits or rolls back a transaction whose body has ended.
async fn end_transaction(
    tx: &Transaction,
    control: Control<'_>,
    scope: &'static str,
) -> Result<(), (Error, Ending)> {
    let slot = tx.take_for_end().await;
    let mut slot = match slot {
        Ok(Some(slot)) => slot,
        Ok(None) => {
            return Err((
                Error::GuardOutlivedScope { scope },
                Ending::RolledBack(RollbackCause::GuardOutlivedScope),
            ))
        }
        Err(error) => {
            // Rolling back an abandoned savepoint failed: the transaction cannot commit.
            return Err((error, Ending::RolledBack(RollbackCause::CommitFailed)));
        }
    };
    let ended = slot.end(control).await;
    slot.release();
    match (ended, control) {
        (Ok(()), _) => Ok(()),
        (Err(source), Control::Commit) => {
            let outcome_unknown = !matches!(source, sqlx::Error::Database(_));
            let ending = if outcome_unknown {
                Ending::Unknown
            } else {
                Ending::RolledBack(RollbackCause::CommitFailed)
            };
            Err((
                Error::Commit {
                    outcome_unknown,
                    source,
                },
                ending,
            ))
        }
        (Err(error), _) => {
            // The connection has been closed, so the server rolls back what was left.
            tracing::error!(%error, "ROLLBACK failed; the connection was closed instead");
            Ok(())
        }
    }
}

/// Marks a joined transaction rollback-only if the participant is dropped before it ends.
struct MarkOnDrop(Option<Arc<Level>>);

impl MarkOnDrop {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for MarkOnDrop {
    fn drop(&mut self) {
        if let Some(level) = self.0.take() {
            level.mark_rollback_only();
        }
    }
}

/// Rolls back a transaction whose owning scope was dropped before it ended, then runs its
/// hooks in the scope's context (with no transaction current), as the other endings do.
struct AbandonOnDrop {
    level: Option<Arc<Level>>,
    scope: &'static str,
    ctx: Context,
    /// COMMIT was sent: if dropped now, the outcome is unknown.
    committing: bool,
}

impl AbandonOnDrop {
    fn disarm(&mut self) {
        self.level = None;
    }
}

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        let Some(level) = self.level.take() else {
            return;
        };
        let abandoned = level.tx.abandon();
        let hooks = level.hooks.take();
        let (scope, ctx) = (self.scope, self.ctx.clone());
        let ending = if self.committing {
            Ending::Unknown
        } else {
            Ending::RolledBack(RollbackCause::Cancelled)
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Some(abandoned) = abandoned {
                        abandoned.clean().await;
                    }
                    ctx.scope(run_after(hooks, ending, scope, &|_| {})).await;
                });
            }
            Err(_) => {
                if let Some(abandoned) = abandoned {
                    abandoned.dispose();
                }
            }
        }
    }
}

/// Rolls back to a savepoint whose NESTED scope was dropped, before the transaction's next
/// statement; its hooks go with it.
struct AbandonSavepointOnDrop(Option<(Arc<Transaction>, String)>);

impl AbandonSavepointOnDrop {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for AbandonSavepointOnDrop {
    fn drop(&mut self) {
        if let Some((tx, name)) = self.0.take() {
            tx.abandon_savepoint(name);
        }
    }
}

/// Registers `hook` on the transaction current for `data_source`. Returns the hook with the
/// ending to run it with at once when there is no transaction (or transactions are mocked
/// out); `None` when the transaction took it, or a `testing::capture_after_commit` did.
pub(crate) fn register_hook(data_source: &str, hook: Hook) -> Option<(Hook, Ending)> {
    let ctx = Context::current();
    if let (Some(sink), Hook::AfterCommit(_)) = (ctx.capture(), &hook) {
        sink.lock().unwrap_or_else(|e| e.into_inner()).push(hook);
        return None;
    }
    if let Some(outcome) = ctx.mocked() {
        return Some((hook, outcome.ending()));
    }
    match ctx.frame(data_source) {
        Some(frame) if !frame.tx().is_finished() => {
            let kind = hook.kind();
            frame.level.hooks.push(hook);
            let tx = frame.tx();
            tx.data_source
                .emit(&frame.options, EventKind::HookRegistered { hook: kind });
            None
        }
        _ => Some((hook, Ending::Committed)),
    }
}
