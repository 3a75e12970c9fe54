//! Runs fns rewritten by `#[transactional]` against a recording stand-in for the runtime.
//!
//! Every fn here uses `crate = "crate::fake"`, so the expansion calls [`fake::Transactional`],
//! which has the real builder's signatures (and so the same type inference) but only records
//! the calls it gets and runs the body. That checks what the macro emits — which setters, in
//! which order, with which values, and that the body, `?`, `return` and the predicate behave —
//! without a database and without depending on the runtime's internals.

use std::cell::RefCell;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use transactional::transactional;

mod fake;

thread_local! {
    static LOG: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// Runs a future that never waits (the fake never does) and returns what the builder saw.
fn run<T>(future: impl Future<Output = T>) -> (T, Vec<String>) {
    LOG.with(|log| log.borrow_mut().clear());
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    let out = match future.as_mut().poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("the fake runtime never waits"),
    };
    (out, LOG.with(|log| log.take()))
}

#[derive(Debug, PartialEq)]
enum AppError {
    NotFound,
    Conflict(&'static str),
    Tx,
}

impl From<fake::Error> for AppError {
    fn from(_: fake::Error) -> Self {
        AppError::Tx
    }
}

impl AppError {
    fn is_not_found(&self) -> bool {
        matches!(self, AppError::NotFound)
    }
}

type AppResult<T> = Result<T, AppError>;

#[transactional(crate = "crate::fake")]
async fn plain(x: i32) -> Result<i32, AppError> {
    Ok(x * 2)
}

#[test]
fn bare_attribute_sets_only_the_name() {
    let (out, calls) = run(plain(21));
    assert_eq!(out, Ok(42));
    assert_eq!(
        calls,
        ["new", "name(macro_expand::plain)", "run", "ok"].map(String::from)
    );
}

#[transactional(
    crate = "crate::fake",
    propagation = "REQUIRES_NEW",
    isolation = "SERIALIZABLE",
    read_only,
    timeout = "250ms",
    data_source = "reporting"
)]
async fn every_option() -> AppResult<()> {
    Ok(())
}

#[test]
fn options_become_setters_in_a_fixed_order() {
    let (out, calls) = run(every_option());
    assert_eq!(out, Ok(()));
    assert_eq!(
        calls,
        [
            "new",
            "name(macro_expand::every_option)",
            "propagation(RequiresNew)",
            "isolation(Serializable)",
            "read_only(true)",
            "timeout(250ms)",
            "data_source(reporting)",
            "run",
            "ok",
        ]
        .map(String::from)
    );
}

mod spellings {
    use super::*;

    macro_rules! propagation_fns {
        ($($name:ident = $spring:literal),* $(,)?) => {$(
            #[transactional(crate = "crate::fake", propagation = $spring)]
            pub async fn $name() -> AppResult<()> {
                Ok(())
            }
        )*};
    }
    propagation_fns! {
        required = "REQUIRED",
        requires_new = "REQUIRES_NEW",
        nested = "NESTED",
        supports = "SUPPORTS",
        not_supported = "NOT_SUPPORTED",
        mandatory = "MANDATORY",
        never = "NEVER",
    }

    macro_rules! isolation_fns {
        ($($name:ident = $spring:literal),* $(,)?) => {$(
            #[transactional(crate = "crate::fake", isolation = $spring, read_only = false)]
            pub async fn $name() -> AppResult<()> {
                Ok(())
            }
        )*};
    }
    isolation_fns! {
        default = "DEFAULT",
        read_uncommitted = "READ_UNCOMMITTED",
        read_committed = "READ_COMMITTED",
        repeatable_read = "REPEATABLE_READ",
        serializable = "SERIALIZABLE",
    }
}

