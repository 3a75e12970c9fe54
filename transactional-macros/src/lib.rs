//! The `#[transactional]` attribute of the [`transactional`] crate.
//!
//! Use it through `transactional` itself (`use transactional::transactional;`), which also
//! provides the runtime the expansion calls. This crate only parses the attribute, checks it
//! and rewrites the fn's body; every runtime behaviour lives in `transactional`.
//!
//! [`transactional`]: https://docs.rs/transactional

#![deny(missing_docs)]
#![forbid(unsafe_code)]

use proc_macro::TokenStream;

mod block;
mod expand;
mod function;
mod keys;
mod options;
#[cfg(test)]
mod property_tests;
mod reading;
mod suggest;
mod values;

/// Runs an `async fn`'s body in a transactional scope: Spring's `@Transactional`.
///
/// The fn keeps its signature, attributes and doc comments; only its body is rewritten to
/// run through `transactional::Transactional`. Every `Err` the body returns rolls the
/// transaction back, every `Ok` commits it (when this scope began it), and a failure to begin,
/// commit or roll back reaches the caller as the fn's own error type through
/// `From<transactional::Error>`. Inside the body, queries through `transactional`'s
/// connection functions run in the scope's transaction.
///
/// # Example
///
/// ```ignore
/// use transactional::transactional;
///
/// impl AccountService {
///     /// Moves money between two accounts, all or nothing.
///     #[transactional(isolation = "SERIALIZABLE", timeout = "5s")]
///     pub async fn transfer(&self, from: i64, to: i64, cents: i64) -> Result<(), AppError> {
///         self.accounts.withdraw(from, cents).await?; // an Err here rolls everything back
///         self.accounts.deposit(to, cents).await?;
///         self.audit.record(from, to, cents).await   // joins the same transaction
///     }
///
///     /// Keeps its audit row even when the caller's transaction rolls back.
///     #[transactional(propagation = "REQUIRES_NEW")]
///     pub async fn record_attempt(&self, from: i64) -> Result<(), AppError> {
///         self.audit.attempt(from).await
///     }
/// }
/// ```
///
/// # Options
///
/// `#[transactional]` alone means `REQUIRED` on the default data source, at the database's
/// default isolation, read-write, without a timeout. Options are written
/// `#[transactional(key = value, ...)]`, each at most once:
///
/// | option | value | default |
/// |---|---|---|
/// | `propagation` | `"REQUIRED"`, `"REQUIRES_NEW"`, `"NESTED"`, `"SUPPORTS"`, `"NOT_SUPPORTED"`, `"MANDATORY"`, `"NEVER"` | `"REQUIRED"` |
/// | `isolation` | `"DEFAULT"`, `"READ_UNCOMMITTED"`, `"READ_COMMITTED"`, `"REPEATABLE_READ"`, `"SERIALIZABLE"` | `"DEFAULT"` |
/// | `read_only` | bare `read_only`, or `read_only = true` / `false` | `false` |
/// | `timeout` | whole seconds (`timeout = 5`) or a string with a unit: `"250ms"`, `"5s"`, `"2m"` | none |
/// | `data_source` | the name a pool was registered under, `data_source = "reporting"` | `"default"` |
/// | `no_rollback_for` | a predicate on the error: a path to a `fn(&E) -> bool`, or a closure | every `Err` rolls back |
/// | `retry` | how many times to run the scope again when the database refuses it for a concurrent transaction, `retry = 3` | no retry |
/// | `send` / `local` | bare flags: how the body is held (see below) | decided from the signature |
/// | `crate` | the path to the `transactional` crate, `crate = "my_app::tx"` | `"::transactional"` |
///
/// `isolation`, `read_only` and `timeout` with `SUPPORTS`, `NOT_SUPPORTED` or `NEVER` are
/// compile errors: those never begin a transaction.
///
/// ## `propagation`
///
/// How the scope relates to a transaction that is already current on its data source:
///
/// | propagation | a transaction exists | none exists |
/// |---|---|---|
/// | `REQUIRED` | join it | begin one |
/// | `SUPPORTS` | join it | run without one |
/// | `MANDATORY` | join it | fail with `Error::NoExistingTransaction` |
/// | `REQUIRES_NEW` | suspend it, begin one on another connection | begin one |
/// | `NOT_SUPPORTED` | suspend it, run without one | run without one |
/// | `NEVER` | fail with `Error::ExistingTransaction` | run without one |
/// | `NESTED` | run in a `SAVEPOINT` of it | begin one |
///
/// A scope that joins a transaction does not commit it: the outermost scope does. An `Err`
/// from a joining scope marks the whole transaction rollback-only.
///
/// ## `isolation` and `read_only`
///
/// Applied only by a scope that begins a transaction; a scope that joins one runs at the
/// level and mode the transaction already has.
///
/// ## `timeout`
///
/// A hard deadline for the whole scope, measured from its start. Past it the statement running
/// is cancelled on the server, the body is dropped, the transaction is rolled back and
/// `Error::Timeout` is returned. An integer is a number of seconds; a string takes a unit `ms`,
/// `s` or `m`. Zero, negative and fractional values are rejected at compile time (write
/// `"1500ms"` for one and a half seconds).
///
/// ## `data_source`
///
/// Runs on the data source registered under that name instead of `"default"`. Scopes on
/// different data sources are independent transactions.
///
/// ## `no_rollback_for`
///
/// Spring's `noRollbackFor`: the scope commits instead of rolling back when the body returns
/// an `Err` the predicate is true for. The error is still returned to the caller.
///
/// ```ignore
/// #[transactional(no_rollback_for = AppError::is_not_found)]
/// async fn touch(id: i64) -> Result<(), AppError> { /* ... */ }
///
/// #[transactional(no_rollback_for = |e: &AppError| matches!(e, AppError::Validation(_)))]
/// async fn import(rows: Vec<Row>) -> Result<usize, AppError> { /* ... */ }
/// ```
///
/// ## `retry`
///
/// Runs the whole scope again, in a new transaction, up to `N` more times while the database
/// refuses it for a concurrent one (a serialization failure, a deadlock), with a jittered pause
/// between attempts. The refusal is read from the body's error: any error whose `source()`
/// chain holds the database's error (sqlx's, the library's), `anyhow::Error` and boxed errors,
/// or an error type implementing `transactional::RetryableError`; an error type none of these
/// can read is a compile error on the return type. Each attempt gets clones of the fn's
/// arguments, so they must be plain names of `Clone` types. Only a scope that begins its own
/// transaction can be run again: one that would join its caller's fails with
/// `Error::InvalidOptions` without running.
///
/// ```ignore
/// #[transactional(isolation = "SERIALIZABLE", retry = 5)]
/// async fn transfer(from: i64, to: i64, cents: i64) -> Result<(), AppError> { /* ... */ }
/// ```
///
/// ## `send` and `local`
///
/// The body of a plain free fn (no `self`, no type parameters, no `impl Trait` or `dyn Trait`
/// argument) runs as a `Pin<Box<dyn Future + Send>>`: its future's type then does not contain
/// the types of the annotated fns it calls, so a deep call chain is proven `Send` one level at a
/// time (64 levels compile within the default `recursion_limit`); such a body must be `Send`.
/// Every other fn keeps its body's own type, `Send` or not. `send` asks for the first for any
/// fn (a method in a deep call chain), `local` for the second (a free fn whose body holds an
/// `Rc` across an await).
///
/// ## `crate`
///
/// The path the expansion starts from, for code that reaches `transactional` under another
/// name (a re-export, a renamed dependency): `crate = "my_app::tx"`.
///
/// # What it applies to
///
/// Any `async fn` with a body: free fns, inherent methods taking `&self`, `&mut self` or
/// `self`, `async fn`s in trait impls, generic fns, fns with `impl Trait` arguments and
/// `where` clauses. It must return a `Result` (`Result<T, E>`, `std::io::Result<T>`,
/// `anyhow::Result<T>`, any alias of one) whose error type implements
/// `From<transactional::Error>`; this is checked through the type system, and reported on the
/// return type.
///
/// It is a compile error to put it on a fn that is not `async`, that returns anything other
/// than a `Result`, on a trait's fn declaration without a body, or on any other item but an
/// `impl` block (below). Unknown options and values are compile errors that suggest the nearest
/// valid spelling.
///
/// ## On an `impl` block
///
/// Spring's `@Transactional` on a class: on an `impl` block (inherent or of a trait, generic
/// or not), the attribute applies to every `async fn` of the block, as if each carried it.
/// A method's own `#[transactional(...)]` replaces the block's options entirely (Spring's rule:
/// the most specific annotation wins, options are not merged); `#[transactional(skip)]` leaves
/// a method as written. Fns that are not `async`, consts and types in the block are untouched.
/// An `async fn` of the block that returns nothing is a compile error that suggests `skip`.
///
/// ```ignore
/// #[transactional(timeout = "5s")]
/// impl CheckoutService {
///     pub async fn pay(&self, order: i64) -> Result<(), AppError> { /* a transaction */ }
///
///     #[transactional(propagation = "REQUIRES_NEW")]   // instead of the block's options
///     pub async fn receipt(&self, order: i64) -> Result<(), AppError> { /* … */ }
///
///     #[transactional(skip)]                           // not transactional
///     pub async fn quote(&self) -> Money { /* … */ }
///
///     pub fn fee(&self) -> Money { /* not async: untouched */ }
/// }
/// ```
///
/// # Expansion
///
/// The body becomes a call into the runtime with the builder, one setter for each option given:
///
/// ```text
/// #[transactional(propagation = "REQUIRES_NEW", timeout = 5)]
/// async fn save(&self, order: Order) -> Result<OrderId, AppError> { body }
///
/// // becomes
///
/// async fn save(&self, order: Order) -> Result<OrderId, AppError> {
///     ::transactional::__private::scope(
///         ::transactional::Transactional::new()
///             .name(concat!(module_path!(), "::", "save"))
///             .propagation(::transactional::Propagation::RequiresNew)
///             .timeout(::core::time::Duration::from_millis(5000)),
///         ::transactional::__private::LocalBody(async move { body }),
///         ::transactional::__private::Spec {
///             rule: None,
///             describe: Some(|output: &Result<OrderId, AppError>, text: bool| /* reads the error */),
///             classify: None,
///         },
///     )
///     .await
/// }
/// ```
///
/// `__private::scope` is the runtime's one entry point for the macro; `SendBody` holds a body
/// whose type is erased (see above). The describer reads the body's error, for the log line of
/// its rollback and for the database's error in it; it is `None` for a return type that does
/// not read as a `Result`. With `no_rollback_for = p`, `rule` is `Some(p)`, where `p` first goes
/// through a local identity fn that names the fn's return type, so that a closure's parameter
/// type is known without an annotation (`|e| e.is_benign()`). With `retry = N` the body is
/// `LocalAttempts(move || { <clones of the arguments>; async move { body } }, N)` (or
/// `SendAttempts`); for an error type the describer cannot name, `classify` is
/// `Some(__private::by_trait())`, which asks for `RetryableError`.
/// Because the body runs in an `async move` block, `return` inside it returns from the fn as
/// before, and `?` converts errors exactly as it did.
#[proc_macro_attribute]
pub fn transactional(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::transactional(args.into(), item.into()).into()
}
