//! Test kit for black-box Tidewire scenarios: real nodes, in process, on free loopback ports, in a
//! temporary directory, with the development PKI of `tidewire pki init` and real mutual TLS.
//!
//! Ports are race-free: [`Kit::builder`] binds a listener for every node as it chooses its port
//! and holds it until the node serves on it (so another test process running in parallel cannot
//! take the port in between); a node left out keeps its port until the kit is dropped.
//!
//! It wraps [`tidewire::demo::LocalFederation`] (the federation `tidewire demo` runs) instead of
//! re-implementing node start-up, and adds what tests need on top:
//!
//! - [`Kit::builder`]: write the PKI first, then edit it before any node starts — send a link
//!   through a [`Proxy`] the test controls ([`Builder::route_link_via`]) or leave a node out so the
//!   test can play it ([`Builder::without`]);
//! - client helpers: [`Kit::publish`], [`Kit::publish_all`], [`Kit::status`], [`Kit::audit`],
//!   [`Kit::received_ids`], [`Kit::deliveries`], and channels with any identity
//!   ([`Kit::channel_as`]) for tests that present the wrong certificate on purpose;
//! - [`eventually!`]: a bounded poll (every 50 ms up to a deadline, then a failure that says what
//!   was awaited and what was last seen), so no test synchronises with a bare sleep.
#![forbid(unsafe_code)]

mod proxy;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use tidewire::client::{Conn, status_error};
use tidewire::demo::LocalFederation;
use tidewire::pki::{self, Federation};
use tidewire_node::config::{ConfigFile, LinkFile};
use tidewire_proto::v1 as pb;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

pub use proxy::Proxy;

/// How often [`eventually`] polls.
pub const POLL: Duration = Duration::from_millis(50);

/// How long [`Builder::start`] waits for every started node to route to every other.
pub const CONVERGE: Duration = Duration::from_secs(20);