#[test]
fn every_spelling_reaches_its_variant() {
    use spellings::*;
    let propagation = |calls: Vec<String>| calls[2].clone();
    assert_eq!(propagation(run(required()).1), "propagation(Required)");
    assert_eq!(
        propagation(run(requires_new()).1),
        "propagation(RequiresNew)"
    );
    assert_eq!(propagation(run(nested()).1), "propagation(Nested)");
    assert_eq!(propagation(run(supports()).1), "propagation(Supports)");
    assert_eq!(
        propagation(run(not_supported()).1),
        "propagation(NotSupported)"
    );
    assert_eq!(propagation(run(mandatory()).1), "propagation(Mandatory)");
    assert_eq!(propagation(run(never()).1), "propagation(Never)");
    assert_eq!(run(never()).1[3], "run");
    assert_eq!(run(never()).1[1], "name(macro_expand::spellings::never)");

    let isolation = |calls: Vec<String>| calls[2..4].join(" ");
    assert_eq!(
        isolation(run(default()).1),
        "isolation(Default) read_only(false)"
    );
    assert_eq!(
        isolation(run(read_uncommitted()).1),
        "isolation(ReadUncommitted) read_only(false)"
    );
    assert_eq!(
        isolation(run(read_committed()).1),
        "isolation(ReadCommitted) read_only(false)"
    );
    assert_eq!(
        isolation(run(repeatable_read()).1),
        "isolation(RepeatableRead) read_only(false)"
    );
    assert_eq!(
        isolation(run(serializable()).1),
        "isolation(Serializable) read_only(false)"
    );
}

/// A body that is not `Send` (`local`), with a rule: the generic path.
#[transactional(crate = "crate::fake", local, no_rollback_for = |_| true)]
async fn local_with_a_rule() -> Result<usize, AppError> {
    let not_send = std::rc::Rc::new(1);
    std::future::ready(()).await;
    Err(AppError::Conflict(if *not_send == 1 {
        "local"
    } else {
        "?"
    }))
}

#[test]
fn local_bodies_need_not_be_send() {
    let (result, calls) = run(local_with_a_rule());
    assert!(result.is_err());
    assert_eq!(
        calls[2..],
        ["run_with_no_rollback_for", "err(commit_on = true)"]
    );
}

#[transactional(crate = "crate::fake", timeout = 90)]
async fn early_return_and_question_mark(n: i32) -> Result<&'static str, AppError> {
    if n == 0 {
        return Ok("zero");
    }
    let parsed: i32 = if n > 0 {
        Ok(n)
    } else {
        Err(AppError::Conflict("negative"))
    }?;
    Ok(if parsed > 10 { "big" } else { "small" })
}

#[test]
fn return_and_question_mark_keep_their_meaning() {
    let (out, calls) = run(early_return_and_question_mark(0));
    assert_eq!(out, Ok("zero"));
    assert_eq!(calls[2], "timeout(90s)");
    assert_eq!(calls.last().unwrap(), "ok");
    assert_eq!(run(early_return_and_question_mark(11)).0, Ok("big"));
    let (out, calls) = run(early_return_and_question_mark(-1));
    assert_eq!(out, Err(AppError::Conflict("negative")));
    assert_eq!(calls.last().unwrap(), "err");
}

#[transactional(crate = "crate::fake", no_rollback_for = AppError::is_not_found)]
async fn with_fn_predicate(e: AppError) -> AppResult<()> {
    Err(e)
}

#[transactional(
    crate = "crate::fake",
    no_rollback_for = |e: &AppError| matches!(e, AppError::Conflict(_)),
    propagation = "NESTED"
)]
async fn with_closure_predicate(e: AppError) -> AppResult<()> {
    Err(e)
}

#[transactional(crate = "crate::fake", no_rollback_for = |e| e.is_not_found())]
async fn with_untyped_closure(fail: bool) -> AppResult<u8> {
    if fail {
        Err(AppError::NotFound)
    } else {
        Ok(1)
    }
}

#[test]
fn no_rollback_for_passes_the_predicate() {
    let (_, calls) = run(with_fn_predicate(AppError::NotFound));
    assert_eq!(
        calls,
        [
            "new",
            "name(macro_expand::with_fn_predicate)",
            "run_with_no_rollback_for",
            "err(commit_on = true)",
        ]
        .map(String::from)
    );
    let (_, calls) = run(with_fn_predicate(AppError::Tx));
    assert_eq!(calls[3], "err(commit_on = false)");

    let (out, calls) = run(with_closure_predicate(AppError::Conflict("dup")));
    assert_eq!(out, Err(AppError::Conflict("dup")));
    assert_eq!(calls[2], "propagation(Nested)");
    assert_eq!(calls[4], "err(commit_on = true)");

    assert_eq!(
        run(with_untyped_closure(true)).1[3],
        "err(commit_on = true)"
    );
    assert_eq!(run(with_untyped_closure(false)).1[3], "ok");
}

struct Account {
    balance: i64,
}

