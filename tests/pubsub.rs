//! Reliable and datagram delivery between real clients over QUIC on loopback.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;

use common::{next_event, next_frame, within};
use quicbus::client::{Delivery, JoinOptions};

// On a multi-threaded runtime, so nothing relies on a single thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_reliable_events_reach_three_subscribers_in_order() {
    const N: u64 = 10_000;
    let server = common::start().await;
    let (publisher, _pub_events) = server.client().await;
    let mut subscribers = Vec::new();
    for _ in 0..3 {
        let (client, events) = server.client().await;
        assert_eq!(client.join("stress").await.unwrap(), 0);
        subscribers.push((client, events));
    }
    let sender = tokio::spawn(async move {
        for i in 0..N {
            publisher
                .emit("stress", "n", i.to_be_bytes().to_vec())
                .await
                .unwrap();
        }
        publisher
    });
    for (_, events) in subscribers.iter_mut() {
        for i in 0..N {
            let event = next_event(events, "stress event").await;
            assert_eq!(event.delivery, Delivery::Reliable { offset: i + 1 });
            assert_eq!(&*event.room, "stress");
            assert_eq!(event.name, "n");
            assert_eq!(event.payload.as_ref(), i.to_be_bytes());
        }
    }
    let _publisher = within("publisher", sender).await.unwrap();
    assert_eq!(server.handle.stats().events_published, N);
}

#[tokio::test]
async fn rooms_are_isolated_and_offsets_are_per_room() {
    let server = common::start().await;
    let (publisher, _p) = server.client().await;
    let (a, mut a_events) = server.client().await;
    let (b, mut b_events) = server.client().await;
    a.join("room-a").await.unwrap();
    b.join("room-b").await.unwrap();
    for i in 0..5u8 {
        publisher.emit("room-a", "x", vec![i]).await.unwrap();
        publisher.emit("room-b", "y", vec![i]).await.unwrap();
    }
    publisher.emit_with_ack("room-a", "end", "a").await.unwrap();
    publisher.emit_with_ack("room-b", "end", "b").await.unwrap();
    for (events, room, name) in [
        (&mut a_events, "room-a", "x"),
        (&mut b_events, "room-b", "y"),
    ] {
        for i in 0..5u8 {
            let e = next_event(events, room).await;
            assert_eq!((&*e.room, e.name.as_str()), (room, name));
            assert_eq!(e.offset(), Some(u64::from(i) + 1));
        }
        let end = next_event(events, "end").await;
        assert_eq!((end.name.as_str(), end.offset()), ("end", Some(6)));
    }
    assert!(a_events.try_next().is_none());
    assert!(b_events.try_next().is_none());
}

#[tokio::test]
async fn leave_stops_delivery() {
    let server = common::start().await;
    let (publisher, _p) = server.client().await;
    let (sub, mut events) = server.client().await;
    sub.join("r").await.unwrap();
    sub.join("other").await.unwrap();
    publisher.emit_with_ack("r", "before", "1").await.unwrap();
    assert_eq!(next_event(&mut events, "before").await.name, "before");
    sub.leave("r").await.unwrap();
    publisher.emit_with_ack("r", "after", "2").await.unwrap();
    // A marker in a room still joined proves the "after" event had its chance.
    publisher
        .emit_with_ack("other", "marker", "3")
        .await
        .unwrap();
    let e = next_event(&mut events, "marker").await;
    assert_eq!((&*e.room, e.name.as_str()), ("other", "marker"));
    assert!(events.try_next().is_none());
    assert!(sub.leave("r").await.is_err(), "leaving twice is an error");
}

