//! `tidewire pki`: a development federation (CA, node certificates, signing keys, roster,
//! policies, user tables and ready-to-run `node.toml` files) and client identities.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use serde::{Deserialize, Serialize};
use tidewire_core::keys::{Roster, RosterNode, SigningKey, key_paths, write_private};
use tidewire_core::model::{CountryCode, NodeId};
use tidewire_node::config::{ConfigFile, Limits, LinkFile, TlsFile};
use tidewire_node::users::{UserEntry, UsersFile};

/// `federation.json`: how clients reach each node of a development federation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Federation {
    /// CA certificate, relative to the federation directory.
    pub ca: String,
    /// The development client identity (admin on every node).
    pub client: Identity,
    /// Nodes by id.
    pub nodes: BTreeMap<String, FederationNode>,
}

/// A client identity's files.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Identity {
    /// Client name.
    pub name: String,
    /// Certificate (PEM), relative to the federation directory.
    pub cert: String,
    /// Key (PEM), relative to the federation directory.
    pub key: String,
}

/// One node in `federation.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FederationNode {
    /// URL for clients (Publisher, Subscriber, Admin).
    pub client_url: String,
    /// URL for peers (Federation); the same port.
    pub federation_url: String,
    /// Country.
    pub country: String,
    /// Organisation.
    pub org: String,
    /// The node's config, relative to the federation directory.
    pub config: String,
}

impl Federation {
    /// Reads `DIR/federation.json`.
    pub fn load(dir: &Path) -> Result<Federation> {
        let p = dir.join("federation.json");
        let text = std::fs::read_to_string(&p).with_context(|| {
            format!(
                "cannot read {}; create a federation with `tidewire pki init --out {}`",
                p.display(),
                dir.display()
            )
        })?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a federation file", p.display()))
    }

    /// The node named by `--node`, read from `dir`; an unknown name is refused with the names
    /// the federation has.
    pub fn node(&self, dir: &Path, name: &str) -> Result<&FederationNode> {
        self.nodes.get(name).ok_or_else(|| {
            anyhow::anyhow!(
                "--node `{name}` is not in {}; nodes: {}",
                dir.join("federation.json").display(),
                self.nodes.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })
    }
}

/// Country and organisation of well-known centres, for development federations.
pub fn known_centre(id: &str) -> (&'static str, String) {
    match id {
        "maoc-n" => ("PT", "maoc-n".into()),
        "ceclad-m" => ("FR", "ceclad-m".into()),
        "jiatf-s" => ("US", "jiatf-s".into()),
        "accra" => ("GH", "accra".into()),
        "dakar" => ("SN", "dakar".into()),
        "europol" => ("NL", "europol".into()),
        "ameripol" => ("CO", "ameripol".into()),
        "ecowas" => ("NG", "ecowas".into()),
        "aircop" | "aircop-lfw" => ("TG", "aircop".into()),
        other => ("ZZ", other.to_owned()),
    }
}

/// The CA in a federation directory.
struct Ca {
    key: KeyPair,
    pem: String,
}

impl Ca {
    fn create() -> Result<Ca> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(DnType::CommonName, "Tidewire development federation CA");
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = p.self_signed(&key)?;
        Ok(Ca {
            pem: cert.pem(),
            key,
        })
    }

