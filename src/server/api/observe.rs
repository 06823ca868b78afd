//! What every request on a listener passes through, around its router, in one layer: load
//! shedding (public listener), panics caught into a fixed 500, `Cache-Control: no-store` on
//! every answer, request counts and latencies by listener, route template and status, and the
//! access log.
//!
//! It is one hand-written service around the finished router rather than axum middleware inside
//! it (`from_fn` layers, `CatchPanicLayer`), because each of those clones the boxed services
//! below it and boxes a future on every request: about twenty allocations (each wiped on free by
//! the binary's allocator) for a request that otherwise needs a handful. The route template is
//! the request's path when the listener has a route for it (no route has a parameter), else
//! `unmatched`: never the raw path of an unknown route, never the query.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::handler::Handler;
use axum::http::{HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, post};
use prometheus::{Histogram, IntCounter};
use tokio::sync::Semaphore;
use tower::Service;

use super::overload::RETRY_AFTER_SECS;
use super::{ApiError, Observe};

/// Fingerprints in a discovery request, attached to its response for the access log (only
/// while debug logs are on: the extension costs an allocation per request).
#[derive(Clone, Copy)]
pub struct BatchSize(pub usize);

/// The answer to one request, once everything around the router is done.
pub type ResponseFuture = Pin<Box<dyn Future<Output = Response> + Send>>;

/// In-flight slots that requests to some routes must take; one that finds none is answered
/// `503 overloaded` with `Retry-After` at once, instead of waiting in an unbounded queue.
pub struct Shed {
    /// The slots.
    pub slots: Arc<Semaphore>,
    /// The routes that take one (health checks do not: an overloaded replica is not dead).
    pub routes: Vec<&'static str>,
}

/// A handler called without the router (see [`Routes::post_direct`]), given its state.
type Direct<S> = Arc<dyn Fn(Request, S) -> ResponseFuture + Send + Sync>;

/// A handler called without the router, its state bound.
type BoundDirect = Box<dyn Fn(Request) -> ResponseFuture + Send + Sync>;

/// A router and the paths of its routes (the `route` label's values), built together so they
/// cannot disagree.
pub struct Routes<S> {
    router: Router<S>,
    paths: Vec<&'static str>,
    direct: Vec<(&'static str, Direct<S>)>,
}

impl<S: Clone + Send + Sync + 'static> Routes<S> {
    /// No routes yet.
    pub fn new() -> Self {
        Self {
            router: Router::new(),
            paths: Vec::new(),
            direct: Vec::new(),
        }
    }

    /// Adds a route at `path` (a fixed path: no parameters, no wildcards).
    pub fn route(self, path: &'static str, method_router: MethodRouter<S>) -> Self {
        let mut paths = self.paths;
        paths.push(path);
        Self {
            router: self.router.route(path, method_router),
            paths,
            direct: self.direct,
        }
    }

    /// Adds `POST path` whose requests skip the router: [`ListenerService`] calls `handler`
    /// itself (extractors and all, as axum would), saving the router's matching, its boxed
    /// route clones and futures, about a tenth of a small request's instructions. The router
    /// keeps the route for every other method (their 405).
    pub fn post_direct<H, T>(self, path: &'static str, handler: H) -> Self
    where
        H: Handler<T, S>,
        T: 'static,
    {
        let mut routes = self.route(path, post(handler.clone()));
        let direct: Direct<S> = Arc::new(move |request, state| {
            Box::pin(Handler::call(handler.clone(), request, state))
        });
        routes.direct.push((path, direct));
        routes
    }

    /// Answers requests no route matches with `handler`.
    pub fn fallback<H: Handler<T, S>, T: 'static>(self, handler: H) -> Self {
        Self {
            router: self.router.fallback(handler),
            ..self
        }
    }

