//! Test helpers shared by the integration tests: a real server on
//! 127.0.0.1:0 with fresh development certificates, and clients that trust it.
#![allow(dead_code)]
#![allow(clippy::unwrap_used)]

pub mod metrics;
pub mod nats;
pub mod process;

use std::future::Future;
use std::time::Duration;

use quicbus::certs::{self, DevCerts};
use quicbus::client::{Client, ClientOptions, Event, Events, Trust};
use quicbus::server::{Server, ServerConfig, ServerHandle, ServerIdentity};

/// Generous: tests must pass on a loaded 2-core machine; a hang still fails.
pub const WAIT: Duration = Duration::from_secs(20);

pub struct TestServer {
    pub handle: ServerHandle,
    pub certs: DevCerts,
}

pub async fn start() -> TestServer {
    start_with(ServerConfig::default()).await
}

pub async fn start_with(mut config: ServerConfig) -> TestServer {
    config.listen = "127.0.0.1:0".parse().unwrap();
    let certs = certs::generate(&[]).expect("generate certs");
    start_exactly(config, certs).await
}

/// A server on `config.listen` itself, with the given certificates (to
/// restart a server where its clients expect it).
pub async fn start_exactly(config: ServerConfig, certs: DevCerts) -> TestServer {
    let identity = ServerIdentity::from_dev_certs(&certs).expect("identity");
    let handle = Server::bind(config, identity).expect("bind").spawn();
    TestServer { handle, certs }
}

impl TestServer {
    pub fn options(&self) -> ClientOptions {
        let mut options = ClientOptions::new(self.handle.local_addr());
        options.trust = Trust::CaPem(self.certs.ca_pem.clone());
        options
    }

    pub async fn client(&self) -> (Client, Events) {
        within("connect", Client::connect(self.options()))
            .await
            .expect("connect")
    }
}

/// Awaits `fut`, failing the test with `what` if it takes longer than [`WAIT`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

/// The next event, failing the test if none arrives in time or the stream ends.
pub async fn next_event(events: &mut Events, what: &str) -> Event {
    within(what, events.next())
        .await
        .unwrap_or_else(|| panic!("event stream ended while waiting for {what}"))
}

/// A bare QUIC connection that speaks the wire protocol by hand, for
/// sending what a well-behaved client never would.
pub struct RawPeer {
    pub conn: quinn::Connection,
    pub control_send: quinn::SendStream,
    pub control: quicbus::wire::FrameReader,
    _endpoint: quinn::Endpoint,
}

impl TestServer {
    /// Connects without the client library and opens the control stream.
    pub async fn raw(&self) -> RawPeer {
        use quicbus::tls;
        let roots = tls::parse_certs(&self.certs.ca_pem).unwrap();
        let config = tls::client_config(&roots, &tls::TransportSettings::default()).unwrap();
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(config);
        let conn = within(
            "raw connect",
            endpoint
                .connect(self.handle.local_addr(), "localhost")
                .unwrap(),
        )
        .await
        .expect("raw connect");
        let (control_send, recv) = within("open control", conn.open_bi()).await.unwrap();
        RawPeer {
            conn,
            control_send,
            control: quicbus::wire::FrameReader::new(recv, 1 << 20),
            _endpoint: endpoint,
        }
    }

    /// A raw peer that has completed the handshake.
    pub async fn raw_session(&self) -> RawPeer {
        let mut peer = self.raw().await;
        peer.send_control(&quicbus::wire::Frame::Hello {
            version: quicbus::wire::PROTOCOL_VERSION,
            token: None,
            client_name: "raw".into(),
            resume: None,
            copies: false,
        })
        .await;
        match peer.next_control().await {
            quicbus::wire::Frame::Welcome { .. } => peer,
            other => panic!("expected Welcome, got {other:?}"),
        }
    }
}

impl RawPeer {
    pub async fn send_control(&mut self, frame: &quicbus::wire::Frame) {
        let bytes = quicbus::wire::encode_framed(frame);
        self.send_control_bytes(&bytes).await;
    }

    pub async fn send_control_bytes(&mut self, bytes: &[u8]) {
        within("control write", self.control_send.write_all(bytes))
            .await
            .expect("control write");
    }

    pub async fn next_control(&mut self) -> quicbus::wire::Frame {
        within("control frame", self.control.next())
            .await
            .expect("control read")
            .expect("control stream open")
    }

    /// Waits for the server to close the connection; returns code and reason.
    pub async fn closed(&self) -> (u64, String) {
        match within("connection close", self.conn.closed()).await {
            quinn::ConnectionError::ApplicationClosed(c) => (
                c.error_code.into_inner(),
                String::from_utf8_lossy(&c.reason).into_owned(),
            ),
            other => panic!("expected an application close, got {other}"),
        }
    }
}

/// Logs to the test output when RUST_LOG is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

impl RawPeer {
    /// The next stream the server opens to this peer.
    pub async fn accept_stream(&self) -> quicbus::wire::FrameReader {
        let recv = within("a server-opened stream", self.conn.accept_uni())
            .await
            .expect("accept stream");
        quicbus::wire::FrameReader::new(recv, 1 << 20)
    }
}

/// The next frame of a stream (`None` at its end), within the test timeout.
pub async fn next_frame(reader: &mut quicbus::wire::FrameReader) -> Option<quicbus::wire::Frame> {
    within("a stream frame", reader.next())
        .await
        .expect("stream read")
}

/// Cuts the way back (server → client) of a netsim path: the server still
/// gets what the client sends, the client learns nothing of it.
pub fn cut_way_back(netsim: &quicbus::netsim::NetsimHandle) {
    use quicbus::netsim::Impairment;
    let cut = Impairment {
        loss_pct: 100.0,
        ..Impairment::default()
    };
    netsim.set_impairment(Impairment::default(), cut).unwrap();
}

/// Undoes [`cut_way_back`]: both ways clear again.
pub fn restore_path(netsim: &quicbus::netsim::NetsimHandle) {
    use quicbus::netsim::Impairment;
    netsim
        .set_impairment(Impairment::default(), Impairment::default())
        .unwrap();
}

/// How long a quick client waits on a silent connection: a dead path (or a
/// killed server, which sends no close) is noticed this fast.
pub const IDLE: Duration = Duration::from_millis(600);

/// Options for a client that notices a dead path quickly and retries fast.
pub fn quick(options: &mut quicbus::client::ClientOptions) {
    options.transport.idle_timeout = IDLE;
    options.transport.keep_alive = Duration::from_millis(100);
    options.reconnect = Some(quicbus::client::Reconnect {
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        give_up_after: None,
    });
    options.connect_timeout = Duration::from_secs(5);
}

/// A healthy publisher/subscriber pair that must keep working throughout.
pub struct Bystanders {
    pub publisher: Client,
    pub subscriber: Client,
    pub events: Events,
    _pub_events: Events,
}

impl Bystanders {
    pub async fn new(server: &TestServer) -> Self {
        let (publisher, _pub_events) = server.client().await;
        let (subscriber, events) = server.client().await;
        subscriber.join("healthy").await.unwrap();
        let mut me = Bystanders {
            publisher,
            subscriber,
            events,
            _pub_events,
        };
        me.check("before").await;
        me
    }

    pub async fn check(&mut self, label: &str) {
        self.publisher
            .emit_with_ack("healthy", label, label.to_string())
            .await
            .unwrap_or_else(|e| panic!("publisher broken {label}: {e}"));
        let event = next_event(&mut self.events, label).await;
        assert_eq!(event.name, label);
        assert!(self.subscriber.stats().reliable_received > 0);
    }
}