    fn load(dir: &Path) -> Result<Ca> {
        let key_path = dir.join("ca.key");
        tidewire_core::keys::check_private_mode(&key_path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", key_path.display()))?;
        let key = KeyPair::from_pem(
            &std::fs::read_to_string(&key_path)
                .with_context(|| format!("cannot read {}", key_path.display()))?,
        )?;
        let pem = std::fs::read_to_string(dir.join("ca.pem"))
            .with_context(|| format!("cannot read {}", dir.join("ca.pem").display()))?;
        Ok(Ca { key, pem })
    }

    /// Issues a leaf certificate for `dns` (plus loopback names); returns (cert PEM, key PEM, DER sha256).
    fn issue(
        &self,
        common_name: &str,
        dns: &str,
        server: bool,
    ) -> Result<(String, String, [u8; 32])> {
        let issuer = Issuer::from_ca_cert_pem(&self.pem, &self.key)?;
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(vec![dns.to_owned()])?;
        if server {
            p.subject_alt_names
                .push(SanType::DnsName("localhost".try_into()?));
            p.subject_alt_names
                .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
            p.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
        } else {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
        p.distinguished_name.push(DnType::CommonName, common_name);
        p.distinguished_name
            .push(DnType::OrganizationName, "Tidewire development federation");
        let cert = p.signed_by(&key, &issuer)?;
        let sha = tidewire_node::tls::cert_sha256(cert.der());
        Ok((cert.pem(), key.serialize_pem(), sha))
    }
}

/// `n` distinct free loopback ports, none of them in `avoid`. Every socket is held until all
/// are bound: the kernel may hand a port it just released out again, and two nodes of one
/// federation given the same port would have one dial itself.
fn free_ports(n: usize, avoid: &[u16]) -> Result<Vec<u16>> {
    let mut held = Vec::new();
    let mut ports = Vec::new();
    while ports.len() < n {
        if held.len() > n + 64 {
            bail!("cannot find {n} free loopback ports; give --base-port");
        }
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        let p = l.local_addr()?.port();
        if !avoid.contains(&p) && !ports.contains(&p) {
            ports.push(p);
        }
        held.push(l);
    }
    Ok(ports)
}

/// The starting policy written for every node of a development federation.
pub fn starter_policy(id: &str) -> String {
    format!(
        r#"# Starting data-protection policy of {id}. See docs/POLICY.md; check edits with
# `tidewire policy check FILE` and apply them live with `tidewire policy apply`.
version = 1
default = "deny"

[[rule]]
id = "federation-partners"
description = "share with federation partners inside the audience; dates of birth go as a year, passport numbers stay here"
to = ["node:*"]
allow = ["*"]
generalise = {{ "persons[*].dob" = "year" }}
redact = ["persons[*].passport"]

[[rule]]
id = "local-officers"
description = "this centre's own cleared officers see everything their clearance allows"
to = ["role:*"]
allow = ["*"]
"#
    )
}

/// Options of `pki init`.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Output directory.
    pub out: PathBuf,
    /// Node ids.
    pub nodes: Vec<String>,
    /// Links `a:b`.
    pub links: Vec<String>,
    /// First port, or free ports.
    pub base_port: Option<u16>,
    /// Country overrides `id=CC`.
    pub countries: Vec<String>,
    /// Organisation overrides `id=ORG`.
    pub orgs: Vec<String>,
}

impl InitOptions {
    /// A development federation of `nodes` linked by `links` (`"a:b"`) in `out`, on free ports,
    /// with the default countries and organisations.
    pub fn dev(out: &Path, nodes: &[&str], links: &[&str]) -> InitOptions {
        InitOptions {
            out: out.to_owned(),
            nodes: nodes.iter().map(|s| s.to_string()).collect(),
            links: links.iter().map(|s| s.to_string()).collect(),
            base_port: None,
            countries: Vec::new(),
            orgs: Vec::new(),
        }
    }
}

fn overrides(list: &[String], what: &str) -> Result<BTreeMap<String, String>> {
    list.iter()
        .map(|s| {
            s.split_once('=')
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .ok_or_else(|| anyhow::anyhow!("--{what} `{s}`: write NODE=VALUE, e.g. dakar=SN"))
        })
        .collect()
}

/// One node of a development federation, to be written by [`write_node`].
struct NewNode<'a> {
    id: &'a NodeId,
    country: CountryCode,
    org: String,
    port: u16,
    links: Vec<LinkFile>,
    /// The development admin client's certificate, registered in the node's user table.
    admin_sha256: [u8; 32],
}

