//! `--metrics`: the Prometheus endpoint scraped over HTTP while real clients
//! publish over QUIC, from the library and from the `quicbus` binary.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;

use common::metrics::{get, scrape, scrape_until, Scrape};
use common::process::{quicbus, run, ServeProcess};
use common::{next_event, within, TestServer};
use quicbus::certs;
use quicbus::client::{Client, ClientOptions, Delivery, Trust};
use quicbus::metrics::MetricsServer;
use quicbus::server::{Limit, Server, ServerConfig, ServerIdentity};

/// A server on 127.0.0.1:0 and its metrics on 127.0.0.1:0.
async fn server_with_metrics() -> (TestServer, MetricsServer) {
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..ServerConfig::default()
    };
    let certs = certs::generate(&[]).unwrap();
    let identity = ServerIdentity::from_dev_certs(&certs).unwrap();
    let server = Server::bind(config, identity).unwrap();
    let stats = server.stats();
    let handle = server.spawn();
    let metrics = quicbus::metrics::serve("127.0.0.1:0".parse().unwrap(), stats)
        .await
        .unwrap();
    (TestServer { handle, certs }, metrics)
}

/// Every defence and every refusal reason, all at 0, and the counters that
/// stay at 0 when all goes well.
fn assert_nothing_refused(scrape: &Scrape) {
    for kind in Limit::ALL {
        let series = format!("quicbus_limits_hit_total{{kind=\"{}\"}}", kind.name());
        assert_eq!(scrape.get(&series), 0, "{series}");
    }
    for reason in [
        "retry",
        "handshake_bound",
        "timeout",
        "busy",
        "connections_per_ip",
        "handshake_rate_per_ip",
        "failed_hellos",
    ] {
        let series = format!("quicbus_handshakes_refused_total{{reason=\"{reason}\"}}");
        assert_eq!(scrape.get(&series), 0, "{series}");
    }
    for series in [
        "quicbus_slow_consumers_total",
        "quicbus_dedup_hits_total",
        "quicbus_protocol_errors_total",
        "quicbus_datagrams_dropped_total",
    ] {
        assert_eq!(scrape.get(series), 0, "{series}");
    }
}

#[tokio::test]
async fn scrape_counts_what_two_clients_publish() {
    let (server, metrics) = server_with_metrics().await;
    let addr = metrics.local_addr();
    assert_eq!(metrics.url(), format!("http://{addr}/metrics"));

    let (a, mut a_events) = server.client().await;
    let (b, mut b_events) = server.client().await;
    a.join("room-a").await.unwrap();
    b.join("room-b").await.unwrap();

    // Each publishes into the other's room: reliable events (acked, so the
    // server has them) and datagrams.
    let mut bytes_in = 0;
    for i in 0..3u8 {
        a.emit_with_ack("room-b", "reliable", vec![i; 10])
            .await
            .unwrap();
        b.emit_with_ack("room-a", "note", vec![i; 100])
            .await
            .unwrap();
        bytes_in += "reliable".len() + 10 + "note".len() + 100;
    }
    for i in 0..2u8 {
        a.emit_datagram("room-b", "pos", vec![i; 7]).await.unwrap();
        b.emit_datagram("room-a", "position", vec![i; 20])
            .await
            .unwrap();
        bytes_in += "pos".len() + 7 + "position".len() + 20;
    }
    for (events, room, (reliable, reliable_size), (datagram, datagram_size)) in [
        (&mut a_events, "room-a", ("note", 100), ("position", 20)),
        (&mut b_events, "room-b", ("reliable", 10), ("pos", 7)),
    ] {
        let (mut reliables, mut datagrams) = (Vec::new(), Vec::new());
        while reliables.len() + datagrams.len() < 5 {
            let event = next_event(events, room).await;
            assert_eq!(&*event.room, room);
            match event.delivery {
                Delivery::Reliable { offset } => {
                    assert_eq!(event.name, reliable);
                    reliables.push((offset, event.payload.to_vec()));
                }
                Delivery::Datagram { .. } => {
                    assert_eq!(event.name, datagram);
                    datagrams.push(event.payload.to_vec());
                }
            }
        }
        let want: Vec<_> = (0..3u8)
            .map(|i| (u64::from(i) + 1, vec![i; reliable_size]))
            .collect();
        assert_eq!(reliables, want, "{room}");
        let want: Vec<_> = (0..2u8).map(|i| vec![i; datagram_size]).collect();
        assert_eq!(datagrams, want, "{room}");
    }

    // 6 reliable events and 4 datagrams in, each delivered to one subscriber.
    let scrape = scrape_until(addr, "10 events in and out", |s| {
        s.get("quicbus_events_in_total") == 10 && s.get("quicbus_events_out_total") == 10
    })
    .await;
    assert_eq!(scrape.get("quicbus_bytes_in_total"), bytes_in as u64);
    assert!(
        scrape.get("quicbus_bytes_out_total") > bytes_in as u64,
        "frames carry more than name and payload:\n{}",
        scrape.text
    );
    assert_eq!(scrape.get("quicbus_connections_active"), 2);
    assert_eq!(scrape.get("quicbus_connections_accepted_total"), 2);
    // Filled once a second by the history; here only its presence is sure.
    scrape.get("quicbus_history_bytes");
    assert_nothing_refused(&scrape);
    for family in [
        "quicbus_events_in_total counter",
        "quicbus_history_bytes gauge",
        "quicbus_connections_active gauge",
        "quicbus_limits_hit_total counter",
        "quicbus_handshakes_refused_total counter",
    ] {
        assert!(
            scrape.text.contains(&format!("# TYPE {family}\n")),
            "{family}"
        );
    }
    let families = scrape.text.matches("# TYPE ").count();
    assert_eq!(scrape.text.matches("# HELP ").count(), families);

    // Values are read at scrape time: a client leaving shows at once.
    a.close().await;
    scrape_until(addr, "one connection left", |s| {
        s.get("quicbus_connections_active") == 1
    })
    .await;
    drop(b);
}

