//! Client and admin commands.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use futures::StreamExt;
use tidewire_core::keys::{Roster, RosterNode, SigningKey, key_paths};
use tidewire_core::timefmt;
use tidewire_proto::v1 as pb;

use crate::client::{Conn, status_error};

/// `tidewire node run`: the node that `cfg`, read from `config`, describes, until SIGTERM or
/// SIGINT (SIGHUP reads `config` again). `main` reads the configuration before it builds the
/// runtime, whose worker threads it sets.
pub async fn node_run(
    config: &Path,
    cfg: tidewire_node::NodeConfig,
    env: &HashMap<String, String>,
) -> Result<()> {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = match tidewire_node::start(cfg, shutdown.clone()).await {
        Ok(r) => r,
        // An address that cannot be bound is the config file's to fix: say where it is set.
        Err(tidewire_node::NodeError::Bind {
            key,
            addr,
            error,
            hint,
        }) => {
            let message = format!("cannot bind {addr}: {error}{hint}");
            return Err(tidewire_node::config::key_error(config, env, key, &message).into());
        }
        Err(e) => return Err(e.into()),
    };
    tracing::info!(
        addr = %running.addr,
        worker_threads = tokio::runtime::Handle::current().metrics().num_workers(),
        "listening"
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let node = running.node.clone();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = hup.recv() => reload_on_sighup(&node, config, env).await,
        }
    }
    tracing::info!("shutting down: draining links and flushing the store");
    running.stop().await;
    Ok(())
}

/// SIGHUP: the `[[link]]`s of `node.toml`, the roster, then the policy, each read again; one
/// that is wrong is logged and leaves what is in force. Links are added, removed or moved to a
/// new URL; copies queued for nodes the roster no longer has are dropped.
async fn reload_on_sighup(
    node: &std::sync::Arc<tidewire_node::Node>,
    config: &Path,
    env: &HashMap<String, String>,
) {
    // node.toml first: a centre leaving the federation goes from the roster and from the
    // [[link]]s at once, and the roster is checked against the links it will run with.
    let links = match tidewire_node::NodeConfig::load(config, env) {
        Ok(fresh) => {
            let later = node.cfg.restart_needed(&fresh);
            if !later.is_empty() {
                tracing::warn!(keys = ?later, "node.toml changed beyond its [[link]]s: those changes take effect at the next restart");
            }
            Some(fresh.links)
        }
        Err(e) => {
            tracing::error!(error = %e, "node.toml not re-read; its links stay as they are");
            None
        }
    };
    let reloaded = match &links {
        Some(l) => node.reload_roster_for(&l.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>()),
        None => node.reload_roster(),
    };
    match reloaded {
        Ok(r) if r.is_change() => tracing::info!(
            added = ?r.added, removed = ?r.removed, changed = ?r.changed,
            sessions_ended = r.sessions_ended,
            "roster reloaded on SIGHUP; links reconnect under it"
        ),
        Ok(_) => tracing::info!("roster unchanged on SIGHUP"),
        Err(e) => tracing::error!(error = %e, "roster reload refused; the roster in force stays"),
    }
    if let Some(links) = links {
        // A new link to a node the roster in force does not have (a refused roster keeps the
        // old one) is not opened.
        let c = tidewire_node::server::apply_links(node, &links);
        if c.is_change() {
            tracing::info!(added = ?c.added, removed = ?c.removed, moved = ?c.moved, "links changed on SIGHUP");
        }
    }
    if let Err(e) = node.drop_queued_for_departed().await {
        tracing::error!(error = %e, "could not drop copies queued for nodes no longer in the roster");
    }
    match node.cfg.policy.clone() {
        Some(p) => match std::fs::read_to_string(&p) {
            Ok(text) => match node.apply_policy(&text, "signal:SIGHUP").await {
                Ok((pol, _)) => tracing::info!(
                    version = pol.version(),
                    hash = pol.content_hash(),
                    "policy reloaded on SIGHUP"
                ),
                Err(e) => {
                    tracing::error!(error = %e, "policy reload refused; the old policy stays in force")
                }
            },
            Err(e) => tracing::error!(error = %e, file = %p.display(), "cannot read policy"),
        },
        None => tracing::warn!("SIGHUP: no policy file configured"),
    }
}

/// `tidewire keys generate`.
pub fn keys_generate(
    node: &str,
    out: &Path,
    roster: Option<&Path>,
    country: Option<String>,
    org: Option<String>,
    json: bool,
) -> Result<()> {
    let id: tidewire_core::NodeId = node.parse().map_err(|e| anyhow::anyhow!("--node: {e}"))?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let (kp, pp) = key_paths(out, &id);
    if kp.exists() {
        bail!(
            "{} already exists; remove it first if you really mean to replace this node's key",
            kp.display()
        );
    }
    let roster_path = roster.map_or_else(|| out.join("roster.toml"), Path::to_owned);
    let mut roster = if roster_path.exists() {
        Roster::load(&roster_path)?
    } else {
        Roster::default()
    };
    // A node already in the roster keeps its country and organisation unless told otherwise
    // (a key rotation), a new one gets its centre's or the ones given.
    let existing = roster.get(id.as_str());
    let (known_cc, known_org) = match existing {
        Some(n) => (n.country.to_string(), n.org.clone()),
        None => {
            let (cc, org) = crate::pki::known_centre(id.as_str());
            (cc.to_owned(), org)
        }
    };
    let cc = country
        .unwrap_or(known_cc)
        .parse()
        .map_err(|e| anyhow::anyhow!("--country: {e}"))?;
    let org = org.unwrap_or(known_org);
    tidewire_core::model::check_org(&org).map_err(|e| anyhow::anyhow!("--org: {e}"))?;
    let key = SigningKey::generate();
    key.save(&kp, &pp)?;
    let mut entry = RosterNode::new(id.clone(), cc, org, key.public());
    if let Some(old) = roster.get(id.as_str()) {
        entry.tls_cert_sha256 = old.tls_cert_sha256;
        let mut keys = old.keys.clone();
        keys.extend(entry.keys);
        entry.keys = keys;
    }
    roster.upsert(entry);
    std::fs::write(&roster_path, roster.to_toml())
        .with_context(|| format!("cannot write {}", roster_path.display()))?;
    if json {
        println!(
            "{}",
            serde_json::json!({"node": id.as_str(), "key": kp, "public": pp, "key_id": key.key_id(), "roster": roster_path})
        );
    } else {
        println!(
            "key {} for {id}: {} (mode 0600), {}; roster {}",
            key.key_id(),
            kp.display(),
            pp.display(),
            roster_path.display()
        );
    }
    Ok(())
}

/// `tidewire publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    #[command(flatten)]
    pub conn: Conn,
    /// Notification JSON file (repeatable); a `.jsonl` file holds one notification per line;
    /// `-` reads standard input: one notification, or several one after the other (JSON lines).
    #[arg(long, required = true)]
    file: Vec<PathBuf>,
    /// Idempotency key (single notification only): a retry returns the first id.
    #[arg(long)]
    idempotency_key: Option<String>,
}

/// A notification to publish: where it was read (`FILE`, `FILE:LINE`, `stdin:N`), its JSON, and
/// the idempotency key a stream of several gives it.
struct Item {
    name: String,
    text: String,
    key: String,
}

