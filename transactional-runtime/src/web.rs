//! A transaction per HTTP request, for axum and any tower service over `http` types (the
//! `axum` feature), and the HTTP answer for the library's errors.
//!
//! ```
//! use std::time::Duration;
//! use axum::{routing::post, Router};
//! use http::{Method, Request, StatusCode};
//! use tower_service::Service;
//! use transactional_runtime::web::TransactionLayer;
//!
//! async fn create_todo() -> Result<&'static str, transactional_runtime::Error> {
//!     // The request's transaction: committed once the handler answers 201.
//!     let mut conn = transactional_runtime::connection::<sqlx::Sqlite>().await?;
//!     sqlx::query("INSERT INTO todos (title) VALUES ('write docs')")
//!         .execute(&mut *conn)
//!         .await?;
//!     Ok("created")
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
//! # sqlx::query("CREATE TABLE todos (title TEXT)").execute(&pool).await?;
//! # transactional_runtime::register_default(pool.clone())?;
//! let mut app: Router = Router::new()
//!     .route("/todos", post(create_todo))
//!     .layer(
//!         TransactionLayer::new()
//!             .timeout(Duration::from_secs(5))
//!             .read_only_methods([Method::GET, Method::HEAD]),
//!     );
//! let response = app.call(Request::post("/todos").body(axum::body::Body::empty())?).await?;
//! assert_eq!(response.status(), StatusCode::OK);
//! # let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM todos").fetch_one(&pool).await?;
//! # assert_eq!(n, 1);
//! # Ok(()) }
//! ```
//!
//! Each request runs in a transactional scope (REQUIRED on the default data source unless
//! configured otherwise): the handler's repositories share its transaction. It commits when
//! the handler answers with a success (or redirect) status, and rolls back when it answers
//! with an error status (4xx, 5xx; see [`TransactionLayer::rollback_on`]), panics (the panic
//! then goes on up), or when the request's future is dropped (the client went away). Hooks
//! the handler registers run accordingly. The transaction ends when the handler returns its
//! response, before the response's body is sent: a body streamed from the database after
//! that runs outside it.
//!
//! With [`TransactionLayer::retry`], a request whose transaction the database refused for a
//! concurrent one (a serialization failure, a deadlock) is run again, in a new transaction,
//! from its buffered body: the handler runs again. A refusal is known by the library's own
//! error (a refused COMMIT or before-commit hook), or by a response that carries [`Refused`]
//! (the answer `transactional::Error`'s `IntoResponse` gives a refusal carries it; a handler
//! whose own error type answers one adds it). `#[transactional(retry = N)]` on a fn the
//! handler calls cannot run it again, since the request's transaction is its caller's: put
//! the retry on the layer.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum_core::response::IntoResponse;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tower_layer::Layer;
use tower_service::Service;

use crate::api::{commit_position, read_after};
use crate::builder::Transactional;
use crate::error::{BoxError, Error};
use crate::inspect::Facts;
use crate::name::Name;
use crate::options::{Isolation, Propagation};
use crate::replica::CommitPosition;
use crate::retry::retrying;
use crate::scope::Classify;

type RollsBack = Arc<dyn Fn(StatusCode) -> bool + Send + Sync>;

/// How much of a request's body [`TransactionLayer::retry`] buffers to replay it, unless
/// [`TransactionLayer::retry_body_limit`] says otherwise: 1 MiB.
pub const DEFAULT_RETRY_BODY_LIMIT: usize = 1024 * 1024;

/// A tower [`Layer`] that runs each request in a transactional scope. See the
/// [module](self) documentation.
#[derive(Clone)]
pub struct TransactionLayer {
    scope: Transactional,
    read_only: Vec<Method>,
    rolls_back: RollsBack,
    replay: Replay,
    /// The header that carries the commit position (see `read_your_writes`).
    positions: Option<HeaderName>,
}

/// How requests are run again (see [`TransactionLayer::retry`]).
#[derive(Clone, Copy, Debug)]
struct Replay {
    retries: u32,
    body_limit: usize,
}

/// Marks a response as the answer to the database refusing the request's transaction for a
/// concurrent one: [`TransactionLayer::retry`] runs such a request again. The response
/// `transactional::Error` answers a refusal with (`409`) carries it; a handler whose own error
/// type answers a refusal adds it to its response's extensions:
///
/// ```
/// # use axum_core::response::{IntoResponse, Response};
/// # use http::StatusCode;
/// # struct AppError(sqlx::Error);
/// impl IntoResponse for AppError {
///     fn into_response(self) -> Response {
///         let mut response = (StatusCode::CONFLICT, "try again").into_response();
///         if transactional_runtime::is_retryable(&self.0) {
///             response.extensions_mut().insert(transactional_runtime::web::Refused);
///         }
///         response
///     }
/// }
/// # let response = AppError(sqlx::Error::RowNotFound).into_response();
/// # assert!(response.extensions().get::<transactional_runtime::web::Refused>().is_none());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refused;

