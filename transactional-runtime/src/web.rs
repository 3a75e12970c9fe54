//! A transaction per HTTP request, for axum and any tower service over `http` types (the
//! `axum` feature), and the HTTP answer for the library's errors.
//!
//! ```no_run
//! use std::time::Duration;
//! use axum::{routing::post, Router};
//! use http::Method;
//! use transactional_runtime::web::TransactionLayer;
//!
//! # async fn create_todo() -> &'static str { "" }
//! let app: Router = Router::new()
//!     .route("/todos", post(create_todo))
//!     .layer(
//!         TransactionLayer::new()
//!             .timeout(Duration::from_secs(5))
//!             .read_only_methods([Method::GET, Method::HEAD]),
//!     );
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

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum_core::response::IntoResponse;
use http::{Method, Request, Response, StatusCode};
use tower_layer::Layer;
use tower_service::Service;

use crate::builder::Transactional;
use crate::error::Error;
use crate::inspect::Facts;
use crate::name::Name;
use crate::options::{Isolation, Propagation};

type RollsBack = Arc<dyn Fn(StatusCode) -> bool + Send + Sync>;

/// A tower [`Layer`] that runs each request in a transactional scope. See the
/// [module](self) documentation.
#[derive(Clone)]
pub struct TransactionLayer {
    scope: Transactional,
    read_only: Vec<Method>,
    rolls_back: RollsBack,
}

impl fmt::Debug for TransactionLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransactionLayer")
            .field("scope", self.scope.options())
            .field("read_only", &self.read_only)
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
    ReqBody: Send + 'static,
    ResBody: From<String> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ResBody>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // The clone that was made ready is the one that serves this request.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let read_only = self.layer.read_only.contains(request.method());
        let scope = self
            .layer
            .scope
            .clone()
            .name(format!("{} {}", request.method(), request.uri().path()))
            .read_only(read_only || self.layer.scope.options().read_only);
        let rolls_back = self.layer.rolls_back.clone();
        Box::pin(async move {
            let body = async move {
                match inner.call(request).await {
                    Ok(response) if rolls_back(response.status()) => {
                        Err(Ended::RolledBack(response))
                    }
                    Ok(response) => Ok(response),
                    Err(error) => Err(Ended::Failed(error)),
                }
            };
            match scope.run_describing(body, Ended::describe).await {
                Ok(response) | Err(Ended::RolledBack(response)) => Ok(response),
                Err(Ended::Failed(error)) => Err(error),
                Err(Ended::Library(error)) => {
                    let (status, message) = answer(&error);
                    let mut response = Response::new(ResBody::from(message.to_owned()));
                    *response.status_mut() = status;
                    Ok(response)
                }
            }
        })
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
        tracing::error!(target: "transactional", %error, status = status.as_u16(), "answering with an error");
    } else {
        tracing::warn!(target: "transactional", %error, status = status.as_u16(), "answering with an error");
    }
    (status, message)
}

/// `504` for a timeout, `503` when no connection could be had, `409` for a serialization
/// failure or deadlock (the client may retry), `500` otherwise; the body says which in plain
/// words and nothing about the database. The error itself is logged.
impl IntoResponse for Error {
    fn into_response(self) -> axum_core::response::Response {
        answer(&self).into_response()
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
