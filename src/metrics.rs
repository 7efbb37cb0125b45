//! `quicbus serve --metrics ADDR`: the server's counters ([`ServerStats`])
//! over HTTP, for Prometheus (or anything that speaks its format) to scrape.
//!
//! Nothing is copied between scrapes: a `prometheus-client` [`Collector`]
//! reads one [`StatsSnapshot`] per scrape and hands it to the crate's
//! encoder, which writes the Prometheus text format (0.0.4), or OpenMetrics
//! when the scraper's `Accept` asks for it. `GET /metrics` is the only page.
//!
//! Every [`Limit`] in [`Limit::ALL`] is a `kind` of
//! `quicbus_limits_hit_total`, so a new defence shows up without an edit here.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header;
use hyper::{Request, Response, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::text as openmetrics_text;
use prometheus_client::encoding::{prometheus_text, DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::http::{self, plain};
use crate::server::backplane::cluster::ClusterBackplane;
use crate::server::{Limit, Refusal, ServerStats, StatsSnapshot};

/// The one page served.
pub const PATH: &str = "/metrics";

/// Scrapers served at once; more connections are closed on accept. A
/// Prometheus needs one; this only keeps a flood from costing memory.
const MAX_CONNECTIONS: usize = 32;

/// How long a request may take to send its headers; also how long an idle
/// keep-alive connection stays open (longer than Prometheus's shortest
/// usual scrape interval, 15 s, so its connection is reused).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// The defences that refuse a connection attempt: they are also reasons of
/// `quicbus_handshakes_refused_total`.
const HANDSHAKE_LIMITS: [Limit; 3] = [
    Limit::ConnectionsPerIp,
    Limit::HandshakeRatePerIp,
    Limit::FailedHellos,
];

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The TCP address could not be bound (in use, not local, not allowed).
    #[error("cannot serve metrics on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running metrics endpoint; dropping it stops it and closes its
/// connections.
#[derive(Debug)]
pub struct MetricsServer {
    endpoint: http::Endpoint,
}

impl MetricsServer {
    /// The bound address (the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint.local_addr()
    }

    /// The URL to scrape, `http://ADDR/metrics`.
    pub fn url(&self) -> String {
        format!("http://{}{PATH}", self.local_addr())
    }
}

/// Binds `addr` (TCP) and serves `stats` at `GET /metrics` until the
/// returned [`MetricsServer`] is dropped. Call inside a Tokio runtime.
pub async fn serve(
    addr: SocketAddr,
    stats: Arc<ServerStats>,
) -> Result<MetricsServer, MetricsError> {
    serve_node(addr, stats, None).await
}

/// [`serve`] for a node of a cluster: also the state of its connection to
/// NATS (`quicbus_cluster_*`).
pub async fn serve_node(
    addr: SocketAddr,
    stats: Arc<ServerStats>,
    cluster: Option<Arc<ClusterBackplane>>,
) -> Result<MetricsServer, MetricsError> {
    let registry = registry(stats, cluster);
    let handler: Arc<http::Handler> = Arc::new(move |req| respond(req, &registry));
    let endpoint = http::serve(addr, "metrics", MAX_CONNECTIONS, HEADER_TIMEOUT, handler)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    Ok(MetricsServer { endpoint })
}

/// A registry whose entries read `stats` (and the cluster's health) at
/// each scrape.
fn registry(stats: Arc<ServerStats>, cluster: Option<Arc<ClusterBackplane>>) -> Registry {
    let mut registry = Registry::with_prefix("quicbus");
    registry.register_collector(Box::new(StatsCollector { stats }));
    if let Some(cluster) = cluster {
        registry.register_collector(Box::new(ClusterCollector { cluster }));
    }
    registry
}

/// The cluster backplane's health at scrape time.
struct ClusterCollector {
    cluster: Arc<ClusterBackplane>,
}

impl fmt::Debug for ClusterCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCollector").finish_non_exhaustive()
    }
}

