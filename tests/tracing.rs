//! What scopes tell `tracing`: a span per scope with what it asked for, did and how it ended,
//! and events under it for begin, savepoint, commit and rollback (with the rollback's cause).
//! A subscriber layer records every span and event of the binary; each test looks at the
//! spans of its own scope names.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once};
use std::time::Duration;

use common::{AppError, AppResult, Env, Lite, Pg};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use transactional::{Propagation, Transactional};

#[derive(Debug, Clone)]
struct SpanRec {
    name: &'static str,
    fields: BTreeMap<String, String>,
    parent: Option<usize>,
}

#[derive(Debug, Clone)]
struct EventRec {
    level: Level,
    target: String,
    fields: BTreeMap<String, String>,
    span: Option<usize>,
}

impl EventRec {
    fn message(&self) -> &str {
        self.fields.get("message").map_or("", String::as_str)
    }
}

static SPANS: Mutex<Vec<SpanRec>> = Mutex::new(Vec::new());
static EVENTS: Mutex<Vec<EventRec>> = Mutex::new(Vec::new());

/// Our own number for a span (the registry reuses ids of closed spans).
struct Serial(usize);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

struct Recorder;

impl<S: Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Recorder {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &tracing::span::Id, ctx: Context<'_, S>) {
        let span = ctx.span(id).expect("new span");
        let parent = span
            .parent()
            .and_then(|p| p.extensions().get::<Serial>().map(|s| s.0));
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        let mut spans = SPANS.lock().unwrap();
        spans.push(SpanRec {
            name: attrs.metadata().name(),
            fields,
            parent,
        });
        span.extensions_mut().insert(Serial(spans.len() - 1));
    }

    fn on_record(&self, id: &tracing::span::Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let span = ctx.span(id).expect("recorded span");
        let Some(serial) = span.extensions().get::<Serial>().map(|s| s.0) else {
            return;
        };
        values.record(&mut Fields(&mut SPANS.lock().unwrap()[serial].fields));
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let span = ctx
            .event_span(event)
            .and_then(|s| s.extensions().get::<Serial>().map(|s| s.0));
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        EVENTS.lock().unwrap().push(EventRec {
            level: *event.metadata().level(),
            target: event.metadata().target().to_owned(),
            fields,
            span,
        });
    }
}

fn install() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let subscriber = tracing_subscriber::registry().with(Recorder);
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
    });
}

/// The spans of scopes named `name`.
fn spans(name: &str) -> Vec<(usize, SpanRec)> {
    SPANS
        .lock()
        .unwrap()
        .iter()
        .cloned()
        .enumerate()
        .filter(|(_, s)| {
            s.name == "transactional" && s.fields.get("scope").is_some_and(|n| n == name)
        })
        .collect()
}

fn span(name: &str) -> (usize, SpanRec) {
    let mut found = spans(name);
    assert_eq!(found.len(), 1, "one span for scope {name}: {found:?}");
    found.remove(0)
}

fn events(span: usize) -> Vec<EventRec> {
    EVENTS
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.span == Some(span))
        .cloned()
        .collect()
}

fn field<'a>(span: &'a SpanRec, name: &str) -> &'a str {
    span.fields.get(name).map_or_else(
        || panic!("span has no field {name}: {span:?}"),
        String::as_str,
    )
}

static UNIQUE: AtomicUsize = AtomicUsize::new(0);

/// A scope name no other test uses.
fn name(what: &str) -> String {
    format!("{what}#{}", UNIQUE.fetch_add(1, Ordering::Relaxed))
}

