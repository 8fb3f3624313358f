//! The PostgreSQL front door: handshake (TLS, startup, SCRAM), then a relay session that sends
//! every statement through the gate and forwards results as raw bytes.

pub mod cancel;
pub mod captured_keys;
pub mod client_stream;
pub mod gate_cache;
pub mod handshake;
pub mod messages;
pub mod outcomes;
pub mod pipeline;
pub mod scram;
pub mod search_path;
pub mod session;
pub mod statements;
