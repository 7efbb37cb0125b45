//! Restarts and crashes of a `quicbus serve` child process (SIGKILL and
//! SIGTERM) on the same data directory: nothing acknowledged is lost,
//! nothing is delivered twice or under the wrong room, sessions resume and
//! every room recovers.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::process::{quicbus, run, ServeProcess};
use common::within;
use quicbus::client::{
    Client, ClientOptions, Delivery, Event, Events, Incoming, Recovery, ResumeOutcome, Trust,
};
use quicbus::netsim::{Netsim, NetsimConfig};

fn options(addr: std::net::SocketAddr, server: &ServeProcess) -> ClientOptions {
    let mut options = ClientOptions::new(addr);
    options.trust = Trust::CaFile(server.ca());
    common::quick(&mut options);
    options
}

async fn connect(server: &ServeProcess) -> (Client, Events) {
    within("connect", Client::connect(options(server.addr, server)))
        .await
        .unwrap()
}

async fn serve(dir: &Path) -> ServeProcess {
    let data = dir.join("data");
    ServeProcess::start(dir, &["--data", data.to_str().unwrap()]).await
}

async fn incoming(events: &mut Events) -> Incoming {
    within("an event or notice", events.next_incoming())
        .await
        .expect("the client closed")
}

/// Reads notices until every room in `rooms` has reported its recovery and
/// the client says it reconnected; asserts each recovered and the session
/// resumed.
async fn expect_recovered(events: &mut Events, rooms: &[String]) {
    let mut pending: Vec<&String> = rooms.iter().collect();
    loop {
        match incoming(events).await {
            Incoming::Disconnected { .. } => {}
            Incoming::Recovery { room, recovery } => {
                assert!(
                    matches!(recovery, Recovery::Recovered { .. }),
                    "room {room}: {recovery:?}"
                );
                pending.retain(|r| r.as_str() != &*room);
            }
            Incoming::Reconnected { resumed } => {
                assert_eq!(resumed, ResumeOutcome::Resumed);
                assert!(pending.is_empty(), "no recovery notice for {pending:?}");
                return;
            }
            Incoming::Event(e) => panic!("event before the recovery notices: {e:?}"),
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn text(event: &Event) -> String {
    String::from_utf8(event.payload.to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_crash_every_event_arrives_under_its_own_room() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path()).await;
    let rooms: Vec<String> = (0..6).map(|i| format!("room.{i}")).collect();
    let (sub, mut sub_events) = connect(&server).await;
    for room in &rooms {
        assert_eq!(sub.join(room).await.unwrap(), 0);
    }
    let (publisher, _p) = connect(&server).await;
    for room in &rooms {
        let offset = publisher.emit_with_ack(room, "before", room.clone()).await;
        assert_eq!(offset.unwrap(), 1);
    }
    for _ in &rooms {
        let e = within("event before the crash", sub_events.next())
            .await
            .unwrap();
        assert_eq!(text(&e), *e.room, "payload names the room it was sent to");
        assert_eq!(e.name, "before");
        assert_eq!(e.delivery, Delivery::Reliable { offset: 1 });
    }
    let epoch = sub.epoch();
    publisher.close().await;

    let server = server.kill9().await.start().await;
    // Another client names the rooms first, in the opposite order, so that
    // anything numbered by the order of naming would now differ.
    let (publisher, _p) = connect(&server).await;
    for room in rooms.iter().rev() {
        publisher.join(room).await.unwrap();
    }
    expect_recovered(&mut sub_events, &rooms).await;
    assert_eq!(sub.epoch(), epoch, "the epoch is stored with the data");
    for room in rooms.iter().rev() {
        assert_eq!(
            publisher
                .emit_with_ack(room, "after", room.clone())
                .await
                .unwrap(),
            2
        );
        // Datagrams use per-connection ids too.
        publisher
            .emit_datagram(room, "pos", room.clone())
            .await
            .unwrap();
    }
    let mut reliable = 0;
    let mut datagrams = 0;
    while reliable < rooms.len() {
        let e = within("event after the restart", sub_events.next())
            .await
            .unwrap();
        assert_eq!(text(&e), *e.room, "payload names the room it was sent to");
        match e.delivery {
            Delivery::Reliable { offset } => {
                assert_eq!((e.name.as_str(), offset), ("after", 2));
                reliable += 1;
            }
            Delivery::Datagram { .. } => {
                assert_eq!(e.name, "pos");
                datagrams += 1;
            }
        }
    }
    // Datagrams are best effort, but never under another room's name.
    assert!(datagrams <= rooms.len());
}

/// What the subscriber checks of each room: every payload `N` in order, no
/// gap, no repeat, offsets rising.
#[derive(Default)]
struct RoomProgress {
    next: u64,
    last_offset: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_publishers_lose_nothing_across_a_crash_and_a_graceful_restart() {
    const PER_ROOM: u64 = 300;
    let dir = tempfile::tempdir().unwrap();
    let mut server = Some(serve(dir.path()).await);
    let first = server.as_ref().unwrap();
    let rooms: Vec<String> = (0..3)
        .flat_map(|p| [format!("p{p}.a"), format!("p{p}.b")])
        .collect();
    let (sub, mut events) = connect(first).await;
    for room in &rooms {
        sub.join(room).await.unwrap();
    }
    // Each publisher stops before each third until the server has been
    // stopped, then goes on at once. The server is stopped halfway through
    // a third, with events in flight, and events follow every restart.
    let (phase, phases) = tokio::sync::watch::channel(0u64);
    let mut publishers = Vec::new();
    for p in 0..3 {
        let (client, _events) = connect(first).await;
        let mine: Vec<String> = vec![format!("p{p}.a"), format!("p{p}.b")];
        let mut phases = phases.clone();
        publishers.push(tokio::spawn(async move {
            let _events = _events;
            let mut tick = tokio::time::interval(Duration::from_millis(2));
            for n in 0..PER_ROOM {
                let stage = n / (PER_ROOM / 3);
                within("the next stage", phases.wait_for(|p| *p >= stage))
                    .await
                    .unwrap();
                tick.tick().await;
                for room in &mine {
                    client.emit(room, "n", format!("{room}:{n}")).await.unwrap();
                }
            }
            // A marker after the last: nothing may come between.
            for room in &mine {
                within("marker ack", client.emit_with_ack(room, "end", "end"))
                    .await
                    .unwrap();
            }
            client
        }));
    }

    let total = PER_ROOM * rooms.len() as u64;
    let mut progress: HashMap<Arc<str>, RoomProgress> = HashMap::new();
    let mut received = 0u64;
    let mut ended = 0;
    let mut crashes = 0;
    while ended < rooms.len() {
        let e = match incoming(&mut events).await {
            Incoming::Event(e) => e,
            Incoming::Disconnected { .. } => {
                expect_recovered(&mut events, &rooms).await;
                continue;
            }
            other => panic!("unexpected notice outside a reconnect: {other:?}"),
        };
        let room = progress.entry(e.room.clone()).or_default();
        let offset = e.offset().expect("reliable");
        assert!(
            offset > room.last_offset,
            "{}: offset {offset} after {}",
            e.room,
            room.last_offset
        );
        room.last_offset = offset;
        if e.name == "end" {
            assert_eq!(
                room.next, PER_ROOM,
                "{}: the marker comes after every event",
                e.room
            );
            ended += 1;
            continue;
        }
        // The payload names the room it was published to.
        assert_eq!(text(&e), format!("{}:{}", e.room, room.next));
        room.next += 1;
        received += 1;
        // A crash in the middle of the first third, a graceful restart in
        // the middle of the second.
        if crashes == 0 && received == total / 6 {
            crashes = 1;
            let stopped = server.take().unwrap().kill9().await;
            phase.send_replace(1);
            server = Some(stopped.start().await);
        } else if crashes == 1 && received == total / 2 {
            crashes = 2;
            let stopped = server.take().unwrap().terminate().await;
            phase.send_replace(2);
            server = Some(stopped.start().await);
        }
    }
    assert_eq!(received, total);
    // At least once per stop (a slow machine may add one more).
    assert!(sub.stats().reconnects >= 2);
    for publisher in publishers {
        let client = within("publisher", publisher).await.unwrap();
        assert_eq!(client.outbox_len(), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_received_before_a_crash_but_never_acked_is_published_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path()).await;
    let (sub, mut sub_events) = connect(&server).await;
    sub.join("once").await.unwrap();
    let netsim = Netsim::start(NetsimConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        server.addr,
    ))
    .await
    .unwrap();
    let (publisher, mut pub_events) = within(
        "connect",
        Client::connect(options(netsim.local_addr(), &server)),
    )
    .await
    .unwrap();
    assert_eq!(publisher.emit_with_ack("once", "n", "1").await.unwrap(), 1);
    // The way back is cut: the server gets the next emits, the publisher
    // never learns it did.
    common::cut_way_back(&netsim);
    let pending = publisher.emit_acked("once", "n", "2").await.unwrap();
    for i in 3..=20u64 {
        publisher.emit("once", "n", i.to_string()).await.unwrap();
    }
    for i in 1..=20u64 {
        let e = within("event", sub_events.next()).await.unwrap();
        assert_eq!((e.offset(), text(&e)), (Some(i), i.to_string()));
    }
    assert!(
        publisher.outbox_len() > 0,
        "unconfirmed while the way back is cut"
    );
    // The server dies holding them, unacknowledged.
    let server = server.kill9().await.start().await;
    assert!(matches!(
        incoming(&mut pub_events).await,
        Incoming::Disconnected { .. }
    ));
    common::restore_path(&netsim);
    match incoming(&mut pub_events).await {
        Incoming::Reconnected { resumed } => assert_eq!(resumed, ResumeOutcome::Resumed),
        other => panic!("expected Reconnected, got {other:?}"),
    }
    // Resent from the outbox, answered from the stored log: published once.
    assert_eq!(within("ack of 2", pending.wait()).await.unwrap(), 2);
    assert_eq!(
        publisher.emit_with_ack("once", "n", "21").await.unwrap(),
        21
    );
    expect_recovered(&mut sub_events, &["once".to_string()]).await;
    let e = within("event 21", sub_events.next()).await.unwrap();
    assert_eq!(
        (e.offset(), text(&e)),
        (Some(21), "21".to_string()),
        "nothing twice"
    );
    assert_eq!(publisher.outbox_len(), 0);
    drop(server);
}

/// Runs `quicbus serve` on data directory `data`, expecting it to exit by
/// itself; returns its exit code and stderr.
async fn serve_until_exit(dir: &Path, data: &Path) -> (i32, String) {
    let (code, _, stderr) = run(quicbus()
        .args(["serve", "--listen", "127.0.0.1:0", "--certs"])
        .arg(dir.join("certs"))
        .arg("--data")
        .arg(data))
    .await;
    (code, stderr)
}

#[tokio::test]
async fn a_data_directory_that_cannot_be_used_ends_serve_with_exit_1_and_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data");
    std::fs::write(&file, b"a file where the directory should be").unwrap();
    // A file in its place; a directory that cannot be created; one that
    // exists but cannot be written (even by root: /proc).
    for data in [file, "/proc/quicbus/data".into(), "/proc".into()] {
        let (code, stderr) = serve_until_exit(dir.path(), &data).await;
        assert_eq!(code, 1, "{stderr}");
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.starts_with("created development certificates"))
            .collect();
        assert_eq!(lines.len(), 1, "{stderr}");
        assert!(
            lines[0].starts_with("quicbus: error: data directory"),
            "{stderr}"
        );
        assert!(lines[0].contains(data.to_str().unwrap()), "{stderr}");
    }
}

/// Copies a directory tree (a data directory, to damage the copy).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The one segment file of room `name` in a data directory.
fn segment_of(data: &Path, name: &str) -> std::path::PathBuf {
    for entry in std::fs::read_dir(data.join("rooms")).unwrap() {
        let dir = entry.unwrap().path();
        if std::fs::read_to_string(dir.join("name")).unwrap() == name {
            let mut logs: Vec<_> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|x| x == "log"))
                .collect();
            assert_eq!(logs.len(), 1, "{logs:?}");
            return logs.remove(0);
        }
    }
    panic!("no room {name} in {}", data.display());
}