/// The idempotency key of the notification `text` read from `source` (a file's canonical path,
/// or `stdin`) at `place` (its line, or its position in standard input): running the same
/// command again gives the same keys, so a node that already holds one answers it as a retry
/// instead of publishing it twice. Two equal lines of one file are two notifications.
fn derived_key(source: &str, place: usize, text: &str) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(source.as_bytes());
    h.update([0]);
    h.update(place.to_be_bytes());
    h.update(text.as_bytes());
    format!("cli:{}", hex::encode(&h.finalize()[..16]))
}

/// Reads the notifications to publish.
fn read_notifications(files: &[PathBuf]) -> Result<Vec<Item>> {
    let mut out = Vec::new();
    for f in files {
        if f.as_os_str() == "-" {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .context("cannot read standard input")?;
            for (i, (name, text)) in split_json_values("stdin", &text)?.into_iter().enumerate() {
                let key = derived_key("stdin", i + 1, &text);
                out.push(Item { name, text, key });
            }
            continue;
        }
        let text =
            std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
        let source = std::fs::canonicalize(f)
            .unwrap_or_else(|_| f.clone())
            .display()
            .to_string();
        if f.extension().is_some_and(|e| e == "jsonl") {
            for (i, line) in text.lines().enumerate() {
                if !line.trim().is_empty() {
                    out.push(Item {
                        name: format!("{}:{}", f.display(), i + 1),
                        key: derived_key(&source, i + 1, line),
                        text: line.to_owned(),
                    });
                }
            }
        } else {
            out.push(Item {
                name: f.display().to_string(),
                key: derived_key(&source, 1, &text),
                text,
            });
        }
    }
    // Check locally first, so a bad file is reported with its name before anything is sent.
    let now = timefmt::now_ms();
    for Item { name, text, .. } in &out {
        let n = parse_notification(name, text)?;
        // Published all the same (the origin keeps it and records why it goes nowhere), but
        // the one publishing it should know before reading "queued for".
        if let Some(t) = n.expires_at_ms.filter(|t| *t <= now) {
            eprintln!(
                "warning: {name}: expires_at {} is already past: the notification is kept here \
                 but will not be forwarded (each copy is recorded as `expired`)",
                timefmt::format_ms(t)
            );
        }
    }
    Ok(out)
}

/// Parses the notification JSON `text` read from `name`; an invalid value is reported with
/// the file, the line of its key, the field and the fix.
pub(crate) fn parse_notification(name: &str, text: &str) -> Result<tidewire_core::Notification> {
    tidewire_core::Notification::from_json(text.as_bytes()).map_err(|e| {
        let line = match &e {
            tidewire_core::error::CoreError::Notification { path, .. } => key_line(text, path),
            _ => None,
        };
        match line {
            Some(l) => anyhow::anyhow!("{name}: line {l}: {e}"),
            None => anyhow::anyhow!("{name}: {e}"),
        }
    })
}

/// A time on the command line: RFC 3339 (`2026-11-01T08:00:00Z`) or a date (`2026-11-01`, the
/// start of that day, UTC), as Unix ms.
fn parse_when(text: &str) -> Result<i64, String> {
    let full = if text.len() == 10 && text.as_bytes().get(4) == Some(&b'-') {
        format!("{text}T00:00:00Z")
    } else {
        text.to_owned()
    };
    timefmt::parse_rfc3339_ms(&full)
        .map_err(|e| format!("`{text}`: {e}; write 2026-11-01 or 2026-11-01T08:00:00Z"))
}

