//! `bench latency --cluster`: the relay across two `serve --cluster` nodes
//! on the bench's own NATS, and a core-NATS relay on that NATS, after the
//! single-node rows of the same run.
//!
//! Client A (the sender) is on node B, client B (the bouncer) on node A, so
//! every round trip crosses the nodes twice: A → node B → JetStream → node
//! A → B → node A → JetStream → node B → A. The budget, printed as
//! a check: its reliable p50 within the core-NATS relay's p50 plus two
//! single-node relay p50s; and, beside it, the same with the JetStream
//! relay (NATS's own cost of storing and republishing) in place of the
//! core-NATS one. Cluster rows run on loopback only (no netsim
//! loss), without datagram copies and without token checks.

use tokio::runtime::Runtime;

use super::pair::Pair;
use super::{measure_all, summary, Kind, LatencyConfig, LatencyRow};
use crate::bench::cluster::{
    nats_relay, Cluster, ClusterOptions, CORE_RELAY, JETSTREAM, JS_ACKED_RELAY, JS_RELAY,
};
use crate::bench::{BenchError, Progress};

/// The name of the cross-node relay rows.
pub const CLUSTER_RELAY: &str = "cluster-relay";
/// The name of the core-NATS relay row.
pub const NATS_RELAY: &str = "nats-relay";

/// The core-NATS relay row, then the cross-node relay, reliable and
/// datagram.
pub(super) fn rows(
    config: &LatencyConfig,
    options: &ClusterOptions,
    clients: &Runtime,
    udp_p50: u64,
    progress: &Progress,
) -> Result<Vec<LatencyRow>, BenchError> {
    progress.step("cluster: nats-server and 2 serve --cluster nodes");
    let cluster = Cluster::start(options, 2)?;
    progress.finish(&format!("NATS at {}", cluster.nats_url()));
    clients.block_on(async {
        let mut rows = Vec::new();
        for (delivery, route) in [
            ("core-nats", CORE_RELAY),
            ("jetstream", JS_RELAY),
            ("jetstream-acked", JS_ACKED_RELAY),
        ] {
            progress.step(&format!("nats-relay {delivery}"));
            let (h, misordered) = nats_relay(cluster.nats_url(), route, config, progress).await?;
            let row = LatencyRow {
                misordered,
                ..LatencyRow::new(NATS_RELAY, delivery, &h, config.samples, udp_p50)
            };
            progress.finish(&summary(&row));
            rows.push(row);
        }
        for kind in [Kind::Reliable, Kind::Datagram] {
            progress.step(&format!(
                "{CLUSTER_RELAY} {} (client on node-2 → node-1 → back)",
                kind.name()
            ));
            rows.push(cross_node_row(config, &cluster, kind, udp_p50, progress).await?);
        }
        Ok(rows)
    })
}

/// One delivery kind across the two nodes.
async fn cross_node_row(
    config: &LatencyConfig,
    cluster: &Cluster,
    kind: Kind,
    udp_p50: u64,
    progress: &Progress,
) -> Result<LatencyRow, BenchError> {
    let [node_a, node_b] = &cluster.nodes[..] else {
        return Err(BenchError::Other(
            "the cross-node relay needs two nodes".into(),
        ));
    };
    let pair = Pair::connect_with(node_b.client_options(), node_a.client_options(), kind).await?;
    let mut pairs = vec![pair.join(kind, true).await?];
    let measured = measure_all(config, &mut pairs, config.loss_timeout_for(false), progress).await;
    for pair in pairs {
        pair.close().await;
    }
    let m = measured?
        .pop()
        .ok_or_else(|| BenchError::Other("no cross-node measurement".into()))?;
    let row = LatencyRow {
        misordered: m.misordered,
        storage: JETSTREAM.to_string(),
        auth: "off".to_string(),
        ..LatencyRow::new(CLUSTER_RELAY, kind.name(), &m.histogram, m.sent, udp_p50)
    };
    progress.finish(&summary(&row));
    Ok(row)
}