/// Writes a node's directory (`DIR/ID`): its signing key, TLS certificate and key from `ca`, a
/// starting policy, a user table with the admin client, and a ready-to-run `node.toml`. Returns
/// its roster entry (certificate pinned) and its `federation.json` entry.
fn write_node(dir: &Path, ca: &Ca, n: &NewNode<'_>) -> Result<(RosterNode, FederationNode)> {
    let id = n.id;
    let cc = n.country;
    let nd = dir.join(id.as_str());
    // The node's data (notifications, ledger) is for the node's account alone.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(nd.join("data"))?;
    let key = SigningKey::generate();
    let (kp, pp) = key_paths(&nd, id);
    key.save(&kp, &pp)?;
    let (cert, tkey, sha) = ca.issue(
        id.as_str(),
        &tidewire_node::tls::node_dns_name(id.as_str()),
        true,
    )?;
    std::fs::write(nd.join("tls.pem"), cert)?;
    write_private(&nd.join("tls.key"), tkey.as_bytes())?;
    let mut entry = RosterNode::new(id.clone(), cc, n.org.clone(), key.public());
    entry.tls_cert_sha256 = Some(sha);
    std::fs::write(nd.join("policy.toml"), starter_policy(id.as_str()))?;
    let users = UsersFile {
        users: vec![UserEntry {
            name: "admin".into(),
            role: "admin".into(),
            clearance: "H3".into(),
            routes: vec![">".into()],
            cert_sha256: Some(hex::encode(n.admin_sha256)),
            revoked: false,
        }],
    };
    users
        .save(&nd.join("users.toml"))
        .map_err(|e| anyhow::anyhow!(e))?;
    let cfg = ConfigFile {
        id: id.to_string(),
        country: cc.to_string(),
        org: n.org.clone(),
        listen: format!("127.0.0.1:{}", n.port),
        metrics_listen: None,
        data_dir: "data".into(),
        signing_key: format!("{id}.key"),
        roster: "../roster.toml".into(),
        policy: Some("policy.toml".into()),
        users: Some("users.toml".into()),
        tls: TlsFile {
            ca: "../ca.pem".into(),
            cert: "tls.pem".into(),
            key: "tls.key".into(),
        },
        links: n.links.clone(),
        limits: Limits::default(),
    };
    let mut text = String::new();
    let _ = writeln!(
        text,
        "# Tidewire node `{id}` ({cc}). Start it with: tidewire node run --config {}",
        nd.join("node.toml").display()
    );
    text.push_str(
        "# Prometheus metrics: add `metrics_listen = \"127.0.0.1:PORT\"` next to `listen` to serve\n\
         # them at http://127.0.0.1:PORT/metrics.\n",
    );
    text.push_str(&toml::to_string(&cfg)?);
    std::fs::write(nd.join("node.toml"), text)?;
    let url = format!("https://127.0.0.1:{}", n.port);
    Ok((
        entry,
        FederationNode {
            client_url: url.clone(),
            federation_url: url,
            country: cc.to_string(),
            org: n.org.clone(),
            config: format!("{id}/node.toml"),
        },
    ))
}