/// Polls `probe` every [`POLL`] until it returns `Ok`, and returns that value. Past `within`, it
/// panics with `what` and the last error the probe gave, so a failure says what was awaited and
/// what was seen instead. Each probe call is itself bounded by the time left.
pub async fn eventually<T>(
    within: Duration,
    what: &str,
    mut probe: impl AsyncFnMut() -> Result<T>,
) -> T {
    let start = Instant::now();
    let deadline = start + within;
    let mut last = String::from("(no probe finished)");
    loop {
        let left = deadline.saturating_duration_since(Instant::now()).max(POLL);
        match tokio::time::timeout(left, probe()).await {
            Ok(Ok(v)) => return v,
            Ok(Err(e)) => last = format!("{e:#}"),
            // Keep the previous observation: the last probe was only cut short by the deadline.
            Err(_) => last.push_str(" (then a probe did not finish before the deadline)"),
        }
        if Instant::now() >= deadline {
            panic!(
                "not within {within:?}: {what}\n  last observation: {last}\n  (waited {:?})",
                start.elapsed()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `eventually!(within, "what is awaited", { ...; ensure!(cond, "what was seen"); Ok(value) })`:
/// polls the block (which may `.await` and use `?`) every 50 ms until it returns `Ok`, up to
/// `within`, then fails the test with the message and the last error. See [`eventually`].
#[macro_export]
macro_rules! eventually {
    ($within:expr, $what:expr, $probe:block $(,)?) => {
        $crate::eventually($within, $what, async || $probe).await
    };
}

/// A small valid notification for tests: a `vessel_of_interest` on one route, H1, with a case
/// reference the test chooses (handy to check order) and the given audience (`node:c`).
pub fn notification(case_ref: &str, audience: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "kind": "vessel_of_interest",
        "case_ref": case_ref,
        "routes": ["atlantic.south-america.west-africa"],
        "handling": "H1",
        "grading": {"source": "B", "information": "2"},
        "audience": audience,
        "purposes": ["interdiction"],
        "fields": {
            "vessel": {"name": "MV Example", "imo": "9387421", "flag": "TG",
                       "position": {"lat": 5.61, "lon": -0.19}},
            "narrative": "Mother ship suspected of transhipment off the Bijagos."
        }
    })
}

/// Seals `n` as node `from` with `key` and relays it to `to`, as `from` would (no policy, its
/// custody entry signed): for a test that plays `from` over [`Kit::link_as`]. Returns the
/// notification's id and the envelope, to send as is or to tamper with first.
pub fn relayed_by(
    key: &tidewire_core::keys::SigningKey,
    from: &str,
    to: &str,
    n: &serde_json::Value,
) -> Result<(String, tidewire_core::envelope::Envelope)> {
    use tidewire_core::envelope::{self, Hop};
    let (from, to): (tidewire_core::NodeId, tidewire_core::NodeId) = (from.parse()?, to.parse()?);
    let n = tidewire_core::Notification::from_value(n)?;
    let id = tidewire_core::NotificationId::generate();
    let now = tidewire_core::timefmt::now_ms();
    let sealed = envelope::seal(&n, &from, key, id, 1, now);
    let relayed = envelope::relay(
        &sealed,
        Hop {
            node: &from,
            key,
            to: &to,
            at_ms: now,
            policy_version: "",
            withhold: Vec::new(),
            substitute: Vec::new(),
        },
    );
    Ok((id.to_string(), relayed))
}

/// A federation written to disk but not started yet: edit it, then [`Builder::start`].
pub struct Builder {
    tmp: tempfile::TempDir,
    dir: PathBuf,
    fed: Federation,
    nodes: Vec<String>,
    /// One listener per node of the federation, bound when its port was chosen and held until
    /// the node serves on it.
    listeners: BTreeMap<String, TcpListener>,
}

impl Builder {
    /// The federation directory (`federation.json`, `ca.pem`, `ID/node.toml`, …).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `federation.json`.
    pub fn federation(&self) -> &Federation {
        &self.fed
    }

    /// The address a node will listen on (a port the builder holds until the node starts).
    pub fn addr(&self, node: &str) -> Result<SocketAddr> {
        node_addr(&self.fed, node)
    }

    /// Makes the link between `a` and `b` go through `via` (a [`Proxy`] in front of the
    /// accepting node): rewrites the `[[link]] url` of the dialing side, which is the node with
    /// the lexicographically smaller id.
    pub fn route_link_via(&mut self, a: &str, b: &str, via: SocketAddr) -> Result<()> {
        let (dialer, acceptor) = if a < b { (a, b) } else { (b, a) };
        edit_config(&self.dir, dialer, |cfg| {
            let link: &mut LinkFile = cfg
                .links
                .iter_mut()
                .find(|l| l.peer == acceptor)
                .with_context(|| format!("{dialer} has no link to {acceptor}"))?;
            link.url = format!("https://{via}");
            Ok(true)
        })
    }

    /// Serves `node`'s Prometheus metrics on a port of its own (`metrics_listen =
    /// "127.0.0.1:0"`; the address is `Running::metrics_addr`).
    pub fn with_metrics(self, node: &str) -> Result<Self> {
        edit_config(&self.dir, node, |cfg| {
            cfg.metrics_listen = Some("127.0.0.1:0".into());
            Ok(true)
        })?;
        Ok(self)
    }

    /// Leaves `node` out: it stays in the roster and in its peers' configs, but nothing runs it
    /// (so a test can play it with its certificate and keys). Its port stays held while the kit
    /// lives; connections to it are accepted and closed at once, as with a refused connection.
    pub fn without(mut self, node: &str) -> Self {
        self.nodes.retain(|n| n != node);
        self
    }

    /// Starts the nodes and waits (bounded by [`CONVERGE`]) until every started node has a route
    /// to every other started node.
    pub async fn start(self) -> Result<Kit> {
        let Builder {
            tmp,
            dir,
            fed,
            nodes,
            mut listeners,
        } = self;
        let mut held = Vec::with_capacity(nodes.len());
        for id in &nodes {
            let l = listeners
                .remove(id)
                .with_context(|| format!("no node `{id}` in the federation"))?;
            held.push((id.as_str(), Some(l)));
        }
        let fed = LocalFederation::start_existing_on(&dir, fed, held).await?;
        // The nodes left out keep their ports until the kit is dropped.
        let closed = listeners
            .into_values()
            .map(closed_door)
            .collect::<std::io::Result<_>>()?;
        let kit = Kit {
            fed: Some(fed),
            closed,
            _tmp: tmp,
        };
        kit.converge(CONVERGE).await?;
        Ok(kit)
    }
}

/// Edits `DIR/<node>/node.toml`; `edit` says whether it changed anything (then it is written).
fn edit_config(
    dir: &Path,
    node: &str,
    edit: impl FnOnce(&mut ConfigFile) -> Result<bool>,
) -> Result<()> {
    let path = dir.join(node).join("node.toml");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut cfg: ConfigFile =
        toml::from_str(&text).with_context(|| format!("{} does not parse", path.display()))?;
    if edit(&mut cfg).with_context(|| format!("editing {}", path.display()))? {
        std::fs::write(&path, toml::to_string(&cfg)?)?;
    }
    Ok(())
}

/// Keeps a left-out node's port: accepts connections and closes them at once (the dialer sees its
/// handshake fail, as with a refused connection) until the returned task is aborted.
fn closed_door(l: TcpListener) -> std::io::Result<tokio::task::JoinHandle<()>> {
    l.set_nonblocking(true)?;
    let l = tokio::net::TcpListener::from_std(l)?;
    Ok(tokio::spawn(async move {
        loop {
            if let Ok((conn, _)) = l.accept().await {
                drop(conn);
            }
        }
    }))
}

fn node_addr(fed: &Federation, node: &str) -> Result<SocketAddr> {
    let n = fed
        .nodes
        .get(node)
        .with_context(|| format!("no node `{node}` in the federation"))?;
    let hostport = n
        .federation_url
        .strip_prefix("https://")
        .unwrap_or(&n.federation_url);
    hostport
        .parse()
        .with_context(|| format!("`{}` is not host:port", n.federation_url))
}

/// A running federation of in-process nodes. Dropping it stops the nodes (without waiting);
/// [`Kit::stop`] stops them and waits for a clean drain.
pub struct Kit {
    fed: Option<LocalFederation>,
    /// The tasks holding the ports of the nodes left out.
    closed: Vec<tokio::task::JoinHandle<()>>,
    _tmp: tempfile::TempDir,
}

impl Drop for Kit {
    fn drop(&mut self) {
        if let Some(f) = &self.fed {
            for r in f.nodes.values() {
                r.node.shutdown.cancel();
            }
        }
        for t in &self.closed {
            t.abort();
        }
    }
}

impl Kit {
    /// Writes a PKI for `nodes` and `links` (`"a:b"`) into a fresh temporary directory, without
    /// starting anything.
    ///
    /// The ports `pki init` picks are only free at the moment it looks, so the builder binds a
    /// listener on a port of its own for every node right away, holds it, and writes those ports
    /// instead (`listen` and link URLs in each `node.toml`, `federation.json`). The metrics
    /// endpoint stays off.
    pub fn builder(nodes: &[&str], links: &[&str]) -> Result<Builder> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("federation");
        let mut fed = pki::init(&pki::InitOptions::dev(&dir, nodes, links))?;
        let mut listeners = BTreeMap::new();
        let mut addrs = BTreeMap::new();
        for id in fed.nodes.keys() {
            let l = TcpListener::bind("127.0.0.1:0").context("binding a port for a node")?;
            addrs.insert(id.clone(), l.local_addr()?);
            listeners.insert(id.clone(), l);
        }
        LocalFederation::readdress(&dir, &mut fed, &addrs)?;
        for id in fed.nodes.keys() {
            edit_config(&dir, id, |cfg| Ok(cfg.metrics_listen.take().is_some()))?;
        }
        Ok(Builder {
            tmp,
            dir,
            fed,
            nodes: nodes.iter().map(|s| s.to_string()).collect(),
            listeners,
        })
    }

    /// Writes a PKI, starts every node and waits until routes converge.
    pub async fn start(nodes: &[&str], links: &[&str]) -> Result<Kit> {
        Kit::builder(nodes, links)?.start().await
    }

    fn local(&self) -> &LocalFederation {
        self.fed.as_ref().expect("the federation runs until stop")
    }

    /// The federation directory.
    pub fn dir(&self) -> &Path {
        &self.local().dir
    }

    /// `federation.json`.
    pub fn federation(&self) -> &Federation {
        &self.local().fed
    }

    /// A running node.
    pub fn node(&self, id: &str) -> &tidewire_node::Running {
        self.local()
            .nodes
            .get(id)
            .unwrap_or_else(|| panic!("node `{id}` is not running in this kit"))
    }

    /// Where a node listens.
    pub fn addr(&self, id: &str) -> Result<SocketAddr> {
        node_addr(self.federation(), id)
    }

    /// Waits (bounded) until every running node has a route to every other running node.
    pub async fn converge(&self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        let nodes = &self.local().nodes;
        loop {
            let mut missing = Vec::new();
            for (id, r) in nodes {
                let table = r
                    .node
                    .routing
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .table();
                for other in nodes.keys().filter(|o| *o != id) {
                    if !table.keys().any(|k| k.as_str() == other) {
                        missing.push(format!("{id}->{other}"));
                    }
                }
            }
            if missing.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "routes did not converge within {within:?}; missing {}",
                    missing.join(", ")
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The development admin client's connection flags for a node.
    pub fn conn(&self, node: &str) -> Conn {
        self.local().conn(node)
    }

    /// A channel to a node as the development admin client.
    pub async fn channel(&self, node: &str) -> Result<Channel> {
        self.conn(node).connect().await
    }

    /// A channel to `node` presenting the certificate and key in the given PEM files, trusting
    /// the federation CA and expecting `node`'s server name. For tests that present another
    /// node's certificate or one from a foreign CA.
    pub async fn channel_as(&self, node: &str, cert: &Path, key: &Path) -> Result<Channel> {
        let ca = std::fs::read(self.dir().join("ca.pem"))?;
        let cert = std::fs::read(cert).with_context(|| format!("{}", cert.display()))?;
        let key = std::fs::read(key).with_context(|| format!("{}", key.display()))?;
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .identity(Identity::from_pem(cert, key))
            .domain_name(tidewire_node::tls::node_dns_name(node));
        let url = format!("https://{}", self.addr(node)?);
        Channel::from_shared(url)?
            .tls_config(tls)?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| anyhow::anyhow!("{}", tidewire_node::tls::error_chain(&e)))
    }

    /// Opens a federation link to `node` playing node `who`: mTLS with `who`'s own certificate
    /// from the federation directory, then the `Hello`. Returns the sender for further frames
    /// and the node's side of the stream (acks, link-state).
    pub async fn link_as(
        &self,
        node: &str,
        who: &str,
    ) -> Result<(
        tokio::sync::mpsc::Sender<pb::LinkFrame>,
        tonic::Streaming<pb::LinkFrame>,
    )> {
        let dir = self.dir();
        let channel = self
            .channel_as(
                node,
                &dir.join(who).join("tls.pem"),
                &dir.join(who).join("tls.key"),
            )
            .await?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tx.send(pb::LinkFrame {
            frame: Some(pb::link_frame::Frame::Hello(pb::Hello {
                node: who.into(),
                protocol: 1,
                ..Default::default()
            })),
        })
        .await?;
        let inbound = pb::federation_client::FederationClient::new(channel)
            .link(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok((tx, inbound))
    }

    /// Performs only a TLS handshake with `node`, presenting the certificate and key in the given
    /// PEM files (and trusting the federation CA), then reads the node's first answer. Returns
    /// the reason the node gave if it refused the certificate (the TLS alert, through
    /// `tidewire_node::tls::error_chain`), or `None` if it accepted it.
    ///
    /// Why not just a gRPC call: with TLS 1.3 the client's handshake completes before the server
    /// has checked the client certificate, so the refusal arrives as an alert afterwards, and the
    /// gRPC stack sometimes reports only "connection closed" for the pending call. Reading the
    /// TLS stream directly always gets the alert.
    pub async fn tls_refusal(&self, node: &str, cert: &Path, key: &Path) -> Result<Option<String>> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
        use tokio::io::AsyncReadExt;

        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(self.dir().join("ca.pem"))? {
            roots.add(c?)?;
        }
        let certs = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_file(key)?;
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)?;
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        let name = ServerName::try_from(tidewire_node::tls::node_dns_name(node))?;
        let tcp = tokio::net::TcpStream::connect(self.addr(node)?).await?;
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg));
        let mut tls = match connector.connect(name, tcp).await {
            Ok(s) => s,
            Err(e) => return Ok(Some(tidewire_node::tls::error_chain(&e))),
        };
        // Send nothing (unread bytes would make the node's close a reset that can overtake its
        // alert); a node that accepted us sends its HTTP/2 settings, one that refused us an alert.
        let mut buf = [0u8; 64];
        match tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await {
            Ok(Ok(0)) => Ok(Some(
                "the node closed the connection without a reason".into(),
            )),
            Ok(Ok(_)) | Err(_) => Ok(None),
            Ok(Err(e)) => Ok(Some(tidewire_node::tls::error_chain(&e))),
        }
    }

    /// Publishes one notification at `node`; returns its id once the node acknowledged it
    /// (durably stored).
    pub async fn publish(&self, node: &str, json: &serde_json::Value) -> Result<String> {
        let r = pb::publisher_client::PublisherClient::new(self.channel(node).await?)
            .publish(pb::PublishRequest {
                notification_json: json.to_string(),
                idempotency_key: String::new(),
            })
            .await
            .map_err(status_error)?
            .into_inner();
        Ok(r.id)
    }

    /// Publishes many notifications at `node` over one `PublishStream`; returns their ids in
    /// order. Fails if any one is refused.
    pub async fn publish_all(
        &self,
        node: &str,
        notifications: Vec<serde_json::Value>,
    ) -> Result<Vec<String>> {
        let n = notifications.len();
        let reqs = futures::stream::iter(notifications.into_iter().map(|j| pb::PublishRequest {
            notification_json: j.to_string(),
            idempotency_key: String::new(),
        }));
        let mut replies = pb::publisher_client::PublisherClient::new(self.channel(node).await?)
            .publish_stream(reqs)
            .await
            .map_err(status_error)?
            .into_inner();
        let mut ids = Vec::with_capacity(n);
        while let Some(r) = replies.next().await {
            let r = r.map_err(status_error)?;
            if r.error_code != 0 {
                bail!(
                    "publish #{} refused ({}): {}",
                    ids.len(),
                    r.error_code,
                    r.error_message
                );
            }
            ids.push(r.id);
        }
        if ids.len() != n {
            bail!("only {} of {n} publishes were answered", ids.len());
        }
        Ok(ids)
    }

    /// A node's status (links, routes, counters, refusals by reason).
    pub async fn status(&self, node: &str) -> Result<pb::StatusReply> {
        Ok(
            pb::admin_client::AdminClient::new(self.channel(node).await?)
                .status(pb::StatusRequest {})
                .await
                .map_err(status_error)?
                .into_inner(),
        )
    }

    /// One counter of a node's status (`delivered`, `duplicates`, …); 0 if absent.
    pub async fn counter(&self, node: &str, name: &str) -> Result<u64> {
        Ok(counter(&self.status(node).await?, name))
    }

    /// How many refusals a node counted for `reason` (`impersonation`, `tampered_field`, …).
    pub async fn refused(&self, node: &str, reason: &str) -> Result<u64> {
        Ok(self
            .status(node)
            .await?
            .refused
            .get(reason)
            .copied()
            .unwrap_or(0))
    }

    /// Ledger entries of `node` with this event (`received`, `transfer`, `refused`, …), oldest
    /// first.
    pub async fn audit(&self, node: &str, event: &str) -> Result<Vec<pb::AuditEntry>> {
        let mut admin = pb::admin_client::AdminClient::new(self.channel(node).await?);
        let mut all = Vec::new();
        // Page by page: a reply holds at most about 3 MiB of entries.
        loop {
            let page = admin
                .audit_query(pb::AuditQueryRequest {
                    event: event.into(),
                    limit: u32::MAX,
                    after: all.last().map_or(0, |e: &pb::AuditEntry| e.seq),
                    ..Default::default()
                })
                .await
                .map_err(status_error)?
                .into_inner()
                .entries;
            if page.is_empty() {
                return Ok(all);
            }
            all.extend(page);
        }
    }

    /// Ids of the notifications `node` received from peers and delivered into its feed, in the
    /// order its ledger recorded them (one `received` entry per delivery; duplicates included, so
    /// tests can check exactly-once).
    pub async fn received_ids(&self, node: &str) -> Result<Vec<String>> {
        Ok(self
            .audit(node, "received")
            .await?
            .into_iter()
            .map(|e| e.notification)
            .collect())
    }

    /// A subscription to `node`'s whole feed, from the beginning, as the admin client.
    pub async fn subscribe_from_beginning(
        &self,
        node: &str,
    ) -> Result<tonic::Streaming<pb::Delivery>> {
        Ok(
            pb::subscriber_client::SubscriberClient::new(self.channel(node).await?)
                .subscribe(pb::SubscribeRequest {
                    start: pb::subscribe_request::Start::Beginning as i32,
                    ..Default::default()
                })
                .await
                .map_err(status_error)?
                .into_inner(),
        )
    }

    /// Reads `node`'s feed from the beginning until `n` deliveries arrived (then returns them in
    /// feed order) or `within` passed (then fails, saying how many came).
    pub async fn deliveries(
        &self,
        node: &str,
        n: usize,
        within: Duration,
    ) -> Result<Vec<pb::Delivery>> {
        let deadline = tokio::time::Instant::now() + within;
        let mut sub = self.subscribe_from_beginning(node).await?;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match tokio::time::timeout_at(deadline, sub.next()).await {
                Ok(Some(d)) => out.push(d.map_err(status_error)?),
                Ok(None) => bail!("{node}'s feed ended after {} of {n} deliveries", out.len()),
                Err(_) => bail!(
                    "{node}'s feed gave {} of {n} deliveries within {within:?}",
                    out.len()
                ),
            }
        }
        Ok(out)
    }

    /// Stops every node and waits for them to drain.
    pub async fn stop(mut self) {
        if let Some(f) = self.fed.take() {
            f.stop().await;
        }
    }
}