/// The line of the top-level key a notification field path starts with (`routes` for
/// `routes[0]`, `grading` for `grading.source`) in a notification written over several lines;
/// `None` on one line, where the name already says which.
fn key_line(text: &str, path: &str) -> Option<usize> {
    let top = path.split(['.', '[']).next().filter(|t| !t.is_empty())?;
    if !text.trim().contains('\n') {
        return None;
    }
    let bytes = text.as_bytes();
    let (mut depth, mut line, mut i) = (0usize, 1, 0);
    while i < bytes.len() {
        match bytes[i] {
            b'\n' => line += 1,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            b'"' => {
                let open = i;
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                let key = text.get(open + 1..i.min(bytes.len()))?;
                let followed = text.get(i + 1..).unwrap_or("").trim_start();
                if depth == 1 && key == top && followed.starts_with(':') {
                    return Some(line);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Splits `text` into the JSON values it holds one after the other (one pretty-printed
/// notification, JSON lines, or both), each named `NAME:LINE` by the line it starts on.
fn split_json_values(name: &str, text: &str) -> Result<Vec<(String, String)>> {
    // Lines counted up to `counted`, so that a long input is scanned once.
    let (mut counted, mut line) = (0, 1);
    let mut line_at = |offset: usize| {
        line += text[counted..offset].matches('\n').count();
        counted = offset;
        line
    };
    let mut out = Vec::new();
    let mut values = serde_json::Deserializer::from_str(text).into_iter::<serde::de::IgnoredAny>();
    let mut start = 0;
    while let Some(v) = values.next() {
        if let Err(e) = v {
            bail!(
                "{name}: not JSON at line {}, column {}: {e}",
                e.line(),
                e.column()
            );
        }
        let end = values.byte_offset();
        let value = text[start..end].trim_start();
        let at = end - value.len();
        out.push((format!("{name}:{}", line_at(at)), value.to_owned()));
        start = end;
    }
    if out.is_empty() {
        bail!("{name}: no notification to publish (the input is empty)");
    }
    Ok(out)
}

/// The nodes a publish was queued for, as the CLI prints them: those no route reaches yet say
/// that their copies wait at this node.
fn destinations_text(r: &pb::PublishReply) -> String {
    if r.destinations.is_empty() {
        return "no other node".into();
    }
    r.destinations
        .iter()
        .map(|d| {
            if r.unrouted.contains(d) {
                format!("{d} (no route to it now: waits here until one opens)")
            } else {
                d.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Warns (on stderr) about audience entries that match no node of the roster.
fn warn_unmatched(file: &str, unmatched: &[String]) {
    for a in unmatched {
        eprintln!(
            "warning: {file}: audience `{a}` matches no node of the federation's roster; check \
             the name (`tidewire status` lists the nodes this one reaches)"
        );
    }
}

/// Whether a failed publish may still have been stored: the connection broke while the request
/// was under way (not a refusal, and not a node that could not be reached at all).
fn outcome_unknown(e: &tonic::Status) -> bool {
    crate::client::is_transport(e) && e.code() != tonic::Code::Unavailable
}

/// How to publish again what a broken stream left unacknowledged.
const RERUN: &str = "running the same command again is safe: each notification carries an \
                     idempotency key, and those the node already holds come back as already \
                     published, not published twice";

/// `tidewire publish`.
pub async fn publish(a: PublishArgs, json: bool) -> Result<()> {
    let items = read_notifications(&a.file)?;
    let channel = a.conn.connect().await?;
    let mut client = pb::publisher_client::PublisherClient::new(channel);
    if items.len() == 1 {
        let Item { name, text, .. } = &items[0];
        let r = client
            .publish(pb::PublishRequest {
                notification_json: text.clone(),
                idempotency_key: a.idempotency_key.clone().unwrap_or_default(),
            })
            .await
            .map_err(|e| {
                let unknown = outcome_unknown(&e);
                let err = status_error(e);
                match &a.idempotency_key {
                    Some(key) if unknown => err.context(format!(
                        "{name} may or may not be published: run the same command again (with \
                         --idempotency-key {key}, the node answers a retry with the first id)"
                    )),
                    None if unknown => err.context(format!(
                        "{name} may or may not be published: `tidewire cases list` on the node \
                         shows what it holds; publishing again without an idempotency key makes \
                         a second notification if the first was stored (give one with \
                         --idempotency-key to make retries safe)"
                    )),
                    _ => err,
                }
            })?
            .into_inner();
        if json {
            println!(
                "{}",
                serde_json::json!({"file": name, "id": r.id, "origin_seq": r.origin_seq, "duplicate": r.duplicate, "destinations": r.destinations, "unrouted": r.unrouted, "unmatched_audience": r.unmatched_audience})
            );
        } else {
            println!(
                "published {} (seq {}){} from {name}",
                r.id,
                r.origin_seq,
                if r.duplicate {
                    " [already published: idempotent retry]"
                } else {
                    ""
                }
            );
            if !r.duplicate {
                println!("  queued for: {}", destinations_text(&r));
            }
        }
        warn_unmatched(name, &r.unmatched_audience);
        return Ok(());
    }
    let reqs: Vec<pb::PublishRequest> = items
        .iter()
        .map(|it| pb::PublishRequest {
            notification_json: it.text.clone(),
            idempotency_key: it.key.clone(),
        })
        .collect();
    let total = reqs.len();
    let mut replies = client
        .publish_stream(futures::stream::iter(reqs))
        .await
        .map_err(status_error)?
        .into_inner();
    let mut i = 0;
    let mut failed = 0;
    while let Some(r) = replies.next().await {
        let r = r.map_err(|e| {
            // What was acknowledged is durable at the node; say where to start again.
            let rest = items
                .get(i)
                .map(|it| {
                    format!(
                        "; from {} on, nothing was acknowledged: publish those again ({RERUN})",
                        it.name
                    )
                })
                .unwrap_or_default();
            status_error(e).context(format!(
                "{} of {total} were acknowledged (each is durable at the node){rest}",
                i - failed
            ))
        })?;
        let name = &items[i].name;
        i += 1;
        if r.error_code != 0 {
            failed += 1;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"file": name, "error": r.error_message})
                );
            } else {
                eprintln!("refused {name}: {}", r.error_message);
            }
        } else if json {
            println!(
                "{}",
                serde_json::json!({"file": name, "id": r.id, "origin_seq": r.origin_seq, "duplicate": r.duplicate, "destinations": r.destinations, "unrouted": r.unrouted, "unmatched_audience": r.unmatched_audience})
            );
        } else if r.duplicate {
            println!(
                "[{i}/{total}] already published {} (seq {}) from {name}: idempotent retry",
                r.id, r.origin_seq
            );
        } else {
            println!(
                "[{i}/{total}] published {} from {name} (queued for: {})",
                r.id,
                destinations_text(&r)
            );
        }
        if r.error_code == 0 {
            warn_unmatched(name, &r.unmatched_audience);
        }
    }
    if i < items.len() {
        bail!(
            "the node ended the stream after {i} of {total} replies ({} acknowledged, each durable \
             at the node); from {} on, nothing was acknowledged: publish those again ({RERUN})",
            i - failed,
            items[i].name
        );
    }
    if failed > 0 {
        bail!("{failed} of {total} notifications were refused");
    }
    Ok(())
}

/// `tidewire subscribe`.
#[derive(Debug, Args)]
pub struct SubscribeArgs {
    #[command(flatten)]
    pub conn: Conn,
    /// Route patterns (`atlantic.>`, `vessel.imo.*`), repeatable.
    #[arg(long)]
    route: Vec<String>,
    /// Kinds to receive, repeatable.
    #[arg(long)]
    kind: Vec<String>,
    /// A durable subscription name: resume where you left off.
    #[arg(long)]
    durable: Option<String>,
    /// Start from the beginning of retained data (default: from now, or the durable cursor).
    #[arg(long)]
    from_start: bool,
    /// Start after this cursor.
    #[arg(long)]
    cursor: Option<u64>,
    /// Stop after this many notifications.
    #[arg(long)]
    count: Option<u64>,
    /// Do not acknowledge (durable subscriptions acknowledge each printed notification).
    #[arg(long)]
    no_ack: bool,
}

fn delivery_json(d: &pb::Delivery) -> serde_json::Value {
    serde_json::json!({
        "cursor": d.cursor, "id": d.id, "origin": d.origin, "kind": d.kind, "routes": d.routes,
        "handling": d.handling, "handling_restriction": d.handling_restriction, "grading": d.grading,
        "purposes": d.purposes, "case_ref": d.case_ref, "created_at": timefmt::format_ms(d.created_at_ms),
        "received_at": (d.received_at_ms != 0).then(|| timefmt::format_ms(d.received_at_ms)),
        "expires_at": (d.expires_at_ms != 0).then(|| timefmt::format_ms(d.expires_at_ms)),
        "fields": serde_json::from_str::<serde_json::Value>(&d.fields_json).unwrap_or_default(),
        "withheld": d.withheld.iter().map(|w| serde_json::json!({"field": w.path_or_digest, "by": w.by, "rule": w.rule})).collect::<Vec<_>>(),
        "path": d.path, "skipped": d.skipped,
    })
}

/// `tidewire subscribe`: follows a feed until `--count` or ctrl-c. When the connection to the
/// node is lost (node restarted, network cut), it reconnects with capped backoff and resumes
/// right after the last notification it printed, so nothing is missed or printed twice; the
/// first connection failing is an error, so a wrong URL or identity is reported at once.
pub async fn subscribe(a: SubscribeArgs, json: bool) -> Result<()> {
    let durable = a.durable.clone().unwrap_or_default();
    let mut last: Option<u64> = None;
    let mut n = 0u64;
    let mut backoff = Duration::from_millis(500);
    let mut attempt = 0u32;
    loop {
        let start = match (last.or(a.cursor), a.from_start) {
            (Some(_), _) => pb::subscribe_request::Start::Cursor,
            (None, true) => pb::subscribe_request::Start::Beginning,
            _ => pb::subscribe_request::Start::Now,
        };
        let req = pb::SubscribeRequest {
            routes: a.route.clone(),
            kinds: a.kind.clone(),
            start: start as i32,
            cursor: last.or(a.cursor).unwrap_or(0),
            durable: durable.clone(),
        };
        // An error, and whether trying again may help (the node unreachable) or not (the
        // node refused this client: revoked, not allowed, a bad request).
        let opened = async {
            let channel = a.conn.connect().await.map_err(|e| (e, true))?;
            let mut client = pb::subscriber_client::SubscriberClient::new(channel);
            let response = client.subscribe(req).await.map_err(|s| {
                let retry = crate::client::is_transport(&s);
                (status_error(s), retry)
            })?;
            if attempt == 0
                && let Some(w) = response
                    .metadata()
                    .get(tidewire_node::subscribe::ROUTES_WARNING)
                    .and_then(|v| v.to_str().ok())
            {
                eprintln!("warning: {w}");
            }
            Ok::<_, (anyhow::Error, bool)>((client, response.into_inner()))
        }
        .await;
        let (mut client, mut stream) = match opened {
            Ok(x) => x,
            Err((e, retry)) if attempt == 0 || !retry => return Err(e),
            Err((e, _)) => {
                let why = format!("still cannot reach {} ({e:#})", a.conn.node);
                pause(&why, &mut backoff).await;
                continue;
            }
        };
        if attempt > 0 {
            // On stderr, so also with --json: stdout carries only deliveries.
            eprintln!(
                "reconnected to {}; resuming after cursor {}",
                a.conn.node,
                last.map(|c| c.to_string())
                    .unwrap_or_else(|| "(start)".into())
            );
        } else if !json {
            eprintln!(
                "following {} on {} (ctrl-c to stop)",
                if a.route.is_empty() {
                    ">".to_owned()
                } else {
                    a.route.join(", ")
                },
                a.conn.node
            );
        }
        attempt += 1;
        let lost = loop {
            let d = match stream.next().await {
                Some(Ok(d)) => d,
                // The node ended the stream (shutting down) or the transport failed: resume.
                None => break "the node closed the stream".to_owned(),
                Some(Err(e)) if crate::client::is_transport(&e) => break e.message().to_owned(),
                // The client's access changed on the node: subscribing again follows under the
                // new access (or is refused, if it was revoked).
                Some(Err(e)) if e.code() == tonic::Code::Aborted => break e.message().to_owned(),
                Some(Err(e)) => return Err(status_error(e)),
            };
            backoff = Duration::from_millis(500);
            if d.skipped > 0 && !json {
                eprintln!(
                    "warning: {} notification(s) expired from retention before you read them",
                    d.skipped
                );
            }
            if json {
                println!("{}", delivery_json(&d));
            } else {
                println!(
                    "── {} {} from {}  [{}] {}",
                    timefmt::format_ms(d.created_at_ms),
                    d.kind,
                    d.origin,
                    d.handling,
                    d.id
                );
                println!("   routes   {}", d.routes.join(", "));
                if !d.case_ref.is_empty() {
                    println!(
                        "   case     {}   grading {}   purposes {}",
                        d.case_ref,
                        d.grading,
                        if d.purposes.is_empty() {
                            "none stated".to_owned()
                        } else {
                            d.purposes.join(", ")
                        }
                    );
                }
                if !d.handling_restriction.is_empty() {
                    println!("   restriction: {}", d.handling_restriction);
                }
                let fields: serde_json::Value =
                    serde_json::from_str(&d.fields_json).unwrap_or_default();
                println!(
                    "   fields   {}",
                    serde_json::to_string_pretty(&fields)
                        .unwrap_or_default()
                        .replace('\n', "\n            ")
                );
                for w in &d.withheld {
                    let what = if w.path_or_digest.len() == 64 {
                        format!("{}…", &w.path_or_digest[..12])
                    } else {
                        w.path_or_digest.clone()
                    };
                    println!(
                        "   withheld {what}{}",
                        if w.by.is_empty() {
                            String::new()
                        } else {
                            format!(" by {} ({})", w.by, w.rule)
                        }
                    );
                }
                println!("   path     {}", d.path.join(" -> "));
            }
            if !durable.is_empty() && !a.no_ack {
                client
                    .ack(pb::AckRequest {
                        durable: durable.clone(),
                        cursor: d.cursor,
                    })
                    .await
                    .map_err(status_error)?;
            }
            last = Some(d.cursor);
            n += 1;
            if a.count.is_some_and(|c| n >= c) {
                return Ok(());
            }
        };
        let why = format!("connection to {} lost ({lost})", a.conn.node);
        pause(&why, &mut backoff).await;
    }
}

/// `tidewire unsubscribe`.
#[derive(Debug, Args)]
pub struct UnsubscribeArgs {
    #[command(flatten)]
    pub conn: Conn,
    /// The durable subscription to end.
    #[arg(long)]
    durable: String,
}

/// `tidewire unsubscribe`: ends one of the caller's durable subscriptions.
pub async fn unsubscribe(a: UnsubscribeArgs, json: bool) -> Result<()> {
    let channel = a.conn.connect().await?;
    let r = pb::subscriber_client::SubscriberClient::new(channel)
        .forget(pb::ForgetRequest {
            durable: a.durable.clone(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if json {
        println!(
            "{}",
            serde_json::json!({"durable": a.durable, "node": a.conn.node, "cursor": r.cursor})
        );
    } else {
        println!(
            "ended durable subscription `{}` on {} (it had acknowledged up to cursor {}); the node no longer draws notifications for it",
            a.durable, a.conn.node, r.cursor
        );
    }
    Ok(())
}

/// Says why and how long `subscribe` waits before reconnecting, waits, and doubles the wait
/// (up to 30 s).
async fn pause(why: &str, backoff: &mut Duration) {
    eprintln!("{why}; reconnecting in {:.1}s", backoff.as_secs_f32());
    tokio::time::sleep(*backoff).await;
    *backoff = (*backoff * 2).min(Duration::from_secs(30));
}

/// `tidewire status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub conn: Conn,
}

/// A span of time as an operator reads it: `40 s`, `12 min`, `2 h 14 min`, `3 d 4 h`.
fn human_age(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86_400 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
    }
}

/// When the copy that has waited longest arrived, from a status figure in Unix ms (0: nothing
/// waits, or it cannot be read).
fn waiting_since(since_ms: i64) -> Option<String> {
    (since_ms > 0).then(|| timefmt::format_ms(since_ms))
}

/// How many seconds it has waited since then.
fn waited_s(since_ms: i64) -> Option<i64> {
    (since_ms > 0).then(|| (timefmt::now_ms() - since_ms).max(0) / 1000)
}

/// The same, as the readable output says it: `oldest waiting 2 h 14 min`.
fn oldest_waiting(since_ms: i64) -> Option<String> {
    waited_s(since_ms).map(|s| format!("oldest waiting {}", human_age(s * 1000)))
}

/// `tidewire status`.
pub async fn status(a: StatusArgs, json: bool) -> Result<()> {
    let channel = a.conn.connect().await?;
    let s = pb::admin_client::AdminClient::new(channel)
        .status(pb::StatusRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    // Counters in name order, in both forms, so that two outputs compare line by line.
    let counters: std::collections::BTreeMap<_, _> = s.counters.iter().collect();
    let refused: std::collections::BTreeMap<_, _> = s.refused.iter().collect();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "node": s.node, "country": s.country, "org": s.org, "uptime_s": s.uptime_s, "policy_version": s.policy_version, "policy_number": s.policy_number, "roster_nodes": s.roster_nodes, "roster_sha256": s.roster_sha256, "worker_threads": s.worker_threads,
                "links": s.links.iter().map(|l| serde_json::json!({"peer": l.peer, "up": l.up, "backlog": l.backlog, "last_error": l.last_error, "url": l.address,
                    "oldest_waiting_since": waiting_since(l.oldest_waiting_ms), "oldest_waiting_s": waited_s(l.oldest_waiting_ms)})).collect::<Vec<_>>(),
                "counters": counters, "refused": refused,
                "routes": s.routes.iter().map(|r| serde_json::json!({"node": r.node, "next_hop": r.next_hop, "distance": r.distance})).collect::<Vec<_>>(),
                "queues": s.queues.iter().map(|q| serde_json::json!({"destination": q.destination, "backlog": q.backlog, "next_hop": (!q.next_hop.is_empty()).then_some(&q.next_hop),
                    "oldest_waiting_since": waiting_since(q.oldest_waiting_ms), "oldest_waiting_s": waited_s(q.oldest_waiting_ms)})).collect::<Vec<_>>(),
                "store": s.store.as_ref().map(|st| serde_json::json!({"writable": st.writable, "log_segments": st.log_segments, "log_bytes": st.log_bytes, "since_checkpoint_ms": st.since_checkpoint_ms, "replayed_at_start": st.replayed_at_start, "commits": st.commits, "slow_commits": st.slow_commits, "longest_commit_ms": st.longest_commit_ms, "commit_p99_ms": st.commit_p99_ms})),
            }))?
        );
        return Ok(());
    }
    println!(
        "node {} ({}, {})   up {}s   {} worker thread{}   policy {}",
        s.node,
        s.country,
        s.org,
        s.uptime_s,
        s.worker_threads,
        if s.worker_threads == 1 { "" } else { "s" },
        if s.policy_version.is_empty() {
            "none (deny all)".to_owned()
        } else {
            format!("version {} ({})", s.policy_number, s.policy_version)
        }
    );
    if !s.roster_sha256.is_empty() {
        println!(
            "roster {} node{} ({})",
            s.roster_nodes,
            if s.roster_nodes == 1 { "" } else { "s" },
            s.roster_sha256
        );
    }
    if let Some(st) = &s.store {
        println!(
            "store {}   log {} in {} segment{}   checkpoint {}   replayed {} batch{} at start   commits {} ({} slow, 99% within {} ms, longest {} ms)",
            if st.writable {
                "writable"
            } else {
                "FAILING (publishing and links stopped; see the node's log)"
            },
            human_bytes(st.log_bytes),
            st.log_segments,
            if st.log_segments == 1 { "" } else { "s" },
            match st.since_checkpoint_ms {
                0 => "current".to_owned(),
                ms @ 1..1000 => format!("{ms} ms ago"),
                ms => format!("{:.1} s ago", ms as f64 / 1000.0),
            },
            st.replayed_at_start,
            if st.replayed_at_start == 1 { "" } else { "es" },
            st.commits,
            st.slow_commits,
            st.commit_p99_ms,
            st.longest_commit_ms,
        );
    }
    println!("links");
    for l in &s.links {
        let waiting = match oldest_waiting(l.oldest_waiting_ms) {
            Some(w) if l.backlog > 0 => format!("{w}   "),
            _ => String::new(),
        };
        println!(
            "  {:<12} {:<5} backlog {:<6} {waiting}{}",
            l.peer,
            if l.up { "up" } else { "down" },
            l.backlog,
            if l.up { "" } else { &l.last_error }
        );
    }
    if !s.queues.is_empty() {
        println!("queued");
        for q in &s.queues {
            println!(
                "  {:<12} {:<6} {:<18} {}",
                q.destination,
                q.backlog,
                if q.next_hop.is_empty() {
                    "no route".to_owned()
                } else {
                    format!("via {}", q.next_hop)
                },
                oldest_waiting(q.oldest_waiting_ms).unwrap_or_default()
            );
        }
    }
    println!("routes");
    for r in &s.routes {
        println!(
            "  {:<12} via {:<12} {} hop(s)",
            r.node, r.next_hop, r.distance
        );
    }
    println!("counters");
    for (k, v) in &counters {
        println!("  {k:<16} {v}");
    }
    if !refused.is_empty() {
        println!("refused by reason");
        for (k, v) in &refused {
            println!("  {k:<24} {v}");
        }
    }
    Ok(())
}

/// `tidewire policy …`
#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Check a policy file; errors give line and column.
    Check {
        /// The policy file.
        file: PathBuf,
    },
    /// Show, per field, what a destination would receive of a notification, and why.
    Explain {
        /// The policy file.
        #[arg(long)]
        policy: PathBuf,
        /// The destination: node:ID, role:NAME (a local subscriber) — with --roster for country/org.
        #[arg(long)]
        to: String,
        /// Roster, to know the destination's and origin's country and organisation.
        #[arg(long)]
        roster: Option<PathBuf>,
        /// The origin node (default: the node id in --to's roster, or `local`).
        #[arg(long)]
        origin: Option<String>,
        /// The notification JSON.
        notification: PathBuf,
    },
    /// Apply a policy to a running node (the old one stays if the new one is invalid).
    Apply {
        #[command(flatten)]
        conn: Conn,
        /// The policy file.
        file: PathBuf,
    },
    /// Show the policy in force on a node.
    Show {
        #[command(flatten)]
        conn: Conn,
    },
}

fn party_for(
    spec: &str,
    roster: Option<&Roster>,
    role_node: Option<&RosterNode>,
) -> Result<tidewire_policy::Party> {
    let (scope, value) = spec
        .split_once(':')
        .ok_or_else(|| anyhow::anyhow!("--to `{spec}`: write node:ID, role:NAME or country:CC"))?;
    let fallback = |id: &str| -> Result<tidewire_policy::Party> {
        let (cc, org) = crate::pki::known_centre(id);
        Ok(tidewire_policy::Party::peer(
            id.parse().map_err(|e| anyhow::anyhow!("{e}"))?,
            cc.parse().map_err(|e| anyhow::anyhow!("{e}"))?,
            org,
        ))
    };
    match scope {
        "node" => match roster.and_then(|r| r.get(value)) {
            Some(n) => Ok(tidewire_policy::Party::from_roster(n)),
            None => fallback(value),
        },
        "country" => Ok(tidewire_policy::Party::peer(
            "destination".parse().map_err(|e| anyhow::anyhow!("{e}"))?,
            value.parse().map_err(|e| anyhow::anyhow!("--to: {e}"))?,
            "unknown",
        )),
        "role" => {
            let mut p = match role_node {
                Some(n) => tidewire_policy::Party::from_roster(n),
                None => fallback("local")?,
            };
            p.role = Some(value.to_owned());
            Ok(p)
        }
        other => bail!("--to `{spec}`: unknown scope `{other}`; use node:, country: or role:"),
    }
}

/// `tidewire policy …`
pub async fn policy(c: PolicyCmd, json: bool) -> Result<()> {
    match c {
        PolicyCmd::Check { file } => {
            let p = tidewire_policy::Policy::load(&file).map_err(|e| anyhow::anyhow!("{e}"))?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"ok": true, "file": file, "version": p.version(), "content_hash": p.content_hash(), "rules": p.rule_ids().collect::<Vec<_>>()})
                );
            } else {
                println!(
                    "{}: ok, version {}, {} rule(s): {}  ({})",
                    file.display(),
                    p.version(),
                    p.rule_ids().count(),
                    p.rule_ids().collect::<Vec<_>>().join(", "),
                    p.content_hash()
                );
            }
        }
        PolicyCmd::Explain {
            policy,
            to,
            roster,
            origin,
            notification,
        } => {
            let p = tidewire_policy::Policy::load(&policy).map_err(|e| anyhow::anyhow!("{e}"))?;
            let roster = roster.map(|r| Roster::load(&r)).transpose()?;
            let text = std::fs::read_to_string(&notification)
                .with_context(|| format!("cannot read {}", notification.display()))?;
            let n = parse_notification(&notification.display().to_string(), &text)?;
            let origin_id = origin.unwrap_or_else(|| "local".into());
            let origin_party = party_for(&format!("node:{origin_id}"), roster.as_ref(), None)?;
            let key = SigningKey::generate();
            let env = tidewire_core::envelope::seal(
                &n,
                &origin_party.node,
                &key,
                tidewire_core::NotificationId::generate(),
                1,
                timefmt::now_ms(),
            );
            let view =
                tidewire_core::envelope::inspect(&env).map_err(|e| anyhow::anyhow!("{e}"))?;
            let origin_node = roster.as_ref().and_then(|r| r.get(&origin_id));
            let dest = party_for(&to, roster.as_ref(), origin_node)?;
            if let (Some(r), Some(id)) = (&roster, to.strip_prefix("node:"))
                && r.get(id).is_none()
            {
                eprintln!(
                    "warning: --to `{to}`: the roster has no node `{id}` (it has {}); explained as \
                     a node in country {} of organisation `{}`",
                    r.nodes()
                        .map(|n| n.id.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    dest.country,
                    dest.org
                );
            }
            let d = p.evaluate(&view.header, &origin_party, &view.fields, &dest);
            let ex = tidewire_policy::explain(&d, &view.header, &view.fields);
            if json {
                println!("{}", serde_json::to_string_pretty(&ex.to_json())?);
            } else {
                println!(
                    "policy {} (version {}, {}) for {to}:",
                    policy.display(),
                    p.version(),
                    p.content_hash()
                );
                print!("{}", ex.render_text());
            }
        }
        PolicyCmd::Apply { conn, file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            tidewire_policy::Policy::parse(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let ch = conn.connect().await?;
            let r = pb::admin_client::AdminClient::new(ch)
                .policy_apply(pb::PolicyApplyRequest { policy_toml: text })
                .await
                .map_err(status_error)?
                .into_inner();
            let replaced = (!r.replaced_content_hash.is_empty())
                .then(|| (r.replaced_version, r.replaced_content_hash.clone()));
            if json {
                println!(
                    "{}",
                    serde_json::json!({"version": r.version, "content_hash": r.content_hash, "rules": r.rules,
                        "replaces": replaced.as_ref().map(|(v, h)| serde_json::json!({"version": v, "content_hash": h}))})
                );
            } else {
                println!(
                    "policy version {} ({}) in force on {}: {}",
                    r.version,
                    r.content_hash,
                    conn.node,
                    r.rules.join(", ")
                );
                match &replaced {
                    Some((_, h)) if *h == r.content_hash => {
                        println!("  the same as the policy it replaces: no rule changed")
                    }
                    Some((v, h)) => println!("  replaces version {v} ({h})"),
                    None => {}
                }
            }
            if let Some((v, h)) = &replaced
                && *v >= r.version
                && *h != r.content_hash
            {
                eprintln!(
                    "warning: {}: version {} is not above the version it replaces ({v}); it is in \
                     force, but raise `version` on every change so that versions read in order",
                    file.display(),
                    r.version
                );
            }
        }
        PolicyCmd::Show { conn } => {
            let ch = conn.connect().await?;
            let r = pb::admin_client::AdminClient::new(ch)
                .policy_show(pb::PolicyShowRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            if json {
                println!(
                    "{}",
                    serde_json::json!({"version": r.version, "content_hash": r.content_hash, "rules": r.rules, "policy_toml": r.policy_toml})
                );
            } else {
                println!(
                    "# version {} ({}) on {}\n{}",
                    r.version, r.content_hash, conn.node, r.policy_toml
                );
            }
        }
    }
    Ok(())
}

/// `tidewire consent …`
#[derive(Debug, Subcommand)]
pub enum ConsentCmd {
    /// Consent requests waiting for this node's decision, and past ones.
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Ask to pass a notification this node holds to a destination; outside the origin's
    /// audience an H2 notification is held until the origin consents.
    Ask {
        #[command(flatten)]
        conn: Conn,
        /// Notification id.
        #[arg(long)]
        notification: String,
        /// Destination node id.
        #[arg(long)]
        to: String,
        /// Why (shown to the origin's administrator).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Grant a request.
    Grant {
        #[command(flatten)]
        conn: Conn,
        /// Request id.
        id: String,
    },
    /// Refuse a request.
    Refuse {
        #[command(flatten)]
        conn: Conn,
        /// Request id.
        id: String,
    },
}

fn consent_line(c: &pb::ConsentItem, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::json!({"id": c.id, "notification": c.notification, "requester": c.requester, "destination": c.destination, "state": c.state, "kind": c.kind, "case_ref": c.case_ref, "at": timefmt::format_ms(c.at_ms)})
        );
    } else if c.state == "queued" {
        // Asked for, but no consent was needed: sent on at once.
        println!(
            "{}  {:<8} {} ({} {}) goes to {} now: it is within the origin's audience, or the origin allows onward transfer, so no consent is needed",
            c.id, c.state, c.notification, c.kind, c.case_ref, c.destination
        );
    } else {
        println!(
            "{}  {:<8} {} wants to pass {} ({} {}) to {}",
            c.id, c.state, c.requester, c.notification, c.kind, c.case_ref, c.destination
        );
    }
}