impl Collector for ClusterCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let h = self.cluster.health();
        let gauges: [(&str, &str, i64); 2] = [
            (
                "cluster_connected",
                "1 while this node is connected to NATS; 0 while reliable publishes are refused (Unavailable).",
                i64::from(h.connected),
            ),
            (
                "cluster_rooms_followed",
                "Rooms this node follows (has subscribers in).",
                i64::try_from(h.rooms_followed).unwrap_or(i64::MAX),
            ),
        ];
        for (name, help, value) in gauges {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(value).encode(metric)?;
        }
        let counters = [
            (
                "cluster_reconnects",
                "Reconnects to NATS since the start.",
                h.reconnects,
            ),
            (
                "cluster_publish_failures",
                "Reliable publishes refused because JetStream did not store them.",
                h.publish_failures,
            ),
            (
                "cluster_gaps",
                "Times live delivery missed events that were then read from the stream.",
                h.gaps,
            ),
            (
                "cluster_stream_checks",
                "Times a followed room read the stream for events it may have missed \
                 (after it starts, after a reconnect or slow-consumer report, every 30 s).",
                h.checks,
            ),
            (
                "cluster_caught_up",
                "Events delivered from the stream rather than live.",
                h.caught_up,
            ),
            (
                "cluster_malformed",
                "Messages on this bus's subjects that could not be read.",
                h.malformed,
            ),
            (
                "cluster_stale_datagrams",
                "Datagrams from other nodes dropped as older than one already delivered.",
                h.stale_datagrams,
            ),
            (
                "cluster_datagrams_dropped",
                "Datagrams not sent to other nodes because NATS was not keeping up.",
                h.datagrams_dropped,
            ),
        ];
        for (name, help, value) in counters {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(metric)?;
        }
        Ok(())
    }
}

/// The answer to one request.
fn respond(req: &Request<Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    if req.uri().path() != PATH {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: metrics are at GET /metrics\n",
        );
    }
    if let Some(refusal) = http::only_get(req) {
        return refusal;
    }
    let mut body = String::new();
    let (encoded, content_type) = if wants_openmetrics(req) {
        (
            openmetrics_text::encode(&mut body, registry),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
    } else {
        (
            prometheus_text::encode(&mut body, registry),
            prometheus_text::CONTENT_TYPE,
        )
    };
    if encoded.is_err() {
        return plain(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n");
    }
    http::body(content_type, Bytes::from(body))
}

/// Prometheus asks for OpenMetrics first in its `Accept`; curl asks for
/// anything and gets the classic text format.
fn wants_openmetrics(req: &Request<Incoming>) -> bool {
    req.headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"))
}

/// Turns the server's atomics into metric families at scrape time.
#[derive(Debug)]
struct StatsCollector {
    stats: Arc<ServerStats>,
}

impl Collector for StatsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let s = self.stats.snapshot();
        for (name, help, value) in counters(&s) {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(metric)?;
        }
        for (name, help, value) in gauges(&s) {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(value).encode(metric)?;
        }
        labelled_counters(
            &mut encoder,
            "handshakes_refused",
            "Connection attempts turned away, by reason: retry (answered with a QUIC Retry \
             first), handshake_bound (too many handshakes in progress), timeout (handshake \
             not finished in time), busy (server at its connection limit), and the per-IP \
             defences connections_per_ip, handshake_rate_per_ip, failed_hellos.",
            "reason",
            handshake_refusals(&s),
        )?;
        labelled_counters(
            &mut encoder,
            "limits_hit",
            "Refusals by each defence (kind); history_budget counts events dropped early.",
            "kind",
            Limit::ALL.map(|kind| (kind.name(), s.limit(kind))),
        )?;
        labelled_counters(
            &mut encoder,
            "refusals",
            "What clients were not allowed (kind): tokens refused at Hello or Refresh \
             (token_required, token_expired, token_invalid), connections closed when their \
             token expired (expired_live), actions their permissions do not allow \
             (forbidden_publish, forbidden_subscribe, forbidden_history), resumes of \
             another user's session, and namespace rules (datagrams_disabled, \
             payload_too_large).",
            "kind",
            Refusal::ALL.map(|kind| (kind.name(), s.refusal(kind))),
        )
    }
}

/// Unlabelled counters: name (the encoder adds `quicbus_` and `_total`),
/// help, value.
fn counters(s: &StatsSnapshot) -> [(&'static str, &'static str, u64); 10] {
    [
        (
            "connections_accepted",
            "Connections that completed the QUIC handshake and got a session.",
            s.connections_accepted,
        ),
        (
            "events_in",
            "Events accepted from publishers: reliable events and datagrams.",
            s.events_published + s.datagrams_published,
        ),
        (
            "events_out",
            "Events and datagrams handed to QUIC for subscribers (replays included).",
            s.events_out,
        ),
        (
            "bytes_in",
            "Event name and payload bytes of accepted publishes, reliable and datagram.",
            s.bytes_in,
        ),
        (
            "bytes_out",
            "Frame bytes handed to QUIC for subscribers: room streams and datagrams.",
            s.bytes_out,
        ),
        (
            "slow_consumers",
            "Connections closed because they did not keep up with their rooms.",
            s.slow_consumers,
        ),
        (
            "dedup_hits",
            "Retried publishes answered from the publish log, not published again.",
            s.dedup_hits,
        ),
        (
            "protocol_errors",
            "Connections closed for a protocol violation.",
            s.protocol_errors,
        ),
        (
            "datagrams_dropped",
            "Datagrams dropped from full per-connection rings or too large to send.",
            s.datagrams_dropped,
        ),
        (
            "unknown_room_ids",
            "Frames dropped for using a room id their connection was never given.",
            s.unknown_room_ids,
        ),
    ]
}

