//! Starting and stopping a node: one shutdown tree (root token, child tokens, a task tracker and
//! a deadline on the drain), the gRPC server with health and reflection on one port, link
//! dialers, the purge timer and the metrics endpoint.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tidewire_proto::v1 as pb;
use tidewire_store::{SledOptions, SledStore, Store};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing::Instrument;

use crate::config::NodeConfig;
use crate::error::NodeError;
use crate::node::Node;
use crate::services::{AdminService, FederationService, PublisherService};

/// A started node.
#[derive(Debug)]
pub struct Running {
    /// The node's state.
    pub node: Arc<Node>,
    /// The gRPC address it listens on.
    pub addr: SocketAddr,
    /// The metrics address, if any.
    pub metrics_addr: Option<SocketAddr>,
    server: tokio::task::JoinHandle<Result<(), String>>,
}

impl Running {
    /// Stops the node: links stop sending and wait for the acknowledgements of what they sent
    /// (bounded by [`DRAIN_DEADLINE`]), then everything is cancelled, tasks are drained
    /// (bounded) and the store is flushed.
    pub async fn stop(self) {
        self.drain().await;
        self.node.shutdown.cancel();
        self.wait().await;
    }

    /// Lets the links' sent transfers be acknowledged before the links close, so that a peer
    /// does not receive them again after a restart. Gives up after [`DRAIN_DEADLINE`]: what is
    /// still unacknowledged then stays queued and is sent again (the peer's seen-set makes
    /// that harmless).
    async fn drain(&self) {
        let node = &self.node;
        node.draining.cancel();
        node.bump_outbox();
        let deadline = tokio::time::Instant::now() + DRAIN_DEADLINE;
        while node.in_flight.load(std::sync::atomic::Ordering::Acquire) > 0 {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    unacknowledged = node.in_flight.load(std::sync::atomic::Ordering::Acquire),
                    "links not drained in time; the unacknowledged transfers stay queued"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until the node has stopped (after its shutdown token fired).
    pub async fn wait(self) {
        let _ = self.server.await;
        self.node.tracker.close();
        if tokio::time::timeout(Duration::from_secs(10), self.node.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("some tasks did not finish within the shutdown deadline");
        }
        if let Err(e) = self.node.store.sync() {
            tracing::error!(error = %e, "final store sync failed");
        }
        // Leaves nothing for the next start to replay.
        if let Err(e) = self.node.store.checkpoint() {
            tracing::warn!(error = %e, "final store checkpoint failed; the next start replays its log");
        }
        // sled lets go of its data file (and its lock on it) from background threads a moment
        // after the last handle is dropped. Wait for that (bounded), so that a stopped node's
        // data directory can be opened at once, e.g. by a restart in the same process.
        let db = self.node.cfg.data_dir.join("store").join("db");
        if let Some(node) = Arc::into_inner(self.node) {
            drop(node);
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while std::fs::File::open(&db).is_ok_and(|f| f.try_lock().is_err()) {
                if std::time::Instant::now() > deadline {
                    tracing::warn!("the store was not released within 5 s of stopping");
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        tracing::info!("node stopped");
    }
}

/// What to do when an address cannot be bound.
fn bind_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            " (is this node already running, or another program on that port? stop it, or \
             choose another port)"
        }
        std::io::ErrorKind::AddrNotAvailable => {
            " (this machine has no such address: listen on one of its own, such as 127.0.0.1, \
             or on 0.0.0.0 for all of them)"
        }
        std::io::ErrorKind::PermissionDenied => {
            " (ports below 1024 need privileges: choose a port of 1024 or above)"
        }
        _ => "",
    }
}

/// Binds `addr`, given by the configuration's `key`.
async fn bind(key: &'static str, addr: std::net::SocketAddr) -> Result<TcpListener, NodeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|error| NodeError::Bind {
            key,
            addr,
            hint: bind_hint(&error),
            error,
        })
}

/// The HTTP/2 limit on streams open at once on one connection.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 1024;

/// How long a graceful stop waits for links' sent transfers to be acknowledged.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(3);

/// Adds a link to a peer at run time. The node with the smaller id dials; the other records the
/// peer and waits for it.
pub fn add_link(node: &Arc<Node>, peer: tidewire_core::NodeId, url: String) {
    node.links
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(peer.clone())
        .or_default()
        .url
        .clone_from(&url);
    if node.id() < &peer {
        let span = tracing::info_span!("link", peer = %peer, side = "dial");
        let cancel = node.shutdown.child_token();
        let old = node
            .dials
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(peer.clone(), cancel.clone());
        if let Some(old) = old {
            old.cancel();
        }
        node.tracker
            .spawn(crate::link::dial_loop(node.clone(), peer, url, cancel).instrument(span));
    }
}

/// Removes the link to `peer` at run time: its dial loop stops, its session ends, and the
/// peer's calls to open it again are refused.
pub fn remove_link(node: &Arc<Node>, peer: &tidewire_core::NodeId) {
    node.links
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(peer);
    let dial = node
        .dials
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(peer);
    if let Some(dial) = dial {
        dial.cancel();
    }
    node.sessions.end(peer);
}