    /// Answers requests whose path is routed but not their method with `handler`.
    pub fn method_not_allowed_fallback<H: Handler<T, S>, T: 'static>(self, handler: H) -> Self {
        Self {
            router: self.router.method_not_allowed_fallback(handler),
            ..self
        }
    }

    /// Changes the router without adding routes (a `route_layer`, say). Direct routes do not
    /// go through the router, so there may be none yet: a layer (a token check) would not reach
    /// them.
    pub fn map_router(self, change: impl FnOnce(Router<S>) -> Router<S>) -> Self {
        assert!(
            self.direct.is_empty(),
            "a router change would not reach direct routes"
        );
        Self {
            router: change(self.router),
            paths: self.paths,
            direct: self.direct,
        }
    }

    /// Both sets of routes.
    pub fn merge(self, other: Routes<S>) -> Self {
        let mut paths = self.paths;
        paths.extend(other.paths);
        let mut direct = self.direct;
        direct.extend(other.direct);
        Self {
            router: self.router.merge(other.router),
            paths,
            direct,
        }
    }

    /// The paths routed so far.
    pub fn paths(&self) -> &[&'static str] {
        &self.paths
    }

    /// The router (given its state) and what [`ListenerService::new`] needs of the routes.
    pub fn finish(self, state: S) -> (Router, RouteTable) {
        let direct = self
            .direct
            .into_iter()
            .map(|(path, handler)| {
                let state = state.clone();
                let bound: BoundDirect = Box::new(move |request| handler(request, state.clone()));
                (path, bound)
            })
            .collect();
        let table = RouteTable {
            paths: self.paths,
            direct,
        };
        (self.router.with_state(state), table)
    }
}

/// The paths a listener routes (the `route` label's values) and its `POST` routes that skip
/// the router.
pub struct RouteTable {
    paths: Vec<&'static str>,
    direct: Vec<(&'static str, BoundDirect)>,
}

impl<S: Clone + Send + Sync + 'static> Default for Routes<S> {
    fn default() -> Self {
        Self::new()
    }
}

/// One listener's router and what surrounds it (see the module docs). Cloning is cheap.
#[derive(Clone)]
pub struct ListenerService(Arc<Inner>);

struct Inner {
    router: Router,
    observe: Observe,
    listener: &'static str,
    routes: RouteTable,
    shed: Option<Shed>,
    /// Per route (then `unmatched`) and status of [`STATUSES`]: the request counter and latency
    /// histogram of that label set, looked up once (on its first request, when the series would
    /// appear anyway) instead of hashing three labels twice per request.
    series: Vec<[OnceLock<Series>; STATUSES.len()]>,
}

/// The statuses the API answers with (others are looked up per request).
const STATUSES: [u16; 16] = [
    200, 202, 400, 401, 403, 404, 405, 408, 410, 413, 415, 422, 429, 431, 500, 503,
];

/// One label set's request counter and latency histogram.
struct Series {
    requests: IntCounter,
    duration: Histogram,
}

impl ListenerService {
    /// `router` and its `routes` (see [`Routes::finish`]) on the listener called `listener`,
    /// shedding by `shed` if given.
    pub fn new(
        router: Router,
        routes: RouteTable,
        observe: Observe,
        listener: &'static str,
        shed: Option<Shed>,
    ) -> Self {
        let series = (0..=routes.paths.len())
            .map(|_| std::array::from_fn(|_| OnceLock::new()))
            .collect();
        Self(Arc::new(Inner {
            router,
            observe,
            listener,
            routes,
            shed,
            series,
        }))
    }

    /// Whether the access log wants the peer's address (`--log-client-ip`), as a
    /// `ConnectInfo<SocketAddr>` request extension; without it the connection loop adds none.
    pub fn wants_client_address(&self) -> bool {
        self.0.observe.log_client_ip
    }

    /// Answers `request`.
    pub fn handle<B>(&self, request: axum::http::Request<B>) -> ResponseFuture
    where
        B: axum::body::HttpBody<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        let inner = Arc::clone(&self.0);
        Box::pin(async move { inner.handle(request.map(Body::new)).await })
    }
}

