//! `tidewire demo` and `tidewire bench relay`: real federations of in-process nodes over real
//! loopback mTLS, built with the same PKI as `tidewire pki init`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use futures::StreamExt;
use tidewire_core::timefmt;
use tidewire_proto::v1 as pb;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::client::{Conn, status_error};
use crate::pki::{self, Federation};

/// `tidewire demo`
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the federation in this directory (default: a temporary directory, removed after).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// A federation of in-process nodes.
pub struct LocalFederation {
    /// The directory.
    pub dir: PathBuf,
    /// federation.json.
    pub fed: Federation,
    /// Running nodes.
    pub nodes: BTreeMap<String, tidewire_node::Running>,
    shutdown: CancellationToken,
}

impl LocalFederation {
    /// Writes a PKI and starts every node.
    pub async fn start(dir: &Path, nodes: &[&str], links: &[&str]) -> Result<LocalFederation> {
        let fed = pki::init(&pki::InitOptions::dev(dir, nodes, links))?;
        // Bind every node's socket on port 0 first (no race for ports picked in advance), write
        // the real addresses into the configs and federation.json (for clients and restarts),
        // then start each node on the socket it was given.
        let mut fed = fed;
        let mut addrs = BTreeMap::new();
        let mut listeners = Vec::new();
        for id in nodes {
            let l = std::net::TcpListener::bind("127.0.0.1:0")
                .with_context(|| format!("binding a loopback port for {id}"))?;
            addrs.insert(id.to_string(), l.local_addr()?);
            listeners.push((*id, Some(l)));
        }
        LocalFederation::readdress(dir, &mut fed, &addrs)?;
        LocalFederation::start_existing_on(dir, fed, listeners).await
    }

    /// Starts `nodes` of a federation already written by [`pki::init`] (whose `node.toml` files
    /// a caller may have edited, e.g. to send a link through a proxy). Nodes of `fed` not named
    /// are not started. Each node binds the `listen` address of its `node.toml`.
    pub async fn start_existing(
        dir: &Path,
        fed: Federation,
        nodes: &[&str],
    ) -> Result<LocalFederation> {
        let nodes = nodes.iter().map(|id| (*id, None)).collect();
        LocalFederation::start_existing_on(dir, fed, nodes).await
    }

    /// Like [`LocalFederation::start_existing`], but a node given a listener serves on it
    /// instead of binding the `listen` address of its `node.toml`. A caller that binds the
    /// listeners when it chooses the ports (and writes them with
    /// [`LocalFederation::readdress`]) holds every port until its node owns it, so no other
    /// process can take one in between. If a node fails to start, the ones already started
    /// are stopped.
    pub async fn start_existing_on(
        dir: &Path,
        fed: Federation,
        nodes: Vec<(&str, Option<std::net::TcpListener>)>,
    ) -> Result<LocalFederation> {
        let shutdown = CancellationToken::new();
        let mut running = BTreeMap::new();
        let env = std::collections::HashMap::new();
        for (id, listener) in nodes {
            let started = async {
                let cfg = tidewire_node::NodeConfig::load(&dir.join(id).join("node.toml"), &env)?;
                let token = shutdown.child_token();
                anyhow::Ok(match listener {
                    Some(l) => tidewire_node::server::start_with_listener(cfg, l, token).await?,
                    None => tidewire_node::start(cfg, token).await?,
                })
            }
            .await
            .with_context(|| format!("starting {id}"));
            match started {
                Ok(r) => {
                    running.insert(id.to_string(), r);
                }
                Err(e) => {
                    shutdown.cancel();
                    for (_, r) in running {
                        r.wait().await;
                    }
                    return Err(e);
                }
            }
        }
        Ok(LocalFederation {
            dir: dir.to_owned(),
            fed,
            nodes: running,
            shutdown,
        })
    }