/// `tidewire pki init`.
pub fn init(o: &InitOptions) -> Result<Federation> {
    if o.nodes.is_empty() {
        bail!("--nodes: name at least one node, e.g. --nodes maoc-n,dakar,accra");
    }
    let ids: Vec<NodeId> = o
        .nodes
        .iter()
        .map(|n| {
            n.trim()
                .parse::<NodeId>()
                .map_err(|e| anyhow::anyhow!("--nodes: {e}"))
        })
        .collect::<Result<_>>()?;
    let mut links: Vec<(NodeId, NodeId)> = Vec::new();
    for l in &o.links {
        let (a, b) = l
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("--links `{l}`: write A:B, e.g. maoc-n:dakar"))?;
        let (a, b): (NodeId, NodeId) = (
            a.parse().map_err(|e| anyhow::anyhow!("--links: {e}"))?,
            b.parse().map_err(|e| anyhow::anyhow!("--links: {e}"))?,
        );
        for x in [&a, &b] {
            if !ids.contains(x) {
                bail!("--links `{l}`: `{x}` is not one of --nodes");
            }
        }
        if a == b {
            bail!("--links `{l}`: a node cannot link to itself");
        }
        if !links
            .iter()
            .any(|(x, y)| (x == &a && y == &b) || (x == &b && y == &a))
        {
            links.push((a, b));
        }
    }
    let countries = overrides(&o.countries, "country")?;
    let orgs = overrides(&o.orgs, "org")?;
    if o.out.join("federation.json").exists() {
        bail!(
            "{} already holds a federation; choose another --out or remove it",
            o.out.display()
        );
    }
    std::fs::create_dir_all(&o.out)
        .with_context(|| format!("cannot create {}", o.out.display()))?;
    let dir = &o.out;
    let ca = Ca::create()?;
    std::fs::write(dir.join("ca.pem"), &ca.pem)?;
    write_private(&dir.join("ca.key"), ca.key.serialize_pem().as_bytes())?;

    let mut free = match o.base_port {
        Some(_) => Vec::new(),
        None => free_ports(ids.len(), &[])?,
    }
    .into_iter();
    let mut ports = BTreeMap::new();
    for (i, id) in ids.iter().enumerate() {
        let port = match o.base_port {
            Some(b) => b
                .checked_add(i as u16)
                .ok_or_else(|| anyhow::anyhow!("--base-port: ports run past 65535"))?,
            None => free
                .next()
                .ok_or_else(|| anyhow::anyhow!("no free port left"))?,
        };
        ports.insert(id.clone(), port);
    }
    let mut roster = Roster::default();
    let mut fed = Federation {
        ca: "ca.pem".into(),
        client: Identity {
            name: "admin".into(),
            cert: "client/admin.pem".into(),
            key: "client/admin.key".into(),
        },
        nodes: BTreeMap::new(),
    };
    std::fs::create_dir_all(dir.join("client"))?;
    let (ccert, ckey, csha) = ca.issue(
        "admin",
        &tidewire_node::tls::client_dns_name("admin"),
        false,
    )?;
    std::fs::write(dir.join("client/admin.pem"), ccert)?;
    write_private(&dir.join("client/admin.key"), ckey.as_bytes())?;
    std::fs::write(dir.join("client/ca.pem"), &ca.pem)?;

    for id in &ids {
        let (known_cc, known_org) = known_centre(id.as_str());
        let cc: CountryCode = countries
            .get(id.as_str())
            .map(String::as_str)
            .unwrap_or(known_cc)
            .parse()
            .map_err(|e| anyhow::anyhow!("--country {id}: {e}"))?;
        let org = orgs.get(id.as_str()).cloned().unwrap_or(known_org);
        tidewire_core::model::check_org(&org).map_err(|e| anyhow::anyhow!("--org {id}: {e}"))?;
        let peer_links: Vec<LinkFile> = links
            .iter()
            .filter_map(|(a, b)| {
                if a == id {
                    Some(b)
                } else if b == id {
                    Some(a)
                } else {
                    None
                }
            })
            .map(|p| LinkFile {
                peer: p.to_string(),
                url: format!("https://127.0.0.1:{}", ports[p]),
            })
            .collect();
        let (entry, fnode) = write_node(
            dir,
            &ca,
            &NewNode {
                id,
                country: cc,
                org,
                port: ports[id],
                links: peer_links,
                admin_sha256: csha,
            },
        )?;
        roster.upsert(entry);
        fed.nodes.insert(id.to_string(), fnode);
    }
    std::fs::write(dir.join("roster.toml"), roster.to_toml())?;
    std::fs::write(
        dir.join("federation.json"),
        serde_json::to_string_pretty(&fed)?,
    )?;
    Ok(fed)
}

