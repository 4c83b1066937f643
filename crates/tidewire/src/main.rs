//! The `tidewire` command. Thin: parse arguments, set up tracing, run one command, print one
//! clear error line on failure.
#![forbid(unsafe_code)]

use tidewire::{cmds, demo, envelope_cmd, pki};

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// mimalloc: verification and relaying allocate many small buffers per notification, and it
/// measurably beats the system allocator there (docs/BENCHMARKS.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tidewire: federated exchange of signed case notifications under each centre's own
/// data-protection policy.
#[derive(Debug, Parser)]
#[command(name = "tidewire", version, about, propagate_version = true)]
struct Cli {
    /// Print JSON instead of readable text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a 4-node federation on loopback, publish, and show who received what.
    Demo(demo::DemoArgs),
    /// Run a node.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Development PKI: a CA, node certificates and keys, roster and node.toml files.
    #[command(subcommand)]
    Pki(PkiCmd),
    /// Signing keys.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Seal, redact, verify and inspect envelopes offline.
    #[command(subcommand)]
    Envelope(envelope_cmd::EnvelopeCmd),
    /// Publish notifications (JSON files or JSON lines).
    Publish(cmds::PublishArgs),
    /// Follow route feeds.
    Subscribe(cmds::SubscribeArgs),
    /// End a durable subscription (the node forgets its cursor and its route interest).
    Unsubscribe(cmds::UnsubscribeArgs),
    /// A node's links, routes and counters.
    Status(cmds::StatusArgs),
    /// Check, explain, apply and show data-protection policies.
    #[command(subcommand)]
    Policy(cmds::PolicyCmd),
    /// Onward-transfer consent requests.
    #[command(subcommand)]
    Consent(cmds::ConsentCmd),
    /// Client identities and their clearance.
    #[command(subcommand)]
    Users(cmds::UsersCmd),
    /// The disclosure ledger.
    #[command(subcommand)]
    Audit(cmds::AuditCmd),
    /// Case notifications held by a node.
    #[command(subcommand)]
    Cases(cmds::CasesCmd),
    /// The federation's nodes (competent authorities) and how to reach them.
    Authorities(cmds::AuthoritiesArgs),
    /// Measure relay throughput and latency over real mTLS links.
    #[command(subcommand)]
    Bench(cmds::BenchCmd),
}

