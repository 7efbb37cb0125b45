//! Test helpers shared by the integration tests: a real server on
//! 127.0.0.1:0 with fresh development certificates, and clients that trust it.
#![allow(dead_code)]

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
