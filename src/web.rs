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
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};

use crate::http;
use crate::netsim::{Impairment, NetsimHandle};
use crate::server::WEB_PATH;
use crate::sync::lock;
use crate::tls::BrowserCerts;

/// Browsers served at once (pages, modules, hash requests).
const MAX_CONNECTIONS: usize = 256;
/// How long a request may take to send its headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

const CODEC_JS: &[u8] = include_bytes!("../web/codec.js");
const CLIENT_JS: &[u8] = include_bytes!("../web/quicbus.js");
const INDEX_HTML: &[u8] = include_bytes!("../web/index.html");
const TRADEOFF_HTML: &[u8] = include_bytes!("../web/tradeoff.html");
const TRADEOFF_JS: &[u8] = include_bytes!("../web/tradeoff.js");

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
    /// The UDP address browsers open their WebTransport session on (its
    /// port; its address stands in for `localhost`, see [`session_host`]).
    pub quic: SocketAddr,
    /// The certificate browsers are shown, if not a real one.
    pub browsers: Option<Arc<BrowserCerts>>,
    /// `quicbus demo --web`: the trade-off page and the page's path.
    pub demo: Option<DemoWeb>,
}

/// What `quicbus demo --web` adds: the trade-off page at `/`, what it
/// subscribes to (`GET /demo`), and the impairment of the page's own path,
/// which its sliders set (`GET`/`POST /netsim`).
#[derive(Clone)]
pub struct DemoWeb {
    /// What `GET /demo` answers.
    pub info: serde_json::Value,
    /// The UDP proxy between the pages and the server.
    pub netsim: Arc<NetsimHandle>,
    /// The impairment set now (both directions alike).
    pub impairment: Arc<Mutex<Impairment>>,
}

/// A running web endpoint; dropping it stops it.
#[derive(Debug)]
pub struct WebServer {
    endpoint: http::Endpoint,
}

impl WebServer {
    /// The bound address (the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint.local_addr()
    }

    /// The page's base URL, `http://ADDR/`.
    pub fn url(&self) -> String {
        format!("http://{}/", self.local_addr())
    }
}

/// Serves the web endpoint on `addr`.
pub async fn serve(addr: SocketAddr, config: WebConfig) -> Result<WebServer, WebError> {
    let handler: Arc<http::Handler> = Arc::new(move |req| respond(req, &config));
    let endpoint = http::serve(addr, "web", MAX_CONNECTIONS, HEADER_TIMEOUT, handler)
        .await
        .map_err(|source| WebError::Bind { addr, source })?;
    Ok(WebServer { endpoint })
}

