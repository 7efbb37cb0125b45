//! The measured server, in this process on its own thread and runtime
//! (current-thread by default, as `quicbus serve`), checking signed tokens
//! if its variant says so.

use std::net::SocketAddr;
use std::thread::JoinHandle;

use super::auth::{PairTokens, TokenAuth};
use super::{AuthMode, LatencyConfig, Variant};
use crate::bench::scratch::ScratchDir;
use crate::bench::{BenchError, StorageKind};
use quicbus::certs::DevCerts;
use quicbus::server::{AuthConfig, FsyncPolicy, Server, ServerConfig, ServerIdentity, Storage};

/// A server on its own thread and runtime, with a scratch data directory
/// when it keeps history on disk; stopped (and the directory removed) when
/// dropped.
pub(super) struct LocalServer {
    pub(super) addr: SocketAddr,
    pub(super) variant: Variant,
    /// The secret its tokens are signed with, if it checks them.
    auth: Option<TokenAuth>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    /// Removed after the thread has ended (fields drop after `drop`).
    _data: Option<ScratchDir>,
}

impl LocalServer {
    pub(super) fn start(
        config: &LatencyConfig,
        variant: Variant,
        dev: &DevCerts,
    ) -> Result<Self, BenchError> {
        let storage = variant.storage;
        let identity =
            ServerIdentity::from_dev_certs(dev).map_err(|e| BenchError::Other(e.to_string()))?;
        let (data, storage_config) = match storage {
            StorageKind::Memory => (None, Storage::Memory),
            StorageKind::Disk => {
                let data = ScratchDir::new("data")?;
                let dir = data.path().join("data");
                // `interval`, as `serve` runs by default.
                let fsync = FsyncPolicy::default();
                (Some(data), Storage::Disk { dir, fsync })
            }
        };
        let runtime = quicbus::server::runtime(config.server_threads)
            .map_err(BenchError::io("starting the server runtime"))?;
        let auth = match variant.auth {
            AuthMode::Off => None,
            AuthMode::On => Some(TokenAuth::new()),
        };
        let server_config = ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            storage: storage_config,
            auth: match &auth {
                Some(auth) => auth.server_config()?,
                None => AuthConfig::default(),
            },
            ..ServerConfig::default()
        };
        let server = runtime
            .block_on(async { Server::bind(server_config, identity) })
            .map_err(|e| {
                BenchError::Other(format!("starting the server ({}): {e}", variant.label()))
            })?;
        let addr = server.local_addr();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            runtime.block_on(server.run(async {
                let _ = stop_rx.await;
            }))
        });
        Ok(LocalServer {
            addr,
            variant,
            auth,
            stop: Some(stop_tx),
            thread: Some(thread),
            _data: data,
        })
    }
}

impl LocalServer {
    /// The tokens of a relay's (`relay`) or a one-way pair's clients, if
    /// the server checks them.
    pub(super) fn pair_tokens(&self, relay: bool) -> Result<Option<PairTokens>, BenchError> {
        self.auth
            .as_ref()
            .map(|auth| auth.pair_tokens(relay))
            .transpose()
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