#[tokio::test]
async fn only_metrics_is_served_and_openmetrics_on_request() {
    let (_server, metrics) = server_with_metrics().await;
    let addr = metrics.local_addr();

    let other = get(addr, "/", None).await;
    assert_eq!(other.status, 404, "{other:?}");
    let other = get(addr, "/metrics/extra", None).await;
    assert_eq!(other.status, 404, "{other:?}");

    let open = get(
        addr,
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
    )
    .await;
    assert_eq!(open.status, 200, "{open:?}");
    assert_eq!(
        open.content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(open.body.ends_with("# EOF\n"), "{}", open.body);
    assert!(open.body.contains("quicbus_connections_active 0\n"));

    // Dropping the server stops the endpoint.
    drop(metrics);
    within("the endpoint to close", async {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

/// `quicbus serve --metrics 127.0.0.1:0` says where it serves; scraping it
/// shows the same server the clients use.
#[tokio::test]
async fn serve_prints_the_metrics_url_and_serves_it() {
    let dir = tempfile::tempdir().unwrap();
    let serve = ServeProcess::start(dir.path(), &["--memory", "--metrics", "127.0.0.1:0"]).await;
    let urls: Vec<&str> = serve
        .startup
        .iter()
        .filter_map(|l| l.strip_prefix("quicbus metrics on "))
        .collect();
    let [url] = urls[..] else {
        panic!("one metrics line expected: {:?}", serve.startup);
    };
    let addr: SocketAddr = url
        .strip_prefix("http://")
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("not a metrics URL: {url}"))
        .parse()
        .unwrap();
    assert_ne!(addr.port(), 0, "the bound port, not the asked one");

    let scrape = scrape(addr).await;
    assert_eq!(scrape.get("quicbus_connections_active"), 0);
    assert_nothing_refused(&scrape);

    let mut options = ClientOptions::new(serve.addr);
    options.trust = Trust::CaFile(serve.ca());
    let (client, _events) = within("connect", Client::connect(options)).await.unwrap();
    client
        .emit_with_ack("room", "hello", "world")
        .await
        .unwrap();
    let scrape = scrape_until(addr, "the client's event", |s| {
        s.get("quicbus_events_in_total") == 1
    })
    .await;
    assert_eq!(scrape.get("quicbus_connections_active"), 1);
    assert_eq!(
        scrape.get("quicbus_bytes_in_total"),
        ("hello".len() + "world".len()) as u64
    );
    client.close().await;
    serve.terminate().await;
}

#[tokio::test]
async fn serve_ends_with_one_line_when_metrics_cannot_bind() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, _stdout, stderr) = run(quicbus()
        .args(["serve", "--memory", "--listen", "127.0.0.1:0", "--certs"])
        .arg(dir.path().join("certs"))
        .args(["--metrics", &addr]))
    .await;
    assert_eq!(code, 1, "{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("created development certificates"))
        .collect();
    let [error] = errors[..] else {
        panic!("one line expected: {stderr}");
    };
    assert!(
        error.starts_with(&format!("quicbus: error: cannot serve metrics on {addr}: ")),
        "{error}"
    );
}
