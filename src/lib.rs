pub mod certs;
pub mod client;
pub mod game;
pub mod server;
pub mod tls;
pub mod wire;
