//! Deep call chains of annotated fns run in a spawned task on a worker thread with tokio's
//! default 2 MiB stack, in debug and release builds: 64 levels of joined REQUIRED scopes, of
//! NESTED scopes, and of REQUIRES_NEW scopes, each level a distinct fn running one query, on
//! every database. No `recursion_limit` is raised: 64 levels compile with the default, and
//! `tokio::spawn` proves the whole chain `Send`.
//!
//! Polling a level costs the stack one small frame (the scope's body is boxed, and what is not
//! generic lives outside the generic future), so the chain depth is bounded by the heap, not by
//! the worker's stack.

mod common;

use common::{AppResult, Env, Lite, My, Pg, TestDb};
use futures_util::future::{BoxFuture, LocalBoxFuture};
use sqlx::Database;

/// The worker stack tokio gives every thread by default.
const WORKER_STACK: usize = 2 * 1024 * 1024;

/// How a level writes its row: one insert on the test's database (a boxed closure, so that
/// the chain itself is not generic, as application code is not).
type Insert = &'static (dyn Fn(i64) -> BoxFuture<'static, AppResult<()>> + Send + Sync);

/// Declares `$f0` … calling each other down to `$last`, each annotated with `$attr`, each
/// running one insert (`$before`: before calling the next level, else after it returns).
macro_rules! chain {
    ($attr:meta, $before:expr; $f:ident, $next:ident $(, $rest:ident)*) => {
        #[$attr]
        pub(super) async fn $f(insert: Insert, level: i64) -> AppResult<()> {
            if $before {
                insert(level).await?;
            }
            $next(insert, level + 1).await?;
            if !$before {
                insert(level).await?;
            }
            Ok(())
        }
        chain!($attr, $before; $next $(, $rest)*);
    };
    ($attr:meta, $before:expr; $last:ident) => {
        #[$attr]
        pub(super) async fn $last(insert: Insert, level: i64) -> AppResult<()> {
            insert(level).await
        }
    };
}

/// 64 fn names with a prefix.
macro_rules! sixty_four {
    ($m:ident!($($args:tt)*)) => {
        $m!($($args)*;
            l00, l01, l02, l03, l04, l05, l06, l07, l08, l09, l10, l11, l12, l13, l14, l15,
            l16, l17, l18, l19, l20, l21, l22, l23, l24, l25, l26, l27, l28, l29, l30, l31,
            l32, l33, l34, l35, l36, l37, l38, l39, l40, l41, l42, l43, l44, l45, l46, l47,
            l48, l49, l50, l51, l52, l53, l54, l55, l56, l57, l58, l59, l60, l61, l62, l63);
    };
}

/// 100 fn names.
macro_rules! one_hundred {
    ($m:ident!($($args:tt)*)) => {
        $m!($($args)*; n000, n001, n002, n003, n004, n005, n006, n007, n008, n009, n010, n011, n012, n013, n014, n015, n016, n017, n018, n019, n020, n021, n022, n023, n024, n025, n026, n027, n028, n029, n030, n031, n032, n033, n034, n035, n036, n037, n038, n039, n040, n041, n042, n043, n044, n045, n046, n047, n048, n049, n050, n051, n052, n053, n054, n055, n056, n057, n058, n059, n060, n061, n062, n063, n064, n065, n066, n067, n068, n069, n070, n071, n072, n073, n074, n075, n076, n077, n078, n079, n080, n081, n082, n083, n084, n085, n086, n087, n088, n089, n090, n091, n092, n093, n094, n095, n096, n097, n098, n099);
    };
}

mod joined {
    use super::*;
    sixty_four!(chain!(transactional::transactional, true));
    pub(super) use self::l00 as top;
}

mod nested {
    use super::*;
    sixty_four!(chain!(
        transactional::transactional(propagation = "NESTED"),
        true
    ));
    pub(super) use self::l00 as top;
}

mod requires_new {
    use super::*;
    // Each level writes after the level below it has committed, so that one connection at a
    // time is in use (a REQUIRES_NEW that has not queried holds none) and SQLite's single
    // writer is never waited for.
    sixty_four!(chain!(
        transactional::transactional(propagation = "REQUIRES_NEW"),
        false
    ));
    pub(super) use self::l00 as top;
}

/// Runs `chain` for `D` in a task spawned on a runtime whose workers have a 2 MiB stack.
fn on_a_worker<D: TestDb, F>(test: &'static str, chain: fn(Insert) -> F)
where
    for<'c> &'c mut <D::DB as Database>::Connection: sqlx::Executor<'c, Database = D::DB>,
    F: std::future::Future<Output = AppResult<()>> + Send + 'static,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_stack_size(WORKER_STACK)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let Some(env) = Env::<D>::new(test).await else {
            return;
        };
        let env: &'static Env<D> = Box::leak(Box::new(env));
        let insert: Insert = Box::leak(Box::new(move |id| {
            Box::pin(env.insert(id)) as BoxFuture<'static, AppResult<()>>
        }));
        let ran = tokio::spawn(env.run(chain(insert))).await;
        ran.expect("the chain ran to the end on a 2 MiB worker")
            .unwrap();
        let ids = env.ids().await;
        assert_eq!(ids, (0..ids.len() as i64).collect::<Vec<i64>>());
        assert!(ids.len() >= 64, "every level wrote its row: {}", ids.len());
        assert!(env.pool_is_clean().await);
    });
}