/// One counter of a status reply; 0 if absent.
pub fn counter(s: &pb::StatusReply, name: &str) -> u64 {
    s.counters.get(name).copied().unwrap_or(0)
}

/// How many times each id occurs.
pub fn counts(ids: &[String]) -> BTreeMap<&str, usize> {
    let mut m = BTreeMap::new();
    for id in ids {
        *m.entry(id.as_str()).or_insert(0) += 1;
    }
    m
}

/// Checks that `got` is exactly `want`, in order, and otherwise fails with a short account
/// (lengths, duplicates, missing, unexpected, first position that differs) instead of two long
/// lists.
pub fn check_sequence<G: AsRef<str>, W: AsRef<str>>(
    what: &str,
    got: &[G],
    want: &[W],
) -> Result<()> {
    let got: Vec<&str> = got.iter().map(AsRef::as_ref).collect();
    let want: Vec<&str> = want.iter().map(AsRef::as_ref).collect();
    if got == want {
        return Ok(());
    }
    let seen = counts_str(&got);
    let wanted = counts_str(&want);
    let dups = seen.values().filter(|n| **n > 1).count();
    let missing = wanted.keys().filter(|k| !seen.contains_key(*k)).count();
    let unexpected = seen.keys().filter(|k| !wanted.contains_key(*k)).count();
    let first = got
        .iter()
        .zip(&want)
        .position(|(g, w)| g != w)
        .unwrap_or(got.len().min(want.len()));
    bail!(
        "{what}: got {} entries, want {}; {dups} duplicated, {missing} missing, {unexpected} unexpected; first difference at position {first} (got {:?}, want {:?})",
        got.len(),
        want.len(),
        got.get(first),
        want.get(first)
    )
}

fn counts_str<'a>(ids: &[&'a str]) -> BTreeMap<&'a str, usize> {
    let mut m = BTreeMap::new();
    for id in ids {
        *m.entry(*id).or_insert(0) += 1;
    }
    m
}