/// Options of `pki issue-client` (and `users add`): who the identity is for and what it may see.
#[derive(Debug, Clone, clap::Args)]
pub struct IssueOptions {
    /// Federation directory.
    #[arg(long)]
    pub federation: PathBuf,
    /// The node the client uses (its user table receives the client).
    #[arg(long)]
    pub node: String,
    /// Client name (officer-dakar-1).
    #[arg(long)]
    pub name: String,
    /// subscriber, publisher, auditor or admin.
    #[arg(long, default_value = "subscriber")]
    pub role: String,
    /// Highest handling code the client may see (H0..H3).
    #[arg(long, default_value = "H1")]
    pub clearance: String,
    /// Route patterns the client may follow and publish on (repeatable or comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub routes: Vec<String>,
    /// Where to write the identity (default DIR/clients/NAME).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Issues the identity and prints what was done.
pub fn issue_and_report(o: &IssueOptions, json: bool) -> Result<PathBuf> {
    let dir = issue_client(o)?;
    if json {
        println!(
            "{}",
            serde_json::json!({"identity": dir, "name": o.name, "node": o.node, "role": o.role, "clearance": o.clearance})
        );
    } else {
        println!(
            "client `{}` ({}, clearance {}) registered on {}; identity in {}",
            o.name,
            o.role,
            o.clearance,
            o.node,
            dir.display()
        );
        let with = format!(
            "--federation {} --node {} --identity {}",
            o.federation.display(),
            o.node,
            dir.display()
        );
        match o.role.as_str() {
            "publisher" => {
                println!("use it with: tidewire publish {with} --file notification.json")
            }
            "auditor" => println!("use it with: tidewire audit query {with}"),
            _ => {
                // Its first route, as an example (all routes: one an officer might follow).
                let route = o
                    .routes
                    .first()
                    .filter(|r| r.as_str() != ">")
                    .map_or("atlantic.>", String::as_str);
                println!("use it with: tidewire subscribe {with} --route '{route}'")
            }
        }
    }
    Ok(dir)
}

/// `tidewire pki issue-client`: a client certificate from the federation CA, registered in the
/// node's user table with its role and clearance. Returns the identity directory.
pub fn issue_client(o: &IssueOptions) -> Result<PathBuf> {
    let fed = Federation::load(&o.federation)?;
    let fnode = fed.node(&o.federation, &o.node)?;
    if !o
        .name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        || o.name.is_empty()
    {
        bail!("--name `{}`: use lowercase letters, digits and `-`", o.name);
    }
    let routes = if o.routes.is_empty() {
        vec![">".to_owned()]
    } else {
        o.routes.clone()
    };
    let entry = UserEntry {
        name: o.name.clone(),
        role: o.role.clone(),
        clearance: o.clearance.clone(),
        routes,
        cert_sha256: None,
        revoked: false,
    };
    // Validate before issuing anything.
    UsersFile::parse(&toml::to_string(&UsersFile {
        users: vec![entry.clone()],
    })?)
    .map_err(|e| anyhow::anyhow!(e.replace("user[0].", "--")))?;
    let ca = Ca::load(&o.federation)?;
    let (cert, key, sha) = ca.issue(
        &o.name,
        &tidewire_node::tls::client_dns_name(&o.name),
        false,
    )?;
    let out = o
        .out
        .clone()
        .unwrap_or_else(|| o.federation.join("clients").join(&o.name));
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("client.pem"), cert)?;
    write_private(&out.join("client.key"), key.as_bytes())?;
    std::fs::write(out.join("ca.pem"), &ca.pem)?;
    std::fs::write(
        out.join("identity.json"),
        serde_json::to_string_pretty(
            &serde_json::json!({"name": o.name, "node": o.node, "url": fnode.client_url}),
        )?,
    )?;
    let users_path = o.federation.join(&o.node).join("users.toml");
    let mut users = UsersFile::load(&users_path).map_err(|e| anyhow::anyhow!(e))?;
    users.users.retain(|u| u.name != o.name);
    users.users.push(UserEntry {
        cert_sha256: Some(hex::encode(sha)),
        ..entry
    });
    users.save(&users_path).map_err(|e| anyhow::anyhow!(e))?;
    Ok(out)
}

/// What `pki reissue` did.
#[derive(Debug, Clone, Serialize)]
pub struct Reissued {
    /// The node.
    pub node: String,
    /// Its new certificate.
    pub cert: PathBuf,
    /// Its new TLS key (0600).
    pub key: PathBuf,
    /// The new certificate's SHA-256, now pinned in the roster.
    pub sha256: String,
    /// The pin it replaced.
    pub replaced: Option<String>,
    /// The roster.
    pub roster: PathBuf,
}