#[derive(Debug, Subcommand)]
enum NodeCmd {
    /// Run a node until SIGTERM or SIGINT.
    Run {
        /// The node's configuration.
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum PkiCmd {
    /// Create a development federation.
    Init {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Node ids, comma-separated (maoc-n,dakar,accra).
        #[arg(long, value_delimiter = ',')]
        nodes: Vec<String>,
        /// Links A:B, comma-separated.
        #[arg(long, value_delimiter = ',')]
        links: Vec<String>,
        /// First port (ports follow in node order); default: free ports.
        #[arg(long)]
        base_port: Option<u16>,
        /// Country of a node, NODE=CC (repeatable); known centres have defaults.
        #[arg(long = "country")]
        countries: Vec<String>,
        /// Organisation of a node, NODE=ORG (repeatable).
        #[arg(long = "org")]
        orgs: Vec<String>,
    },
    /// Issue a client certificate and register it in a node's user table.
    IssueClient(pki::IssueOptions),
    /// Add a node (a centre joining) to a development federation: its keys, certificate,
    /// policy, users and node.toml; the roster; federation.json; a [[link]] back at each peer.
    AddNode {
        /// Federation directory.
        #[arg(long)]
        federation: PathBuf,
        /// The new node's id (ceclad-m).
        #[arg(long)]
        node: String,
        /// Its links, NODE:PEER, comma-separated (ceclad-m:maoc-n).
        #[arg(long, value_delimiter = ',')]
        links: Vec<String>,
        /// Its country (ISO 3166 alpha-2); known centres have defaults.
        #[arg(long)]
        country: Option<String>,
        /// Its organisation.
        #[arg(long)]
        org: Option<String>,
        /// Its port (default: a free one).
        #[arg(long)]
        port: Option<u16>,
    },
    /// Issue a node a new TLS certificate and key, and pin it in the roster in place of the
    /// old one (which every node given the new roster then refuses).
    Reissue {
        /// Federation directory.
        #[arg(long)]
        federation: PathBuf,
        /// The node.
        #[arg(long)]
        node: String,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCmd {
    /// Generate a node signing key and add it to DIR/roster.toml (or --roster): a new node,
    /// or another key for one already there (a rotation; its earlier keys stay).
    Generate {
        /// Node id.
        #[arg(long)]
        node: String,
        /// Output directory (NODE.key, NODE.pub).
        #[arg(long)]
        out: PathBuf,
        /// The roster to add the key to (default: OUT/roster.toml), e.g. a federation's.
        #[arg(long)]
        roster: Option<PathBuf>,
        /// The node's country (ISO 3166 alpha-2).
        #[arg(long)]
        country: Option<String>,
        /// The node's organisation.
        #[arg(long)]
        org: Option<String>,
    },
}

fn init_tracing(env: &std::collections::HashMap<String, String>, json: bool) {
    let filter = env
        .get("TIDEWIRE_LOG")
        .or_else(|| env.get("RUST_LOG"))
        .cloned()
        .unwrap_or_else(|| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        let _ = builder.json().try_init();
    } else {
        let _ = builder.try_init();
    }
}

fn main() {
    // No transparent huge pages for this process: the allocator returns freed memory to the
    // kernel, and every fault on a returned huge page zeroes 2 MiB. With THP on, the relay spent
    // up to a quarter of its CPU in the kernel clearing pages (docs/BENCHMARKS.md), and latency
    // got spiky — the same reason Redis and MongoDB ask for THP off. Failure is harmless.
    #[cfg(target_os = "linux")]
    let _ = rustix::thread::disable_transparent_huge_pages(true);
    let cli = Cli::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    // A node's configuration is read before the runtime is built: it says how many worker
    // threads the runtime has (`limits.worker_threads`).
    let node_config = match &cli.command {
        Command::Node(NodeCmd::Run { config }) => tidewire_node::NodeConfig::load(config, &env)
            .map(Some)
            .map_err(anyhow::Error::from),
        _ => Ok(None),
    };
    let result = node_config.and_then(|cfg| {
        let mut runtime = tokio::runtime::Builder::new_multi_thread();
        if let Some(n) = cfg.as_ref().and_then(|c| c.limits.worker_threads) {
            runtime.worker_threads(n);
        }
        runtime.enable_all().build()?.block_on(run(cli, env, cfg))
    });
    if let Err(e) = result {
        let mut msg = e.to_string();
        for cause in e.chain().skip(1) {
            let c = cause.to_string();
            if !msg.contains(&c) {
                msg.push_str(": ");
                msg.push_str(&c);
            }
        }
        eprintln!("error: {msg}");
        std::process::exit(1);
    }
}

/// Runs one command. `node_config` is the configuration `main` read for `node run` (and only
/// for it).
async fn run(
    cli: Cli,
    env: std::collections::HashMap<String, String>,
    node_config: Option<tidewire_node::NodeConfig>,
) -> anyhow::Result<()> {
    let json = cli.json;
    match cli.command {
        Command::Node(NodeCmd::Run { config }) => {
            init_tracing(&env, json);
            let cfg = node_config.context("the node's configuration is read before the runtime")?;
            cmds::node_run(&config, cfg, &env).await
        }
        Command::Demo(a) => {
            init_tracing(&env_quiet(&env), false);
            demo::run(a, json).await
        }
        Command::Pki(PkiCmd::Init {
            out,
            nodes,
            links,
            base_port,
            countries,
            orgs,
        }) => {
            let fed = pki::init(&pki::InitOptions {
                out: out.clone(),
                nodes,
                links,
                base_port,
                countries,
                orgs,
            })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&fed)?);
            } else {
                println!("development federation written to {}", out.display());
                for (id, n) in &fed.nodes {
                    println!(
                        "  {id:<10} {}  {:<2}  tidewire node run --config {}",
                        n.client_url,
                        n.country,
                        out.join(&n.config).display()
                    );
                }
                println!(
                    "client identity: {} (admin on every node)",
                    out.join(&fed.client.cert).display()
                );
            }
            Ok(())
        }
        Command::Pki(PkiCmd::IssueClient(o)) => pki::issue_and_report(&o, json).map(|_| ()),
        Command::Pki(PkiCmd::AddNode {
            federation,
            node,
            links,
            country,
            org,
            port,
        }) => pki::add_node_and_report(
            &federation,
            &node,
            &links,
            country.as_deref(),
            org.as_deref(),
            port,
            json,
        ),
        Command::Pki(PkiCmd::Reissue { federation, node }) => {
            pki::reissue_and_report(&federation, &node, json)
        }
        Command::Keys(KeysCmd::Generate {
            node,
            out,
            roster,
            country,
            org,
        }) => cmds::keys_generate(&node, &out, roster.as_deref(), country, org, json),
        Command::Envelope(c) => envelope_cmd::run(c, json),
        Command::Publish(a) => cmds::publish(a, json).await,
        Command::Subscribe(a) => cmds::subscribe(a, json).await,
        Command::Unsubscribe(a) => cmds::unsubscribe(a, json).await,
        Command::Status(a) => cmds::status(a, json).await,
        Command::Policy(c) => cmds::policy(c, json).await,
        Command::Consent(c) => cmds::consent(c, json).await,
        Command::Users(c) => cmds::users(c, json).await,
        Command::Audit(c) => cmds::audit(c, json).await,
        Command::Cases(c) => cmds::cases(c, json).await,
        Command::Authorities(a) => cmds::authorities(a, json),
        Command::Bench(c) => {
            init_tracing(&env_quiet(&env), false);
            cmds::bench(c, json).await
        }
    }
}

/// In-process federations log only warnings unless asked otherwise.
fn env_quiet(
    env: &std::collections::HashMap<String, String>,
) -> std::collections::HashMap<String, String> {
    let mut e = env.clone();
    e.entry("TIDEWIRE_LOG".into())
        .or_insert_with(|| "warn".into());
    e
}