/// What [`apply_links`] changed, by peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkChanges {
    /// Links new in the configuration.
    pub added: Vec<String>,
    /// Links no longer in it.
    pub removed: Vec<String>,
    /// Links whose URL changed: dialed again at the new one.
    pub moved: Vec<String>,
    /// New links to nodes the roster in force does not have: not added.
    pub unknown: Vec<String>,
}

impl LinkChanges {
    /// Whether any link changed.
    pub fn is_change(&self) -> bool {
        !(self.added.is_empty() && self.removed.is_empty() && self.moved.is_empty())
    }
}

/// Puts `links` (a re-read `node.toml`'s `[[link]]`s) in force without a restart: new links
/// are opened, removed ones closed (and refused from then on), and a link whose URL changed is
/// dialed again at the new URL. Links that did not change keep their session.
pub fn apply_links(node: &Arc<Node>, links: &[(tidewire_core::NodeId, String)]) -> LinkChanges {
    let roster = node.roster();
    let known: BTreeMap<tidewire_core::NodeId, String> = node
        .links
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(p, l)| (p.clone(), l.url.clone()))
        .collect();
    let mut changes = LinkChanges::default();
    for (peer, url) in links {
        match known.get(peer) {
            Some(old) if old == url => {}
            // The peer dials this link: its URL is not used here.
            Some(_) if node.id() > peer => {
                if let Some(l) = node
                    .links
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_mut(peer)
                {
                    l.url.clone_from(url);
                }
            }
            Some(_) => {
                remove_link(node, peer);
                add_link(node, peer.clone(), url.clone());
                changes.moved.push(peer.to_string());
            }
            None if roster.get(peer.as_str()).is_none() => {
                tracing::warn!(peer = %peer, "a new [[link]] names a node the roster does not have; not added");
                changes.unknown.push(peer.to_string());
            }
            None => {
                add_link(node, peer.clone(), url.clone());
                changes.added.push(peer.to_string());
            }
        }
    }
    for peer in known.keys() {
        if !links.iter().any(|(p, _)| p == peer) {
            remove_link(node, peer);
            changes.removed.push(peer.to_string());
        }
    }
    changes
}

/// Every service the health service reports on: the whole server (""), then each service;
/// the first [`WRITERS`] of them need durable writes.
const SERVICES: [&str; 5] = [
    "",
    <pb::federation_server::FederationServer<FederationService> as NamedService>::NAME,
    <pb::publisher_server::PublisherServer<PublisherService> as NamedService>::NAME,
    <pb::subscriber_server::SubscriberServer<crate::subscribe::SubscriberService> as NamedService>::NAME,
    <pb::admin_server::AdminServer<AdminService> as NamedService>::NAME,
];

/// How many of [`SERVICES`] need durable writes: not serving while the store's writes fail.
const WRITERS: usize = 3;

/// Keeps `grpc.health.v1.Health` true: the server, federation links and publishing are
/// `NOT_SERVING` while the store cannot commit (checked every second); everything is
/// `NOT_SERVING` once the node stops, and watch streams are then ended so that they do not hold
/// the draining server open.
async fn report_health(node: Arc<Node>, mut health: HealthReporter, stop: CancellationToken) {
    let mut writable = true;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let now = node.store_writable();
        if now == writable {
            continue;
        }
        writable = now;
        let status = if now {
            tracing::info!("store writes succeed again: serving");
            ServingStatus::Serving
        } else {
            tracing::error!("store writes are failing: links and publishing not serving");
            ServingStatus::NotServing
        };
        for service in &SERVICES[..WRITERS] {
            health.set_service_status(service, status).await;
        }
    }
    for service in SERVICES {
        health
            .set_service_status(service, ServingStatus::NotServing)
            .await;
    }
    for service in SERVICES {
        health.clear_service_status(service).await;
    }
}

/// Starts a node from its configuration. It runs until `shutdown` is cancelled.
pub async fn start(cfg: NodeConfig, shutdown: CancellationToken) -> Result<Running, NodeError> {
    start_inner(cfg, None, shutdown).await
}

/// Starts a node like [`start`], but serves gRPC on `listener` (already bound, e.g. held since
/// its port was chosen so that no other process can take it) instead of binding `cfg.listen`,
/// which is set to the listener's address. The metrics endpoint still binds
/// `cfg.metrics_listen`.
pub async fn start_with_listener(
    cfg: NodeConfig,
    listener: std::net::TcpListener,
    shutdown: CancellationToken,
) -> Result<Running, NodeError> {
    start_inner(cfg, Some(listener), shutdown).await
}

