//! Who may do what, over real QUIC: signed tokens at `Hello` and in
//! `Refresh`, permissions on every path (join, join with `since`, publish
//! stream, datagram, datagram copy), anonymous clients, namespace rules, and
//! resumes by another user.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use common::{next_event, within, TestServer};
use quicbus::auth::token::{mint_hs256, unix_now, TokenRequest, TokenVerifier};
use quicbus::auth::{Action, PermissionLists, Permissions};
use quicbus::client::{
    Client, ClientError, ClientOptions, Delivery, Event, Events, Incoming, JoinOptions, Recovery,
};
use quicbus::server::{
    AuthConfig, HistoryLimits, NamespaceSettings, Namespaces, Refusal, ServerConfig,
};
use quicbus::wire::{close_code, ErrorCode, Frame, RecoveryFailure, Resume, ResumeOutcome};

const SECRET: &[u8] = b"a test secret of a decent length!";

fn lists(publish: &[&str], subscribe: &[&str], history: &[&str]) -> PermissionLists {
    let owned = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
    PermissionLists {
        publish: owned(publish),
        subscribe: owned(subscribe),
        history: owned(history),
    }
}

/// A token for `user` with these permissions, valid for `ttl` seconds.
fn token(user: &str, permissions: PermissionLists, ttl: u64) -> String {
    let request = TokenRequest {
        user: user.into(),
        permissions,
        ttl,
    };
    mint_hs256(SECRET, &request, unix_now()).unwrap()
}

/// Everything on `game.>` and `chat.>`, history included.
fn full(user: &str) -> String {
    let all = &["game.>", "chat.>", "public.>"];
    token(user, lists(all, all, all), 3600)
}

fn config_with(namespaces: Namespaces, allow_anonymous: bool) -> ServerConfig {
    ServerConfig {
        auth: AuthConfig {
            verifier: Some(TokenVerifier::hs256(SECRET).unwrap()),
            allow_anonymous,
        },
        namespaces,
        ..ServerConfig::default()
    }
}

async fn secured() -> TestServer {
    common::start_with(config_with(Namespaces::default(), false)).await
}

fn options(server: &TestServer, token: Option<String>) -> ClientOptions {
    let mut options = server.options();
    options.token = token;
    options
}

async fn client(server: &TestServer, token: String) -> (Client, Events) {
    within("connect", Client::connect(options(server, Some(token))))
        .await
        .expect("connect")
}

async fn refused(server: &TestServer, token: Option<String>) -> (ErrorCode, String) {
    let mut options = options(server, token);
    options.reconnect = None;
    match within("connect", Client::connect(options)).await {
        Err(ClientError::Rejected { code, reason }) => (code, reason),
        Err(other) => panic!("expected a rejection, got {other}"),
        Ok(_) => panic!("expected a rejection, got a session"),
    }
}

fn assert_reliable(event: &Event, room: &str, name: &str, payload: &str) -> u64 {
    assert_eq!(&*event.room, room);
    assert_eq!(event.name, name);
    assert_eq!(event.payload.as_ref(), payload.as_bytes());
    match event.delivery {
        Delivery::Reliable { offset } => offset,
        other => panic!("expected a reliable event, got {other:?}"),
    }
}

/// The next notice or event; the connection must not drop meanwhile.
async fn next_incoming(events: &mut Events) -> Incoming {
    match within("incoming", events.next_incoming()).await {
        Some(Incoming::Disconnected { reason }) => panic!("disconnected: {reason}"),
        Some(incoming) => incoming,
        None => panic!("the client closed"),
    }
}