impl fmt::Debug for TransactionLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransactionLayer")
            .field("scope", self.scope.options())
            .field("read_only", &self.read_only)
            .field("retries", &self.replay.retries)
            .finish_non_exhaustive()
    }
}

impl Default for TransactionLayer {
    fn default() -> Self {
        TransactionLayer::new()
    }
}

impl TransactionLayer {
    /// REQUIRED on the default data source, default isolation, read-write, no timeout; rolls
    /// back on 4xx and 5xx answers.
    pub fn new() -> Self {
        TransactionLayer {
            scope: Transactional::new(),
            read_only: Vec::new(),
            rolls_back: Arc::new(|status: StatusCode| {
                status.is_client_error() || status.is_server_error()
            }),
            replay: Replay {
                retries: 0,
                body_limit: DEFAULT_RETRY_BODY_LIMIT,
            },
            positions: None,
        }
    }

    /// The options of every request's scope (its name is set per request: `"GET /todos"`).
    pub fn with(mut self, scope: Transactional) -> Self {
        self.scope = scope;
        self
    }

    /// Sets the propagation (default REQUIRED).
    pub fn propagation(mut self, propagation: Propagation) -> Self {
        self.scope = self.scope.propagation(propagation);
        self
    }

    /// Sets the isolation level.
    pub fn isolation(mut self, isolation: Isolation) -> Self {
        self.scope = self.scope.isolation(isolation);
        self
    }

    /// Gives every request's transaction a deadline. Past it the handler is cancelled, the
    /// transaction rolled back, and the answer is `504 Gateway Timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.scope = self.scope.timeout(timeout);
        self
    }

    /// Runs the requests on the named data source instead of `"default"`.
    pub fn data_source(mut self, name: impl Into<Name>) -> Self {
        self.scope = self.scope.data_source(name);
        self
    }

    /// Requests with these methods run in read-only transactions (say GET and HEAD).
    pub fn read_only_methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.read_only = methods.into_iter().collect();
        self
    }

    /// Runs a request again, up to `retries` more times, while the database refuses its
    /// transaction for a concurrent one (a serialization failure or a deadlock, at a statement,
    /// in a before-commit hook or at COMMIT): the handler runs again in a new transaction, on
    /// the request's body buffered in memory (see [`retry_body_limit`](Self::retry_body_limit)),
    /// after a jittered pause that grows from about 10 ms to at most 1 s. Each attempt's hooks
    /// run only if it is the last. A statement's refusal is known by the response carrying
    /// [`Refused`]; the last attempt's response is returned (`409` from
    /// `transactional::Error`).
    pub fn retry(mut self, retries: u32) -> Self {
        self.replay.retries = retries;
        self
    }

    /// The largest request body [`retry`](Self::retry) buffers to replay (default
    /// [`DEFAULT_RETRY_BODY_LIMIT`]). A request that declares a larger `Content-Length` runs
    /// once, unbuffered; one that turns out larger while it is read is answered `413 Payload
    /// Too Large`.
    pub fn retry_body_limit(mut self, bytes: usize) -> Self {
        self.replay.body_limit = bytes;
        self
    }

    /// Read-your-writes across instances, for a data source with read replicas
    /// ([`register_with_replicas`](crate::register_with_replicas)): every response carries, in
    /// `header`, the position of the latest commit this instance made there (the request's
    /// own, or a later one; see [`commit_position`]), and a request
    /// that sends it back runs its read-only transactions only on replicas that have replayed
    /// it, else on the primary ([`read_after`]). A client that keeps the
    /// header (or a cookie its gateway sets from it) reads its own writes, whichever instance
    /// serves it. A value that is not a position is ignored.
    pub fn read_your_writes(mut self, header: HeaderName) -> Self {
        self.positions = Some(header);
        self
    }

    /// Which answers roll the transaction back (default: 4xx and 5xx). The others commit.
    pub fn rollback_on(
        mut self,
        rolls_back: impl Fn(StatusCode) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.rolls_back = Arc::new(rolls_back);
        self
    }
}