    /// Moves nodes of a federation written by [`pki::init`] (and not running) to new
    /// addresses: sets `listen` in their `node.toml`, every `[[link]] url` of the other nodes
    /// that still points at their old address, and their URLs in `fed` and `federation.json`.
    /// Values are replaced by node and by exact old URL, never by searching text, so a new port
    /// that happens to be another node's old one cannot be rewritten twice.
    pub fn readdress(
        dir: &Path,
        fed: &mut Federation,
        addrs: &BTreeMap<String, std::net::SocketAddr>,
    ) -> Result<()> {
        let mut moved = BTreeMap::new();
        for (id, addr) in addrs {
            let n = fed
                .nodes
                .get(id)
                .with_context(|| format!("no node `{id}` in the federation"))?;
            moved.insert(n.federation_url.clone(), format!("https://{addr}"));
        }
        for (id, n) in &fed.nodes {
            let path = dir.join(&n.config);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let mut cfg: tidewire_node::config::ConfigFile = toml::from_str(&text)
                .with_context(|| format!("{} does not parse", path.display()))?;
            if let Some(addr) = addrs.get(id) {
                cfg.listen = addr.to_string();
            }
            for link in &mut cfg.links {
                if let Some(url) = moved.get(&link.url) {
                    link.url.clone_from(url);
                }
            }
            // Keep the comment `pki init` writes on top (toml drops comments).
            let mut out: String = text
                .lines()
                .take_while(|l| l.starts_with('#'))
                .map(|l| format!("{l}\n"))
                .collect();
            out.push_str(&toml::to_string(&cfg)?);
            std::fs::write(&path, out)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        for (id, addr) in addrs {
            if let Some(n) = fed.nodes.get_mut(id) {
                n.client_url = format!("https://{addr}");
                n.federation_url.clone_from(&n.client_url);
            }
        }
        std::fs::write(
            dir.join("federation.json"),
            serde_json::to_string_pretty(&*fed)?,
        )?;
        Ok(())
    }

    /// Waits (bounded) until every node has a route to every other.
    pub async fn converge(&self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        let n = self.nodes.len();
        loop {
            let ok = self.nodes.values().all(|r| {
                r.node
                    .routing
                    .lock()
                    .map(|x| x.table().len() + 1 == n)
                    .unwrap_or(false)
            });
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the federation did not converge within {within:?}: some links did not come up"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Client connection flags for a node.
    pub fn conn(&self, node: &str) -> Conn {
        Conn {
            node: node.to_owned(),
            federation: Some(self.dir.clone()),
            identity: None,
        }
    }

    /// Stops one node (gracefully: drained and flushed), leaving the others running.
    pub async fn stop_node(&mut self, id: &str) -> Result<()> {
        let r = self
            .nodes
            .remove(id)
            .with_context(|| format!("node `{id}` is not running"))?;
        r.stop().await;
        Ok(())
    }

    /// Starts a node of this federation again on its data directory, at the address of its
    /// `node.toml`.
    pub async fn restart_node(&mut self, id: &str) -> Result<()> {
        let env = std::collections::HashMap::new();
        let cfg = tidewire_node::NodeConfig::load(&self.dir.join(id).join("node.toml"), &env)?;
        let r = tidewire_node::start(cfg, self.shutdown.child_token())
            .await
            .with_context(|| format!("restarting {id}"))?;
        self.nodes.insert(id.to_owned(), r);
        Ok(())
    }

    /// Stops every node.
    pub async fn stop(self) {
        self.shutdown.cancel();
        for (_, r) in self.nodes {
            r.wait().await;
        }
    }
}

fn demo_notifications() -> Vec<(&'static str, serde_json::Value)> {
    vec![
        (
            "maoc-n",
            serde_json::json!({
                "kind": "vessel_of_interest", "case_ref": "MAOC-2026-0142",
                "routes": ["atlantic.south-america.west-africa", "vessel.imo.9387421"],
                "handling": "H2", "grading": {"source": "B", "information": "2"},
                "audience": ["node:accra", "country:SN"], "onward_transfer": false,
                "purposes": ["interdiction", "investigation"], "expires_at": "2027-05-28T00:00:00Z",
                "fields": {
                    "vessel": {"name": "MV Example", "imo": "9387421", "flag": "TG", "position": {"lat": 5.61, "lon": -0.19}},
                    "persons": [{"name": "J. Doe", "nationality": "CO", "dob": "1979-03-02", "role": "master", "passport": "CO1234567"}],
                    "narrative": "Mother ship suspected of transhipment off the Bijagos."
                }
            }),
        ),
        (
            "jiatf-s",
            serde_json::json!({
                "kind": "alert", "case_ref": "JIATF-S-26-0871",
                "routes": ["air.aircop.lfw", "atlantic.caribbean.west-africa"],
                "handling": "H1", "grading": {"source": "A", "information": "2"},
                "audience": ["node:maoc-n", "node:dakar", "node:accra"],
                "purposes": ["investigation"],
                "fields": {"aircraft": {"registration": "N123XY", "type": "Gulfstream G-IV", "origin": "SVMI"},
                           "eta": "2026-12-01T03:40:00Z", "destination_airfield": "DXXX",
                           "narrative": "Private jet with a falsified flight plan; AIRCOP Lomé task force alerted."}
            }),
        ),
        (
            "dakar",
            serde_json::json!({
                "kind": "seizure", "case_ref": "OCRTIS-SN-2026-311",
                "routes": ["atlantic.west-africa.sn"],
                "handling": "H0", "grading": {"source": "B", "information": "1"},
                "audience": ["country:GH", "country:PT"], "purposes": ["investigation", "asset-recovery"],
                "fields": {"seizure": {"substance": "cocaine", "quantity_kg": 1240, "place": "Port of Dakar"},
                           "persons": [{"name": "A. Diallo", "nationality": "SN", "dob": "1985-07-14", "passport": "A00987654"}]}
            }),
        ),
        (
            "accra",
            serde_json::json!({
                "kind": "interdiction_request", "case_ref": "GH-NACOB-2026-77",
                "routes": ["atlantic.west-africa.gh", "vessel.imo.9211553"],
                "handling": "H1", "grading": {"source": "B", "information": "3"},
                "audience": ["node:jiatf-s", "node:maoc-n"], "purposes": ["interdiction"],
                "response_deadline": "2026-12-02T12:00:00Z",
                "fields": {"vessel": {"name": "Sea Falcon", "imo": "9211553", "flag": "PA", "position": {"lat": 4.12, "lon": -3.87}},
                           "request": "Art. 17 boarding authorisation requested from the flag state via the competent authority."}
            }),
        ),
        (
            "maoc-n",
            serde_json::json!({
                "kind": "route_update", "case_ref": "MAOC-2026-0150",
                "routes": ["atlantic.south-america.west-africa"],
                "handling": "H0", "grading": {"source": "A", "information": "1"},
                "audience": ["country:SN", "country:GH", "country:US"], "purposes": ["analysis"],
                "fields": {"route": {"from": "BR", "via": ["CV", "GW"], "to": "ES"},
                           "narrative": "Shift of mother-ship rendezvous from 10°N to 14°N observed over 30 days."}
            }),
        ),
    ]
}

/// `tidewire demo`.
pub async fn run(a: DemoArgs, json: bool) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = a
        .out
        .clone()
        .unwrap_or_else(|| tmp.path().join("federation"));
    let nodes = ["maoc-n", "accra", "dakar", "jiatf-s"];
    let links = [
        "jiatf-s:maoc-n",
        "maoc-n:dakar",
        "dakar:accra",
        "maoc-n:accra",
    ];
    if !json {
        println!(
            "starting a federation of {} nodes on loopback (links {})",
            nodes.len(),
            links.join(", ")
        );
    }
    let fedn = LocalFederation::start(&dir, &nodes, &links).await?;
    fedn.converge(Duration::from_secs(20)).await?;
    if !json {
        for (id, r) in &fedn.nodes {
            println!("  {id:<8} {}  {}", r.addr, fedn.fed.nodes[id].country);
        }
        println!(
            "\npublishing {} case notifications",
            demo_notifications().len()
        );
    }
    let mut expected: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut published = Vec::new();
    for (origin, n) in demo_notifications() {
        let ch = fedn.conn(origin).connect().await?;
        let r = pb::publisher_client::PublisherClient::new(ch)
            .publish(pb::PublishRequest {
                notification_json: n.to_string(),
                idempotency_key: String::new(),
            })
            .await
            .map_err(status_error)?
            .into_inner();
        let header = {
            let parsed = tidewire_core::Notification::from_value(&n)?;
            parsed.audience
        };
        let dests: BTreeSet<String> = fedn
            .fed
            .nodes
            .iter()
            .filter(|(id, _)| id.as_str() != origin)
            .filter(|(id, fnode)| {
                header.iter().any(|a| {
                    a.covers(
                        &id.parse().unwrap_or_else(|_| "x".parse().expect("valid")),
                        fnode
                            .country
                            .parse()
                            .unwrap_or_else(|_| "ZZ".parse().expect("valid")),
                        &fnode.org,
                    )
                })
            })
            .map(|(id, _)| id.clone())
            .collect();
        if !json {
            println!(
                "  {origin:<8} {:<22} {} -> {}",
                n["kind"].as_str().unwrap_or(""),
                crate::cmds::short_id(&r.id),
                dests.iter().cloned().collect::<Vec<_>>().join(", ")
            );
        }
        expected.insert(r.id.clone(), dests);
        published.push((origin, r.id, n));
    }
    // Wait (bounded) until every expected delivery has been received.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut received: BTreeMap<(String, String), serde_json::Value> = BTreeMap::new();
    loop {
        received.clear();
        for id in fedn.nodes.keys() {
            let ch = fedn.conn(id).connect().await?;
            let r = pb::admin_client::AdminClient::new(ch)
                .audit_query(pb::AuditQueryRequest {
                    event: "received".into(),
                    limit: 10_000,
                    ..Default::default()
                })
                .await
                .map_err(status_error)?
                .into_inner();
            for e in r.entries {
                received.insert(
                    (e.notification.clone(), id.clone()),
                    serde_json::from_str(&e.detail_json).unwrap_or_default(),
                );
            }
        }
        let missing = expected
            .iter()
            .flat_map(|(n, ds)| ds.iter().map(move |d| (n.clone(), d.clone())))
            .filter(|k| !received.contains_key(k))
            .count();
        if missing == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut missing = Vec::new();
    let mut rows = Vec::new();
    for (origin, id, n) in &published {
        for d in &expected[id] {
            match received.get(&(id.clone(), d.clone())) {
                Some(detail) => rows.push(serde_json::json!({
                    "notification": id, "origin": origin, "kind": n["kind"], "to": d,
                    "path": detail["path"], "withheld": detail["withheld"],
                })),
                None => missing.push(format!(
                    "{} ({}) never reached {d}",
                    crate::cmds::short_id(id),
                    n["kind"].as_str().unwrap_or("")
                )),
            }
        }
    }
    let mut summary = BTreeMap::new();
    for id in fedn.nodes.keys() {
        let ch = fedn.conn(id).connect().await?;
        let s = pb::admin_client::AdminClient::new(ch)
            .status(pb::StatusRequest {})
            .await
            .map_err(status_error)?
            .into_inner();
        summary.insert(id.clone(), s.counters);
    }
    // One withheld-by-policy example: what accra holds of MAOC-N's vessel report.
    let example = &published[0].1;
    let ledger_example = {
        let ch = fedn.conn("maoc-n").connect().await?;
        pb::admin_client::AdminClient::new(ch)
            .audit_query(pb::AuditQueryRequest {
                notification: example.clone(),
                event: "transfer".into(),
                limit: 10,
                ..Default::default()
            })
            .await
            .map_err(status_error)?
            .into_inner()
            .entries
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "deliveries": rows, "missing": missing, "summary": summary,
                "policy_example": ledger_example.iter().map(|e| serde_json::json!({"to": e.destination, "rule": e.rule, "policy_version": e.policy_version, "detail": serde_json::from_str::<serde_json::Value>(&e.detail_json).unwrap_or_default()})).collect::<Vec<_>>(),
            }))?
        );
    } else {
        println!("\nwho received what, along which path");
        for r in &rows {
            let path: Vec<String> = r["path"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            let withheld = match r["withheld"].as_u64().unwrap_or(0) {
                0 => String::new(),
                1 => "   (1 field withheld)".to_owned(),
                n => format!("   ({n} fields withheld)"),
            };
            println!(
                "  {} {:<22} -> {:<8} via {}{withheld}",
                crate::cmds::short_id(r["notification"].as_str().unwrap_or("")),
                r["kind"].as_str().unwrap_or(""),
                r["to"].as_str().unwrap_or(""),
                path.iter()
                    .map(String::as_str)
                    .chain(r["to"].as_str())
                    .collect::<Vec<_>>()
                    .join(" -> "),
            );
        }
        println!(
            "\nwithheld by policy on the way (MAOC-N's ledger for {}):",
            crate::cmds::short_id(example)
        );
        for e in &ledger_example {
            let d: serde_json::Value = serde_json::from_str(&e.detail_json).unwrap_or_default();
            // `[{"path": "persons[0].dob", "method": "year"}, …]` as `persons[0].dob (year), …`.
            let paths = |list: &serde_json::Value, how: &str| -> String {
                let items: Vec<String> = list
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|x| {
                        let path = x["path"].as_str().unwrap_or("?");
                        match x[how].as_str() {
                            Some(m) => format!("{path} ({m})"),
                            None => path.to_owned(),
                        }
                    })
                    .collect();
                if items.is_empty() {
                    "nothing".to_owned()
                } else {
                    items.join(", ")
                }
            };
            println!(
                "  to {:<14} rule {:<20} policy {}\n      withheld {}; generalised {}",
                e.destination,
                e.rule,
                e.policy_version,
                paths(&d["withheld"], ""),
                paths(&d["generalised"], "method")
            );
        }
        println!("\nsummary per node");
        println!(
            "  {:<8} {:>9} {:>9} {:>8} {:>10} {:>8} {:>16}",
            "node", "published", "received", "verified", "delivered", "refused", "withheld fields"
        );
        for (id, c) in &summary {
            let g = |k: &str| c.get(k).copied().unwrap_or(0);
            println!(
                "  {id:<8} {:>9} {:>9} {:>8} {:>10} {:>8} {:>16}",
                g("published"),
                g("received"),
                g("verified"),
                g("delivered"),
                g("refused"),
                g("withheld_fields")
            );
        }
    }
    fedn.stop().await;
    if !missing.is_empty() {
        bail!(
            "{} expected deliveries are missing: {}",
            missing.len(),
            missing.join("; ")
        );
    }
    if !json {
        println!(
            "\nall {} expected deliveries arrived, verified end to end",
            rows.len()
        );
        if let Some(out) = &a.out {
            println!(
                "federation kept in {}; start a node with: tidewire node run --config {}/dakar/node.toml",
                out.display(),
                out.display()
            );
        }
    }
    Ok(())
}