/// `tidewire pki reissue`: a new TLS certificate and key for a node of a development federation
/// (its key leaked, or its certificate expires), pinned in the roster in place of the old one, so
/// that nodes given the new roster refuse the old certificate whichever side opens the link.
pub fn reissue(federation: &Path, node: &str) -> Result<Reissued> {
    let fed = Federation::load(federation)?;
    let fnode = fed.node(federation, node)?;
    let node_dir = federation
        .join(&fnode.config)
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| federation.join(node));
    let roster_path = federation.join("roster.toml");
    let mut roster = Roster::load(&roster_path)?;
    let mut entry = roster
        .get(node)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("{}: no node `{node}`", roster_path.display()))?;
    let ca = Ca::load(federation)?;
    let (cert, key, sha) = ca.issue(node, &tidewire_node::tls::node_dns_name(node), true)?;
    let (cert_path, key_path) = (node_dir.join("tls.pem"), node_dir.join("tls.key"));
    std::fs::write(&cert_path, cert)
        .with_context(|| format!("cannot write {}", cert_path.display()))?;
    write_private(&key_path, key.as_bytes())?;
    let replaced = entry.tls_cert_sha256.replace(sha);
    roster.upsert(entry);
    std::fs::write(&roster_path, roster.to_toml())
        .with_context(|| format!("cannot write {}", roster_path.display()))?;
    Ok(Reissued {
        node: node.to_owned(),
        cert: cert_path,
        key: key_path,
        sha256: hex::encode(sha),
        replaced: replaced.map(hex::encode),
        roster: roster_path,
    })
}