impl Account {
    /// Doc comments and other attributes stay on the fn.
    #[must_use = "the new balance"]
    #[transactional(crate = "crate::fake", read_only)]
    async fn balance(&self) -> AppResult<i64> {
        Ok(self.balance)
    }

    #[transactional(crate = "crate::fake")]
    async fn deposit(&mut self, amount: i64) -> AppResult<i64> {
        self.balance += amount;
        Ok(self.balance)
    }

    #[transactional(crate = "crate::fake", data_source = "ledger")]
    async fn close(self) -> AppResult<i64> {
        Ok(self.balance)
    }
}

#[test]
fn methods_with_every_receiver() {
    let mut account = Account { balance: 10 };
    let (out, calls) = run(account.balance());
    assert_eq!(out, Ok(10));
    assert_eq!(calls[1], "name(macro_expand::balance)");
    assert_eq!(calls[2], "read_only(true)");
    assert_eq!(run(account.deposit(5)).0, Ok(15));
    assert_eq!(account.balance, 15);
    let (out, calls) = run(account.close());
    assert_eq!(out, Ok(15));
    assert_eq!(calls[2], "data_source(ledger)");
}

trait Repository {
    async fn save(&self, name: &str) -> AppResult<usize>;
}

struct Names;

impl Repository for Names {
    #[transactional(crate = "crate::fake", propagation = "MANDATORY")]
    async fn save(&self, name: &str) -> AppResult<usize> {
        Ok(name.len())
    }
}

#[transactional(crate = "crate::fake")]
async fn generic<T, R>(repo: &R, items: Vec<T>, label: impl AsRef<str>) -> AppResult<String>
where
    T: std::fmt::Debug,
    R: Repository + ?Sized,
{
    let n = repo.save(label.as_ref()).await?;
    Ok(format!("{n} {items:?}"))
}

#[test]
fn trait_impls_generics_and_nesting() {
    let (out, calls) = run(generic(&Names, vec![1, 2], "abc"));
    assert_eq!(out, Ok("3 [1, 2]".to_string()));
    assert_eq!(
        calls,
        [
            "new",
            "name(macro_expand::generic)",
            "run",
            "new",
            "name(macro_expand::save)",
            "propagation(Mandatory)",
            "run",
            "ok",
            "ok",
        ]
        .map(String::from)
    );
}

#[transactional(crate = "crate::fake")]
async fn r#type() -> AppResult<()> {
    Ok(())
}

#[test]
fn raw_identifiers_are_named_without_the_prefix() {
    assert_eq!(run(r#type()).1[1], "name(macro_expand::type)");
}

/// An error type with `Display`.
#[derive(Debug, PartialEq)]
struct Shown(&'static str);

impl std::fmt::Display for Shown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "shown: {}", self.0)
    }
}

impl From<fake::Error> for Shown {
    fn from(_: fake::Error) -> Self {
        Shown("tx")
    }
}

#[transactional(crate = "crate::fake")]
async fn fails_with_display() -> Result<(), Shown> {
    Err(Shown("out of stock"))
}

#[transactional(crate = "crate::fake")]
async fn fails_without_display() -> AppResult<()> {
    Err(AppError::NotFound)
}

#[transactional(crate = "crate::fake")]
async fn fails_generic<E: std::fmt::Display + From<fake::Error>>(e: E) -> Result<(), E> {
    Err(e)
}

#[transactional(crate = "crate::fake")]
async fn fails_opaque<E: From<fake::Error>>(e: E) -> Result<(), E> {
    Err(e)
}

#[test]
fn an_error_is_put_in_words_when_it_implements_display() {
    let described = |calls: Vec<String>| {
        calls
            .into_iter()
            .filter(|c| c.starts_with("described"))
            .collect::<Vec<_>>()
    };
    let (_, calls) = run(fails_with_display());
    assert_eq!(described(calls), ["described(shown: out of stock)"]);
    let (_, calls) = run(fails_generic(Shown("generic")));
    assert_eq!(described(calls), ["described(shown: generic)"]);
    // Without `Display` (known from the type, or not promised by a generic's bounds): nothing.
    let (_, calls) = run(fails_without_display());
    assert!(described(calls).is_empty());
    let (_, calls) = run(fails_opaque(Shown("hidden")));
    assert!(described(calls).is_empty());
    // `Ok` is never described.
    let (_, calls) = run(plain(1));
    assert!(described(calls).is_empty());
}