macro_rules! on_every_database {
    ($name:ident, $module:ident) => {
        mod $name {
            use super::*;

            #[test]
            fn postgres() {
                on_a_worker::<Pg, _>(stringify!($name), |insert| $module::top(insert, 0));
            }

            #[test]
            fn mysql() {
                on_a_worker::<My, _>(stringify!($name), |insert| $module::top(insert, 0));
            }

            #[test]
            fn sqlite() {
                on_a_worker::<Lite, _>(stringify!($name), |insert| $module::top(insert, 0));
            }
        }
    };
}

mod nested_deeper {
    use super::*;
    one_hundred!(chain!(
        transactional::transactional(propagation = "NESTED"),
        true
    ));
    pub(super) use self::n000 as top;
}

on_every_database!(sixty_four_joined_levels, joined);
on_every_database!(sixty_four_nested_levels, nested);
on_every_database!(sixty_four_requires_new_levels, requires_new);
on_every_database!(one_hundred_nested_levels, nested_deeper);

/// The same chain without the library, each level's future boxed (as a deep chain of plain
/// async fns has to be, for its type to be laid out at all): what the fns themselves cost.
macro_rules! plain_chain {
    (; $($names:ident),*) => {
        plain_chain!($($names),*);
    };
    ($f:ident, $next:ident $(, $rest:ident)*) => {
        pub(super) fn $f(insert: Insert, level: i64) -> LocalBoxFuture<'static, AppResult<()>> {
            Box::pin(async move {
                insert(level).await?;
                $next(insert, level + 1).await
            })
        }
        plain_chain!($next $(, $rest)*);
    };
    ($last:ident) => {
        pub(super) fn $last(insert: Insert, level: i64) -> LocalBoxFuture<'static, AppResult<()>> {
            Box::pin(insert(level))
        }
    };
}

mod plain {
    use super::*;
    sixty_four!(plain_chain!());
    pub(super) use self::l00 as top;
}

/// The deepest stack address any level's insert saw, for [`stack_per_level`].
static DEEPEST: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(usize::MAX);

/// The stack a chain of 64 levels uses, per level, on SQLite: the address of a local in the
/// innermost level's poll, against one in the poll of the task that runs the chain.
fn stack_of_64_levels(chain: fn(Insert) -> LocalBoxFuture<'static, AppResult<()>>) -> usize {
    use std::future::Future;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let env = Env::<Lite>::new("stack_per_level").await.unwrap();
        let env: &'static Env<Lite> = Box::leak(Box::new(env));
        DEEPEST.store(usize::MAX, std::sync::atomic::Ordering::SeqCst);
        let insert: Insert = Box::leak(Box::new(move |id| {
            let here = 0u8;
            DEEPEST.fetch_min(
                std::ptr::addr_of!(here) as usize,
                std::sync::atomic::Ordering::SeqCst,
            );
            Box::pin(env.insert(id)) as BoxFuture<'static, AppResult<()>>
        }));
        let mut chain = std::pin::pin!(env.run(chain(insert)));
        let mut top = 0;
        std::future::poll_fn(|cx| {
            let here = 0u8;
            top = std::ptr::addr_of!(here) as usize;
            chain.as_mut().poll(cx)
        })
        .await
        .unwrap();
        (top - DEEPEST.load(std::sync::atomic::Ordering::SeqCst)) / 64
    })
}

/// What a scope adds to the stack per level of a deep chain, printed for the README (`cargo
/// test --release --test stack_depth -- --nocapture` for release builds), and bounded: in
/// debug builds a level costs a few KiB more than the fn's own boxed future, in release
/// builds under 2 KiB.
#[test]
fn stack_per_level() {
    let plain = stack_of_64_levels(|insert| plain::top(insert, 0));
    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let bound = if cfg!(debug_assertions) {
        12 * 1024
    } else {
        2 * 1024
    };
    for (kind, levels) in [
        (
            "joined",
            stack_of_64_levels(|insert| Box::pin(joined::top(insert, 0))),
        ),
        (
            "NESTED",
            stack_of_64_levels(|insert| Box::pin(nested::top(insert, 0))),
        ),
    ] {
        let added = levels.saturating_sub(plain);
        eprintln!(
            "stack per level ({build}): {plain} B without the library, {levels} B with {kind} \
             scopes: {added} B added"
        );
        assert!(added < bound, "{kind}: {levels} B vs {plain} B per level");
    }
}