/// Byte ranges of the records of a segment: its 20-byte header, then
/// `u32 length ‖ u32 checksum ‖ body` each.
fn records(segment: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut at = 20;
    while at + 8 <= segment.len() {
        let len = u32::from_le_bytes(segment[at..at + 4].try_into().unwrap()) as usize;
        out.push(at..at + 8 + len);
        at += 8 + len;
    }
    assert_eq!(at, segment.len(), "whole records");
    out
}

/// Joins `room` from `since` and returns the recovery and the offsets replayed.
async fn replay_of(server: &ServeProcess, room: &str, since: u64) -> (Recovery, Vec<u64>) {
    let (client, mut events) = connect(server).await;
    let joined = client
        .join_with(
            room,
            quicbus::client::JoinOptions {
                since: Some(since),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut offsets = Vec::new();
    if let Recovery::Recovered { replayed } = joined.recovery {
        for _ in 0..replayed {
            let e = within("a replayed event", events.next()).await.unwrap();
            assert_eq!((&*e.room, e.name.as_str()), (room, "n"));
            assert_eq!(text(&e), e.offset().unwrap().to_string());
            offsets.push(e.offset().unwrap());
        }
    }
    client.close().await;
    (joined.recovery, offsets)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_tail_and_a_damaged_record_cost_only_what_they_hold() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path()).await;
    let (publisher, _p) = connect(&server).await;
    for room in ["torn", "damaged", "fine"] {
        for i in 1..=10u64 {
            let at = publisher.emit_with_ack(room, "n", i.to_string()).await;
            assert_eq!(at.unwrap(), i);
        }
    }
    publisher.close().await;
    server.terminate().await;

    let copy = dir.path().join("copy");
    copy_dir(&dir.path().join("data"), &copy);
    // A torn tail: the last record only half written, as a crash in the
    // middle of a write leaves it.
    let torn = segment_of(&copy, "torn");
    let bytes = std::fs::read(&torn).unwrap();
    let last = records(&bytes).pop().unwrap();
    std::fs::write(&torn, &bytes[..last.start + (last.end - last.start) / 2]).unwrap();
    // A damaged record in the middle: one flipped byte in event 3.
    let damaged = segment_of(&copy, "damaged");
    let mut bytes = std::fs::read(&damaged).unwrap();
    let third = records(&bytes)[2].clone();
    bytes[third.end - 1] ^= 0x55;
    std::fs::write(&damaged, &bytes).unwrap();

    let server = ServeProcess::start(dir.path(), &["--data", copy.to_str().unwrap()]).await;
    let said = server.startup.join("\n");
    assert!(said.contains("torn write at the end"), "{said}");
    assert!(said.contains("damaged history"), "{said}");

    let all: Vec<u64> = (1..=10).collect();
    assert_eq!(
        replay_of(&server, "fine", 0).await,
        (Recovery::Recovered { replayed: 10 }, all.clone())
    );
    assert_eq!(
        replay_of(&server, "torn", 0).await,
        (Recovery::Recovered { replayed: 9 }, all[..9].to_vec())
    );
    let too_short = Recovery::NotRecovered {
        reason: quicbus::client::RecoveryFailure::HistoryTooShort,
    };
    assert_eq!(replay_of(&server, "damaged", 0).await, (too_short, vec![]));
    assert_eq!(replay_of(&server, "damaged", 2).await, (too_short, vec![]));
    assert_eq!(
        replay_of(&server, "damaged", 3).await,
        (Recovery::Recovered { replayed: 7 }, all[3..].to_vec())
    );
    // Publishing goes on after the last good event of each room.
    let (publisher, _p) = connect(&server).await;
    assert_eq!(
        publisher.emit_with_ack("torn", "n", "10").await.unwrap(),
        10
    );
    assert_eq!(
        publisher.emit_with_ack("damaged", "n", "11").await.unwrap(),
        11
    );
}

#[tokio::test]
async fn two_servers_never_share_a_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let first = serve(dir.path()).await;
    let data = dir.path().join("data");
    let (code, stderr) = serve_until_exit(dir.path(), &data).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("in use by another process"), "{stderr}");
    // The first one is unharmed, and once it is gone the directory is free.
    let (client, _e) = connect(&first).await;
    assert_eq!(client.emit_with_ack("r", "n", "1").await.unwrap(), 1);
    client.close().await;
    let second = first.terminate().await.start().await;
    let (client, _e) = connect(&second).await;
    assert_eq!(client.emit_with_ack("r", "n", "2").await.unwrap(), 2);
}