/// A chain of every kind of scope: what each did, and which transaction it worked in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scope_is_a_span_with_what_it_did() {
    install();
    let Some(env) = Env::<Pg>::new("trace_chain").await else {
        return;
    };
    let (outer, joined, nested, new, without) = (
        name("outer"),
        name("joined"),
        name("nested"),
        name("new"),
        name("without"),
    );
    let r: AppResult<()> = env
        .run(
            Transactional::new()
                .name(outer.clone())
                .isolation(transactional::Isolation::Serializable)
                .run(async {
                    env.insert(1).await?;
                    tracing::info!("inside the outer scope");
                    let scope =
                        |name: &String, p| Transactional::new().name(name.clone()).propagation(p);
                    scope(&joined, Propagation::Required)
                        .run(env.insert(2))
                        .await?;
                    scope(&nested, Propagation::Nested)
                        .run(env.insert(3))
                        .await?;
                    scope(&new, Propagation::RequiresNew)
                        .run(env.insert(4))
                        .await?;
                    scope(&without, Propagation::NotSupported)
                        .run(async { Ok::<_, AppError>(()) })
                        .await?;
                    Ok(())
                }),
        )
        .await;
    r.unwrap();

    let (outer_id, outer) = span(&outer);
    assert_eq!(field(&outer, "action"), "began");
    assert_eq!(field(&outer, "outcome"), "committed");
    assert_eq!(field(&outer, "propagation"), "REQUIRED");
    assert_eq!(field(&outer, "isolation"), "SERIALIZABLE");
    assert_eq!(field(&outer, "read_only"), "false");
    assert_eq!(field(&outer, "data_source"), "default");
    assert!(field(&outer, "elapsed_ms").parse::<f64>().unwrap() > 0.0);
    let tx = field(&outer, "tx").to_owned();

    let (_, joined) = span(&joined);
    assert_eq!(field(&joined, "action"), "joined");
    assert_eq!(
        field(&joined, "tx"),
        tx,
        "a joined scope shares the transaction id"
    );
    assert_eq!(field(&joined, "outcome"), "left_to_owner");
    assert_eq!(
        joined.parent,
        Some(outer_id),
        "inner scopes' spans are children"
    );

    let (nested_id, nested) = span(&nested);
    assert_eq!(field(&nested, "action"), "nested");
    assert_eq!(field(&nested, "tx"), tx);
    assert_eq!(field(&nested, "outcome"), "released");
    assert!(field(&nested, "savepoint").starts_with("tx_sp_"));
    assert!(events(nested_id)
        .iter()
        .any(|e| e.level == Level::DEBUG && e.message() == "released the savepoint"));

    let (new_id, new) = span(&new);
    assert_eq!(field(&new, "action"), "began");
    assert_eq!(field(&new, "suspended"), "true");
    assert_ne!(field(&new, "tx"), tx, "REQUIRES_NEW is another transaction");
    assert_eq!(field(&new, "outcome"), "committed");
    let new_events: Vec<_> = events(new_id)
        .iter()
        .filter(|e| e.target == "transactional")
        .map(|e| e.message().to_owned())
        .collect();
    assert_eq!(
        new_events,
        [
            "suspended the current transaction",
            "new transaction (BEGIN with its first statement)",
            "committed",
            "resumed the suspended transaction"
        ]
    );

    let (_, without) = span(&without);
    assert_eq!(field(&without, "action"), "ran_without");
    assert!(!without.fields.contains_key("tx"));

    // The outer scope's own events, and a line of the body's own, carry its span.
    let outer_events = events(outer_id);
    let messages: Vec<_> = outer_events.iter().map(EventRec::message).collect();
    assert!(
        messages.contains(&"new transaction (BEGIN with its first statement)"),
        "{messages:?}"
    );
    assert!(messages.contains(&"committed"), "{messages:?}");
    assert!(messages.contains(&"inside the outer scope"), "{messages:?}");
    assert!(outer_events
        .iter()
        .filter(|e| e.target == "transactional")
        .all(|e| e.level == Level::DEBUG));
}

#[derive(Debug)]
struct OutOfStock(&'static str);

impl std::fmt::Display for OutOfStock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "out of stock: {}", self.0)
    }
}

#[derive(Debug)]
enum ShopError {
    Stock(OutOfStock),
    Tx(transactional::Error),
}

impl std::fmt::Display for ShopError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShopError::Stock(e) => e.fmt(f),
            ShopError::Tx(e) => e.fmt(f),
        }
    }
}

impl From<transactional::Error> for ShopError {
    fn from(e: transactional::Error) -> Self {
        ShopError::Tx(e)
    }
}

#[transactional::transactional(propagation = "REQUIRES_NEW")]
async fn reserve(item: &'static str) -> Result<(), ShopError> {
    let mut conn = transactional::connection::<sqlx::Sqlite>().await?;
    sqlx::query("SELECT 1")
        .execute(&mut *conn)
        .await
        .map_err(transactional::Error::from)?;
    Err(ShopError::Stock(OutOfStock(item)))
}

