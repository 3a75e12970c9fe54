//! The start of a scope: decide what it does with the current transaction (begin, join,
//! nest, suspend, run without, refuse) and build the context its body runs in. Nothing is sent
//! to the database here: BEGIN and SAVEPOINT wait for the first use of the connection.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::FutureExt;
use tokio::time::{Instant, Sleep};
use tracing::Span;

use super::attempt::AttemptState;
use crate::context::{Context, Mode};
use crate::data_source::{Backend, DataSource};
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

impl What {
    fn frame(&self) -> Option<&Arc<Frame>> {
        match self {
            What::Tx { frame, .. } => Some(frame),
            _ => None,
        }
    }
}

/// What the start decided: what the scope does, and where.
struct Decided {
    what: What,
    /// The data source the body's context binds, none when mocked.
    data_source: Option<Arc<str>>,
    /// The scope's own deadline.
    own_deadline: Option<Instant>,
    suspension: Option<Counted>,
}

impl Running {
    /// Decides, and builds the body's context. Fails (without running the body) on invalid
    /// options, an unknown data source, MANDATORY without and NEVER with a transaction.
    pub(crate) fn start(
        options: &TxOptions,
        attempt: Option<AttemptState>,
    ) -> Result<Running, Error> {
        let started = Instant::now();
        let span = trace::scope_span(options);
        if let Some(attempt) = &attempt {
            span.record("attempt", attempt.number);
        }
        let outer = Context::current();
        let decided = decide_scope(options, &outer, attempt.is_some(), &span).inspect_err(|error| {
            tracing::warn!(target: trace::TARGET, parent: &span, %error, "the scope did not start");
        })?;
        let body_ctx = match &decided.data_source {
            Some(name) => {
                outer.for_scope(name, decided.what.frame().cloned(), decided.own_deadline)
            }
            None => outer.clone(),
        };
        Ok(Running {
            options: options.clone(),
            outer,
            body_ctx,
            what: decided.what,
            deadline: decided
                .own_deadline
                .map(|at| (at, Box::pin(tokio::time::sleep_until(at)))),
            span,
            started,
            detail: None,
            failure: None,
            attempt,
            _suspension: decided.suspension,
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
        self.what.frame()
    }

    /// Stops a statement of this scope that may be running, before its body is dropped: at
    /// its deadline, or (for a scope that began a transaction or a savepoint) when it is
    /// dropped.
    pub(super) fn interrupt(&self, timed_out: bool) {
        let Some(frame) = self.frame() else {
            return;
        };
        frame.tx().cut(frame);
        if !timed_out && frame.role == Role::Participant {
            // A joined scope dropped half-way: its statement finishes, the owner decides.
            return;
        }
        frame.tx().interrupt(frame);
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

/// What the scope does, in three steps: where it runs ([`Place`]: the data source, its
/// deadline, the transaction current there), what propagation makes of that ([`Choice`]), and
/// the frame it gets ([`Place::build`]).
fn decide_scope(
    options: &TxOptions,
    outer: &Context,
    retried: bool,
    span: &Span,
) -> Result<Decided, Error> {
    options.validate()?;
    if let Mode::Mocked(_) = outer.mode() {
        span.record("action", tracing::field::display("mocked"));
        return Ok(Decided {
            what: What::Mocked,
            data_source: None,
            own_deadline: None,
            suspension: None,
        });
    }
    let place = Place::resolve(outer, options)?;
    let choice = Choice::of(options, outer, &place, retried)?;
    let suspension = place.suspension(choice.decision);
    let what = place.build(options, choice, span)?;
    if let Some(frame) = what.frame() {
        trace::record_tx(span, frame.tx().id);
        if place.data_source.backend == Backend::Recording {
            // The recording mock answers at once; a lease is given straight back.
            let _ = frame.tx().lend(frame).now_or_never();
        }
    }
    Ok(Decided {
        what,
        data_source: Some(place.data_source.name.clone()),
        own_deadline: place.own_deadline,
        suspension,
    })
}

/// Where a scope runs: its data source, its deadlines, and the transaction current there.
struct Place {
    data_source: Arc<DataSource>,
    /// The scope's own deadline.
    own_deadline: Option<Instant>,
    /// The earliest of its own and those of the scopes around it.
    deadline: Option<Instant>,
    current: Option<Arc<Frame>>,
    /// The commit position the task asks replicas to have replayed (`read_after`).
    read_after: Option<i64>,
}

/// What propagation makes of a [`Place`].
#[derive(Clone, Copy)]
struct Choice {
    decision: Decision,
    /// Under `testing::rollback_after`: a savepoint in place of the transaction the scope
    /// would begin in production.
    stands_for_commit: bool,
}

impl Place {
    fn resolve(outer: &Context, options: &TxOptions) -> Result<Place, Error> {
        let data_source = outer.data_source(&options.data_source)?;
        let own_deadline = options
            .timeout
            .and_then(|timeout| Instant::now().checked_add(timeout));
        let deadline = match (outer.deadline(), own_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok(Place {
            data_source,
            own_deadline,
            deadline,
            current: outer.frame(&options.data_source).cloned(),
            read_after: outer.read_after(&options.data_source),
        })
    }

    /// Counts the transaction a scope that begins its own (or runs without one) suspends,
    /// while it holds a connection (see `status::acquire_hint`).
    fn suspension(&self, decision: Decision) -> Option<Counted> {
        let suspends = matches!(decision, Decision::Begin | Decision::RunWithout);
        self.current
            .as_ref()
            .filter(|current| suspends && current.tx().holds_connection())
            .map(|_| Counted::suspended(&self.data_source.usage))
    }

    /// The frame the scope gets (none where it runs without a transaction), with the events
    /// that say what it does.
    fn build(&self, options: &TxOptions, choice: Choice, span: &Span) -> Result<What, Error> {
        let emit = |kind| self.data_source.emit(options, span, kind);
        let suspended = self.current.is_some();
        let tx = |frame: Frame| What::Tx {
            frame: Arc::new(frame),
            suspended: false,
        };
        match (choice.decision, self.current.clone()) {
            (Decision::Refuse, _) => {
                emit(EventKind::Refused);
                Err(Error::propagation_refused(
                    options.propagation,
                    &options.data_source,
                    options.name.clone(),
                ))
            }
            (Decision::RunWithout, _) => {
                if suspended {
                    emit(EventKind::Suspended);
                }
                emit(EventKind::RanWithout);
                Ok(What::Without {
                    data_source: self.data_source.clone(),
                    suspended,
                })
            }
            (Decision::Begin, _) => {
                if suspended {
                    emit(EventKind::Suspended);
                }
                emit(EventKind::Began);
                Ok(self.begin(options))
            }
            (Decision::Join, Some(current)) => {
                check_join(options, &self.data_source, current.tx(), span)?;
                emit(EventKind::Joined);
                let level = current.level.clone();
                let role = Role::Participant;
                Ok(tx(Frame::new(
                    level,
                    role,
                    options.clone(),
                    Some(current),
                    self.deadline,
                )))
            }
            (Decision::Nest, Some(current)) => {
                if current.level.is_rollback_only() {
                    return Err(Error::RollbackOnlySavepoint {
                        scope: options.name.clone(),
                    });
                }
                let frame = self.nest(options, current, choice.stands_for_commit);
                emit(EventKind::Nested {
                    savepoint: frame.level.savepoint.clone().unwrap_or_default(),
                });
                Ok(tx(frame))
            }
            (Decision::Join | Decision::Nest, None) => {
                unreachable!("decide() joins or nests only an existing transaction")
            }
        }
    }
}

impl Place {
    /// A transaction of the scope's own.
    fn begin(&self, options: &TxOptions) -> What {
        let suspended = self.current.is_some();
        let tx = Transaction::new(self.data_source.clone(), options.clone(), suspended)
            .reading_after(self.read_after);
        let level = Arc::new(Level::root(Arc::new(tx)));
        let frame = Frame::new(level, Role::Owner, options.clone(), None, self.deadline);
        What::Tx {
            frame: Arc::new(frame),
            suspended,
        }
    }

    /// A savepoint of `current`'s transaction.
    fn nest(&self, options: &TxOptions, current: Arc<Frame>, stands_for_commit: bool) -> Frame {
        let level = Arc::new(Level::savepoint(current.level.clone()));
        let role = Role::Savepoint;
        let mut frame = Frame::new(level, role, options.clone(), Some(current), self.deadline);
        frame.stands_for_commit = stands_for_commit;
        frame
    }
}

impl Choice {
    fn of(
        options: &TxOptions,
        outer: &Context,
        place: &Place,
        retried: bool,
    ) -> Result<Choice, Error> {
        let mut decision = decide(options.propagation, place.current.is_some());
        let stands_for_commit = decision == Decision::Join
            && place
                .current
                .as_ref()
                .is_some_and(|f| outer.is_test_root(f));
        if stands_for_commit {
            // Inside `testing::rollback_after`, a scope that would begin a transaction of its
            // own in production gets a savepoint, so its failure undoes only its own work.
            decision = Decision::Nest;
        }
        // Under `testing::rollback_after`, a scope that would begin its own transaction in
        // production is retried as it would be there, each attempt a savepoint.
        if retried && decision != Decision::Begin && !stands_for_commit {
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
        Ok(Choice {
            decision,
            stands_for_commit,
        })
    }
}
