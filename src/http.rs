//! The small HTTP/1 server under `--metrics` and `--web`: a bounded number
//! of connections, a header timeout, and one synchronous handler that
//! answers each request from what is in memory.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};

/// Answers one request.
pub(crate) type Handler = dyn Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Send + Sync;

/// A running HTTP endpoint; dropping it stops it and closes its
/// connections.
#[derive(Debug)]
pub(crate) struct Endpoint {
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Endpoint {
    /// The bound address (the real port when bound to port 0).
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `addr` and serves it with `handler` (see [`accept_loop`]).
pub(crate) async fn serve(
    addr: SocketAddr,
    name: &'static str,
    max_connections: usize,
    header_timeout: Duration,
    handler: Arc<Handler>,
) -> std::io::Result<Endpoint> {
    let listener = TcpListener::bind(addr).await?;
    let local_addr = listener.local_addr()?;
    let task = tokio::spawn(accept_loop(
        listener,
        name,
        max_connections,
        header_timeout,
        handler,
    ));
    Ok(Endpoint { local_addr, task })
}

/// Serves `listener` with `handler` until the task is aborted (which also
/// ends its connections). At most `max_connections` at once; more are
/// closed on accept. `name` labels the logs.
async fn accept_loop(
    listener: TcpListener,
    name: &'static str,
    max_connections: usize,
    header_timeout: Duration,
    handler: Arc<Handler>,
) {
    let slots = Arc::new(Semaphore::new(max_connections));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors, say: retrying at once would spin.
                        tracing::warn!("{name}: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::debug!("{name}: {max_connections} connections open, closing a new one");
                    continue;
                };
                let handler = handler.clone();
                let service = service_fn(move |req| {
                    let response = handler(&req);
                    async move { Ok::<_, Infallible>(response) }
                });
                let connection = http.serve_connection(TokioIo::new(stream), service);
                connections.spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!("{name}: connection ended: {e}");
                    }
                    drop(slot);
                });
            }
            Some(_) = connections.join_next() => {}
        }
    }
}

/// `None` for GET and HEAD; for anything else, the 405 to answer.
pub(crate) fn only_get(req: &Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    if req.method() == Method::GET || req.method() == Method::HEAD {
        return None;
    }
    let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    Some(response)
}

/// A response with `body` of type `content_type`.
pub(crate) fn body(content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A plain-text response.
pub(crate) fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = body(
        "text/plain; charset=utf-8",
        Bytes::from_static(text.as_bytes()),
    );
    *response.status_mut() = status;
    response
}