/// `tidewire bench relay`
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// 1 (A→B) or 2 (A→B→C).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
    hops: u8,
    /// Notifications to send.
    #[arg(long, default_value_t = 20_000)]
    count: u64,
    /// Publish rate per second (default: as fast as possible).
    #[arg(long)]
    rate: Option<u64>,
    /// Persons per notification, 5 fields each (6: 42 fields, 1.1 KiB of JSON; 0: 12 fields).
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u64).range(0..=40))]
    persons: u64,
    /// Lengthen each notification's narrative so that its JSON is this many bytes (`--persons 0
    /// --size 1024`: a 1 KiB notification of 12 fields). Default: the narrative as it is.
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(..=65_536))]
    size: Option<u64>,
    /// Run every node as its own `tidewire node run` process (reports peak RSS and CPU per
    /// node) instead of in this process.
    #[arg(long)]
    processes: bool,
    /// Measure the hop alone (with `--hops 1`): stop b, publish everything at a (queued on
    /// disk), start b again and time how fast the backlog drains, every envelope verified,
    /// stored and flushed by b before it is acknowledged.
    #[arg(long)]
    backlog: bool,
    /// With `--processes`: the threads each node process runs its tasks on (its
    /// `limits.worker_threads`). Default: the machine's cores shared out among the nodes, at
    /// least one each, as if each node had a share of the machine to itself.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1024))]
    node_threads: Option<u64>,
}