impl<S> Layer<S> for TransactionLayer {
    type Service = TransactionService<S>;

    fn layer(&self, inner: S) -> TransactionService<S> {
        TransactionService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`TransactionLayer`] wraps around yours.
#[derive(Clone, Debug)]
pub struct TransactionService<S> {
    inner: S,
    layer: TransactionLayer,
}

/// The future of [`TransactionService`]: the request's transactional scope, then the
/// response. `Send`; boxed, since it holds the inner service's future inside the scope.
#[must_use = "futures do nothing unless polled"]
pub struct ResponseFuture<B, E>(Pin<Box<dyn Future<Output = Result<Response<B>, E>> + Send>>);

impl<B, E> Future for ResponseFuture<B, E> {
    type Output = Result<Response<B>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx)
    }
}

impl<B, E> fmt::Debug for ResponseFuture<B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

/// How a request's scope ended, when not with a committed response.
enum Ended<B, E> {
    /// The handler answered with a status that rolls back.
    RolledBack(Response<B>),
    /// The inner service failed.
    Failed(E),
    /// The transaction itself failed (BEGIN, COMMIT, a timeout).
    Library(Error),
}

impl<B, E> From<Error> for Ended<B, E> {
    fn from(error: Error) -> Self {
        Ended::Library(error)
    }
}

impl<B, E> Ended<B, E> {
    /// Whether the handler's answer says the database refused the transaction (see
    /// [`Refused`]).
    fn refused(output: &Result<Response<B>, Ended<B, E>>) -> bool {
        matches!(output, Err(Ended::RolledBack(response)) if response.extensions().get::<Refused>().is_some())
    }

    fn describe(output: &Result<Response<B>, Ended<B, E>>, text: bool) -> Option<Facts> {
        let words = match output {
            Err(Ended::RolledBack(response)) => {
                format!("the handler answered {}", response.status())
            }
            Err(Ended::Failed(_)) => "the service failed".to_owned(),
            _ => return None,
        };
        Some(Facts::of_text(text.then_some(words)))
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for TransactionService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: http_body::Body + From<Bytes> + Send + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: Into<BoxError>,
    ResBody: From<String> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // The clone that was made ready is the one that serves this request.
        let ready = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, ready);
        let read_only = self.layer.read_only.contains(request.method());
        let scope = self
            .layer
            .scope
            .clone()
            .name(format!("{} {}", request.method(), request.uri().path()))
            .read_only(read_only || self.layer.scope.options().read_only);
        let rolls_back = self.layer.rolls_back.clone();
        let replay = self.layer.replay;
        let positions = self.layer.positions.clone();
        let carried = positions
            .as_ref()
            .and_then(|header| request.headers().get(header))
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<CommitPosition>().ok());
        let data_source = scope.options().data_source.to_string();
        let answer = async move {
            let ended = if replay.retries == 0 {
                let body = handle(inner, request, rolls_back);
                scope.run_describing(body, Ended::describe).await
            } else {
                match replayable(request, replay.body_limit).await {
                    Replayable::Buffered(parts, bytes) => {
                        let make = move || {
                            let request = Request::from_parts(parts.clone(), bytes.clone().into());
                            handle_when_ready(inner.clone(), request, rolls_back.clone())
                        };
                        let refused: Classify<_> = Arc::new(Ended::refused);
                        let options = scope.options().clone();
                        let describe = Some(Ended::describe as crate::scope::Describe<_>);
                        let rule = None::<fn(&Ended<ResBody, S::Error>) -> bool>;
                        retrying(options, replay.retries, rule, describe, Some(refused), make).await
                    }
                    Replayable::TooLarge(request) => {
                        let body = handle(inner, request, rolls_back);
                        scope.run_describing(body, Ended::describe).await
                    }
                    Replayable::Unread(status, message) => {
                        return Ok(plain(status, message));
                    }
                }
            };
            match ended {
                Ok(response) | Err(Ended::RolledBack(response)) => Ok(response),
                Err(Ended::Failed(error)) => Err(error),
                Err(Ended::Library(error)) => {
                    let (status, message) = answer(&error);
                    Ok(plain(status, message))
                }
            }
        };
        ResponseFuture(Box::pin(async move {
            let mut answered = match carried {
                Some(position) => read_after(&data_source, position, answer).await,
                None => answer.await,
            };
            if let (Some(header), Ok(response)) = (positions, answered.as_mut()) {
                let latest = commit_position(&data_source).ok().flatten();
                if let Some(position) = latest.into_iter().chain(carried).max() {
                    if let Ok(value) = HeaderValue::from_str(&position.to_string()) {
                        response.headers_mut().insert(header, value);
                    }
                }
            }
            answered
        }))
    }
}