#[tokio::test]
async fn echo_is_off_by_default_and_on_when_asked() {
    let server = common::start().await;
    let (quiet, mut quiet_events) = server.client().await;
    let (loud, mut loud_events) = server.client().await;
    quiet.join("e").await.unwrap();
    loud.join_with(
        "e",
        JoinOptions {
            echo: Some(true),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    quiet.emit_with_ack("e", "from-quiet", "q").await.unwrap();
    loud.emit_with_ack("e", "from-loud", "l").await.unwrap();
    // quiet sees only loud's event; loud sees both, its own included.
    assert_eq!(next_event(&mut quiet_events, "q").await.name, "from-loud");
    let names: Vec<String> = vec![
        next_event(&mut loud_events, "l1").await.name,
        next_event(&mut loud_events, "l2").await.name,
    ];
    assert_eq!(names, ["from-quiet", "from-loud"]);
    assert!(quiet_events.try_next().is_none());
}

#[tokio::test]
async fn datagrams_arrive_on_loopback_with_increasing_sequence() {
    let server = common::start().await;
    let (publisher, _p) = server.client().await;
    let (sub, mut events) = server.client().await;
    sub.join("game").await.unwrap();
    // Datagrams may be lost even on loopback: send until enough have arrived.
    let mut seen = Vec::new();
    let mut sent = 0u32;
    while seen.len() < 20 && sent < 10_000 {
        publisher
            .emit_datagram("game", "pos", sent.to_be_bytes().to_vec())
            .await
            .unwrap();
        sent += 1;
        if let Ok(Some(e)) =
            tokio::time::timeout(std::time::Duration::from_millis(50), events.next()).await
        {
            assert_eq!(e.name, "pos");
            seen.push(e.seq().expect("datagram has a seq"));
        }
    }
    assert!(
        seen.len() >= 20,
        "only {} of {sent} datagrams arrived",
        seen.len()
    );
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    let unique: HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len());
    assert!(sub.stats().datagrams_received >= 20);
}

#[tokio::test]
async fn oversize_datagram_is_refused_with_the_limit() {
    let server = common::start().await;
    let (client, _e) = server.client().await;
    let limit = client.max_datagram_payload("big", "blob").await.unwrap();
    assert!(limit > 1000 && limit < 65_536, "limit {limit}");
    let err = client
        .emit_datagram("big", "blob", vec![0u8; limit + 1])
        .await
        .unwrap_err();
    match err {
        quicbus::client::ClientError::DatagramTooLarge { size, limit: l } => {
            assert_eq!((size, l), (limit + 1, limit));
            assert!(err.to_string().contains(&limit.to_string()));
        }
        other => panic!("expected DatagramTooLarge, got {other:?}"),
    }
    // Exactly at the limit is accepted and delivered to a subscriber.
    let (sub, mut events) = server.client().await;
    sub.join("big").await.unwrap();
    let mut got = None;
    for _ in 0..50 {
        client
            .emit_datagram("big", "blob", vec![7u8; limit])
            .await
            .unwrap();
        if let Ok(Some(e)) =
            tokio::time::timeout(std::time::Duration::from_millis(100), events.next()).await
        {
            got = Some(e);
            break;
        }
    }
    assert_eq!(
        got.expect("a full-size datagram arrived").payload.len(),
        limit
    );
}

#[tokio::test]
async fn rejoining_to_change_echo_loses_and_reorders_nothing() {
    const N: u64 = 3_000;
    let server = common::start().await;
    let (publisher, _p) = server.client().await;
    let (sub, mut events) = server.client().await;
    sub.join("r").await.unwrap();
    let flood = tokio::spawn(async move {
        for i in 0..N {
            publisher
                .emit("r", "n", i.to_be_bytes().to_vec())
                .await
                .unwrap();
        }
        publisher.emit_with_ack("r", "n", "end").await.unwrap();
    });
    let mut i = 0;
    let mut echoed = 0;
    while i < N {
        if i == N / 3 && echoed == 0 {
            sub.join_with(
                "r",
                JoinOptions {
                    echo: Some(true),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
            sub.emit("r", "mine", "echoed").await.unwrap();
        }
        let e = next_event(&mut events, "event across a re-join").await;
        if e.name == "mine" {
            echoed += 1;
            continue;
        }
        assert_eq!(e.payload.as_ref(), i.to_be_bytes(), "event {i}");
        i += 1;
    }
    let mut saw_end = false;
    while !saw_end || echoed == 0 {
        let e = next_event(&mut events, "end and the echoed event").await;
        match e.name.as_str() {
            "mine" => echoed += 1,
            _ => {
                assert_eq!(e.payload.as_ref(), b"end");
                saw_end = true;
            }
        }
    }
    assert_eq!(echoed, 1, "the echoed event arrives exactly once");
    within("flood", flood).await.unwrap();
}

#[tokio::test]
async fn events_over_the_frame_limit_are_refused_with_the_limit() {
    let server = common::start_with(quicbus::server::ServerConfig {
        max_frame: 4096,
        ..Default::default()
    })
    .await;
    let (client, _e) = server.client().await;
    match client.emit("r", "big", vec![0u8; 5000]).await {
        Err(quicbus::client::ClientError::EventTooLarge { size, limit: 4096 }) => {
            assert!(size > 5000)
        }
        other => panic!("expected EventTooLarge, got {other:?}"),
    }
    // A raw publisher at the exact frame limit: the server refuses with TooLarge
    // (its Event would not fit) and keeps the session.
    let mut peer = server.raw_session().await;
    let mut send = peer.conn.open_uni().await.unwrap();
    let header =
        quicbus::wire::encode_framed(&quicbus::wire::Frame::PublishStream { room: "r".into() });
    send.write_all(&header).await.unwrap();
    let publish = quicbus::wire::Frame::Publish {
        id: 0,
        event: "big".into(),
        payload: vec![0u8; 4080].into(),
        ack: Some(9),
    };
    assert!(quicbus::wire::encoded_len(&publish) <= 4096);
    send.write_all(&quicbus::wire::encode_framed(&publish))
        .await
        .unwrap();
    match peer.next_control().await {
        quicbus::wire::Frame::Error {
            request: Some(9),
            code: quicbus::wire::ErrorCode::TooLarge,
            message,
        } => assert!(message.contains("4096"), "{message}"),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    peer.send_control(&quicbus::wire::Frame::Ping { request: 1 })
        .await;
    assert_eq!(
        peer.next_control().await,
        quicbus::wire::Frame::Pong { request: 1 }
    );
}

/// Leave and isolation as the server implements them, seen on the wire by a
/// raw peer (the client library would hide a server that got them wrong).
#[tokio::test]
async fn the_server_finishes_a_left_room_and_opens_no_stream_for_other_rooms() {
    use quicbus::wire::Frame;
    let server = common::start().await;
    let (publisher, _p) = server.client().await;
    let mut peer = server.raw_session().await;
    let join = |request: u64, room: &str| Frame::Join {
        request,
        room: room.into(),
        echo: Some(false),
        since: None,
    };
    peer.send_control(&join(1, "mine")).await;
    let room_id = match peer.next_control().await {
        Frame::Joined {
            request: 1,
            room_id,
            offset: 0,
            recovery: quicbus::wire::Recovery::Live,
        } => room_id,
        other => panic!("expected Joined, got {other:?}"),
    };
    let mut stream = peer.accept_stream().await;
    assert_eq!(
        next_frame(&mut stream).await,
        Some(Frame::EventStream {
            room_id,
            room: "mine".into()
        })
    );
    publisher
        .emit_with_ack("other", "x", "not yours")
        .await
        .unwrap();
    publisher.emit_with_ack("mine", "e", "one").await.unwrap();
    assert_eq!(
        next_frame(&mut stream).await,
        Some(Frame::Event {
            offset: 1,
            event: "e".into(),
            payload: "one".into()
        })
    );
    peer.send_control(&Frame::Leave {
        request: 2,
        room_id,
    })
    .await;
    assert_eq!(
        peer.next_control().await,
        Frame::Left {
            request: 2,
            room_id
        }
    );
    publisher.emit_with_ack("mine", "e", "two").await.unwrap();
    // The stream ends (FIN) without the event published after Left.
    assert_eq!(next_frame(&mut stream).await, None);
    // Streams are accepted in the order opened: had the server opened one
    // for "other", it would come before the one for "third".
    peer.send_control(&join(3, "third")).await;
    assert!(matches!(
        peer.next_control().await,
        Frame::Joined { request: 3, .. }
    ));
    let mut third = peer.accept_stream().await;
    assert!(matches!(
        next_frame(&mut third).await,
        Some(Frame::EventStream { room, .. }) if room == "third"
    ));
}

/// One client naming many rooms cannot use the room table up for everyone:
/// rooms nobody subscribes to are evicted to make space.
#[tokio::test]
async fn naming_many_rooms_evicts_idle_ones_instead_of_locking_others_out() {
    let server = common::start_with(quicbus::server::ServerConfig {
        max_rooms: 4,
        ..Default::default()
    })
    .await;
    let (keeper, mut kept_events) = server.client().await;
    keeper.join("kept").await.unwrap();
    let (flooder, _f) = server.client().await;
    let first = flooder.emit_with_ack("x", "e", "1").await.unwrap();
    assert_eq!(first, 1);
    for i in 0..50 {
        flooder
            .emit_with_ack(&format!("room-{i}"), "e", "spam")
            .await
            .unwrap();
    }
    // "x" was evicted meanwhile: publishing on its open stream names it
    // again; its events are gone but its offsets go on.
    assert_eq!(flooder.emit_with_ack("x", "e", "2").await.unwrap(), 2);
    // Someone else can still make and join a new room, and "kept" lives.
    let (newcomer, mut new_events) = server.client().await;
    newcomer.join("fresh").await.unwrap();
    flooder.emit_with_ack("fresh", "hello", "!").await.unwrap();
    assert_eq!(next_event(&mut new_events, "fresh").await.name, "hello");
    flooder
        .emit_with_ack("kept", "still", "here")
        .await
        .unwrap();
    assert_eq!(next_event(&mut kept_events, "kept").await.name, "still");
}

#[tokio::test]
async fn clients_sharing_an_endpoint_are_served_alone_and_close_alone() {
    let server = common::start().await;
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut options = server.options();
    options.endpoint = Some(endpoint.clone());
    let (first, mut first_events) =
        within("connect", quicbus::client::Client::connect(options.clone()))
            .await
            .unwrap();
    let (second, mut second_events) = within("connect", quicbus::client::Client::connect(options))
        .await
        .unwrap();
    assert_ne!(first.session_id(), second.session_id());
    first.join("shared").await.unwrap();
    second.join("shared").await.unwrap();
    let (publisher, _e) = server.client().await;
    publisher.emit_with_ack("shared", "a", "1").await.unwrap();
    assert_eq!(
        next_event(&mut first_events, "first").await.offset(),
        Some(1)
    );
    assert_eq!(
        next_event(&mut second_events, "second").await.offset(),
        Some(1)
    );
    // Closing one leaves the endpoint, and the other client, working.
    within("close", first.close()).await;
    publisher.emit_with_ack("shared", "a", "2").await.unwrap();
    assert_eq!(
        next_event(&mut second_events, "after close").await.offset(),
        Some(2)
    );
    assert!(
        first_events.next().await.is_none(),
        "the closed client's events end"
    );
}

#[tokio::test]
async fn publishing_to_more_rooms_than_the_server_allows_times_out_and_spares_the_others() {
    let mut config = quicbus::server::ServerConfig::default();
    config.transport.max_uni_streams = 2;
    let server = common::start_with(config).await;
    let mut options = server.options();
    options.request_timeout = std::time::Duration::from_millis(500);
    let (client, _events) = within("connect", quicbus::client::Client::connect(options))
        .await
        .unwrap();
    assert_eq!(client.emit_with_ack("one", "e", "x").await.unwrap(), 1);
    assert_eq!(client.emit_with_ack("two", "e", "x").await.unwrap(), 1);
    // A third publish stream is not allowed: the ack times out, typed.
    let third = within("third ack", client.emit_with_ack("three", "e", "x")).await;
    assert!(
        matches!(third, Err(quicbus::client::ClientError::Timeout { .. })),
        "{third:?}"
    );
    // The rooms already open keep working.
    assert_eq!(client.emit_with_ack("one", "e", "y").await.unwrap(), 2);
}