impl BenchArgs {
    /// The threads each node process gets, for `nodes` node processes (`None`: the nodes run in
    /// this process, on its runtime).
    fn node_threads(&self, nodes: usize) -> Option<usize> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.processes.then(|| {
            self.node_threads
                .map_or((cores / nodes.max(1)).max(1), |n| n as usize)
        })
    }
}

/// The nodes a benchmark runs: in this process, or as `tidewire node run` child processes.
enum BenchNodes {
    InProcess(LocalFederation),
    Processes {
        dir: PathBuf,
        children: Vec<(String, std::process::Child)>,
        /// Each process's `limits.worker_threads`.
        threads: usize,
    },
}

impl BenchNodes {
    /// Starts `nodes` in this process, or as processes of `threads` worker threads each.
    async fn start(
        dir: &Path,
        nodes: &[&str],
        links: &[&str],
        processes: Option<usize>,
    ) -> Result<Self> {
        let Some(threads) = processes else {
            let f = LocalFederation::start(dir, nodes, links).await?;
            f.converge(Duration::from_secs(20)).await?;
            return Ok(BenchNodes::InProcess(f));
        };
        pki::init(&pki::InitOptions::dev(dir, nodes, links))?;
        let mut children = Vec::new();
        for id in nodes {
            children.push((id.to_string(), spawn_node(dir, id, threads)?));
        }
        let started = BenchNodes::Processes {
            dir: dir.to_owned(),
            children,
            threads,
        };
        // Converged when every node has a route to every other.
        let deadline = Instant::now() + Duration::from_secs(30);
        for id in nodes {
            loop {
                let routes = async {
                    let ch = started.conn(id).connect().await?;
                    let s = pb::admin_client::AdminClient::new(ch)
                        .status(pb::StatusRequest {})
                        .await?
                        .into_inner();
                    anyhow::Ok(s.routes.len())
                }
                .await;
                if routes.is_ok_and(|n| n + 1 == nodes.len()) {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "node {id} did not reach every other node within 30 s (see {})",
                        dir.join(format!("{id}.log")).display()
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(started)
    }

    /// Stops one node.
    async fn stop_node(&mut self, id: &str) -> Result<()> {
        match self {
            BenchNodes::InProcess(f) => f.stop_node(id).await,
            BenchNodes::Processes { children, .. } => {
                for (_, c) in children.iter_mut().filter(|(n, _)| n == id) {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                Ok(())
            }
        }
    }

    /// Starts a stopped node again on its data directory.
    async fn restart_node(&mut self, id: &str) -> Result<()> {
        match self {
            BenchNodes::InProcess(f) => f.restart_node(id).await,
            BenchNodes::Processes {
                dir,
                children,
                threads,
            } => {
                let Some((_, c)) = children.iter_mut().find(|(n, _)| n == id) else {
                    bail!("node `{id}` is not part of this benchmark")
                };
                *c = spawn_node(dir, id, *threads)?;
                Ok(())
            }
        }
    }

    fn conn(&self, node: &str) -> Conn {
        match self {
            BenchNodes::InProcess(f) => f.conn(node),
            BenchNodes::Processes { dir, .. } => Conn {
                node: node.to_owned(),
                federation: Some(dir.clone()),
                identity: None,
            },
        }
    }

    /// CPU seconds used so far by this process and by each node's process.
    fn cpu(&self) -> Cpu {
        let nodes = match self {
            BenchNodes::InProcess(_) => BTreeMap::new(),
            BenchNodes::Processes { children, .. } => children
                .iter()
                .map(|(id, c)| (id.clone(), proc_cpu_s(&format!("/proc/{}/stat", c.id()))))
                .collect(),
        };
        Cpu {
            total: process_cpu_s() + nodes.values().sum::<f64>(),
            nodes,
        }
    }

    /// Adds the figures every mode reports (see [`Run`]) to `out` and stops the nodes.
    async fn finish(
        self,
        out: &mut serde_json::Value,
        notifications: u64,
        elapsed_s: f64,
        cpu: Cpu,
        (fields, json_bytes): (usize, usize),
    ) {
        Run {
            notifications,
            elapsed_s,
            cpu,
            per_node: self.peak_rss_per_node(),
            fields,
            json_bytes,
            nodes_in_process: match &self {
                BenchNodes::InProcess(f) => f.nodes.len(),
                BenchNodes::Processes { .. } => 0,
            },
        }
        .fill(out);
        let figures = self.status_figures().await;
        out["longest_commit_ms_per_node"] = serde_json::json!(figures.longest);
        out["commit_p99_ms_per_node"] = serde_json::json!(figures.p99);
        if let BenchNodes::Processes { .. } = &self {
            out["worker_threads_per_node"] = serde_json::json!(figures.threads);
        }
        self.stop().await;
    }

    /// Each node's longest group commit so far, the time 99 % of them stayed within, in ms, and
    /// its worker threads, from its `status`. A run's tail follows the commits: every
    /// notification in a commit that the disk holds up waits with it.
    async fn status_figures(&self) -> StatusFigures {
        let ids: Vec<String> = match self {
            BenchNodes::InProcess(f) => f.nodes.keys().cloned().collect(),
            BenchNodes::Processes { children, .. } => {
                children.iter().map(|(id, _)| id.clone()).collect()
            }
        };
        let mut figures = StatusFigures::default();
        for id in ids {
            let Ok(ch) = self.conn(&id).connect().await else {
                continue;
            };
            let Ok(s) = pb::admin_client::AdminClient::new(ch)
                .status(pb::StatusRequest {})
                .await
            else {
                continue;
            };
            let s = s.into_inner();
            figures.threads.insert(id.clone(), s.worker_threads);
            if let Some(store) = s.store {
                figures.longest.insert(id.clone(), store.longest_commit_ms);
                figures.p99.insert(id, store.commit_p99_ms);
            }
        }
        figures
    }

    /// Peak RSS per node process, in MiB (empty when the nodes run in this process).
    fn peak_rss_per_node(&self) -> BTreeMap<String, f64> {
        match self {
            BenchNodes::InProcess(_) => BTreeMap::new(),
            BenchNodes::Processes { children, .. } => children
                .iter()
                .map(|(id, c)| {
                    let mib = peak_rss_of(&format!("/proc/{}/status", c.id()));
                    (id.clone(), (mib * 10.0).round() / 10.0)
                })
                .collect(),
        }
    }

    async fn stop(self) {
        match self {
            BenchNodes::InProcess(f) => f.stop().await,
            BenchNodes::Processes { children, .. } => {
                for (_, mut c) in children {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
        }
    }
}

/// Starts `tidewire node run` for node `id` of the federation in `dir`, on `threads` worker
/// threads, logging to `dir/<id>.log` (appended, so a restart keeps the first run's log).
fn spawn_node(dir: &Path, id: &str, threads: usize) -> Result<std::process::Child> {
    let exe = std::env::current_exe().context("locating the tidewire binary")?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{id}.log")))?;
    std::process::Command::new(&exe)
        .args(["node", "run", "--config"])
        .arg(dir.join(id).join("node.toml"))
        .env("TIDEWIRE_LOG", "warn")
        .env("TIDEWIRE_LIMITS_WORKER_THREADS", threads.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting node {id}"))
}

/// Fields and JSON bytes of the notifications a benchmark publishes.
fn bench_shape(to: &str, shape: Shape) -> Result<(usize, usize)> {
    let sample = bench_notification(0, to, shape);
    let n = tidewire_core::Notification::from_json(sample.as_bytes())?;
    Ok((n.fields.len(), sample.len()))
}

/// What a benchmark notification looks like: `persons` persons of 5 fields each, and the whole
/// JSON padded to `size` bytes by a longer narrative.
#[derive(Debug, Clone, Copy)]
struct Shape {
    persons: u64,
    size: Option<u64>,
}

impl Shape {
    fn of(a: &BenchArgs) -> Self {
        Shape {
            persons: a.persons,
            size: a.size,
        }
    }
}

/// Words the narrative is lengthened with (plain ASCII, so that a byte of text is a byte of
/// JSON).
const NARRATIVE_MORE: &str = " Observed by the patrol aircraft at dawn, riding low, no AIS for \
    the last 36 hours; two go-fast boats alongside, transfer of bales seen; coastal authority \
    informed; boarding under the Article 17 procedure requested of the flag state.";

/// How many distinct notifications `bench relay` renders before it starts the clock (about
/// 1 MiB of JSON for 1 KiB notifications); it publishes them in turn.
const BENCH_TEXTS: u64 = 1024;

fn bench_notification(i: u64, to: &str, shape: Shape) -> String {
    let text = bench_notification_with(i, to, shape.persons, "");
    let Some(size) = shape.size else {
        return text;
    };
    let missing = (size as usize).saturating_sub(text.len());
    if missing == 0 {
        return text;
    }
    let more: String = NARRATIVE_MORE.chars().cycle().take(missing).collect();
    bench_notification_with(i, to, shape.persons, &more)
}

fn bench_notification_with(i: u64, to: &str, persons: u64, more: &str) -> String {
    let persons: Vec<_> = (0..persons)
        .map(|p| serde_json::json!({"name": format!("Person {p}"), "nationality": "CO", "dob": "1979-03-02", "role": "crew", "id_number": format!("P{i:07}{p}")}))
        .collect();
    serde_json::json!({
        "kind": "vessel_of_interest", "case_ref": format!("BENCH-{i}"),
        "routes": ["atlantic.south-america.west-africa"], "handling": "H1",
        "grading": {"source": "B", "information": "2"}, "audience": [format!("node:{to}")],
        "fields": {
            "vessel": {"name": "MV Example", "imo": "9387421", "flag": "TG", "mmsi": "671234000",
                       "position": {"lat": 5.61, "lon": -0.19}, "course": 214, "speed_kn": 11.5},
            "cargo": {"declared": "fishing gear", "suspected": "cocaine", "estimated_kg": 1200},
            "persons": persons,
            "narrative": format!("Mother ship suspected of transhipment off the Bijagos; rendezvous expected.{more}")
        }
    })
    .to_string()
}

/// Publishes `count` benchmark notifications for `to` through one `PublishStream` at `conn`,
/// as fast as the node accepts them, and returns once every one is acknowledged.
async fn publish_all(conn: &Conn, count: u64, to: &str, shape: Shape) -> Result<()> {
    let to = to.to_owned();
    let reqs = futures::stream::iter(0..count).map(move |i| pb::PublishRequest {
        notification_json: bench_notification(i, &to, shape),
        idempotency_key: String::new(),
    });
    let mut replies = pb::publisher_client::PublisherClient::new(conn.connect().await?)
        .publish_stream(reqs)
        .await
        .map_err(status_error)?
        .into_inner();
    while let Some(r) = replies.next().await {
        r.map_err(status_error)?;
    }
    Ok(())
}

/// CPU time (user + system) this process has used, in seconds: with the nodes in process, the
/// whole benchmark (nodes, publisher, subscriber).
fn process_cpu_s() -> f64 {
    proc_cpu_s("/proc/self/stat")
}

/// CPU seconds (user + system) from a `/proc/PID/stat` file (clock ticks of 1/100 s, the Linux
/// default); 0 if it cannot be read.
fn proc_cpu_s(path: &str) -> f64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = f.get(11)?.parse().ok()?;
            let stime: f64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) / 100.0)
        })
        .unwrap_or(0.0)
}

fn peak_rss_mib() -> f64 {
    peak_rss_of("/proc/self/status")
}

/// Peak resident set (VmHWM) from a `/proc/PID/status` file, in MiB; 0 if it cannot be read.
fn peak_rss_of(path: &str) -> f64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// CPU seconds: all processes together, and each node's process (empty when the nodes run in
/// the bench's own process).
#[derive(Debug, Clone, Default)]
struct Cpu {
    total: f64,
    nodes: BTreeMap<String, f64>,
}

impl Cpu {
    /// What was used between `before` and this sample. A node restarted in between (a new
    /// process) counts from zero.
    fn since(&self, before: &Cpu) -> Cpu {
        Cpu {
            total: self.total - before.total,
            nodes: self
                .nodes
                .iter()
                .map(|(id, s)| {
                    let was = before
                        .nodes
                        .get(id)
                        .copied()
                        .filter(|b| b <= s)
                        .unwrap_or(0.0);
                    (id.clone(), s - was)
                })
                .collect(),
        }
    }
}

/// What a benchmark reads from each node's `status` at its end, by node.
#[derive(Debug, Default)]
struct StatusFigures {
    /// The longest group commit, in ms.
    longest: BTreeMap<String, u64>,
    /// The time 99 % of the group commits stayed within, in ms.
    p99: BTreeMap<String, u64>,
    /// The worker threads its tasks ran on.
    threads: BTreeMap<String, u32>,
}

/// What every `bench relay` mode reports besides its own figures.
struct Run {
    /// Notifications the rate and CPU figures count.
    notifications: u64,
    elapsed_s: f64,
    cpu: Cpu,
    /// Peak RSS per node process (empty when the nodes ran in this process).
    per_node: BTreeMap<String, f64>,
    fields: usize,
    json_bytes: usize,
    nodes_in_process: usize,
}

impl Run {
    /// Adds throughput, memory and CPU figures to the JSON object `out`.
    fn fill(self, out: &mut serde_json::Value) {
        let n = self.notifications as f64;
        let peak = if self.per_node.is_empty() {
            (peak_rss_mib() * 10.0).round() / 10.0
        } else {
            self.per_node.values().copied().fold(0.0, f64::max)
        };
        let more = serde_json::json!({
            "throughput_per_s": (n / self.elapsed_s).round(),
            "peak_rss_mib": peak,
            "peak_rss_mib_per_node": self.per_node,
            "cpu_us_per_notification": (self.cpu.total * 1e6 / n).round(),
            "cpu_us_per_notification_per_node": self.cpu.nodes.iter().map(|(id, s)| (id.clone(), (s * 1e6 / n).round())).collect::<BTreeMap<_, _>>(),
            "cpu_cores_busy": (self.cpu.total / self.elapsed_s * 100.0).round() / 100.0,
            "fields": self.fields,
            "json_bytes": self.json_bytes,
            "nodes_in_process": self.nodes_in_process,
        });
        if let (Some(o), serde_json::Value::Object(m)) = (out.as_object_mut(), more) {
            o.extend(m);
        }
    }
}

/// `tidewire bench relay`.
pub async fn bench_relay(a: BenchArgs, json: bool) -> Result<()> {
    if a.backlog && a.hops != 1 {
        bail!("--backlog measures one hop: use it with --hops 1");
    }
    if a.node_threads.is_some() && !a.processes {
        bail!(
            "--node-threads sets each node process's threads: use it with --processes (in this \
             process the nodes share its runtime)"
        );
    }
    let tmp = tempfile::tempdir()?;
    let (nodes, links): (Vec<&str>, Vec<&str>) = if a.hops == 1 {
        (vec!["a", "b"], vec!["a:b"])
    } else {
        (vec!["a", "b", "c"], vec!["a:b", "b:c"])
    };
    let last = *nodes.last().expect("nodes");
    let fedn = BenchNodes::start(
        &tmp.path().join("f"),
        &nodes,
        &links,
        a.node_threads(nodes.len()),
    )
    .await?;
    if a.backlog {
        return bench_backlog(&a, fedn, &nodes, json).await;
    }
    let mut sub = pb::subscriber_client::SubscriberClient::new(fedn.conn(last).connect().await?)
        .subscribe(pb::SubscribeRequest {
            start: pb::subscribe_request::Start::Now as i32,
            ..Default::default()
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let count = a.count;
    let rate = a.rate;
    let shape = Shape::of(&a);
    let (fields, json_bytes) = bench_shape(last, shape)?;
    let pub_ch = fedn.conn(nodes[0]).connect().await?;
    if !json {
        eprintln!(
            "bench relay: {count} signed notifications ({fields} fields, {} bytes of JSON) over {} mTLS hop(s){}",
            json_bytes,
            a.hops,
            rate.map(|r| format!(" at {r}/s")).unwrap_or_default()
        );
    }
    // Rendered before the clock starts, and published in turn: building JSON is the
    // publisher's own work, and on this machine it would take from the cores the nodes need.
    // Each publish is still a notification of its own, with its own id.
    let texts: Arc<Vec<String>> = Arc::new(
        (0..count.min(BENCH_TEXTS))
            .map(|i| bench_notification(i, last, shape))
            .collect(),
    );
    let cpu_before = fedn.cpu();
    let start = Instant::now();
    let publisher = tokio::spawn(
        async move {
            let reqs = futures::stream::iter(0..count).then(move |i| {
                let texts = texts.clone();
                async move {
                    if let Some(r) = rate {
                        let due = start + Duration::from_secs_f64(i as f64 / r as f64);
                        tokio::time::sleep_until(due.into()).await;
                    }
                    pb::PublishRequest {
                        notification_json: texts[(i % texts.len() as u64) as usize].clone(),
                        idempotency_key: String::new(),
                    }
                }
            });
            let mut replies = pb::publisher_client::PublisherClient::new(pub_ch)
                .publish_stream(reqs)
                .await?
                .into_inner();
            let mut n = 0;
            while let Some(r) = replies.next().await {
                r?;
                n += 1;
            }
            Ok::<(u64, f64), tonic::Status>((n, start.elapsed().as_secs_f64()))
        }
        .instrument(tracing::info_span!("bench_publisher")),
    );
    let mut latencies = Vec::with_capacity(count as usize);
    // The same, split where the last node received the notification: before (the origin's
    // commit, the hops) and after (the last node's commit, delivery to the subscriber).
    let (mut to_last, mut at_last) = (Vec::new(), Vec::new());
    let mut last_report = Instant::now();
    while (latencies.len() as u64) < count {
        let d = tokio::time::timeout(Duration::from_secs(60), sub.next())
            .await
            .context("no delivery for 60 s: the relay stalled")?
            .context("subscription ended")?
            .map_err(status_error)?;
        let now = timefmt::now_ms();
        latencies.push((now - d.created_at_ms).max(0) as f64);
        to_last.push((d.received_at_ms - d.created_at_ms).max(0) as f64);
        at_last.push((now - d.received_at_ms).max(0) as f64);
        if !json && last_report.elapsed() > Duration::from_secs(2) {
            eprintln!("  {} / {count} delivered", latencies.len());
            last_report = Instant::now();
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = fedn.cpu().since(&cpu_before);
    let (_, publish_s) = publisher.await?.map_err(status_error)?;
    let pct = percentiles(&mut latencies);
    let to = percentiles(&mut to_last);
    let at = percentiles(&mut at_last);
    let mut out = serde_json::json!({
        "hops": a.hops, "count": count, "rate": rate,
        "publish_per_s": (count as f64 / publish_s).round(),
        "p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": pct(1.0),
        "to_last_node_p50_ms": to(0.50), "to_last_node_p99_ms": to(0.99),
        "at_last_node_p50_ms": at(0.50), "at_last_node_p99_ms": at(0.99),
    });
    fedn.finish(&mut out, count, elapsed, cpu, (fields, json_bytes))
        .await;
    if json {
        println!("{out}");
    } else {
        let rss = if a.processes {
            "peak RSS (largest node) MiB".to_owned()
        } else {
            format!("peak RSS (all {} nodes) MiB", nodes.len())
        };
        println!(
            "hops  count   throughput/s   p50 ms   p99 ms   max ms   {rss}   CPU µs/notification (all)"
        );
        println!(
            "{:<5} {:<7} {:>12}   {:>6}   {:>6}   {:>6}   {:>8}   {:>8}",
            a.hops,
            count,
            out["throughput_per_s"],
            out["p50_ms"],
            out["p99_ms"],
            out["max_ms"],
            out["peak_rss_mib"],
            out["cpu_us_per_notification"]
        );
        if let Some(per) = per_node(&out, "peak_rss_mib_per_node") {
            let list: Vec<String> = per.iter().map(|(n, m)| format!("{n} {m} MiB")).collect();
            println!("peak RSS per node: {}", list.join(", "));
        }
        println!(
            "where the time goes (p50 / p99): {} / {} ms until the last node has it, {} / {} ms from there to the subscriber",
            out["to_last_node_p50_ms"],
            out["to_last_node_p99_ms"],
            out["at_last_node_p50_ms"],
            out["at_last_node_p99_ms"]
        );
        print_cpu_per_node(&out);
        print_status_figures(&out);
        // What the figures shared: on a small machine the nodes, the publisher and the
        // subscriber wait for each other's cores, and that is in every latency above.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let alone = if rate.is_none() && a.hops == 1 {
            "; `--processes --backlog` times the hop alone"
        } else {
            ""
        };
        println!(
            "end to end: the publisher, {} nodes and the subscriber shared {cores} core(s) ({} busy){alone}",
            nodes.len(),
            out["cpu_cores_busy"]
        );
    }
    Ok(())
}

/// Sorts `values` and gives their percentiles (`0.99`: the 99th; 0 when there are none).
fn percentiles(values: &mut [f64]) -> impl Fn(f64) -> f64 + '_ {
    values.sort_by(|x, y| x.total_cmp(y));
    |p: f64| {
        values
            .get(((values.len().max(1) as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(0.0)
    }
}

/// The figure `key` of the output, per node, if there is one (a process per node).
fn per_node<'a>(
    out: &'a serde_json::Value,
    key: &str,
) -> Option<&'a serde_json::Map<String, serde_json::Value>> {
    out[key].as_object().filter(|m| !m.is_empty())
}

/// What the nodes' `status` said at the end: each one's longest group commit (the disk's worst
/// sync is in every notification's latency that waited for it), the time 99 % of its commits
/// stayed within, and (node processes) its worker threads.
fn print_status_figures(out: &serde_json::Value) {
    for (key, label, unit) in [
        (
            "longest_commit_ms_per_node",
            "longest commit per node",
            " ms",
        ),
        (
            "commit_p99_ms_per_node",
            "99% of commits within, per node",
            " ms",
        ),
        (
            "worker_threads_per_node",
            "worker threads per node process (--node-threads)",
            "",
        ),
    ] {
        if let Some(per) = per_node(out, key) {
            let list: Vec<String> = per.iter().map(|(n, v)| format!("{n} {v}{unit}")).collect();
            println!("{label}: {}", list.join(", "));
        }
    }
}

/// With a process per node: how the CPU per notification splits between the nodes and the
/// bench's own publisher and subscriber.
fn print_cpu_per_node(out: &serde_json::Value) {
    let Some(per) = per_node(out, "cpu_us_per_notification_per_node") else {
        return;
    };
    let us = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0);
    let nodes: f64 = per.values().map(us).sum();
    let mut list: Vec<String> = per
        .iter()
        .map(|(n, v)| format!("{n} {:.0} µs", us(v)))
        .collect();
    let rest = us(&out["cpu_us_per_notification"]) - nodes;
    list.push(format!("publisher and subscriber {:.0} µs", rest.max(0.0)));
    println!("CPU per notification: {}", list.join(", "));
}

/// `tidewire bench relay --backlog`: the last hop alone. Its receiver is stopped, everything is
/// published and queued on disk at the node before it, the receiver is started again, and the
/// drain is timed from the first acknowledgement to the last (each one sent only after the
/// receiver verified, stored and flushed the envelope).
async fn bench_backlog(
    a: &BenchArgs,
    mut fedn: BenchNodes,
    nodes: &[&str],
    json: bool,
) -> Result<()> {
    let last = *nodes.last().expect("nodes");
    let before = nodes[nodes.len() - 2];
    let count = a.count;
    let shape = Shape::of(a);
    let (fields, json_bytes) = bench_shape(last, shape)?;
    fedn.stop_node(last).await?;
    if !json {
        eprintln!(
            "bench relay --backlog: {last} stopped; publishing {count} notifications ({fields} fields, {} bytes of JSON) at {}",
            json_bytes, nodes[0]
        );
    }
    publish_all(&fedn.conn(nodes[0]), count, last, shape).await?;
    let mut admin = pb::admin_client::AdminClient::new(fedn.conn(before).connect().await?);
    let mut link = async || -> Result<u64> {
        let s = admin
            .status(pb::StatusRequest {})
            .await
            .map_err(status_error)?
            .into_inner();
        Ok(s.links
            .iter()
            .find(|l| l.peer == last)
            .map_or(0, |l| l.backlog))
    };
    // Publish replies come once each copy is stored; its outbox entry is in the same commit.
    let deadline = Instant::now() + Duration::from_secs(60);
    let queued = loop {
        let b = link().await?;
        if b >= count {
            break b;
        }
        if Instant::now() > deadline {
            bail!("only {b} of {count} notifications were queued for {last} within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    if !json {
        eprintln!("  {queued} queued at {before} for {last}; starting {last}");
    }
    fedn.restart_node(last).await?;
    let restarted = (Instant::now(), fedn.cpu());
    // Timed from the first acknowledgement seen to the last: the sustained rate, without the
    // reconnection and the first round's ramp-up.
    let mut started: Option<(Instant, u64, Cpu)> = None;
    let mut progress = (Instant::now(), queued);
    let mut last_report = Instant::now();
    loop {
        let b = link().await?;
        if started.is_none() && b < queued && b > 0 {
            started = Some((Instant::now(), b, fedn.cpu()));
        }
        if b == 0 {
            break;
        }
        if b < progress.1 {
            progress = (Instant::now(), b);
        } else if progress.0.elapsed() > Duration::from_secs(60) {
            bail!("the backlog stalled at {b} for 60 s");
        }
        if !json && last_report.elapsed() > Duration::from_secs(2) {
            eprintln!("  {} / {queued} acknowledged", queued - b);
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Drained before it was seen under way (a small backlog): time it from the restart.
    let (t0, left, cpu0) = started.unwrap_or((restarted.0, queued, restarted.1));
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = fedn.cpu().since(&cpu0);
    let mut out = serde_json::json!({
        "hops": a.hops, "count": count, "mode": "backlog", "drained": left,
        "p50_ms": null, "p99_ms": null, "max_ms": null,
    });
    fedn.finish(&mut out, left, elapsed, cpu, (fields, json_bytes))
        .await;
    if json {
        println!("{out}");
    } else {
        println!(
            "hop          drained   throughput/s   CPU µs/notification   CPU cores busy   peak RSS MiB"
        );
        println!(
            "{:<12} {:>7}   {:>12}   {:>19}   {:>14}   {:>12}",
            format!("{before}→{last}"),
            left,
            out["throughput_per_s"],
            out["cpu_us_per_notification"],
            out["cpu_cores_busy"],
            out["peak_rss_mib"]
        );
        print_cpu_per_node(&out);
        print_status_figures(&out);
    }
    Ok(())
}

/// `tidewire bench fanout`
#[derive(Debug, Args)]
pub struct FanoutArgs {
    /// Local subscribers reading the feed.
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    /// Notifications to publish.
    #[arg(long, default_value_t = 2_000)]
    count: u64,
    /// Add one subscriber that opens its stream and never reads it.
    #[arg(long)]
    stalled: bool,
}

/// `tidewire bench fanout`: one node, N subscribers over real mTLS, each publish fanned out to
/// all of them. Reports delivered notifications per second (per subscriber and in total) and the
/// p99 publish→delivered latency.
pub async fn bench_fanout(a: FanoutArgs, json: bool) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let fedn = LocalFederation::start(&tmp.path().join("f"), &["maoc-n"], &[]).await?;
    let conn = fedn.conn("maoc-n");
    let _stalled = if a.stalled {
        let s = pb::subscriber_client::SubscriberClient::new(conn.connect().await?)
            .subscribe(pb::SubscribeRequest {
                start: pb::subscribe_request::Start::Now as i32,
                ..Default::default()
            })
            .await
            .map_err(status_error)?
            .into_inner();
        Some(s)
    } else {
        None
    };
    let mut readers = Vec::new();
    let count = a.count;
    for _ in 0..a.subscribers {
        let mut s = pb::subscriber_client::SubscriberClient::new(conn.connect().await?)
            .subscribe(pb::SubscribeRequest {
                start: pb::subscribe_request::Start::Now as i32,
                ..Default::default()
            })
            .await
            .map_err(status_error)?
            .into_inner();
        readers.push(tokio::spawn(
            async move {
                let mut lat = Vec::with_capacity(count as usize);
                while (lat.len() as u64) < count {
                    match tokio::time::timeout(Duration::from_secs(60), s.next()).await {
                        Ok(Some(Ok(d))) => {
                            lat.push((timefmt::now_ms() - d.created_at_ms).max(0) as f64)
                        }
                        _ => break,
                    }
                }
                lat
            }
            .instrument(tracing::info_span!(
                "bench_subscriber",
                index = readers.len()
            )),
        ));
    }
    if !json {
        eprintln!(
            "bench fanout: {count} notifications to {} subscribers{}",
            a.subscribers,
            if a.stalled { " plus one stalled" } else { "" }
        );
    }
    let start = Instant::now();
    let shape = Shape {
        persons: 6,
        size: None,
    };
    publish_all(&conn, count, "maoc-n", shape).await?;
    let mut all = Vec::new();
    let mut complete = 0;
    for r in readers {
        let lat = r.await?;
        if lat.len() as u64 == count {
            complete += 1;
        }
        all.extend(lat);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let deliveries = all.len();
    let pct = percentiles(&mut all);
    let out = serde_json::json!({
        "subscribers": a.subscribers, "stalled": a.stalled, "count": count,
        "complete_subscribers": complete,
        "notifications_per_s": (count as f64 / elapsed).round(),
        "deliveries_per_s": (deliveries as f64 / elapsed).round(),
        "p50_ms": pct(0.5), "p99_ms": pct(0.99),
        "peak_rss_mib": (peak_rss_mib() * 10.0).round() / 10.0,
    });
    fedn.stop().await;
    if json {
        println!("{out}");
    } else {
        println!("subscribers  stalled  notifications/s  deliveries/s  p50 ms  p99 ms  complete");
        println!(
            "{:<12} {:<8} {:>15} {:>13} {:>7} {:>7}  {}/{}",
            a.subscribers,
            a.stalled,
            out["notifications_per_s"],
            out["deliveries_per_s"],
            out["p50_ms"],
            out["p99_ms"],
            complete,
            a.subscribers
        );
    }
    if complete != a.subscribers {
        bail!(
            "only {complete} of {} subscribers received every notification",
            a.subscribers
        );
    }
    Ok(())
}