#[tokio::test]
async fn tokens_are_checked_at_hello_each_refusal_with_its_own_reason() {
    let server = secured().await;
    let now = unix_now();

    let (code, reason) = refused(&server, None).await;
    assert_eq!(code, ErrorCode::TokenRequired);
    assert!(reason.contains("signed token"), "{reason}");

    let request = TokenRequest {
        user: "ann".into(),
        permissions: PermissionLists::default(),
        ttl: 10,
    };
    let expired = mint_hs256(SECRET, &request, now - 100).unwrap();
    let (code, reason) = refused(&server, Some(expired)).await;
    assert_eq!(code, ErrorCode::TokenExpired);
    assert!(reason.contains("token expired"), "{reason}");

    // The payload changed, the signature kept: another user's name.
    let good = full("ann");
    let parts: Vec<&str> = good.split('.').collect();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let claims = String::from_utf8(b64.decode(parts[1]).unwrap()).unwrap();
    let forged = b64.encode(claims.replace("\"ann\"", "\"bob\""));
    let tampered = format!("{}.{forged}.{}", parts[0], parts[2]);
    let (code, reason) = refused(&server, Some(tampered)).await;
    assert_eq!(code, ErrorCode::InvalidToken);
    assert!(reason.contains("invalid token"), "{reason}");
    assert!(reason.contains("signature"), "{reason}");

    // Unsigned.
    let header = b64.encode(r#"{"alg":"none","typ":"JWT"}"#);
    let unsigned = format!("{header}.{}.", parts[1]);
    let (code, reason) = refused(&server, Some(unsigned)).await;
    assert_eq!(code, ErrorCode::InvalidToken);
    assert!(reason.contains("alg none"), "{reason}");

    // Signed with another key.
    let other = mint_hs256(b"another secret entirely, also long", &request, now).unwrap();
    let (code, reason) = refused(&server, Some(other)).await;
    assert_eq!(code, ErrorCode::InvalidToken);
    assert!(reason.contains("signature"), "{reason}");

    // Not valid for another hour.
    let claims = serde_json::json!({ "sub": "ann", "exp": now + 7200, "nbf": now + 3600 });
    let early = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .unwrap();
    let (code, reason) = refused(&server, Some(early)).await;
    assert!(
        code == ErrorCode::InvalidToken && reason.contains("not valid before"),
        "{code}: {reason}"
    );

    let stats = server.handle.stats();
    assert_eq!(stats.refusal(Refusal::TokenRequired), 1);
    assert_eq!(stats.refusal(Refusal::TokenExpired), 1);
    assert_eq!(stats.refusal(Refusal::TokenInvalid), 4);

    // And a good token gets in.
    let (c, _events) = client(&server, full("ann")).await;
    c.ping().await.unwrap();
}

#[tokio::test]
async fn joins_and_replays_follow_the_subscribe_and_history_permissions() {
    let server = secured().await;
    let (publisher, _p) = client(&server, full("pub")).await;
    for (room, text) in [("game.a", "a1"), ("game.b", "b1"), ("chat.x", "x1")] {
        publisher.emit_with_ack(room, "say", text).await.unwrap();
    }
    // May subscribe to game.*, replay only game.a.
    let reader = token("reader", lists(&[], &["game.*"], &["game.a"]), 3600);
    let (sub, mut events) = client(&server, reader).await;

    match sub.join("chat.x").await {
        Err(ClientError::Forbidden { room, action }) => {
            assert_eq!((room.as_str(), action), ("chat.x", Action::Subscribe));
        }
        other => panic!("expected forbidden, got {other:?}"),
    }
    // `*` is one token only.
    assert!(matches!(
        sub.join("game.a.deep").await,
        Err(ClientError::Forbidden { .. })
    ));

    let since = |since| JoinOptions {
        since: Some(since),
        ..JoinOptions::default()
    };
    let a = sub.join_with("game.a", since(0)).await.unwrap();
    assert_eq!(a.recovery, Recovery::Recovered { replayed: 1 });
    let b = sub.join_with("game.b", since(0)).await.unwrap();
    assert_eq!(
        b.recovery,
        Recovery::NotRecovered {
            reason: RecoveryFailure::HistoryForbidden
        }
    );
    assert_eq!(b.offset, 1, "joined live, at the room's offset");

    let replayed = next_event(&mut events, "replay of game.a").await;
    assert_eq!(assert_reliable(&replayed, "game.a", "say", "a1"), 1);
    // game.b's history was not replayed: its next event is the live one.
    publisher
        .emit_with_ack("game.b", "say", "b2")
        .await
        .unwrap();
    publisher
        .emit_with_ack("game.a", "say", "a2")
        .await
        .unwrap();
    let mut live: HashMap<String, (u64, String)> = HashMap::new();
    for _ in 0..2 {
        let e = next_event(&mut events, "live events").await;
        let text = String::from_utf8(e.payload.to_vec()).unwrap();
        live.insert(e.room.to_string(), (e.offset().unwrap(), text));
        assert_eq!(e.name, "say");
    }
    assert_eq!(live["game.b"], (2, "b2".to_string()));
    assert_eq!(live["game.a"], (2, "a2".to_string()));

    let stats = server.handle.stats();
    assert_eq!(stats.refusal(Refusal::Subscribe), 2);
    assert_eq!(stats.refusal(Refusal::History), 1);
}

#[tokio::test]
async fn publishes_are_checked_on_streams_datagrams_and_copies() {
    let server = secured().await;
    let (watcher, mut watched) = client(&server, full("watcher")).await;
    for room in ["game.open", "game.closed"] {
        watcher.join(room).await.unwrap();
    }
    // May publish to game.open, subscribe to both; copies on, so small
    // reliable events also travel as datagram copies.
    let limited = token(
        "limited",
        lists(&["game.open"], &["game.open", "game.closed"], &[]),
        3600,
    );
    let mut opts = options(&server, Some(limited));
    opts.copies = true;
    let (publisher, mut refusals) = within("connect", Client::connect(opts)).await.unwrap();
    publisher.join("game.closed").await.unwrap();

    // The publish stream, with an ack: a typed error.
    let acked = publisher
        .emit_with_ack("game.closed", "say", "no")
        .await
        .unwrap_err();
    match acked {
        ClientError::Forbidden { room, action } => {
            assert_eq!((room.as_str(), action), ("game.closed", Action::Publish));
        }
        other => panic!("expected forbidden, got {other}"),
    }
    // Without an ack: announced as it happens, never silent.
    publisher.emit("game.closed", "say", "no").await.unwrap();
    match next_incoming(&mut refusals).await {
        Incoming::Forbidden { room, action } => {
            assert_eq!((&*room, action), ("game.closed", Action::Publish));
        }
        other => panic!("expected forbidden, got {other:?}"),
    }
    // A datagram, with the id the join gave (sent again if lost).
    resend_until(&server, &publisher, "game.closed", vec![1, 2], |s| {
        s.refusal(Refusal::Publish) > 2
    })
    .await;
    match next_incoming(&mut refusals).await {
        Incoming::Forbidden { room, action } => {
            assert_eq!((&*room, action), ("game.closed", Action::Publish));
        }
        other => panic!("expected forbidden, got {other:?}"),
    }
    // A room it cannot even subscribe to has no id to give.
    assert!(matches!(
        publisher.emit_datagram("chat.x", "pos", vec![1]).await,
        Err(ClientError::Forbidden {
            action: Action::Publish,
            ..
        })
    ));
    // The allowed room works, stream and copy alike.
    let offset = publisher
        .emit_with_ack("game.open", "say", "yes")
        .await
        .unwrap();
    let event = next_event(&mut watched, "the allowed event").await;
    assert_eq!(assert_reliable(&event, "game.open", "say", "yes"), offset);
    watcher.ping().await.unwrap();
    assert!(
        watched.try_next().is_none(),
        "nothing of game.closed arrived"
    );

    let stats = server.handle.stats();
    assert_eq!(stats.events_published, 1);
    assert_eq!(stats.datagrams_published, 0);
    // Stream with ack, stream without, the datagram(s), resolve.
    assert!(stats.refusal(Refusal::Publish) >= 4);
    assert_eq!(publisher.stats().forbidden, 2);
}

#[tokio::test]
async fn a_refreshed_token_keeps_the_connection_past_the_old_expiry() {
    let server = secured().await;
    // Three seconds: time to refresh on a loaded machine even when minted
    // just before a second boundary.
    let (c, mut events) = client(
        &server,
        token("ann", lists(&["chat.>"], &["chat.>"], &[]), 3),
    )
    .await;
    c.join("chat.a").await.unwrap();
    let started = unix_now();
    let expires = c.refresh_token(&full("ann")).await.unwrap();
    assert!(expires >= started + 3599, "new expiry {expires}");
    // Past the first token's expiry (and its second boundary).
    tokio::time::sleep_until(tokio::time::Instant::now() + Duration::from_secs(4)).await;
    c.ping().await.unwrap();
    let offset = c
        .emit_with_ack("game.x", "say", "allowed now")
        .await
        .unwrap();
    assert_eq!(offset, 1);
    assert!(c.is_connected());
    assert!(events.try_next().is_none());
    assert_eq!(server.handle.stats().refusal(Refusal::ExpiredLive), 0);
}

#[tokio::test]
async fn an_expired_connection_is_closed_and_refreshes_are_checked() {
    let server = secured().await;
    // Three seconds: time for the refreshes below on a loaded machine.
    let short = token("ann", lists(&["chat.>"], &["chat.>"], &[]), 3);
    let mut opts = options(&server, Some(short));
    opts.reconnect = None;
    let (c, _events) = within("connect", Client::connect(opts)).await.unwrap();

    // Refreshes that are refused leave the connection as it was.
    match c.refresh_token(&full("bob")).await {
        Err(ClientError::Rejected { code, reason }) => {
            assert_eq!(code, ErrorCode::InvalidToken);
            assert!(reason.contains("same user"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    match c.refresh_token("not.a.token").await {
        Err(ClientError::Rejected { code, .. }) => assert_eq!(code, ErrorCode::InvalidToken),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let request = TokenRequest {
        user: "ann".into(),
        permissions: PermissionLists::default(),
        ttl: 10,
    };
    let expired = mint_hs256(SECRET, &request, unix_now() - 100).unwrap();
    match c.refresh_token(&expired).await {
        Err(ClientError::Rejected { code, .. }) => assert_eq!(code, ErrorCode::TokenExpired),
        other => panic!("expected a refusal, got {other:?}"),
    }
    match within("close at expiry", c.closed()).await {
        ClientError::Closed { code, reason } => {
            assert_eq!(code, u64::from(close_code::TOKEN_EXPIRED));
            assert!(reason.contains("token expired"), "{reason}");
        }
        other => panic!("expected a close, got {other}"),
    }
    assert_eq!(server.handle.stats().refusal(Refusal::ExpiredLive), 1);
}

#[tokio::test]
async fn a_narrower_refresh_leaves_rooms_it_no_longer_allows() {
    let server = secured().await;
    let (publisher, _p) = client(&server, full("pub")).await;
    let (c, mut events) = client(&server, full("ann")).await;
    c.join("game.keep").await.unwrap();
    c.join("chat.drop").await.unwrap();
    // A publish stream and a datagram id that exist before the refresh.
    assert_eq!(
        c.emit_with_ack("game.keep", "say", "mine").await.unwrap(),
        1
    );
    // (Until the server has published one: a datagram still in flight
    // would meet the refresh and be refused before the test looks.)
    resend_until(&server, &c, "game.keep", vec![0], |s| {
        s.datagrams_published > 0
    })
    .await;

    let narrower = token("ann", lists(&[], &["game.>"], &[]), 3600);
    c.refresh_token(&narrower).await.unwrap();
    match next_incoming(&mut events).await {
        Incoming::Forbidden { room, action } => {
            assert_eq!((&*room, action), ("chat.drop", Action::Subscribe));
        }
        other => panic!("expected forbidden, got {other:?}"),
    }
    // The client forgot the room: it will not rejoin it after a reconnect.
    assert!(matches!(
        c.leave("chat.drop").await,
        Err(ClientError::Rejected {
            code: ErrorCode::NotJoined,
            ..
        })
    ));
    publisher
        .emit_with_ack("chat.drop", "say", "gone")
        .await
        .unwrap();
    publisher
        .emit_with_ack("game.keep", "say", "kept")
        .await
        .unwrap();
    let event = next_event(&mut events, "the kept room's event").await;
    assert_eq!(assert_reliable(&event, "game.keep", "say", "kept"), 2);
    // Publishing is refused now: on the stream opened before the refresh...
    assert!(matches!(
        c.emit_with_ack("game.keep", "say", "x").await,
        Err(ClientError::Forbidden {
            action: Action::Publish,
            ..
        })
    ));
    // ...and with the datagram id handed out before it.
    resend_until(&server, &c, "game.keep", vec![1], |s| {
        s.refusal(Refusal::Publish) > 1
    })
    .await;
    match next_incoming(&mut events).await {
        Incoming::Forbidden { room, action } => {
            assert_eq!((&*room, action), ("game.keep", Action::Publish));
        }
        other => panic!("expected forbidden, got {other:?}"),
    }
}

#[tokio::test]
async fn a_reconnect_presents_the_refreshed_token() {
    let certs = quicbus::certs::generate(&[]).unwrap();
    let mut config = config_with(Namespaces::default(), false);
    config.listen = "127.0.0.1:0".parse().unwrap();
    let server = common::start_exactly(config.clone(), certs.clone()).await;
    let addr = server.handle.local_addr();
    let mut opts = options(
        &server,
        Some(token("ann", lists(&[], &["chat.>"], &[]), 3600)),
    );
    common::quick(&mut opts);
    let (c, mut events) = within("connect", Client::connect(opts)).await.unwrap();
    // Only the refreshed token allows game.x.
    let wider = token("ann", lists(&[], &["chat.>", "game.>"], &[]), 3600);
    c.refresh_token(&wider).await.unwrap();
    c.join("game.x").await.unwrap();
    server.handle.shutdown().await;
    config.listen = addr;
    let _again = common::start_exactly(config, certs).await;
    // The rejoin after the reconnect is allowed: the new token was presented
    // (with the first one it would have been refused: `JoinRefused`).
    loop {
        match within("reconnect", events.next_incoming()).await.unwrap() {
            Incoming::Recovery { room, recovery } => {
                assert_eq!(&*room, "game.x");
                assert_eq!(
                    recovery,
                    Recovery::NotRecovered {
                        reason: RecoveryFailure::EpochChanged
                    }
                );
                break;
            }
            Incoming::Disconnected { .. } | Incoming::Reconnected { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_session_is_resumed_only_by_the_same_user() {
    let server = secured().await;
    let hello = |token: String, resume: Option<Resume>| Frame::Hello {
        version: quicbus::wire::PROTOCOL_VERSION,
        token: Some(token),
        client_name: "raw".into(),
        resume,
        copies: false,
    };
    let mut first = server.raw().await;
    first.send_control(&hello(full("ann"), None)).await;
    let (resume_token, epoch) = match first.next_control().await {
        Frame::Welcome {
            resume_token,
            epoch,
            ..
        } => (resume_token, epoch),
        other => panic!("expected Welcome, got {other:?}"),
    };
    first.conn.close(42u32.into(), b"gone");
    let resume = Resume {
        token: resume_token,
        epoch,
    };
    let mut thief = server.raw().await;
    thief
        .send_control(&hello(full("mallory"), Some(resume.clone())))
        .await;
    match thief.next_control().await {
        Frame::Welcome { resumed, .. } => assert_eq!(
            resumed,
            ResumeOutcome::NotResumed {
                reason: RecoveryFailure::AnotherUser
            }
        ),
        other => panic!("expected Welcome, got {other:?}"),
    }
    let mut owner = server.raw().await;
    owner.send_control(&hello(full("ann"), Some(resume))).await;
    match owner.next_control().await {
        Frame::Welcome { resumed, .. } => assert_eq!(resumed, ResumeOutcome::Resumed),
        other => panic!("expected Welcome, got {other:?}"),
    }
    assert_eq!(server.handle.stats().refusal(Refusal::AnotherUser), 1);
}

/// Sends datagrams to `room` until the server's counters satisfy `done`
/// (datagrams may be lost even on loopback), a bounded number of times.
async fn resend_until(
    server: &TestServer,
    c: &Client,
    room: &str,
    payload: Vec<u8>,
    done: impl Fn(&quicbus::server::StatsSnapshot) -> bool,
) {
    for _ in 0..100 {
        c.emit_datagram(room, "pos", payload.clone()).await.unwrap();
        c.ping().await.unwrap();
        if done(&server.handle.stats()) {
            return;
        }
    }
    panic!("the server never counted a datagram to {room}");
}

fn namespaces() -> Namespaces {
    let anonymous = Permissions::compile(&lists(&[], &["public.>"], &[])).unwrap();
    let settings = HashMap::from([
        (
            "game".to_string(),
            NamespaceSettings {
                datagrams: Some(false),
                max_payload: Some(16),
                echo: Some(true),
                anonymous: Some(lists(&["game.lobby"], &["game.lobby"], &[])),
                ..NamespaceSettings::default()
            },
        ),
        (
            "chat".to_string(),
            NamespaceSettings {
                history_events: Some(0),
                max_payload: Some(64),
                ..NamespaceSettings::default()
            },
        ),
    ]);
    Namespaces::new(HistoryLimits::default(), anonymous, &settings).unwrap()
}

#[tokio::test]
async fn anonymous_clients_get_the_anonymous_permissions() {
    let server = common::start_with(config_with(namespaces(), true)).await;
    let (publisher, _p) = client(&server, full("pub")).await;
    let (anon, mut events) = within("connect", Client::connect(options(&server, None)))
        .await
        .unwrap();
    anon.join("public.news").await.unwrap();
    anon.join("game.lobby").await.unwrap();
    assert!(matches!(
        anon.join("game.hall").await,
        Err(ClientError::Forbidden {
            action: Action::Subscribe,
            ..
        })
    ));
    assert!(matches!(
        anon.join("chat.x").await,
        Err(ClientError::Forbidden {
            action: Action::Subscribe,
            ..
        })
    ));
    assert!(matches!(
        anon.emit_with_ack("public.news", "say", "x").await,
        Err(ClientError::Forbidden {
            action: Action::Publish,
            ..
        })
    ));
    // game.lobby's own anonymous permissions let it publish there, and the
    // namespace's echo default gives it its own event back.
    let offset = anon.emit_with_ack("game.lobby", "say", "hi").await.unwrap();
    let own = next_event(&mut events, "own event (echo)").await;
    assert_eq!(assert_reliable(&own, "game.lobby", "say", "hi"), offset);
    publisher
        .emit_with_ack("public.news", "say", "news")
        .await
        .unwrap();
    let news = next_event(&mut events, "news").await;
    assert_eq!(assert_reliable(&news, "public.news", "say", "news"), 1);
}

#[tokio::test]
async fn namespace_rules_apply_to_their_rooms_only() {
    let server = common::start_with(config_with(namespaces(), false)).await;
    let (c, mut events) = client(&server, full("ann")).await;
    let (other, mut other_events) = client(&server, full("bob")).await;
    for room in ["game.x", "chat.x"] {
        other.join(room).await.unwrap();
    }
    // Max payload in game, not in chat.
    match c.emit_with_ack("game.x", "say", "seventeen bytes!!").await {
        Err(ClientError::Rejected { code, reason }) => {
            assert_eq!(code, ErrorCode::TooLarge);
            assert!(reason.contains("maximum of 16"), "{reason}");
        }
        other => panic!("expected too large, got {other:?}"),
    }
    let offset = c
        .emit_with_ack("chat.x", "say", "seventeen bytes!!")
        .await
        .unwrap();
    let event = next_event(&mut other_events, "the chat event").await;
    assert_eq!(
        assert_reliable(&event, "chat.x", "say", "seventeen bytes!!"),
        offset
    );
    assert_eq!(server.handle.stats().refusal(Refusal::PayloadTooLarge), 1);

    // No datagrams in game: refused, told once, counted.
    resend_until(&server, &c, "game.x", vec![1], |s| {
        s.refusal(Refusal::DatagramsDisabled) > 0
    })
    .await;
    match next_incoming(&mut events).await {
        Incoming::ServerError { code, message } => {
            assert_eq!(code, ErrorCode::DatagramsDisabled);
            assert!(message.contains("game.x"), "{message}");
        }
        other => panic!("expected a server error, got {other:?}"),
    }
    // Over chat's payload limit as a datagram: refused too.
    resend_until(&server, &c, "chat.x", vec![0; 65], |s| {
        s.refusal(Refusal::PayloadTooLarge) > 1
    })
    .await;
    match next_incoming(&mut events).await {
        Incoming::ServerError { code, message } => {
            assert_eq!(code, ErrorCode::TooLarge);
            assert!(message.contains("maximum of 64"), "{message}");
        }
        other => panic!("expected a server error, got {other:?}"),
    }
    // What chat allows arrives (datagrams may be lost: send until one does).
    let mut sent = 0;
    let datagram = loop {
        assert!(sent < 100, "no chat datagram arrived");
        c.emit_datagram("chat.x", "pos", vec![2]).await.unwrap();
        c.ping().await.unwrap();
        other.ping().await.unwrap();
        sent += 1;
        if let Some(e) = other_events.try_next() {
            break e;
        }
    };
    assert_eq!((&*datagram.room, datagram.name.as_str()), ("chat.x", "pos"));
    assert_eq!(datagram.payload.as_ref(), &[2]);
    assert!(matches!(datagram.delivery, Delivery::Datagram { .. }));
    assert_eq!(c.stats().server_errors, 2, "each rule told once per room");
    // Echo is on by default in game, off in chat.
    c.join("game.x").await.unwrap();
    c.join("chat.x").await.unwrap();
    c.emit_with_ack("chat.x", "say", "not echoed")
        .await
        .unwrap();
    let offset = c.emit_with_ack("game.x", "say", "echoed").await.unwrap();
    let own = next_event(&mut events, "own game event").await;
    assert_eq!(assert_reliable(&own, "game.x", "say", "echoed"), offset);
    c.ping().await.unwrap();
    assert!(events.try_next().is_none(), "chat.x is not echoed");
    // chat keeps no history, game the server's default.
    let (late, _late_events) = client(&server, full("late")).await;
    let since_start = JoinOptions {
        since: Some(0),
        ..JoinOptions::default()
    };
    let chat = late.join_with("chat.x", since_start).await.unwrap();
    assert_eq!(
        chat.recovery,
        Recovery::NotRecovered {
            reason: RecoveryFailure::HistoryTooShort
        }
    );
    let game = late.join_with("game.x", since_start).await.unwrap();
    assert_eq!(game.recovery, Recovery::Recovered { replayed: 1 });
}

#[tokio::test]
async fn tokens_signed_by_another_service_are_checked_with_its_public_key() {
    use quicbus::auth::token::{mint_with_pem, Algorithm};
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let verifier = TokenVerifier::from_public_key_pem(key.public_key_pem().as_bytes()).unwrap();
    let server = common::start_with(ServerConfig {
        auth: AuthConfig {
            verifier: Some(verifier),
            allow_anonymous: false,
        },
        ..ServerConfig::default()
    })
    .await;
    let request = TokenRequest {
        user: "es".into(),
        permissions: lists(&["game.>"], &["game.>"], &[]),
        ttl: 600,
    };
    let signed = mint_with_pem(
        key.serialize_pem().as_bytes(),
        Algorithm::Es256,
        &request,
        unix_now(),
    )
    .unwrap();
    let (c, mut events) = client(&server, signed).await;
    c.join_with(
        "game.x",
        JoinOptions {
            echo: Some(true),
            ..JoinOptions::default()
        },
    )
    .await
    .unwrap();
    let offset = c.emit_with_ack("game.x", "say", "signed").await.unwrap();
    let own = next_event(&mut events, "own event").await;
    assert_eq!(assert_reliable(&own, "game.x", "say", "signed"), offset);
    // An HS256 token, whatever its secret, is another algorithm.
    let (code, reason) = refused(&server, Some(full("ann"))).await;
    assert_eq!(code, ErrorCode::InvalidToken);
    assert!(reason.contains("HS256"), "{reason}");
}

#[tokio::test]
async fn after_its_token_expires_a_client_waits_for_a_new_one_and_resumes() {
    let server = secured().await;
    // Three seconds: time to join on a loaded machine.
    let mut opts = options(
        &server,
        Some(token("ann", lists(&["chat.>"], &["chat.>"], &[]), 3)),
    );
    common::quick(&mut opts);
    let (c, mut events) = within("connect", Client::connect(opts)).await.unwrap();
    c.join("chat.a").await.unwrap();
    let reason = loop {
        match within("token expiry", events.next_incoming())
            .await
            .unwrap()
        {
            Incoming::TokenExpired { reason } => break reason,
            Incoming::Disconnected { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(reason.contains("token expired"), "{reason}");
    assert!(!c.is_connected());
    c.set_token(&full("ann"));
    loop {
        match within("reconnect", events.next_incoming()).await.unwrap() {
            Incoming::Reconnected { resumed } => assert_eq!(resumed, ResumeOutcome::Resumed),
            Incoming::Recovery { room, .. } => {
                assert_eq!(&*room, "chat.a");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let offset = c.emit_with_ack("chat.a", "say", "back").await.unwrap();
    assert_eq!(offset, 1);
}
