//! The start of a scope: decide what it does with the current transaction (begin, join,
//! nest, suspend, run without, refuse) and build the context its body runs in. Nothing is sent
//! to the database here: BEGIN and SAVEPOINT wait for the first use of the connection.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::time::{Instant, Sleep};
use tracing::Span;

use super::attempt::AttemptState;
use crate::context::{Context, Mode};
use crate::data_source::DataSource;
use crate::error::Error;
use crate::events::EventKind;
use crate::inspect::DatabaseFailure;
use crate::options::{Isolation, TxOptions};
use crate::propagation::{decide, Decision};
use crate::status::Counted;
use crate::trace;
use crate::transaction::{Frame, Level, Role, Transaction};

/// A scope whose body runs.
pub(crate) struct Running {
    pub(super) options: TxOptions,
    /// The context the scope started in (its caller's).
    pub(super) outer: Context,
    /// The context its body runs in.
    pub(super) body_ctx: Context,
    pub(super) what: What,
    /// The scope's own deadline, and the timer that enforces it.
    pub(super) deadline: Option<(Instant, Pin<Box<Sleep>>)>,
    /// The scope's span (see `trace`), entered while its body is polled.
    pub(super) span: Span,
    pub(super) started: Instant,
    /// The body's error, as text, for the log line of the rollback it causes.
    pub(super) detail: Option<String>,
    /// The database's error in the body's error, if any.
    pub(super) failure: Option<DatabaseFailure>,
    /// One attempt of a retried scope.
    pub(super) attempt: Option<AttemptState>,
    /// Counts the transaction this scope suspended while it holds a connection (see
    /// `status::acquire_hint`).
    _suspension: Option<Counted>,
}

pub(super) enum What {
    /// Transactions are mocked out: the body just runs.
    Mocked,
    /// No transaction (SUPPORTS, NOT_SUPPORTED, NEVER): the body's queries autocommit.
    Without {
        data_source: Arc<DataSource>,
        suspended: bool,
    },
    /// The body runs in a transaction: one it began, a savepoint it nests, or one it joined.
    Tx { frame: Arc<Frame>, suspended: bool },
}

impl Running {
    /// Decides, and builds the body's context. Fails (without running the body) on invalid
    /// options, an unknown data source, MANDATORY without and NEVER with a transaction.
    pub(crate) fn start(
        options: &TxOptions,
        test_root: bool,
        attempt: Option<AttemptState>,
    ) -> Result<Running, Error> {
        let started = Instant::now();
        let span = trace::scope_span(options);
        if let Some(attempt) = &attempt {
            span.record("attempt", attempt.number);
        }
        Running::decide(options, test_root, attempt, &span, started).inspect_err(|error| {
            tracing::warn!(target: trace::TARGET, parent: &span, %error, "the scope did not start");
        })
    }