/// `tidewire consent …`
pub async fn consent(c: ConsentCmd, json: bool) -> Result<()> {
    match c {
        ConsentCmd::List { conn } => {
            let r = pb::admin_client::AdminClient::new(conn.connect().await?)
                .consent_list(pb::ConsentListRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            if r.items.is_empty() && !json {
                println!("no consent requests");
            }
            for c in &r.items {
                consent_line(c, json);
            }
        }
        ConsentCmd::Ask {
            conn,
            notification,
            to,
            reason,
        } => {
            let r = pb::admin_client::AdminClient::new(conn.connect().await?)
                .consent_ask(pb::ConsentAskRequest {
                    notification,
                    destination: to,
                    reason,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            consent_line(&r, json);
        }
        ConsentCmd::Grant { conn, id } => decide(conn, id, true, json).await?,
        ConsentCmd::Refuse { conn, id } => decide(conn, id, false, json).await?,
    }
    Ok(())
}

async fn decide(conn: Conn, id: String, grant: bool, json: bool) -> Result<()> {
    let r = pb::admin_client::AdminClient::new(conn.connect().await?)
        .consent_decide(pb::ConsentDecideRequest { id, grant })
        .await
        .map_err(status_error)?
        .into_inner();
    consent_line(&r, json);
    Ok(())
}

/// `tidewire users …` (edits a node's user table file; the node re-reads it on change).
#[derive(Debug, Subcommand)]
pub enum UsersCmd {
    /// Add or replace a user: issue its client certificate and register it.
    Add(crate::pki::IssueOptions),
    /// List users.
    List {
        /// Federation directory.
        #[arg(long)]
        federation: PathBuf,
        /// Node.
        #[arg(long)]
        node: String,
    },
    /// Revoke a user.
    Revoke {
        /// Federation directory.
        #[arg(long)]
        federation: PathBuf,
        /// Node.
        #[arg(long)]
        node: String,
        /// Name.
        #[arg(long)]
        name: String,
    },
}

/// `tidewire users …`
pub async fn users(c: UsersCmd, json: bool) -> Result<()> {
    use tidewire_node::users::UsersFile;
    match c {
        UsersCmd::Add(o) => {
            crate::pki::issue_and_report(&o, json)?;
        }
        UsersCmd::List { federation, node } => {
            let f = UsersFile::load(&federation.join(&node).join("users.toml"))
                .map_err(|e| anyhow::anyhow!(e))?;
            for u in &f.users {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"name": u.name, "role": u.role, "clearance": u.clearance, "routes": u.routes, "revoked": u.revoked})
                    );
                } else {
                    println!(
                        "{:<20} {:<10} {}  {}{}",
                        u.name,
                        u.role,
                        u.clearance,
                        u.routes.join(","),
                        if u.revoked { "  REVOKED" } else { "" }
                    );
                }
            }
        }
        UsersCmd::Revoke {
            federation,
            node,
            name,
        } => {
            let path = federation.join(&node).join("users.toml");
            let mut f = UsersFile::load(&path).map_err(|e| anyhow::anyhow!(e))?;
            let u = f
                .users
                .iter_mut()
                .find(|u| u.name == name)
                .ok_or_else(|| anyhow::anyhow!("no user `{name}` on {node}"))?;
            u.revoked = true;
            f.save(&path).map_err(|e| anyhow::anyhow!(e))?;
            if json {
                println!("{}", serde_json::json!({"name": name, "revoked": true}));
            } else {
                println!("user `{name}` revoked on {node}");
            }
        }
    }
    Ok(())
}

