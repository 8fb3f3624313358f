//! The upstream PostgreSQL: where it is ([`UpstreamConfig`]), how Portcullis logs in to it
//! ([`connect`]), how it cancels a running query ([`cancel`]), and a local throwaway cluster
//! ([`LocalCluster`]) for the demo and the test harness.

pub mod fixtures;
mod local_cluster;
mod upstream;

pub use local_cluster::{ClusterError, LocalCluster, random_token};
pub use upstream::{ConnectError, Upstream, UpstreamConfig, cancel, connect};
