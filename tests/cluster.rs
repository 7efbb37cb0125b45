//! Several `quicbus serve --cluster` nodes (child processes) on our own
//! `nats-server -js` (also child processes, on free ports with temporary
//! stores): rooms shared across nodes, a node killed under a subscriber,
//! NATS restarted under load, and a NATS cluster losing a server.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use common::metrics::{scrape, scrape_until};
use common::nats::{Nats, TcpGate};
use common::process::ServeProcess;
use common::within;
use quicbus::client::{
    Client, ClientError, ClientOptions, Delivery, Event, Events, Incoming, Trust,
};
use quicbus::netsim::{Netsim, NetsimConfig};
use quicbus::wire::{ErrorCode, Recovery, ResumeOutcome};

/// A quicbus node of the cluster on `urls`, under certificates in `dir`.
async fn node(dir: &Path, urls: &str, name: &str, extra: &[&str]) -> ServeProcess {
    let mut args = vec!["--cluster", urls, "--node", name];
    args.extend_from_slice(extra);
    ServeProcess::start(dir, &args).await
}

fn options(first: &ServeProcess, others: &[&ServeProcess]) -> ClientOptions {
    let mut options = ClientOptions::new(first.addr);
    options.servers = others.iter().map(|s| s.addr).collect();
    options.trust = Trust::CaFile(first.ca());
    common::quick(&mut options);
    options.connect_timeout = Duration::from_secs(1);
    options
}

async fn client(first: &ServeProcess, others: &[&ServeProcess]) -> (Client, Events) {
    within("connect", Client::connect(options(first, others)))
        .await
        .unwrap()
}

/// What a test checks of a reliable event: room, name, offset, payload.
type Sent = (String, String, u64, Vec<u8>);

fn reliable(event: &Event) -> Sent {
    let Delivery::Reliable { offset } = event.delivery else {
        panic!("expected a reliable event, got {event:?}");
    };
    (
        event.room.to_string(),
        event.name.clone(),
        offset,
        event.payload.to_vec(),
    )
}