impl Inner {
    async fn handle(&self, request: Request) -> Response {
        let started = Instant::now();
        let path = request.uri().path();
        let route = self.routes.paths.iter().position(|r| *r == path);
        let direct = match request.method() {
            &Method::POST => self.routes.direct.iter().find(|(p, _)| *p == path),
            _ => None,
        };
        // Read before the request moves on; kept only if the operator asked for it.
        let client_ip = self
            .observe
            .log_client_ip
            .then(|| {
                request
                    .extensions()
                    .get::<ConnectInfo<SocketAddr>>()
                    .map(|c| c.0.ip())
            })
            .flatten();
        let slot = match (&self.shed, route) {
            (Some(shed), Some(route)) if shed.routes.contains(&self.routes.paths[route]) => {
                match Arc::clone(&shed.slots).try_acquire_owned() {
                    Ok(slot) => Some(slot),
                    Err(_) => {
                        let shed = ApiError::Overloaded {
                            retry_after: RETRY_AFTER_SECS,
                        };
                        return self.finish(shed.into_response(), Some(route), started, client_ip);
                    }
                }
            }
            _ => None,
        };
        let response = match direct {
            Some((_, handler)) => match catch_unwind(AssertUnwindSafe(|| handler(request))) {
                Ok(mut future) => CatchPanic(future.as_mut()).await,
                Err(payload) => super::panic_response(payload),
            },
            None => {
                let mut router = self.router.clone();
                match catch_unwind(AssertUnwindSafe(|| router.call(request))) {
                    Ok(future) => {
                        let future = std::pin::pin!(async {
                            match future.await {
                                Ok(response) => response,
                                Err(never) => match never {},
                            }
                        });
                        CatchPanic(future).await
                    }
                    Err(payload) => super::panic_response(payload),
                }
            }
        };
        drop(slot);
        self.finish(response, route, started, client_ip)
    }

    /// Marks, counts, times and logs an answer to a request for the route at `route` in the
    /// route table (`None`: unmatched).
    fn finish(
        &self,
        mut response: Response,
        route: Option<usize>,
        started: Instant,
        client_ip: Option<std::net::IpAddr>,
    ) -> Response {
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        let status = response.status();
        let template = route.map_or("unmatched", |route| self.routes.paths[route]);
        let elapsed = started.elapsed();
        let series = || {
            let labels = [self.listener, template, status.as_str()];
            let metrics = &self.observe.metrics;
            Series {
                requests: metrics.http_requests.with_label_values(&labels),
                duration: metrics.http_duration.with_label_values(&labels),
            }
        };
        let known = STATUSES.iter().position(|s| *s == status.as_u16());
        let route_series = self.series.get(route.unwrap_or(self.routes.paths.len()));
        match (route_series, known) {
            (Some(by_status), Some(known)) => {
                let series = by_status[known].get_or_init(series);
                series.requests.inc();
                series.duration.observe(elapsed.as_secs_f64());
            }
            _ => {
                let series = series();
                series.requests.inc();
                series.duration.observe(elapsed.as_secs_f64());
            }
        }
        let batch = response.extensions().get::<BatchSize>().map_or(0, |b| b.0);
        crate::safe_debug!(
            "request",
            listener = self.listener,
            route = crate::log_safe::RouteTemplate(template),
            status = status,
            micros = elapsed.as_micros() as u64,
            batch = batch,
            client = crate::log_safe::ClientNetwork(client_ip),
        );
        response
    }
}

/// The router's answer, or the fixed 500 of [`super::panic_response`] if polling it panics.
/// The panic payload is dropped unread, so nothing it might contain reaches the client.
struct CatchPanic<F>(F);

impl<F> Future for CatchPanic<Pin<&mut F>>
where
    F: Future<Output = Response> + ?Sized,
{
    type Output = Response;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Response> {
        let inner = self.0.as_mut();
        match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Ready(response)) => Poll::Ready(response),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(super::panic_response(payload)),
        }
    }
}

/// As a tower service (benchmarks and tests drive routers with `oneshot`).
impl<B> Service<axum::http::Request<B>> for ListenerService
where
    B: axum::body::HttpBody<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Infallibly;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: axum::http::Request<B>) -> Infallibly {
        Infallibly(self.handle(request))
    }
}

/// A [`ResponseFuture`] as a tower service's future.
pub struct Infallibly(ResponseFuture);

impl Future for Infallibly {
    type Output = Result<Response, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx).map(Ok)
    }
}
