//! `quicbus serve --web ADDR`: what a browser needs over plain HTTP before
//! it opens its WebTransport session on the server's QUIC port: the
//! JavaScript client, and where to connect with which certificate hash.
//!
//! - `GET /cert-hash`: `{"url": "https://HOST:PORT/quicbus", "hashes":
//!   [base64 SHA-256, …], "expires": unix seconds | null}`. `HOST` is the
//!   host the page was loaded from (its `Host` header), `PORT` the QUIC
//!   port. With development certificates `hashes` holds the browser
//!   certificate's hash (renewed before it expires: the client asks again
//!   on every connect); with a real certificate it is empty and browsers
//!   verify the server as for any HTTPS site.
//! - `GET /quicbus.js`: the JavaScript client, and `GET /codec.js`, the
//!   wire codec it imports (ES modules, web/, embedded in the binary).
//! - `GET /`: the chat page (web/index.html).
//!
//! Pages are plain HTTP: browsers treat `http://127.0.0.1` and
//! `http://localhost` as secure contexts, where WebTransport is allowed;
//! from another host, serve the page over HTTPS.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::http;
use crate::server::WEB_PATH;
use crate::tls::BrowserCerts;

/// Browsers served at once (pages, modules, hash requests).
const MAX_CONNECTIONS: usize = 256;
/// How long a request may take to send its headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

const CODEC_JS: &[u8] = include_bytes!("../web/codec.js");
const CLIENT_JS: &[u8] = include_bytes!("../web/quicbus.js");
const INDEX_HTML: &[u8] = include_bytes!("../web/index.html");

/// Why the web endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("cannot serve the web pages on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What the pages need to know of the QUIC server.
#[derive(Clone)]
pub struct WebConfig {
    /// The UDP port browsers open their WebTransport session on.
    pub quic_port: u16,
    /// The certificate browsers are shown, if not a real one.
    pub browsers: Option<Arc<BrowserCerts>>,
}

/// A running web endpoint; dropping it stops it.
#[derive(Debug)]
pub struct WebServer {
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl WebServer {
    /// The bound address (the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The page's base URL, `http://ADDR/`.
    pub fn url(&self) -> String {
        format!("http://{}/", self.local_addr)
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves the web endpoint on `addr`.
pub async fn serve(addr: SocketAddr, config: WebConfig) -> Result<WebServer, WebError> {
    let bind_error = |source| WebError::Bind { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
    let local_addr = listener.local_addr().map_err(bind_error)?;
    let handler: Arc<http::Handler> = Arc::new(move |req| respond(req, &config));
    let task = tokio::spawn(http::accept_loop(
        listener,
        "web",
        MAX_CONNECTIONS,
        HEADER_TIMEOUT,
        handler,
    ));
    Ok(WebServer { local_addr, task })
}

fn respond(req: &Request<Incoming>, config: &WebConfig) -> Response<Full<Bytes>> {
    if let Some(refusal) = http::only_get(req) {
        return refusal;
    }
    match req.uri().path() {
        "/cert-hash" => cert_hash(req, config),
        "/" | "/index.html" => {
            http::body("text/html; charset=utf-8", Bytes::from_static(INDEX_HTML))
        }
        "/quicbus.js" => javascript(CLIENT_JS),
        "/codec.js" => javascript(CODEC_JS),
        _ => http::plain(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn javascript(source: &'static [u8]) -> Response<Full<Bytes>> {
    http::body("text/javascript; charset=utf-8", Bytes::from_static(source))
}

/// Where to open the WebTransport session and which certificate to pin.
fn cert_hash(req: &Request<Incoming>, config: &WebConfig) -> Response<Full<Bytes>> {
    let host = page_host(req).unwrap_or_else(|| "127.0.0.1".to_string());
    let (hashes, expires) = match &config.browsers {
        Some(certs) => (
            vec![base64::engine::general_purpose::STANDARD.encode(certs.sha256())],
            certs
                .not_after()
                .duration_since(UNIX_EPOCH)
                .ok()
                .map(|d| d.as_secs()),
        ),
        None => (Vec::new(), None),
    };
    let answer = serde_json::json!({
        "url": format!("https://{host}:{}{WEB_PATH}", config.quic_port),
        "hashes": hashes,
        "expires": expires,
    });
    let mut response = http::body("application/json", Bytes::from(answer.to_string()));
    let headers = response.headers_mut();
    // A new hash after every renewal: never from a cache.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Pages served elsewhere (a developer's own server) may ask too.
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    response
}

/// The host name (or address) of the request's `Host` header, without
/// its port; `None` if absent or not a plain host.
fn page_host(req: &Request<Incoming>) -> Option<String> {
    let host = req.headers().get(header::HOST)?.to_str().ok()?;
    host_of(host)
}

fn host_of(host: &str) -> Option<String> {
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        format!("[{}]", rest.split(']').next()?)
    } else {
        host.split(':').next()?.to_string()
    };
    let plain = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    (!name.is_empty() && plain).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_comes_without_its_port() {
        assert_eq!(host_of("127.0.0.1:8080").as_deref(), Some("127.0.0.1"));
        assert_eq!(host_of("localhost").as_deref(), Some("localhost"));
        assert_eq!(host_of("[::1]:8080").as_deref(), Some("[::1]"));
        assert_eq!(host_of("example.test:80").as_deref(), Some("example.test"));
        assert_eq!(host_of("evil\"host"), None);
        assert_eq!(host_of(""), None);
        assert_eq!(host_of(":80"), None);
    }
}