/// A rollback says why: the body's error in its own words, "panic", "cancelled", "timeout".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_says_its_cause() {
    install();
    let Some(env) = Env::<Lite>::new("trace_causes").await else {
        return;
    };

    // The annotated fn's error, through its Display.
    let r = env.run(reserve("widget")).await;
    assert!(matches!(r, Err(ShopError::Stock(_))));
    let (id, reserve) = span(&format!("{}::reserve", module_path!()));
    assert_eq!(field(&reserve, "outcome"), "rolled_back");
    assert_eq!(field(&reserve, "cause"), "error");
    let rollback = events(id)
        .into_iter()
        .find(|e| e.message().starts_with("rolled back"))
        .expect("a rollback event");
    assert_eq!(rollback.level, Level::DEBUG);
    assert_eq!(
        rollback.message(),
        "rolled back: the body returned an error"
    );
    assert_eq!(rollback.fields["error"], "out of stock: widget");

    // A panic, with its message.
    let panicking = name("panicking");
    let p = panicking.clone();
    let env_ref = &env;
    let joined = tokio::spawn({
        let pool = env.pool.clone();
        let table = env.table.clone();
        async move {
            transactional::with_data_source("default", pool, async move {
                Transactional::new()
                    .name(p)
                    .run(async move {
                        common::hook_support::insert_on::<Lite>("default", &table, 1).await?;
                        panic!("the shelf fell over");
                        #[allow(unreachable_code)]
                        Ok::<_, AppError>(())
                    })
                    .await
            })
            .await
        }
    })
    .await;
    assert!(joined.is_err(), "the panic reached the caller");
    let (id, span_rec) = span(&panicking);
    assert_eq!(field(&span_rec, "cause"), "panic");
    let rollback = events(id)
        .into_iter()
        .find(|e| e.message().starts_with("rolled back"))
        .expect("a rollback event");
    assert_eq!(rollback.level, Level::WARN);
    assert_eq!(rollback.message(), "rolled back: the body panicked");
    assert_eq!(rollback.fields["error"], "the shelf fell over");

    // A timeout.
    let slow = name("slow");
    let r: AppResult<()> = env
        .run(
            Transactional::new()
                .name(slow.clone())
                .timeout(Duration::from_millis(50))
                .run(async {
                    env_ref.insert(2).await?;
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    Ok(())
                }),
        )
        .await;
    assert!(r.unwrap_err().is_timeout());
    let (id, span_rec) = span(&slow);
    assert_eq!(field(&span_rec, "cause"), "timeout");
    assert!(events(id)
        .iter()
        .any(|e| e.level == Level::WARN && e.message() == "rolled back: the scope timed out"));

    // A dropped future: a line when it is dropped, and the rollback that follows on its own
    // task, under the same span.
    let dropped = name("dropped");
    let (started_tx, started) = tokio::sync::oneshot::channel();
    let task = tokio::spawn({
        let pool = env.pool.clone();
        let table = env.table.clone();
        let d = dropped.clone();
        async move {
            transactional::with_data_source("default", pool, async move {
                let r: AppResult<()> = Transactional::new()
                    .name(d)
                    .run(async move {
                        common::hook_support::insert_on::<Lite>("default", &table, 3).await?;
                        started_tx.send(()).unwrap();
                        std::future::pending::<()>().await;
                        Ok(())
                    })
                    .await;
                r
            })
            .await
        }
    });
    started.await.unwrap();
    task.abort();
    let _ = task.await;
    env.eventually("the dropped scope's rollback is logged", || async {
        let (id, _) = span(&dropped);
        events(id)
            .iter()
            .any(|e| e.message() == "rolled back: the scope was cancelled")
    })
    .await;
    let (id, span_rec) = span(&dropped);
    assert_eq!(field(&span_rec, "cause"), "cancelled");
    let cancelled: Vec<_> = events(id)
        .into_iter()
        .filter(|e| e.target == "transactional")
        .collect();
    let first = cancelled.first().map(EventRec::message);
    assert_eq!(
        first,
        Some("new transaction (BEGIN with its first statement)")
    );
    assert!(cancelled.iter().any(|e| e.level == Level::INFO
        && e.message() == "cancelled: the scope's future was dropped before its body finished"));
    assert!(cancelled
        .iter()
        .any(|e| e.level == Level::INFO && e.message() == "rolled back: the scope was cancelled"));
    assert!(env.ids().await.is_empty(), "every rollback left nothing");
}

/// A scope that cannot start warns once, under its span, with the error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scope_that_does_not_start_warns() {
    install();
    let Some(env) = Env::<Lite>::new("trace_refused").await else {
        return;
    };
    let mandatory = name("mandatory");
    let r: AppResult<()> = env
        .run(
            Transactional::new()
                .name(mandatory.clone())
                .propagation(Propagation::Mandatory)
                .run(async { Ok(()) }),
        )
        .await;
    assert!(r.is_err());
    let (id, span_rec) = span(&mandatory);
    assert_eq!(field(&span_rec, "outcome"), "refused");
    let warnings: Vec<_> = events(id)
        .into_iter()
        .filter(|e| e.level == Level::WARN)
        .map(|e| e.message().to_owned())
        .collect();
    assert_eq!(warnings, ["the scope did not start"]);
}

/// A retried scope: one span per attempt, numbered, and a line saying it runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attempt_of_a_retried_scope_is_a_span() {
    install();
    let Some(env) = Env::<Lite>::new("trace_retry").await else {
        return;
    };
    #[derive(Debug)]
    struct Conflict(Option<transactional::Error>);
    impl From<transactional::Error> for Conflict {
        fn from(e: transactional::Error) -> Self {
            Conflict(Some(e))
        }
    }
    impl transactional::RetryableError for Conflict {
        fn is_retryable(&self) -> bool {
            self.0.is_none()
        }
    }
    let retried = name("retried");
    let attempts = AtomicUsize::new(0);
    let r: Result<(), Conflict> = env
        .run(
            Transactional::new()
                .name(retried.clone())
                .retry(2)
                .run(|| async {
                    match attempts.fetch_add(1, Ordering::SeqCst) {
                        0 => Err(Conflict(None)),
                        _ => Ok(()),
                    }
                }),
        )
        .await;
    r.unwrap();
    let found = spans(&retried);
    let numbers: Vec<_> = found
        .iter()
        .map(|(_, s)| field(s, "attempt").to_owned())
        .collect();
    assert_eq!(numbers, ["1", "2"]);
    assert!(events(found[0].0)
        .iter()
        .any(|e| e.level == Level::INFO && e.message().contains("running it again")));
    assert_eq!(field(&found[1].1, "outcome"), "committed");
}