async fn start_inner(
    mut cfg: NodeConfig,
    listener: Option<std::net::TcpListener>,
    shutdown: CancellationToken,
) -> Result<Running, NodeError> {
    let listener = match listener {
        None => bind("listen", cfg.listen).await?,
        Some(l) => l
            .set_nonblocking(true)
            .and_then(|()| TcpListener::from_std(l))
            .map_err(|e| NodeError::Internal(format!("the listener given: {e}")))?,
    };
    let addr = listener
        .local_addr()
        .map_err(|e| NodeError::Internal(e.to_string()))?;
    cfg.listen = addr;
    let metrics_listener = match cfg.metrics_listen {
        Some(a) => Some(bind("metrics_listen", a).await?),
        None => None,
    };
    let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
    let store_dir = cfg.data_dir.join("store");
    let cache_mib = cfg.limits.store_cache_mib;
    let node = Node::open(
        cfg,
        || {
            let opts = SledOptions {
                cache_bytes: cache_mib * 1024 * 1024,
                ..SledOptions::default()
            };
            Ok(Arc::new(SledStore::open_with(&store_dir, opts)?) as Arc<dyn Store>)
        },
        shutdown.clone(),
    )?;
    let max = node.cfg.limits.max_message_bytes;

    let (health, health_service) = tonic_health::server::health_reporter();
    for service in SERVICES {
        health
            .set_service_status(service, ServingStatus::Serving)
            .await;
    }
    node.tracker.spawn(
        report_health(node.clone(), health, shutdown.clone())
            .instrument(tracing::info_span!("health")),
    );
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tidewire_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| NodeError::Internal(format!("reflection: {e}")))?;

    let router = tonic::transport::Server::builder()
        .tls_config(node.tls.server_config())
        .map_err(|e| NodeError::Config(format!("tls: {}", crate::tls::error_chain(&e))))?
        .http2_keepalive_interval(Some(Duration::from_secs(1)))
        .http2_keepalive_timeout(Some(Duration::from_secs(3)))
        .tcp_nodelay(true)
        // Streams one client connection may hold open at once (subscriptions, publish streams):
        // a client gets a stream refused beyond it instead of a task each without bound.
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        // Large HTTP/2 windows: a link streams thousands of ~2 KiB frames, and the 64 KiB default
        // would make the sender wait for window updates every few dozen frames.
        .initial_stream_window_size(Some(4 * 1024 * 1024))
        .initial_connection_window_size(Some(16 * 1024 * 1024))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(
            pb::federation_server::FederationServer::new(FederationService(node.clone()))
                .max_decoding_message_size(crate::link::frame_limit(max))
                .max_encoding_message_size(crate::link::frame_limit(max)),
        )
        .add_service(
            pb::publisher_server::PublisherServer::new(PublisherService(node.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(
            pb::admin_server::AdminServer::new(AdminService(node.clone()))
                .max_decoding_message_size(max),
        )
        .add_service(
            pb::subscriber_server::SubscriberServer::new(crate::subscribe::SubscriberService(
                node.clone(),
            ))
            .max_decoding_message_size(max),
        );
    // The builder's `tcp_nodelay` only applies to listeners tonic binds itself: set it on every
    // accepted socket here, or acks, publish replies and deliveries wait out Nagle's algorithm
    // against the peer's delayed ACK (tens of milliseconds per exchange).
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let stop = shutdown.clone();
    let span = tracing::info_span!("server", node = %node.id(), addr = %addr);
    let server = tokio::spawn(
        async move {
            router
                .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                .await
                .map_err(|e| crate::tls::error_chain(&e))
        }
        .instrument(span),
    );

    for (peer, url) in node.cfg.links.clone() {
        add_link(&node, peer, url);
    }
    // Copies queued for a node the roster no longer has (it left while this node was down).
    if let Err(e) = node.drop_queued_for_departed().await {
        tracing::error!(error = %e, "could not drop copies queued for nodes no longer in the roster");
    }

    let n = node.clone();
    let stop = shutdown.child_token();
    node.tracker.spawn(
        async move {
            // Every 2 s: send held consent requests that have not reached the origin's side
            // yet; every 10 s: purge expired content and end idle durable subscriptions.
            for tick in 1u64.. {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
                match n.retry_consent().await {
                    Ok(0) => {}
                    Ok(count) => tracing::info!(count, "consent requests sent again"),
                    Err(e) => tracing::error!(error = %e, "consent retry failed"),
                }
                if tick % 5 != 0 {
                    continue;
                }
                match crate::link::purge_expired(&n).await {
                    Ok(0) => {}
                    Ok(count) => tracing::info!(count, "purged expired notifications"),
                    Err(e) => tracing::error!(error = %e, "purge failed"),
                }
                if let Err(e) = crate::subscribe::expire_idle_durables(&n).await {
                    tracing::error!(error = %e, "ending idle durable subscriptions failed");
                }
            }
        }
        .instrument(tracing::info_span!("housekeeping")),
    );

    if let Some(l) = metrics_listener {
        let n = node.clone();
        let stop = shutdown.child_token();
        node.tracker
            .spawn(crate::metrics::serve(n, l, stop).instrument(tracing::info_span!("metrics")));
    }
    tracing::info!(node = %node.id(), addr = %addr, "node started");
    Ok(Running {
        node,
        addr,
        metrics_addr,
        server,
    })
}
