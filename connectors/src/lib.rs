//! Upstreams Portcullis talks to on an agent's behalf. Agents never see these credentials.
//!
//! - [`postgres`]: the real database: wire-level connect and cancel with the proxy's own
//!   credentials, and throwaway local clusters for the demo and the tests.

pub mod postgres;
pub mod vector;