/// Gauges: name (the encoder adds `quicbus_`), help, value.
fn gauges(s: &StatsSnapshot) -> [(&'static str, &'static str, u64); 2] {
    [
        (
            "connections_active",
            "Sessions running now.",
            s.active_sessions,
        ),
        (
            "history_bytes",
            "History kept across all rooms, in bytes (updated once a second).",
            s.history_bytes,
        ),
    ]
}

/// `quicbus_handshakes_refused_total` by `reason`.
fn handshake_refusals(s: &StatsSnapshot) -> Vec<(&'static str, u64)> {
    let mut reasons = vec![
        ("retry", s.handshakes_retried),
        ("handshake_bound", s.handshakes_refused),
        ("timeout", s.handshakes_timed_out),
        ("busy", s.connections_refused),
    ];
    reasons.extend(HANDSHAKE_LIMITS.map(|kind| (kind.name(), s.limit(kind))));
    reasons
}

/// One counter family with a sample per `(label value, count)`.
fn labelled_counters(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    samples: impl IntoIterator<Item = (&'static str, u64)>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, count) in samples {
        ConstCounter::new(count).encode(family.encode_family(&[(label, value)])?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    fn scrape(
        stats: &Arc<ServerStats>,
        encode: fn(&mut String, &Registry) -> fmt::Result,
    ) -> String {
        let mut text = String::new();
        encode(&mut text, &registry(stats.clone(), None)).unwrap();
        text
    }

    #[test]
    fn every_limit_kind_and_reason_is_exposed_with_its_count() {
        let stats = Arc::new(ServerStats::default());
        stats.limit_hit(Limit::PublishRate);
        stats.limit_hits(Limit::FailedHellos, 3);
        stats.handshakes_retried.store(5, Ordering::Relaxed);
        stats.connections_refused.store(2, Ordering::Relaxed);
        let text = scrape(&stats, prometheus_text::encode);
        for kind in Limit::ALL {
            let want = match kind {
                Limit::PublishRate => 1,
                Limit::FailedHellos => 3,
                _ => 0,
            };
            let line = format!(
                "quicbus_limits_hit_total{{kind=\"{}\"}} {want}\n",
                kind.name()
            );
            assert!(text.contains(&line), "missing {line:?} in\n{text}");
        }
        stats.refused(Refusal::Subscribe);
        let text = scrape(&stats, prometheus_text::encode);
        for kind in Refusal::ALL {
            let want = u64::from(kind == Refusal::Subscribe);
            let line = format!(
                "quicbus_refusals_total{{kind=\"{}\"}} {want}\n",
                kind.name()
            );
            assert!(text.contains(&line), "missing {line:?} in\n{text}");
        }
        for line in [
            "quicbus_handshakes_refused_total{reason=\"retry\"} 5\n",
            "quicbus_handshakes_refused_total{reason=\"busy\"} 2\n",
            "quicbus_handshakes_refused_total{reason=\"failed_hellos\"} 3\n",
            "quicbus_handshakes_refused_total{reason=\"timeout\"} 0\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn values_are_read_at_scrape_time_with_help_and_type() {
        let stats = Arc::new(ServerStats::default());
        let registry = registry(stats.clone(), None);
        stats.events_published.store(4, Ordering::Relaxed);
        stats.datagrams_published.store(3, Ordering::Relaxed);
        stats.history_bytes.store(1234, Ordering::Relaxed);
        stats.active_sessions.store(2, Ordering::Relaxed);
        let mut text = String::new();
        prometheus_text::encode(&mut text, &registry).unwrap();
        for line in [
            "# TYPE quicbus_events_in_total counter\n",
            "quicbus_events_in_total 7\n",
            "# TYPE quicbus_history_bytes gauge\n",
            "quicbus_history_bytes 1234\n",
            "quicbus_connections_active 2\n",
            "# HELP quicbus_dedup_hits_total ",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        let families = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
        let helps = text.lines().filter(|l| l.starts_with("# HELP ")).count();
        assert_eq!(families, helps, "every family has HELP text");
    }

    #[test]
    fn openmetrics_ends_with_eof() {
        let stats = Arc::new(ServerStats::default());
        let text = scrape(&stats, openmetrics_text::encode);
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains("quicbus_bytes_out_total 0\n"), "{text}");
    }
}
