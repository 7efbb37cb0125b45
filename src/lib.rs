pub mod certs;
pub mod tls;
pub mod wire;