    fn decide(
        options: &TxOptions,
        test_root: bool,
        attempt: Option<AttemptState>,
        span: &Span,
        started: Instant,
    ) -> Result<Running, Error> {
        options.validate()?;
        let outer = Context::current();
        if let Mode::Mocked(_) = outer.mode() {
            span.record("action", tracing::field::display("mocked"));
            return Ok(Running {
                options: options.clone(),
                body_ctx: outer.clone(),
                outer,
                what: What::Mocked,
                deadline: None,
                span: span.clone(),
                started,
                detail: None,
                failure: None,
                attempt,
                _suspension: None,
            });
        }
        let data_source = outer.data_source(&options.data_source)?;
        let own_deadline = options
            .timeout
            .and_then(|timeout| Instant::now().checked_add(timeout));
        let deadline = match (outer.deadline(), own_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let current = outer.frame(&options.data_source).cloned();
        let mut decision = decide(options.propagation, current.is_some());
        let stands_for_commit =
            decision == Decision::Join && current.as_ref().is_some_and(|f| f.test_root);
        if stands_for_commit {
            // Inside `testing::rollback_after`, a scope that would begin a transaction of its
            // own in production gets a savepoint, so its failure undoes only its own work.
            decision = Decision::Nest;
        }
        // Under `testing::rollback_after`, a scope that would begin its own transaction in
        // production is retried as it would be there, each attempt a savepoint.
        if attempt.is_some() && decision != Decision::Begin && !stands_for_commit {
            return Err(Error::InvalidOptions {
                scope: options.name.clone(),
                reason: "`retry` runs the scope again, which only a scope that begins its own \
                         transaction can do: this one would join or nest in its caller's \
                         (a `web::TransactionLayer` request's, say), and running it again would \
                         repeat part of the caller's work; retry where the transaction begins \
                         (the outermost scope, or the layer: `TransactionLayer::retry`), or give \
                         this scope REQUIRES_NEW"
                    .to_owned(),
            });
        }
        let suspends = matches!(decision, Decision::Begin | Decision::RunWithout);
        let suspension = current
            .as_ref()
            .filter(|current| suspends && current.tx().holds_connection())
            .map(|_| Counted::suspended(&data_source.usage));
        let emit = |kind| data_source.emit(options, span, kind);
        let what = match (decision, current) {
            (Decision::Refuse, _) => {
                emit(EventKind::Refused);
                return Err(Error::propagation_refused(
                    options.propagation,
                    &options.data_source,
                    options.name.clone(),
                ));
            }
            (Decision::RunWithout, current) => {
                if current.is_some() {
                    emit(EventKind::Suspended);
                }
                emit(EventKind::RanWithout);
                What::Without {
                    data_source: data_source.clone(),
                    suspended: current.is_some(),
                }
            }
            (Decision::Begin, current) => {
                if current.is_some() {
                    emit(EventKind::Suspended);
                }
                emit(EventKind::Began);
                let tx = Transaction::new(data_source.clone(), options.clone(), current.is_some());
                let tx = Arc::new(tx);
                let level = Arc::new(Level::root(tx));
                let mut frame = Frame::new(level, Role::Owner, options.clone(), None, deadline);
                frame.test_root = test_root;
                What::Tx {
                    frame: Arc::new(frame),
                    suspended: current.is_some(),
                }
            }
            (Decision::Join, Some(current)) => {
                check_join(options, &data_source, current.tx(), span)?;
                emit(EventKind::Joined);
                let level = current.level.clone();
                let frame = Frame::new(
                    level,
                    Role::Participant,
                    options.clone(),
                    Some(current),
                    deadline,
                );
                What::Tx {
                    frame: Arc::new(frame),
                    suspended: false,
                }
            }
            (Decision::Nest, Some(current)) => {
                if current.level.is_rollback_only() {
                    return Err(Error::RollbackOnlySavepoint {
                        scope: options.name.clone(),
                    });
                }
                let level = Arc::new(Level::savepoint(current.level.clone()));
                emit(EventKind::Nested {
                    savepoint: level.savepoint.clone().unwrap_or_default(),
                });
                let mut frame = Frame::new(
                    level,
                    Role::Savepoint,
                    options.clone(),
                    Some(current),
                    deadline,
                );
                frame.stands_for_commit = stands_for_commit;
                What::Tx {
                    frame: Arc::new(frame),
                    suspended: false,
                }
            }
            (Decision::Join | Decision::Nest, None) => {
                unreachable!("decide() joins or nests only an existing transaction")
            }
        };
        let frame = match &what {
            What::Tx { frame, .. } => Some(frame.clone()),
            _ => None,
        };
        if let Some(frame) = &frame {
            trace::record_tx(span, frame.tx().id);
        }
        if let Some(frame) = frame
            .as_ref()
            .filter(|_| data_source.source.begins_eagerly())
        {
            // The recording mock answers at once; a lease is given straight back.
            let _ = frame.tx().lend(frame).now_or_never();
        }
        let body_ctx = outer.for_scope(&data_source.name, frame, own_deadline);
        Ok(Running {
            options: options.clone(),
            outer,
            body_ctx,
            what,
            deadline: own_deadline.map(|at| (at, Box::pin(tokio::time::sleep_until(at)))),
            span: span.clone(),
            started,
            detail: None,
            failure: None,
            attempt,
            _suspension: suspension,
        })
    }

    /// Polls the deadline's timer (out of line: the timer's poll has a large frame, and the
    /// body's poll is on the stack of every scope below).
    #[inline(never)]
    pub(super) fn deadline_passed(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        use std::future::Future;
        self.deadline
            .as_mut()
            .is_some_and(|(_, timer)| timer.as_mut().poll(cx).is_ready())
    }

    pub(super) fn frame(&self) -> Option<&Arc<Frame>> {
        match &self.what {
            What::Tx { frame, .. } => Some(frame),
            _ => None,
        }
    }

    /// Stops a statement of this scope that may be running, before its body is dropped: at
    /// its deadline, or (for a scope that began a transaction or a savepoint) when it is
    /// dropped.
    pub(super) fn interrupt(&self, timed_out: bool) -> Option<BoxFuture<'static, ()>> {
        let frame = self.frame()?;
        frame.tx().cut(frame);
        if !timed_out && frame.role == Role::Participant {
            // A joined scope dropped half-way: its statement finishes, the owner decides.
            return None;
        }
        frame.tx().interrupt(frame)
    }
}

/// A joining scope's isolation and read-only must fit the transaction it joins: warn, or
/// refuse under `validate_existing_transaction`.
fn check_join(
    options: &TxOptions,
    data_source: &DataSource,
    tx: &Transaction,
    span: &Span,
) -> Result<(), Error> {
    let mut reasons = Vec::new();
    let asked = options.isolation;
    let running = tx.options.isolation;
    if asked != Isolation::Default && asked != running {
        reasons.push(format!(
            "it asks for isolation {asked} but the transaction runs at {running}"
        ));
    }
    if !options.read_only && tx.options.read_only {
        reasons.push("it is read-write but the transaction is read-only".to_owned());
    }
    if reasons.is_empty() {
        return Ok(());
    }
    let reason = reasons.join(", and ");
    if data_source.settings.validate_existing_transaction {
        return Err(Error::IncompatibleTransaction {
            scope: options.name.clone(),
            reason,
        });
    }
    tracing::warn!(target: trace::TARGET, parent: span, %reason, "joining a transaction whose options differ; the transaction's own options apply");
    Ok(())
}