/// The next reliable event, skipping nothing else: a datagram here is a bug.
async fn next_reliable(events: &mut Events, what: &str) -> Sent {
    reliable(&common::next_event(events, what).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_deliver_every_event_to_every_subscriber_in_order_once() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(&dir.path().join("js")).await;
    let a = node(dir.path(), &nats.url(), "a", &[]).await;
    let b = node(dir.path(), &nats.url(), "b", &[]).await;
    let c = node(dir.path(), &nats.url(), "c", &[]).await;
    let rooms = ["chat", "game.1"];

    let mut subscribers = Vec::new();
    for at in [&a, &c] {
        let (sub, events) = client(at, &[]).await;
        for room in rooms.iter().chain(["cursors"].iter()) {
            sub.join(room).await.unwrap();
        }
        subscribers.push((sub, events));
    }
    let (publisher, _publisher_events) = client(&b, &[]).await;

    let mut sent: Vec<Sent> = Vec::new();
    for i in 0..30 {
        let room = rooms[i % 2];
        let name = if i % 2 == 0 { "say" } else { "move" };
        let payload = format!("{room}:{i}").into_bytes();
        let offset = publisher
            .emit_with_ack(room, name, payload.clone())
            .await
            .unwrap();
        sent.push((room.to_string(), name.to_string(), offset, payload));
    }
    // Then a burst with many publishes in flight at once (the node
    // pipelines them into JetStream): stored and acknowledged in the order
    // sent.
    let mut pending = Vec::new();
    for i in 30..130 {
        let room = rooms[i % 2];
        let payload = format!("{room}:{i}").into_bytes();
        let ack = publisher
            .emit_acked(room, "burst", payload.clone())
            .await
            .unwrap();
        pending.push((room, payload, ack));
    }
    for (room, payload, ack) in pending {
        let offset = within("a burst ack", ack.wait()).await.unwrap();
        sent.push((room.to_string(), "burst".to_string(), offset, payload));
    }
    // Offsets are stream sequences: increasing in each room in the order
    // sent (a room's publishes are one stream; rooms interleave freely).
    for (room, events) in by_room(&sent) {
        assert!(
            events.windows(2).all(|w| w[0].2 < w[1].2),
            "{room}: {events:?}"
        );
    }

    for (n, (_, events)) in subscribers.iter_mut().enumerate() {
        let mut received = Vec::new();
        for _ in 0..sent.len() {
            received.push(next_reliable(events, &format!("events on subscriber {n}")).await);
        }
        // Each room is its own stream: in order within a room, and no
        // order promised across rooms.
        assert_eq!(
            by_room(&received),
            by_room(&sent),
            "subscriber {n}: every event, in order, once"
        );
    }

    // Datagrams cross nodes too. They may be lost, so send until each
    // subscriber has one; a reliable event now would be a duplicate.
    for (n, (_, events)) in subscribers.iter_mut().enumerate() {
        let datagram = within("a datagram across nodes", async {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            loop {
                tokio::select! {
                    _ = tick.tick() => publisher.emit_datagram("cursors", "pos", &b"x:1,y:2"[..]).await.unwrap(),
                    event = events.next() => return event.unwrap(),
                }
            }
        })
        .await;
        assert_eq!(&*datagram.room, "cursors", "subscriber {n}");
        assert_eq!(datagram.name, "pos");
        assert_eq!(&datagram.payload[..], b"x:1,y:2");
        assert!(
            matches!(datagram.delivery, Delivery::Datagram { seq } if seq >= 1),
            "{datagram:?}"
        );
    }

    // A subscriber joining later on any node recovers the same history
    // from the stream: same offsets, names and payloads.
    let (late, mut late_events) = client(&b, &[]).await;
    let joined = late
        .join_with(
            "chat",
            quicbus::client::JoinOptions {
                since: Some(0),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let chat: Vec<Sent> = sent.iter().filter(|s| s.0 == "chat").cloned().collect();
    assert_eq!(
        joined.recovery,
        Recovery::Recovered {
            replayed: chat.len() as u64
        }
    );
    assert_eq!(joined.offset, chat.last().unwrap().2.max(joined.offset));
    let mut replayed = Vec::new();
    for _ in 0..chat.len() {
        replayed.push(next_reliable(&mut late_events, "replayed history").await);
    }
    assert_eq!(replayed, chat);
}

/// Publishes `count` reliable events to `rooms` in turn, one every `pace`,
/// retrying each until acknowledged (a node or NATS may be away for a
/// while); returns what was acknowledged and the errors seen.
async fn publish_steadily(
    publisher: &Client,
    rooms: &[&str],
    count: usize,
    pace: Duration,
    errors: &std::sync::Mutex<Vec<ClientError>>,
) -> Vec<Sent> {
    let mut sent = Vec::new();
    let mut tick = tokio::time::interval(pace);
    for i in 0..count {
        let room = rooms[i % rooms.len()];
        let payload = format!("{room}#{i}").into_bytes();
        loop {
            tick.tick().await;
            match publisher.emit_with_ack(room, "tick", payload.clone()).await {
                Ok(offset) => {
                    sent.push((room.to_string(), "tick".to_string(), offset, payload));
                    break;
                }
                Err(e) => {
                    let mut errors = errors.lock().unwrap();
                    assert!(errors.len() < 2_000, "too many failures: {e}");
                    errors.push(e);
                }
            }
        }
    }
    sent
}

/// Every publish that failed was refused as `Unavailable` (NATS away).
fn assert_only_unavailable(errors: &std::sync::Mutex<Vec<ClientError>>) {
    let failures = std::mem::take(&mut *errors.lock().unwrap());
    assert!(
        failures.iter().all(|e| matches!(
            e,
            ClientError::Rejected {
                code: ErrorCode::Unavailable,
                ..
            }
        )),
        "{failures:?}"
    );
}

/// Each room's events, in the order received.
fn by_room(events: &[Sent]) -> HashMap<String, Vec<Sent>> {
    let mut rooms: HashMap<String, Vec<Sent>> = HashMap::new();
    for event in events {
        rooms
            .entry(event.0.clone())
            .or_default()
            .push(event.clone());
    }
    rooms
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_whose_node_is_killed_resumes_on_another_with_every_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(&dir.path().join("js")).await;
    let a = node(dir.path(), &nats.url(), "a", &[]).await;
    let b = node(dir.path(), &nats.url(), "b", &[]).await;
    let c = node(dir.path(), &nats.url(), "c", &[]).await;
    let rooms = ["stream.one", "stream.two"];

    // The subscriber reaches node A through netsim, to lose A's acks.
    let mut path = NetsimConfig::new("127.0.0.1:0".parse().unwrap(), a.addr);
    path.seed = 11;
    let path = Netsim::start(path).await.unwrap();
    let mut via = options(&a, &[&c]);
    via.server = path.local_addr();
    let (subscriber, mut events) = within("connect", Client::connect(via)).await.unwrap();
    for room in rooms {
        subscriber.join(room).await.unwrap();
    }
    let (publisher, _publisher_events) = client(&b, &[]).await;
    let errors = std::sync::Mutex::new(Vec::new());
    let total = 120;
    let publishing = publish_steadily(
        &publisher,
        &rooms,
        total,
        Duration::from_millis(10),
        &errors,
    );
    tokio::pin!(publishing);

    // Watches the subscriber's own emits from another node.
    let (observer, mut observed) = client(&b, &[]).await;
    observer.join("own").await.unwrap();
    let mut own = Vec::new();
    let mut seen = Vec::new();
    let mut resumed = None;
    let mut received: Vec<Sent> = Vec::new();
    let mut recoveries = Vec::new();
    let mut a = Some(a);
    let mut sent = None;
    within("every event, across the node's death", async {
        loop {
            if let Some(sent) = &sent {
                let sent: &Vec<Sent> = sent;
                if received.len() >= sent.len() {
                    return;
                }
            }
            tokio::select! {
                done = &mut publishing, if sent.is_none() => sent = Some(done),
                incoming = events.next_incoming() => match incoming.unwrap() {
                    Incoming::Event(event) => {
                        received.push(reliable(&event));
                        if received.len() == 30 {
                            // Mid-stream, the subscriber emits events of its
                            // own that node A stores but whose acks never
                            // reach it; then node A dies at once.
                            common::cut_way_back(&path);
                            for i in 0..5 {
                                let payload = format!("mine#{i}").into_bytes();
                                own.push(subscriber.emit_acked("own", "mine", payload).await.unwrap());
                            }
                            for _ in 0..5 {
                                seen.push(reliable(&observed.next().await.unwrap()));
                            }
                            a.take().unwrap().kill9().await;
                        }
                    }
                    Incoming::Recovery { room, recovery } => recoveries.push((room.to_string(), recovery)),
                    Incoming::Reconnected { resumed: outcome } => resumed = Some(outcome),
                    Incoming::Disconnected { .. } => {}
                    other => panic!("unexpected: {other:?}"),
                },
            }
        }
    })
    .await;
    // The session moved with the client: node C took it over.
    assert_eq!(resumed, Some(ResumeOutcome::Resumed));
    // Its emits were resent by the client and published once each, in order.
    let mut acked = Vec::new();
    for pending in own {
        acked.push(
            within("an ack of an own emit", pending.wait())
                .await
                .unwrap(),
        );
    }
    let marker = publisher
        .emit_with_ack("own", "marker", &b"end"[..])
        .await
        .unwrap();
    within("the marker, and no own emit twice", async {
        loop {
            let event = reliable(&observed.next().await.unwrap());
            if event.1 == "marker" {
                assert_eq!(event.2, marker);
                return;
            }
            seen.push(event);
        }
    })
    .await;
    let expected: Vec<Sent> = (0..5)
        .map(|i| {
            let payload = format!("mine#{i}").into_bytes();
            ("own".to_string(), "mine".to_string(), acked[i], payload)
        })
        .collect();
    assert_eq!(
        seen, expected,
        "each own emit once, with its acknowledged offset"
    );
    let sent = sent.unwrap();
    assert!(a.is_none(), "node A was killed mid-stream");
    assert_eq!(sent.len(), total);
    assert!(
        errors.lock().unwrap().is_empty(),
        "the publisher's node never went away"
    );
    // Per room: every event, in order, once (replay of each room then live).
    assert_eq!(by_room(&received), by_room(&sent));
    recoveries.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(recoveries.len(), rooms.len(), "{recoveries:?}");
    for ((room, recovery), expected) in recoveries.iter().zip(rooms) {
        assert_eq!(room, expected);
        assert!(
            matches!(recovery, Recovery::Recovered { .. }),
            "{room}: {recovery:?}"
        );
    }
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_nats_is_down_publishes_are_unavailable_and_nothing_acknowledged_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let mut nats = Nats::start(&dir.path().join("js")).await;
    let a = node(dir.path(), &nats.url(), "a", &["--metrics", "127.0.0.1:0"]).await;
    let b = node(dir.path(), &nats.url(), "b", &["--metrics", "127.0.0.1:0"]).await;
    let (a_metrics, b_metrics) = (metrics_addr(&a), metrics_addr(&b));
    let rooms = ["load.a", "load.b"];
    let (subscriber, mut events) = client(&a, &[]).await;
    for room in rooms {
        subscriber.join(room).await.unwrap();
    }
    let (publisher, _publisher_events) = client(&b, &[]).await;
    // Node B's own subscribers go on receiving its datagrams meanwhile.
    let (local, mut local_events) = client(&b, &[]).await;
    local.join("cursors").await.unwrap();

    let errors = std::sync::Mutex::new(Vec::new());
    let total = 90;
    let publishing = publish_steadily(&publisher, &rooms, total, Duration::from_millis(5), &errors);
    tokio::pin!(publishing);
    let mut received: Vec<Sent> = Vec::new();
    let mut restarted = false;
    let sent = within("publishing across a NATS restart", async {
        loop {
            tokio::select! {
                sent = &mut publishing => return sent,
                event = events.next() => {
                    received.push(reliable(&event.unwrap()));
                    if received.len() == 20 && !restarted {
                        restarted = true;
                        nats.kill9().await;
                        // Refused while NATS is away, with the typed error.
                        let refused = within("a refusal", async {
                            loop {
                                match publisher.emit_with_ack("load.a", "probe", &b"x"[..]).await {
                                    Err(e) => return e,
                                    Ok(_) => tokio::task::yield_now().await,
                                }
                            }
                        }).await;
                        assert!(
                            matches!(&refused, ClientError::Rejected { code: ErrorCode::Unavailable, .. }),
                            "{refused:?}"
                        );
                        // Its metrics say so.
                        let down = scrape_until(b_metrics, "node B to see NATS gone", |s| {
                            s.get("quicbus_cluster_connected") == 0
                        })
                        .await;
                        assert!(down.get("quicbus_cluster_publish_failures_total") >= 1);
                        // Datagrams within node B still flow.
                        within("a local datagram while NATS is down", async {
                            let mut tick = tokio::time::interval(Duration::from_millis(50));
                            loop {
                                tokio::select! {
                                    _ = tick.tick() => publisher.emit_datagram("cursors", "pos", &b"p"[..]).await.unwrap(),
                                    event = local_events.next() => {
                                        assert_eq!(&*event.unwrap().room, "cursors");
                                        return;
                                    }
                                }
                            }
                        }).await;
                        nats.restart().await;
                    }
                }
            }
        }
    })
    .await;
    assert!(restarted);
    assert_eq!(sent.len(), total);
    assert_only_unavailable(&errors);
    // Every acknowledged event arrives, in order, once; a probe refused
    // by the node was never stored.
    within("the rest of the events", async {
        while received.len() < sent.len() {
            received.push(reliable(&events.next().await.unwrap()));
        }
    })
    .await;
    assert_eq!(by_room(&received), by_room(&sent));
    for (addr, name) in [(a_metrics, "A"), (b_metrics, "B")] {
        let up = scrape_until(addr, &format!("node {name} back on NATS"), |s| {
            s.get("quicbus_cluster_connected") == 1
                && s.get("quicbus_cluster_reconnects_total") >= 1
        })
        .await;
        assert_eq!(up.get("quicbus_cluster_malformed_total"), 0);
    }
    assert_eq!(
        scrape(a_metrics)
            .await
            .get("quicbus_cluster_rooms_followed"),
        2
    );
}

/// Where a node serves `--metrics`, from what it said at startup.
fn metrics_addr(node: &ServeProcess) -> std::net::SocketAddr {
    node.startup
        .iter()
        .find_map(|l| l.strip_prefix("quicbus metrics on http://"))
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("no metrics address in {:?}", node.startup))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_cluster_losing_a_server_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut servers = Nats::cluster(dir.path(), 3).await;
    let urls: Vec<String> = servers.iter().map(|s| s.url()).collect();
    let urls = urls.join(",");
    let a = node(dir.path(), &urls, "a", &["--cluster-replicas", "3"]).await;
    let b = node(dir.path(), &urls, "b", &["--cluster-replicas", "3"]).await;
    let rooms = ["r3.one", "r3.two"];
    let (subscriber, mut events) = client(&a, &[]).await;
    for room in rooms {
        subscriber.join(room).await.unwrap();
    }
    let (publisher, _publisher_events) = client(&b, &[]).await;
    let errors = std::sync::Mutex::new(Vec::new());
    let mut sent =
        publish_steadily(&publisher, &rooms, 20, Duration::from_millis(5), &errors).await;
    // Whichever server led the stream or held a node's connection: the
    // other two keep a quorum of the three replicas.
    servers[0].kill9().await;
    sent.extend(publish_steadily(&publisher, &rooms, 20, Duration::from_millis(5), &errors).await);
    let mut received = Vec::new();
    within("every acknowledged event", async {
        while received.len() < sent.len() {
            received.push(reliable(&events.next().await.unwrap()));
        }
    })
    .await;
    assert_eq!(by_room(&received), by_room(&sent));
    assert!(sent.windows(2).all(|w| w[0].2 < w[1].2), "{sent:?}");
    assert_only_unavailable(&errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_nats_reads_what_it_missed_when_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(&dir.path().join("js")).await;
    // Node A reaches NATS only through a gate the test can close.
    let gate = TcpGate::start(nats.port).await;
    let through_gate = format!("nats://127.0.0.1:{}", gate.port);
    let a = node(
        dir.path(),
        &through_gate,
        "a",
        &["--metrics", "127.0.0.1:0"],
    )
    .await;
    let b = node(dir.path(), &nats.url(), "b", &[]).await;
    let rooms = ["cut.one", "cut.two"];
    let (subscriber, mut events) = client(&a, &[]).await;
    for room in rooms {
        subscriber.join(room).await.unwrap();
    }
    let (publisher, _publisher_events) = client(&b, &[]).await;
    let errors = std::sync::Mutex::new(Vec::new());
    let mut sent =
        publish_steadily(&publisher, &rooms, 10, Duration::from_millis(2), &errors).await;
    let mut received = Vec::new();
    within("the events before the cut", async {
        while received.len() < sent.len() {
            received.push(reliable(&events.next().await.unwrap()));
        }
    })
    .await;
    let a_metrics = metrics_addr(&a);
    // Each room's first check of the stream (a second after it is
    // followed) is done: from here on only a reconnect makes one.
    scrape_until(a_metrics, "the rooms' first stream checks", |s| {
        s.get("quicbus_cluster_stream_checks_total") >= 2
    })
    .await;
    gate.cut();
    scrape_until(a_metrics, "node A to lose NATS", |s| {
        s.get("quicbus_cluster_connected") == 0
    })
    .await;
    // Stored while node A cannot hear of them; nothing is published after
    // the gate opens, so they reach A's subscriber only from the stream.
    sent.extend(publish_steadily(&publisher, &rooms, 20, Duration::from_millis(2), &errors).await);
    gate.open();
    within("the events stored while node A was cut off", async {
        while received.len() < sent.len() {
            received.push(reliable(&events.next().await.unwrap()));
        }
    })
    .await;
    assert_eq!(by_room(&received), by_room(&sent));
    assert!(errors.lock().unwrap().is_empty());
    let after = scrape(a_metrics).await;
    assert!(
        after.get("quicbus_cluster_caught_up_total") >= 20,
        "{}",
        after.text
    );
    assert!(after.get("quicbus_cluster_reconnects_total") >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_takes_its_cluster_settings_from_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(&dir.path().join("js")).await;
    let config = dir.path().join("quicbus.toml");
    let text = format!(
        "cluster = [\"{}\"]\nnode = \"from-file\"\ncluster-prefix = \"filebus\"\n",
        nats.url()
    );
    std::fs::write(&config, text).unwrap();
    let config = config.display().to_string();
    let a = ServeProcess::start(dir.path(), &["--config", &config]).await;
    let joined = a
        .startup
        .iter()
        .find(|l| l.starts_with("node from-file joined the cluster on "))
        .unwrap_or_else(|| panic!("{:?}", a.startup));
    assert!(joined.contains("stream FILEBUS_EVENTS"), "{joined}");
    // A second node from flags on the same prefix shares its rooms.
    let b = node(
        dir.path(),
        &nats.url(),
        "b",
        &["--cluster-prefix", "filebus"],
    )
    .await;
    let (sub, mut events) = client(&a, &[]).await;
    sub.join("cfg").await.unwrap();
    let (publisher, _e) = client(&b, &[]).await;
    let offset = publisher
        .emit_with_ack("cfg", "hi", &b"there"[..])
        .await
        .unwrap();
    let got = next_reliable(&mut events, "an event from the other node").await;
    assert_eq!(got, ("cfg".into(), "hi".into(), offset, b"there".to_vec()));
}

#[tokio::test]
async fn bad_cluster_settings_are_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs").display().to_string();
    let serve = |extra: &[&str]| {
        let mut cmd = common::process::quicbus();
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--certs", &certs])
            .args(extra);
        cmd
    };
    let unreachable = format!("nats://127.0.0.1:{}", common::nats::free_port());
    for (args, expected) in [
        (
            vec!["--cluster", "bogus://x:1"],
            "--cluster: NATS address: invalid scheme",
        ),
        (
            vec!["--cluster", unreachable.as_str(), "--cluster-prefix", "a.b"],
            "--cluster: cluster prefix \"a.b\"",
        ),
        (
            vec!["--cluster", unreachable.as_str()],
            "--cluster: no NATS server answered at nats://127.0.0.1:",
        ),
    ] {
        let outcome = common::process::run(&mut serve(&args)).await;
        common::process::assert_one_line_failure(outcome, expected);
    }
    // Cluster flags without --cluster are a usage error.
    let (code, _, stderr) = common::process::run(&mut serve(&["--node", "a"])).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--cluster <URLS>"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissions_apply_on_every_node() {
    use quicbus::auth::token::{mint_hs256, unix_now, TokenRequest};
    use quicbus::auth::{Action, PermissionLists};
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "one secret for every node of the cluster").unwrap();
    let secret_arg = secret.display().to_string();
    let nats = Nats::start(&dir.path().join("js")).await;
    let auth = ["--auth-secret-file", secret_arg.as_str()];
    let a = node(dir.path(), &nats.url(), "a", &auth).await;
    let b = node(dir.path(), &nats.url(), "b", &auth).await;
    let token = |user: &str, publish: &[&str], subscribe: &[&str]| {
        let owned = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        let request = TokenRequest {
            user: user.into(),
            permissions: PermissionLists {
                publish: owned(publish),
                subscribe: owned(subscribe),
                history: owned(subscribe),
            },
            ttl: 600,
        };
        mint_hs256(
            b"one secret for every node of the cluster",
            &request,
            unix_now(),
        )
        .unwrap()
    };
    let mut reader_options = options(&a, &[]);
    reader_options.token = Some(token("reader", &[], &["news.>"]));
    let (reader, mut events) = within("connect", Client::connect(reader_options))
        .await
        .unwrap();
    let mut writer_options = options(&b, &[]);
    writer_options.token = Some(token("writer", &["news.>"], &[]));
    let (writer, _writer_events) = within("connect", Client::connect(writer_options))
        .await
        .unwrap();

    reader.join("news.today").await.unwrap();
    let refused = reader.join("secret.plans").await.unwrap_err();
    assert!(
        matches!(&refused, ClientError::Forbidden { room, action: Action::Subscribe } if room == "secret.plans"),
        "{refused:?}"
    );
    let publish_refused = |refused: ClientError| {
        assert!(
            matches!(
                &refused,
                ClientError::Forbidden {
                    action: Action::Publish,
                    ..
                }
            ),
            "{refused:?}"
        );
    };
    publish_refused(
        reader
            .emit_with_ack("news.today", "say", &b"no"[..])
            .await
            .unwrap_err(),
    );
    publish_refused(
        writer
            .emit_with_ack("secret.plans", "say", &b"no"[..])
            .await
            .unwrap_err(),
    );
    let offset = writer
        .emit_with_ack("news.today", "headline", &b"all quiet"[..])
        .await
        .unwrap();
    let got = next_reliable(&mut events, "the writer's event on the reader's node").await;
    assert_eq!(
        got,
        (
            "news.today".into(),
            "headline".into(),
            offset,
            b"all quiet".to_vec()
        )
    );
}
