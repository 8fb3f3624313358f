//! The upstream PostgreSQL: where it is ([`UpstreamConfig`]), how Portcullis logs in to it
//! ([`connect`]), how it cancels a running query ([`cancel`]), and a local throwaway cluster
//! ([`LocalCluster`]) for the demo and the test harness, and catalog introspection
//! ([`catalog`]) for schema import, and what the login may do beyond that ([`login_checks`]).

pub mod catalog;
pub mod fixtures;
mod local_cluster;
pub mod login_checks;
pub mod tls;
mod upstream;

pub use local_cluster::{random_token, ClusterError, LocalCluster};
pub use upstream::{
    cancel, connect, ClientError, ConnectError, Upstream, UpstreamConfig, UpstreamStream,
};