/// A response of `status` with `message` as its body.
fn plain<B: From<String>>(status: StatusCode, message: &str) -> Response<B> {
    let mut response = Response::new(B::from(message.to_owned()));
    *response.status_mut() = status;
    response
}

/// The handler's answer to one request, as a scope's body: a response that rolls back is an
/// `Err`.
async fn handle<S, ReqBody, ResBody>(
    mut inner: S,
    request: Request<ReqBody>,
    rolls_back: RollsBack,
) -> Result<Response<ResBody>, Ended<ResBody, S::Error>>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    match inner.call(request).await {
        Ok(response) if rolls_back(response.status()) => Err(Ended::RolledBack(response)),
        Ok(response) => Ok(response),
        Err(error) => Err(Ended::Failed(error)),
    }
}

/// [`handle`] on a clone of the service, once it is ready (an attempt after the first).
async fn handle_when_ready<S, ReqBody, ResBody>(
    mut inner: S,
    request: Request<ReqBody>,
    rolls_back: RollsBack,
) -> Result<Response<ResBody>, Ended<ResBody, S::Error>>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    if let Err(error) = std::future::poll_fn(|cx| inner.poll_ready(cx)).await {
        return Err(Ended::Failed(error));
    }
    handle(inner, request, rolls_back).await
}

/// A request made ready to run more than once.
enum Replayable<B> {
    /// Its head, and its body read into memory.
    Buffered(http::request::Parts, Bytes),
    /// It declares a body larger than the limit: it runs once, as it is.
    TooLarge(Request<B>),
    /// Its body could not be read: the answer instead.
    Unread(StatusCode, &'static str),
}

/// Reads `request`'s body into memory, up to `limit` bytes.
async fn replayable<B>(request: Request<B>, limit: usize) -> Replayable<B>
where
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    let declared = request
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|length| length.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Replayable::TooLarge(request);
    }
    let (parts, body) = request.into_parts();
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Replayable::Buffered(parts, collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => Replayable::Unread(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the request body is larger than this service replays",
        ),
        Err(error) => {
            tracing::warn!(target: crate::trace::TARGET, %error, "could not read a request body");
            Replayable::Unread(
                StatusCode::BAD_REQUEST,
                "the request body could not be read",
            )
        }
    }
}

/// The status and the body a client gets for `error`: nothing about the database's insides.
/// Logged (target `transactional`): what the client does not see.
fn answer(error: &Error) -> (StatusCode, &'static str) {
    let (status, message) = if error.is_timeout() {
        (
            StatusCode::GATEWAY_TIMEOUT,
            "the request took too long and was cancelled",
        )
    } else if error.is_acquire_failure() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the service is busy: try again shortly",
        )
    } else if error.is_serialization_failure() {
        (
            StatusCode::CONFLICT,
            "the request conflicted with another one: try again",
        )
    } else {
        (StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    };
    if status.is_server_error() {
        tracing::error!(target: crate::trace::TARGET, %error, status = status.as_u16(), "answering with an error");
    } else {
        tracing::warn!(target: crate::trace::TARGET, %error, status = status.as_u16(), "answering with an error");
    }
    (status, message)
}

/// `504` for a timeout, `503` when no connection could be had, `409` for a serialization
/// failure or deadlock (the client may retry; the response carries [`Refused`], which
/// [`TransactionLayer::retry`] runs the request again on), `500` otherwise; the body says
/// which in plain words and nothing about the database. The error itself is logged.
impl IntoResponse for Error {
    fn into_response(self) -> axum_core::response::Response {
        let mut response = answer(&self).into_response();
        if self.is_serialization_failure() {
            response.extensions_mut().insert(Refused);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_says_what_the_client_can_do_and_nothing_more() {
        let timeout = Error::Timeout {
            scope: Name::from_static("POST /todos"),
            timeout: Duration::from_secs(5),
        };
        assert_eq!(answer(&timeout).0, StatusCode::GATEWAY_TIMEOUT);
        let exhausted = Error::Acquire {
            data_source: "default".into(),
            hint: "",
            source: sqlx::Error::PoolTimedOut,
        };
        assert_eq!(answer(&exhausted).0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            answer(&Error::Database(sqlx::Error::PoolClosed)).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        let (status, body) = answer(&Error::UnexpectedRollback);
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body, "internal error", "no internals in the body");
        let response = Error::UnexpectedRollback.into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