/// Re-issues and prints what was done and what to do next.
pub fn reissue_and_report(federation: &Path, node: &str, json: bool) -> Result<()> {
    let r = reissue(federation, node)?;
    if json {
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    println!(
        "new TLS certificate for {}: {} (sha256 {}…), key {} (mode 0600)",
        r.node,
        r.cert.display(),
        &r.sha256[..16],
        r.key.display()
    );
    println!(
        "{} now pins it{}",
        r.roster.display(),
        r.replaced
            .as_deref()
            .map(|o| format!(" in place of sha256 {}…", &o[..16]))
            .unwrap_or_default()
    );
    println!(
        "next: restart {} with its new certificate, and SIGHUP every other node (kill -HUP PID) \
         so that it holds the new roster; from then on the old certificate is refused on links \
         either side opens",
        r.node
    );
    Ok(())
}

/// What `pki add-node` did.
#[derive(Debug, Clone, Serialize)]
pub struct Added {
    /// The new node.
    pub node: String,
    /// Its URL.
    pub url: String,
    /// Its `node.toml`.
    pub config: PathBuf,
    /// The nodes it links to, whose `node.toml` got a `[[link]]` back.
    pub links: Vec<String>,
}

/// `tidewire pki add-node`: a new centre joins a development federation. Writes its directory
/// as `pki init` would (keys, certificate, policy, users, `node.toml` with a link to each of
/// `links`), adds it to `roster.toml` and `federation.json`, and gives each of its peers a
/// `[[link]]` back, which they put in force, with the new roster, on SIGHUP (or at their next
/// start).
pub fn add_node(
    federation: &Path,
    node: &str,
    links: &[String],
    country: Option<&str>,
    org: Option<&str>,
    port: Option<u16>,
) -> Result<Added> {
    let id: NodeId = node.parse().map_err(|e| anyhow::anyhow!("--node: {e}"))?;
    let mut fed = Federation::load(federation)?;
    let roster_path = federation.join("roster.toml");
    let mut roster = Roster::load(&roster_path)?;
    if fed.nodes.contains_key(id.as_str()) || roster.get(id.as_str()).is_some() {
        bail!(
            "--node `{id}` is already in {}; choose another id",
            federation.display()
        );
    }
    let mut peers: Vec<&str> = Vec::new();
    for l in links {
        let (a, b) = l
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("--links `{l}`: write {id}:PEER, e.g. {id}:maoc-n"))?;
        let peer = match (a == id.as_str(), b == id.as_str()) {
            (true, false) => b,
            (false, true) => a,
            _ => bail!("--links `{l}`: each link joins `{id}` to a node of the federation"),
        };
        if !fed.nodes.contains_key(peer) {
            bail!(
                "--links `{l}`: `{peer}` is not in {}; nodes: {}",
                federation.join("federation.json").display(),
                fed.nodes.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        }
        if !peers.contains(&peer) {
            peers.push(peer);
        }
    }
    let (known_cc, known_org) = known_centre(id.as_str());
    let cc: CountryCode = country
        .unwrap_or(known_cc)
        .parse()
        .map_err(|e| anyhow::anyhow!("--country: {e}"))?;
    let org = org.map_or(known_org, str::to_owned);
    tidewire_core::model::check_org(&org).map_err(|e| anyhow::anyhow!("--org: {e}"))?;
    let port = match port {
        Some(p) => p,
        None => {
            let taken: Vec<u16> = fed
                .nodes
                .values()
                .filter_map(|n| n.federation_url.rsplit(':').next()?.parse().ok())
                .collect();
            free_ports(1, &taken)?[0]
        }
    };
    let admin = federation.join(&fed.client.cert);
    let admin_sha256 = tidewire_node::tls::pem_cert_sha256(
        &std::fs::read(&admin).with_context(|| format!("cannot read {}", admin.display()))?,
    )
    .ok_or_else(|| anyhow::anyhow!("{}: not a PEM certificate", admin.display()))?;
    let ca = Ca::load(federation)?;
    let peer_links = peers
        .iter()
        .map(|p| LinkFile {
            peer: (*p).to_owned(),
            url: fed.nodes[*p].federation_url.clone(),
        })
        .collect();
    let (entry, fnode) = write_node(
        federation,
        &ca,
        &NewNode {
            id: &id,
            country: cc,
            org,
            port,
            links: peer_links,
            admin_sha256,
        },
    )?;
    let url = fnode.federation_url.clone();
    roster.upsert(entry);
    std::fs::write(&roster_path, roster.to_toml())
        .with_context(|| format!("cannot write {}", roster_path.display()))?;
    for p in &peers {
        let cfg = federation.join(&fed.nodes[*p].config);
        let mut text = std::fs::read_to_string(&cfg)
            .with_context(|| format!("cannot read {}", cfg.display()))?;
        if !text.ends_with('\n') {
            text.push('\n');
        }
        let _ = write!(text, "\n[[link]]\npeer = \"{id}\"\nurl = \"{url}\"\n");
        std::fs::write(&cfg, text).with_context(|| format!("cannot write {}", cfg.display()))?;
    }
    let config = federation.join(&fnode.config);
    fed.nodes.insert(id.to_string(), fnode);
    std::fs::write(
        federation.join("federation.json"),
        serde_json::to_string_pretty(&fed)?,
    )?;
    Ok(Added {
        node: id.to_string(),
        url,
        config,
        links: peers.iter().map(|p| (*p).to_owned()).collect(),
    })
}

/// Adds the node and prints what was done and what to do next.
pub fn add_node_and_report(
    federation: &Path,
    node: &str,
    links: &[String],
    country: Option<&str>,
    org: Option<&str>,
    port: Option<u16>,
    json: bool,
) -> Result<()> {
    let a = add_node(federation, node, links, country, org, port)?;
    if json {
        println!("{}", serde_json::to_string(&a)?);
        return Ok(());
    }
    println!(
        "node {} added at {}: {}, roster.toml and federation.json updated",
        a.node,
        a.url,
        a.config.display()
    );
    if !a.links.is_empty() {
        println!(
            "linked to {} (each node.toml has a [[link]] back, in force once the node is sent SIGHUP)",
            a.links.join(", ")
        );
    }
    println!(
        "next: SIGHUP every running node (kill -HUP PID) so that it holds the new roster, then \
         start the new one: tidewire node run --config {}",
        a.config.display()
    );
    Ok(())
}