/// `tidewire audit …`
#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// What was disclosed to whom, under which rule.
    Query {
        #[command(flatten)]
        conn: Conn,
        /// Only this notification (id or prefix).
        #[arg(long)]
        notification: Option<String>,
        /// Only this destination (node:accra, accra, user:NAME).
        #[arg(long)]
        destination: Option<String>,
        /// Only this event (transfer, denied, received, delivered, refused, policy_applied, …).
        #[arg(long)]
        event: Option<String>,
        /// Only entries recorded under this policy rule (its id).
        #[arg(long)]
        rule: Option<String>,
        /// Only entries recorded at or after this time (RFC 3339, or a date: 2026-11-01).
        #[arg(long, value_parser = parse_when)]
        since: Option<i64>,
        /// Only entries recorded before this time (RFC 3339, or a date: the start of that day).
        #[arg(long, value_parser = parse_when)]
        until: Option<i64>,
        /// At most this many entries.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Export the whole ledger as JSON lines.
    Export {
        #[command(flatten)]
        conn: Conn,
    },
    /// Check the ledger's hash chain.
    Verify {
        #[command(flatten)]
        conn: Conn,
    },
}

/// `tidewire audit …`
pub async fn audit(c: AuditCmd, json: bool) -> Result<()> {
    let (conn, q, export) = match c {
        AuditCmd::Verify { conn } => {
            let r = pb::admin_client::AdminClient::new(conn.connect().await?)
                .audit_verify(pb::AuditVerifyRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            if json {
                println!(
                    "{}",
                    serde_json::json!({"ok": r.ok, "entries": r.entries, "head": r.head, "problem": r.problem})
                );
            } else if r.ok {
                println!("ledger intact: {} entries, head {}", r.entries, r.head);
            } else {
                println!("LEDGER BROKEN after {} entries: {}", r.entries, r.problem);
            }
            if !r.ok {
                bail!("ledger verification failed: {}", r.problem);
            }
            return Ok(());
        }
        AuditCmd::Query {
            conn,
            notification,
            destination,
            event,
            rule,
            since,
            until,
            limit,
        } => (
            conn,
            pb::AuditQueryRequest {
                notification: notification.unwrap_or_default(),
                destination: destination.unwrap_or_default(),
                event: event.unwrap_or_default(),
                limit,
                after: 0,
                rule: rule.unwrap_or_default(),
                since_ms: since.unwrap_or(0),
                until_ms: until.unwrap_or(0),
            },
            false,
        ),
        AuditCmd::Export { conn } => (
            conn,
            pb::AuditQueryRequest {
                limit: u32::MAX,
                ..Default::default()
            },
            true,
        ),
    };
    // In pages, printed as they come: a whole ledger does not fit one reply (nor memory).
    let mut admin = pb::admin_client::AdminClient::new(conn.connect().await?);
    let mut left = q.limit;
    let mut after = 0;
    let mut printed = 0u64;
    while left > 0 {
        let page = left.min(AUDIT_PAGE);
        let r = admin
            .audit_query(pb::AuditQueryRequest {
                limit: page,
                after,
                ..q.clone()
            })
            .await
            .map_err(status_error)?
            .into_inner();
        let Some(last) = r.entries.last() else { break };
        after = last.seq;
        left -= r.entries.len() as u32;
        printed += r.entries.len() as u64;
        print_audit_entries(&r.entries, json || export);
    }
    if !json && !export && printed == 0 {
        println!("no ledger entries match");
    }
    Ok(())
}

/// Entries per `AuditQuery` page: a reply of about half a megabyte.
const AUDIT_PAGE: u32 = 1000;

/// A ledger entry as the JSON `audit query --json`, `audit export` and `cases show --json` print.
fn audit_entry_json(e: &pb::AuditEntry) -> serde_json::Value {
    serde_json::json!({"seq": e.seq, "at": timefmt::format_ms(e.at_ms), "event": e.event, "notification": e.notification, "destination": e.destination, "policy_version": e.policy_version, "rule": e.rule, "detail": serde_json::from_str::<serde_json::Value>(&e.detail_json).unwrap_or_default(), "hash": e.hash})
}

/// Prints ledger entries as JSON lines, or as a table.
fn print_audit_entries(entries: &[pb::AuditEntry], json: bool) {
    for e in entries {
        if json {
            println!("{}", audit_entry_json(e));
        } else {
            println!(
                "{:>6} {} {:<16} {:<16} {:<18} rule {:<24} policy {}  {}",
                e.seq,
                timefmt::format_ms(e.at_ms),
                e.event,
                short_id(&e.notification),
                e.destination,
                if e.rule.is_empty() { "-" } else { &e.rule },
                if e.policy_version.is_empty() {
                    "-"
                } else {
                    &e.policy_version
                },
                e.detail_json
            );
        }
    }
}

/// Case items per `CasesList` page.
const CASES_PAGE: u32 = 1000;

/// The first 16 hex digits of a notification id, as the readable output shows it: the 12 of its
/// creation time (in milliseconds) and 4 random ones, so that notifications published in the
/// same millisecond still look different. Any prefix finds an id (`cases show`, `ledger
/// --notification`).
pub(crate) fn short_id(id: &str) -> &str {
    id.get(..16).unwrap_or(id)
}

/// Prints case items as JSON lines, or as a table.
fn print_cases(items: &[pb::CaseItem], json: bool) {
    for i in items {
        if json {
            println!(
                "{}",
                serde_json::json!({"id": i.id, "origin": i.origin, "kind": i.kind, "case_ref": i.case_ref, "routes": i.routes, "created_at": timefmt::format_ms(i.created_at_ms), "state": i.state})
            );
        } else {
            println!(
                "{}  {:<10} {:<22} {:<16} {}  {}",
                i.id,
                i.origin,
                i.kind,
                i.case_ref,
                timefmt::format_ms(i.created_at_ms),
                i.state
            );
        }
    }
}

/// `tidewire cases …`
#[derive(Debug, Subcommand)]
pub enum CasesCmd {
    /// Notifications held by a node.
    List {
        #[command(flatten)]
        conn: Conn,
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    /// One notification as held, and its ledger history.
    Show {
        #[command(flatten)]
        conn: Conn,
        /// Notification id (or prefix).
        id: String,
    },
}

/// `tidewire cases …`
pub async fn cases(c: CasesCmd, json: bool) -> Result<()> {
    match c {
        CasesCmd::List { conn, limit } => {
            // In pages, printed as they come, like the ledger.
            let mut admin = pb::admin_client::AdminClient::new(conn.connect().await?);
            let mut left = limit.max(1);
            let mut after = String::new();
            while left > 0 {
                let r = admin
                    .cases_list(pb::CasesListRequest {
                        limit: left.min(CASES_PAGE),
                        after: std::mem::take(&mut after),
                        ..Default::default()
                    })
                    .await
                    .map_err(status_error)?
                    .into_inner();
                left = left.saturating_sub(r.items.len() as u32);
                print_cases(&r.items, json);
                // A reply may be empty and still go on (the node stopped at its scan budget).
                if r.next.is_empty() {
                    break;
                }
                after = r.next;
            }
        }
        CasesCmd::Show { conn, id } => {
            let mut admin = pb::admin_client::AdminClient::new(conn.connect().await?);
            let r = admin
                .cases_list(pb::CasesListRequest {
                    limit: 0,
                    id_prefix: id.clone(),
                    ..Default::default()
                })
                .await
                .map_err(status_error)?
                .into_inner();
            let items: Vec<_> = r.items.iter().collect();
            let history = admin
                .audit_query(pb::AuditQueryRequest {
                    notification: id.clone(),
                    limit: 1000,
                    ..Default::default()
                })
                .await
                .map_err(status_error)?
                .into_inner();
            // Recalled, expired or past retention: no copy, but the ledger still says what
            // happened to it.
            if items.is_empty() && history.entries.is_empty() {
                bail!(
                    "no notification `{id}` is held by {}, and its ledger has no entry for it",
                    conn.node
                );
            }
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "copies": items.iter().map(|i| serde_json::json!({"id": i.id, "origin": i.origin, "kind": i.kind, "case_ref": i.case_ref, "routes": i.routes, "state": i.state})).collect::<Vec<_>>(),
                        "history": history.entries.iter().map(audit_entry_json).collect::<Vec<_>>(),
                    })
                );
            } else {
                if items.is_empty() {
                    println!(
                        "no copy of `{id}` is held by {} now (recalled, expired or past \
                         retention); its ledger entries:",
                        conn.node
                    );
                }
                for i in &items {
                    println!(
                        "{} {} from {} case {} routes {} ({})",
                        i.id,
                        i.kind,
                        i.origin,
                        i.case_ref,
                        i.routes.join(","),
                        i.state
                    );
                }
                println!("history");
                for e in &history.entries {
                    println!(
                        "  {} {:<16} {:<18} rule {:<22} {}",
                        timefmt::format_ms(e.at_ms),
                        e.event,
                        e.destination,
                        if e.rule.is_empty() { "-" } else { &e.rule },
                        if e.detail_json == "null" {
                            ""
                        } else {
                            &e.detail_json
                        }
                    );
                }
            }
        }
    }
    Ok(())
}