fn respond(req: &Request<Incoming>, config: &WebConfig) -> Response<Full<Bytes>> {
    if let (Some(demo), "/netsim") = (&config.demo, req.uri().path()) {
        return netsim(req, demo);
    }
    if let Some(refusal) = http::only_get(req) {
        return refusal;
    }
    let html =
        |page: &'static [u8]| http::body("text/html; charset=utf-8", Bytes::from_static(page));
    match req.uri().path() {
        "/cert-hash" => cert_hash(req, config),
        "/" if config.demo.is_some() => html(TRADEOFF_HTML),
        "/" | "/index.html" => html(INDEX_HTML),
        "/tradeoff.html" => html(TRADEOFF_HTML),
        "/tradeoff.js" => javascript(TRADEOFF_JS),
        "/demo" => match &config.demo {
            Some(demo) => json(StatusCode::OK, &demo.info),
            None => http::plain(
                StatusCode::NOT_FOUND,
                "no demo here: run `quicbus demo --web 127.0.0.1:8080`\n",
            ),
        },
        "/quicbus.js" => javascript(CLIENT_JS),
        "/codec.js" => javascript(CODEC_JS),
        _ => http::plain(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// `GET /netsim`: the page's path now; `POST /netsim?loss=P&delay_ms=D&jitter_ms=J`
/// changes it (a missing parameter keeps its value) in both directions.
fn netsim(req: &Request<Incoming>, demo: &DemoWeb) -> Response<Full<Bytes>> {
    let current = *lock(&demo.impairment);
    let answer = |status, impairment: &Impairment| json(status, &impairment_json(impairment));
    if req.method() == hyper::Method::GET || req.method() == hyper::Method::HEAD {
        return answer(StatusCode::OK, &current);
    }
    if req.method() != hyper::Method::POST {
        return http::plain(StatusCode::METHOD_NOT_ALLOWED, "use GET or POST\n");
    }
    if !same_origin(req) {
        return json(
            StatusCode::FORBIDDEN,
            &serde_json::json!({ "error": "only this demo's own pages may change the path" }),
        );
    }
    let next = match impairment_from_query(req.uri().query().unwrap_or(""), current) {
        Ok(next) => next,
        Err(error) => {
            return json(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({ "error": error }),
            )
        }
    };
    if let Err(e) = demo.netsim.set_impairment(next, next) {
        return json(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({ "error": e.to_string() }),
        );
    }
    *lock(&demo.impairment) = next;
    tracing::info!(
        loss = next.loss_pct,
        delay = ?next.delay,
        jitter = ?next.jitter,
        "the page's path changed"
    );
    answer(StatusCode::OK, &next)
}

fn impairment_json(i: &Impairment) -> serde_json::Value {
    serde_json::json!({
        "loss": i.loss_pct,
        "delay_ms": i.delay.as_millis() as u64,
        "jitter_ms": i.jitter.as_millis() as u64,
    })
}

/// `current` with the query's `loss` (percent), `delay_ms` and `jitter_ms`.
fn impairment_from_query(query: &str, current: Impairment) -> Result<Impairment, String> {
    let mut next = current;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let number = |what: &str| {
            value
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| format!("{what} must be a number of at least 0, got '{value}'"))
        };
        match key {
            "loss" => next.loss_pct = number("loss")?,
            "delay_ms" => next.delay = millis(number("delay_ms")?)?,
            "jitter_ms" => next.jitter = millis(number("jitter_ms")?)?,
            other => {
                return Err(format!(
                    "unknown parameter '{other}' (loss, delay_ms, jitter_ms)"
                ))
            }
        }
    }
    next.validate().map_err(|e| e.to_string())?;
    Ok(next)
}

/// `ms` milliseconds, if a `Duration` holds them (validation then bounds it).
fn millis(ms: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(ms / 1000.0).map_err(|_| format!("{ms} ms is out of range"))
}

/// Whether a request that changes something comes from a page of this
/// endpoint: browsers send `Origin` with a cross-site POST, which must
/// name the same host and port as `Host`. Tools without `Origin` (curl)
/// are let through.
fn same_origin(req: &Request<Incoming>) -> bool {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return true;
    };
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    let origin = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, rest)| rest);
    matches!((origin, host), (Some(origin), Some(host)) if origin.eq_ignore_ascii_case(host))
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = http::body("application/json", Bytes::from(value.to_string()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn javascript(source: &'static [u8]) -> Response<Full<Bytes>> {
    http::body("text/javascript; charset=utf-8", Bytes::from_static(source))
}

/// Where to open the WebTransport session and which certificate to pin.
fn cert_hash(req: &Request<Incoming>, config: &WebConfig) -> Response<Full<Bytes>> {
    let host = session_host(page_host(req), config.quic);
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
        "url": format!("https://{host}:{}{WEB_PATH}", config.quic.port()),
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

/// The host a page opens its session on: the page's own host, so that a
/// page loaded from another machine dials the server by the name it used.
/// Two exceptions: without a usable `Host`, the server's address; and for
/// `localhost`, the server's own loopback address when it listens on one,
/// because Chromium dials `[::1]` for `localhost` over QUIC and does not
/// fall back to `127.0.0.1` as it does over TCP.
fn session_host(page: Option<String>, quic: SocketAddr) -> String {
    let literal = || match quic.ip() {
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    match page {
        Some(host) if host.eq_ignore_ascii_case("localhost") && quic.ip().is_loopback() => {
            literal()
        }
        Some(host) => host,
        None if quic.ip().is_unspecified() => "127.0.0.1".to_string(),
        None => literal(),
    }
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

    #[test]
    fn localhost_pages_dial_the_servers_loopback_address() {
        let v4: SocketAddr = "127.0.0.1:4433".parse().unwrap();
        let v6: SocketAddr = "[::1]:4433".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:4433".parse().unwrap();
        let page = |h: &str| Some(h.to_string());
        assert_eq!(session_host(page("localhost"), v4), "127.0.0.1");
        assert_eq!(session_host(page("LOCALHOST"), v6), "[::1]");
        assert_eq!(session_host(page("localhost"), any), "localhost");
        assert_eq!(session_host(page("example.test"), any), "example.test");
        assert_eq!(session_host(page("127.0.0.1"), v4), "127.0.0.1");
        assert_eq!(session_host(None, v4), "127.0.0.1");
        assert_eq!(session_host(None, any), "127.0.0.1");
    }

    #[test]
    fn the_path_is_set_from_the_query_and_checked() {
        let none = Impairment::default();
        let set = impairment_from_query("loss=5&delay_ms=20&jitter_ms=2.5", none).unwrap();
        assert_eq!(set.loss_pct, 5.0);
        assert_eq!(set.delay, Duration::from_millis(20));
        assert_eq!(set.jitter, Duration::from_micros(2500));
        // A missing parameter keeps its value.
        let kept = impairment_from_query("loss=1", set).unwrap();
        assert_eq!(
            (kept.loss_pct, kept.delay),
            (1.0, Duration::from_millis(20))
        );
        assert!(impairment_from_query("loss=101", none).is_err());
        assert!(impairment_from_query("loss=-1", none).is_err());
        assert!(impairment_from_query("loss=NaN", none).is_err());
        assert!(impairment_from_query("delay_ms=lots", none).is_err());
        assert!(impairment_from_query("speed=9", none).is_err());
        // Far too long, or beyond what a Duration holds: refused, not a panic.
        assert!(impairment_from_query("delay_ms=1e300", none).is_err());
        assert!(impairment_from_query("jitter_ms=1e20", none).is_err());
        assert!(impairment_from_query("delay_ms=3600001", none).is_err());
        assert_eq!(impairment_from_query("", set).unwrap(), set);
    }
}
