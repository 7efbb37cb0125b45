//! Scraping `--metrics` in tests: `GET /metrics` with hyper's own HTTP/1
//! client, parsed into samples.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::header;
use hyper::Request;
use hyper_util::rt::TokioIo;

use super::{within, WAIT};

/// One HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

/// `GET path` on `addr` with hyper's HTTP/1 client, within the test timeout.
pub async fn get(addr: SocketAddr, path: &str, accept: Option<&str>) -> Answer {
    within("an HTTP answer", async {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        let mut request = Request::get(path).header(header::HOST, addr.to_string());
        if let Some(accept) = accept {
            request = request.header(header::ACCEPT, accept);
        }
        let response = sender
            .send_request(request.body(Empty::<Bytes>::new()).unwrap())
            .await
            .unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            content_type,
            body: String::from_utf8(body.to_vec()).unwrap(),
        }
    })
    .await
}

/// One scrape: every sample by `name{labels}`, and the raw text.
#[derive(Debug)]
pub struct Scrape {
    pub samples: BTreeMap<String, u64>,
    pub text: String,
}

impl Scrape {
    /// The value of `series` (say `quicbus_limits_hit_total{kind="x"}`).
    pub fn get(&self, series: &str) -> u64 {
        match self.samples.get(series) {
            Some(v) => *v,
            None => panic!("no {series} in\n{}", self.text),
        }
    }
}

/// Parses the Prometheus text format: `# ` lines are comments, every other
/// line is `series value`.
pub fn parse(text: &str) -> Scrape {
    let samples = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_string(), value.parse().unwrap())
        })
        .collect();
    Scrape {
        samples,
        text: text.to_string(),
    }
}

/// Scrapes `GET /metrics` (default Accept: the classic text format).
pub async fn scrape(addr: SocketAddr) -> Scrape {
    let answer = get(addr, "/metrics", None).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(
        answer.content_type, "text/plain; version=0.0.4; charset=utf-8",
        "the Prometheus text format"
    );
    parse(&answer.body)
}

/// Scrapes until `done` holds; fails with the last scrape after [`WAIT`].
pub async fn scrape_until(addr: SocketAddr, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let scrape = scrape(addr).await;
        if done(&scrape) {
            return scrape;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "timed out waiting for {what}; last scrape:\n{}",
                scrape.text
            );
        }
        // Counters move as the server works: the next scrape (an HTTP
        // round trip) is the wait, bounded by the deadline.
        tokio::task::yield_now().await;
    }
}