/// `tidewire authorities`.
#[derive(Debug, Args)]
pub struct AuthoritiesArgs {
    /// A federation directory (its roster and federation.json).
    #[arg(long)]
    federation: Option<PathBuf>,
    /// Or just a roster file.
    #[arg(long)]
    roster: Option<PathBuf>,
}

/// `tidewire authorities`: the competent authorities (nodes) of the federation.
pub fn authorities(a: AuthoritiesArgs, json: bool) -> Result<()> {
    let roster_path = match (&a.roster, &a.federation) {
        (Some(r), _) => r.clone(),
        (None, Some(f)) => f.join("roster.toml"),
        (None, None) => bail!("give --federation DIR or --roster FILE"),
    };
    let roster = Roster::load(&roster_path)?;
    let fed = a
        .federation
        .as_ref()
        .and_then(|f| crate::pki::Federation::load(f).ok());
    for n in roster.nodes() {
        let url = fed
            .as_ref()
            .and_then(|f| f.nodes.get(n.id.as_str()).map(|x| x.client_url.clone()))
            .unwrap_or_default();
        if json {
            println!(
                "{}",
                serde_json::json!({"node": n.id.as_str(), "country": n.country.as_str(), "org": n.org, "keys": n.keys.iter().map(|k| serde_json::json!({"key_id": k.key_id, "window": k.window()})).collect::<Vec<_>>(), "url": url})
            );
        } else {
            println!(
                "{:<12} {}  {:<12} keys {}  {}",
                n.id,
                n.country,
                n.org,
                n.keys
                    .iter()
                    .map(|k| k.key_id.clone())
                    .collect::<Vec<_>>()
                    .join(","),
                url
            );
        }
    }
    Ok(())
}

/// `tidewire bench …`
#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// Relay throughput and publish→delivered latency over 1 or 2 mTLS hops.
    Relay(crate::demo::BenchArgs),
    /// Fan-out of each publish to many local subscribers, optionally with one stalled subscriber.
    Fanout(crate::demo::FanoutArgs),
}

/// `tidewire bench …`
pub async fn bench(c: BenchCmd, json: bool) -> Result<()> {
    match c {
        BenchCmd::Relay(a) => crate::demo::bench_relay(a, json).await,
        BenchCmd::Fanout(a) => crate::demo::bench_fanout(a, json).await,
    }
}

/// `bytes` for a person: B, KiB, MiB or GiB, one decimal above bytes.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 3] = ["KiB", "MiB", "GiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::{human_age, human_bytes, key_line, outcome_unknown, short_id};

    #[test]
    fn ages_read_in_the_largest_units_that_fit() {
        assert_eq!(human_age(-5), "0 s");
        assert_eq!(human_age(59_999), "59 s");
        assert_eq!(human_age(60_000), "1 min");
        assert_eq!(human_age(3_599_000), "59 min");
        assert_eq!(human_age((2 * 3600 + 14 * 60) * 1000), "2 h 14 min");
        assert_eq!(human_age((3 * 86_400 + 4 * 3600 + 59) * 1000), "3 d 4 h");
    }

    #[test]
    fn short_ids_of_one_millisecond_differ_and_find_their_notification() {
        let t = 1_795_000_000_000;
        let ids: Vec<String> = (0..16)
            .map(|_| tidewire_core::NotificationId::generate_at(t).to_string())
            .collect();
        let short: std::collections::HashSet<&str> = ids.iter().map(|i| short_id(i)).collect();
        // 16 random bits each: 16 ids of one millisecond collide with a chance of about 0.2 %.
        assert!(short.len() >= 15, "{short:?}");
        assert!(
            ids.iter()
                .all(|i| i.starts_with(short_id(i)) && short_id(i).len() == 16)
        );
        assert_eq!(short_id("abc"), "abc");
    }

    #[test]
    fn human_bytes_picks_the_unit_a_person_reads() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(64 * 1024 * 1024), "64.0 MiB");
        assert_eq!(human_bytes(3 << 40), "3072.0 GiB");
    }

    #[test]
    fn a_publish_cut_off_under_way_has_an_unknown_outcome_a_refused_or_unsent_one_not() {
        use tonic::{Code, Status};
        assert!(outcome_unknown(&Status::cancelled("the stream was reset")));
        assert!(outcome_unknown(&Status::unknown(
            "h2 protocol error: error reading a body from connection"
        )));
        assert!(!outcome_unknown(&Status::unavailable("connection refused")));
        assert!(!outcome_unknown(&Status::invalid_argument(
            "`kind` is missing"
        )));
        assert!(!outcome_unknown(&Status::new(
            Code::PermissionDenied,
            "route"
        )));
    }

    #[test]
    fn a_bad_field_is_placed_on_the_line_of_its_top_level_key() {
        let text = "\n{\n  \"kind\": \"alert\",\n  \"fields\": {\"handling\": \"x\", \"a\\\"b\": [1]},\n  \"handling\": \"H9\",\n  \"routes\": [\n    \"Bad..route\"\n  ]\n}\n";
        assert_eq!(
            key_line(text, "handling"),
            Some(5),
            "not the one inside `fields`"
        );
        assert_eq!(key_line(text, "routes[0]"), Some(6));
        assert_eq!(key_line(text, "kind"), Some(3));
        assert_eq!(key_line(text, "audience"), None, "absent");
        assert_eq!(
            key_line(r#"{"handling": "H9"}"#, "handling"),
            None,
            "one line"
        );
    }
}
