//! Crashes of the real binary. Proves invariant 5 ("acknowledged means durable"): two `tidewire
//! node run` processes `a – b` from `tidewire pki init`; a client streams publishes to `a`, and
//! `a` is killed with SIGKILL in the middle of the stream. After `a` restarts on the same data
//! directory, every publish `a` had acknowledged reaches `b` exactly once, and `a`'s disclosure
//! ledger still verifies. And a liaison officer's `tidewire subscribe` rides out its node being
//! killed and restarted without missing or repeating a notification. Also, with the same real
//! processes, what SIGHUP does to a running node.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures::StreamExt;
use tidewire::client::Conn;
use tidewire_proto::v1 as pb;

/// How many acknowledged publishes to wait for before the kill.
const BEFORE_KILL: usize = 300;

/// A node process, killed (SIGKILL) and reaped when dropped, so a failing test leaves nothing
/// running. If the test is failing, the node's log is printed.
struct NodeProcess {
    name: String,
    child: Child,
    log: PathBuf,
}

impl NodeProcess {
    fn start(dir: &Path, name: &str, run: u32) -> Result<NodeProcess> {
        let log = dir.join(format!("{name}.{run}.log"));
        let file = std::fs::File::create(&log)?;
        let child = Command::new(env!("CARGO_BIN_EXE_tidewire"))
            .args(["node", "run", "--config"])
            .arg(dir.join(name).join("node.toml"))
            .env_clear()
            .env("TIDEWIRE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .context("spawning tidewire node run")?;
        Ok(NodeProcess {
            name: name.to_owned(),
            child,
            log,
        })
    }

    /// SIGKILL (what `Child::kill` sends on Unix), then reap.
    /// Sends the node SIGHUP (re-read links, roster and policy).
    fn sighup(&self) -> Result<()> {
        let hup = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()?;
        ensure!(hup.success(), "kill -HUP failed");
        Ok(())
    }

    fn kill_9(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            eprintln!(
                "--- last lines of node {} ({}) ---",
                self.name,
                self.log.display()
            );
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

fn conn(dir: &Path, node: &str) -> Conn {
    Conn {
        node: node.to_owned(),
        federation: Some(dir.to_owned()),
        identity: None,
    }
}

/// Polls `probe` every 50 ms until it succeeds or `within` passes.
async fn eventually<T>(
    within: Duration,
    what: &str,
    mut probe: impl AsyncFnMut() -> Result<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        let last = match tokio::time::timeout(within, probe()).await {
            Ok(Ok(v)) => return v,
            Ok(Err(e)) => format!("{e:#}"),
            Err(_) => "probe timed out".into(),
        };
        assert!(
            Instant::now() < deadline,
            "not within {within:?}: {what}; last observation: {last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn status(dir: &Path, node: &str) -> Result<pb::StatusReply> {
    let ch = conn(dir, node).connect().await?;
    Ok(pb::admin_client::AdminClient::new(ch)
        .status(pb::StatusRequest {})
        .await?
        .into_inner())
}

async fn link_up(dir: &Path, node: &str, peer: &str) -> Result<()> {
    let s = status(dir, node).await?;
    ensure!(
        s.links.iter().any(|l| l.peer == peer && l.up),
        "{node}'s links: {:?}",
        s.links
    );
    Ok(())
}

fn notification(i: u64) -> String {
    serde_json::json!({
        "kind": "alert", "case_ref": format!("CRASH-{i:06}"),
        "routes": ["atlantic.west-africa"], "handling": "H1",
        "grading": {"source": "B", "information": "2"}, "audience": ["node:b"],
        "fields": {"vessel": {"name": "MV Example", "imo": "9387421"}, "narrative": "crash test"}
    })
    .to_string()
}

/// Streams publishes until the stream breaks, recording each id acknowledged (a reply without
/// error: the node answers only once the notification is on disk).
async fn stream_publishes(
    channel: tonic::transport::Channel,
    acked: Arc<Mutex<Vec<String>>>,
) -> Result<()> {
    let requests = futures::stream::iter(0u64..1_000_000).map(|i| pb::PublishRequest {
        notification_json: notification(i),
        idempotency_key: String::new(),
    });
    let mut replies = pb::publisher_client::PublisherClient::new(channel)
        .publish_stream(requests)
        .await?
        .into_inner();
    while let Some(r) = replies.next().await {
        let r = r?;
        if r.error_code != 0 {
            bail!("publish refused: {}", r.error_message);
        }
        acked.lock().expect("lock").push(r.id);
    }
    bail!("the stream ended before the kill")
}

/// `tidewire pki init` for `a – b` into `tmp/fed`.
fn pki_init(tmp: &Path) -> Result<PathBuf> {
    let dir = tmp.join("fed");
    let init = Command::new(env!("CARGO_BIN_EXE_tidewire"))
        .args(["pki", "init", "--nodes", "a,b", "--links", "a:b", "--out"])
        .arg(&dir)
        .env_clear()
        .output()?;
    ensure!(
        init.status.success(),
        "pki init failed: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    Ok(dir)
}

/// The ids `node` has recorded as received, one per `received` ledger entry.
async fn received_ids(dir: &Path, node: &str) -> Result<Vec<String>> {
    audit_ids(dir, node, "received").await
}

/// The notifications of `node`'s ledger entries for `event`, oldest first.
async fn audit_ids(dir: &Path, node: &str, event: &str) -> Result<Vec<String>> {
    let ch = conn(dir, node).connect().await?;
    Ok(pb::admin_client::AdminClient::new(ch)
        .audit_query(pb::AuditQueryRequest {
            event: event.into(),
            limit: u32::MAX,
            ..Default::default()
        })
        .await?
        .into_inner()
        .entries
        .into_iter()
        .map(|e| e.notification)
        .collect())
}

/// `a – b` from `pki init`, both running as real processes, their link up.
async fn running_pair(tmp: &Path) -> Result<(PathBuf, NodeProcess, NodeProcess)> {
    let dir = pki_init(tmp)?;
    let a = NodeProcess::start(&dir, "a", 1)?;
    let b = NodeProcess::start(&dir, "b", 1)?;
    eventually(
        Duration::from_secs(20),
        "the a–b link comes up",
        async || link_up(&dir, "a", "b").await,
    )
    .await;
    Ok((dir, a, b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_no_acknowledged_publish() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (dir, mut a, _b) = running_pair(tmp.path()).await?;

    // Stream publishes to a, recording every id a acknowledges (a reply without error).
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let publisher = tokio::spawn(stream_publishes(
        conn(&dir, "a").connect().await?,
        acked.clone(),
    ));
    eventually(
        Duration::from_secs(20),
        "a acknowledges a first run of publishes",
        async || {
            let n = acked.lock().expect("lock").len();
            ensure!(n >= BEFORE_KILL, "{n} acknowledged so far");
            Ok(())
        },
    )
    .await;
    a.kill_9()?;
    // The stream breaks with the process; every reply that arrived was sent before the kill.
    let ended = tokio::time::timeout(Duration::from_secs(10), publisher)
        .await
        .context("the publish stream did not notice the kill")??;
    let err = ended.expect_err("the stream cannot succeed once a is dead");
    let acked = acked.lock().expect("lock").clone();
    println!(
        "a killed after {} acknowledged publishes; the stream ended with: {err:#}",
        acked.len()
    );

    let _a = NodeProcess::start(&dir, "a", 2)?;
    eventually(
        Duration::from_secs(20),
        "a restarts and relinks with b",
        async || link_up(&dir, "a", "b").await,
    )
    .await;
    let received = eventually(
        Duration::from_secs(20),
        "b receives every acknowledged publish",
        async || {
            let ids = received_ids(&dir, "b").await?;
            let missing = acked.iter().filter(|id| !ids.contains(id)).count();
            ensure!(
                missing == 0,
                "{missing} of {} still missing at b",
                acked.len()
            );
            Ok(ids)
        },
    )
    .await;
    let mut once = std::collections::BTreeMap::new();
    for id in &received {
        *once.entry(id).or_insert(0) += 1;
    }
    let twice = once.values().filter(|n| **n > 1).count();
    assert_eq!(
        twice, 0,
        "{twice} notifications delivered more than once at b"
    );

    let ch = conn(&dir, "a").connect().await?;
    let verify = pb::admin_client::AdminClient::new(ch)
        .audit_verify(pb::AuditVerifyRequest {})
        .await?
        .into_inner();
    assert!(verify.ok, "a's ledger after kill -9: {}", verify.problem);
    Ok(())
}

/// `tidewire --json publish --node a --file BATCH --federation DIR`, killed if dropped.
fn publish_file_to_a(batch: &Path, dir: &Path) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_tidewire"));
    c.args(["--json", "publish", "--node", "a", "--file"])
        .arg(batch)
        .arg("--federation")
        .arg(dir)
        .env_clear()
        .stdin(Stdio::null())
        .kill_on_drop(true);
    c
}

/// The same crash, as an operator sees it: `tidewire publish --file batch.jsonl` streaming to
/// `a` when `a` is killed. The command fails, says how many were acknowledged and from which
/// line to publish again; exactly the ids it printed reach `b`, each once, after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publish_command_killed_mid_file_says_what_was_acknowledged_and_where_to_resume()
-> Result<()> {
    use tokio::io::AsyncBufReadExt;

    const TOTAL: u64 = 8_000;
    let tmp = tempfile::tempdir()?;
    let (dir, mut a, _b) = running_pair(tmp.path()).await?;
    let batch = tmp.path().join("batch.jsonl");
    let lines: Vec<String> = (0..TOTAL).map(notification).collect();
    std::fs::write(&batch, lines.join("\n") + "\n")?;

    let mut publish = publish_file_to_a(&batch, &dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning tidewire publish")?;
    let mut out = tokio::io::BufReader::new(publish.stdout.take().context("stdout")?).lines();
    let mut printed = Vec::new();
    while printed.len() < BEFORE_KILL {
        let line = tokio::time::timeout(Duration::from_secs(30), out.next_line())
            .await
            .context("no acknowledgement printed for 30 s")??
            .context("tidewire publish ended before the kill")?;
        let r: serde_json::Value = serde_json::from_str(&line)?;
        printed.push(r["id"].as_str().context("an id")?.to_owned());
    }
    a.kill_9()?;
    while let Some(line) = tokio::time::timeout(Duration::from_secs(30), out.next_line())
        .await
        .context("tidewire publish did not notice the kill")??
    {
        let r: serde_json::Value = serde_json::from_str(&line)?;
        printed.push(r["id"].as_str().context("an id")?.to_owned());
    }
    let ended = tokio::time::timeout(Duration::from_secs(30), publish.wait_with_output())
        .await
        .context("tidewire publish did not exit")??;
    let stderr = String::from_utf8_lossy(&ended.stderr);
    assert!(!ended.status.success(), "a publish cut short must fail");
    let n = printed.len();
    assert!(
        (n as u64) < TOTAL,
        "the whole file went through before the kill"
    );
    assert!(
        stderr.contains(&format!("{n} of {TOTAL} were acknowledged"))
            && stderr.contains(&format!("from {}:{} on", batch.display(), n + 1))
            && stderr.contains("publish those again")
            && stderr.contains("running the same command again is safe"),
        "says how many were acknowledged and where to resume: {stderr}"
    );

    let _a = NodeProcess::start(&dir, "a", 2)?;
    eventually(
        Duration::from_secs(30),
        "b receives every id the command printed",
        async || {
            let ids = received_ids(&dir, "b").await?;
            let got: std::collections::BTreeMap<&str, usize> =
                ids.iter().fold(Default::default(), |mut m, id| {
                    *m.entry(id.as_str()).or_default() += 1;
                    m
                });
            let missing = printed
                .iter()
                .filter(|id| !got.contains_key(id.as_str()))
                .count();
            ensure!(missing == 0, "{missing} of {n} still missing at b");
            ensure!(
                got.values().all(|c| *c == 1),
                "a notification arrived twice"
            );
            Ok(())
        },
    )
    .await;

    // As the message says: the same command again. What a acknowledged (and what it made
    // durable without acknowledging it before the kill) comes back as already published; the
    // rest is published; every line of the file reaches b exactly once.
    let again = publish_file_to_a(&batch, &dir)
        .output()
        .await
        .context("running tidewire publish again")?;
    ensure!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let replies: Vec<serde_json::Value> = String::from_utf8_lossy(&again.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(replies.len() as u64, TOTAL);
    for (i, r) in replies.iter().take(n).enumerate() {
        assert_eq!(r["duplicate"], true, "line {}: {r}", i + 1);
        assert_eq!(
            r["id"],
            printed[i].as_str(),
            "line {}: the id it had",
            i + 1
        );
    }
    eventually(
        Duration::from_secs(60),
        "b receives every line of the file, each once",
        async || {
            let ids = received_ids(&dir, "b").await?;
            let distinct: std::collections::BTreeSet<&String> = ids.iter().collect();
            ensure!(
                distinct.len() == ids.len(),
                "{} arrived twice",
                ids.len() - distinct.len()
            );
            ensure!(
                ids.len() as u64 == TOTAL,
                "{} of {TOTAL} at b so far",
                ids.len()
            );
            Ok(())
        },
    )
    .await;
    Ok(())
}

/// Publishes `notification(i)` at `a` (unary); returns its id.
async fn publish_one(dir: &Path, i: u64) -> Result<String> {
    let ch = conn(dir, "a").connect().await?;
    let r = pb::publisher_client::PublisherClient::new(ch)
        .publish(pb::PublishRequest {
            notification_json: notification(i),
            idempotency_key: format!("reconnect-{i}"),
        })
        .await?
        .into_inner();
    Ok(r.id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subscribe_command_rides_out_its_node_being_killed_and_restarted() -> Result<()> {
    use tokio::io::AsyncBufReadExt;

    let tmp = tempfile::tempdir()?;
    let (dir, _a, mut b) = running_pair(tmp.path()).await?;

    // The officer follows b's feed from the start of retained data, six notifications in all.
    let officer_log = std::fs::File::create(tmp.path().join("subscribe.err"))?;
    let mut officer = tokio::process::Command::new(env!("CARGO_BIN_EXE_tidewire"))
        .args([
            "--json",
            "subscribe",
            "--node",
            "b",
            "--from-start",
            "--count",
            "6",
        ])
        .arg("--federation")
        .arg(&dir)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(officer_log)
        .kill_on_drop(true)
        .spawn()
        .context("spawning tidewire subscribe")?;
    let mut lines = tokio::io::BufReader::new(officer.stdout.take().context("stdout")?).lines();
    let mut seen = Vec::new();
    let mut read = async |seen: &mut Vec<String>, n: usize| -> Result<()> {
        for _ in 0..n {
            let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
                .await
                .context("no delivery printed for 30 s")??
                .context("tidewire subscribe exited early")?;
            let d: serde_json::Value = serde_json::from_str(&line)?;
            seen.push(d["id"].as_str().unwrap_or_default().to_owned());
        }
        Ok(())
    };

    let mut published = Vec::new();
    for i in 0..3 {
        published.push(publish_one(&dir, i).await?);
    }
    read(&mut seen, 3).await?;

    // b dies without warning and comes back on the same data directory.
    b.kill_9()?;
    let _b = NodeProcess::start(&dir, "b", 2)?;
    eventually(
        Duration::from_secs(20),
        "b restarts and relinks with a",
        async || link_up(&dir, "a", "b").await,
    )
    .await;
    for i in 3..6 {
        published.push(publish_one(&dir, i).await?);
    }
    read(&mut seen, 3).await?;

    let status = tokio::time::timeout(Duration::from_secs(10), officer.wait())
        .await
        .context("tidewire subscribe did not stop after --count")??;
    let err = std::fs::read_to_string(tmp.path().join("subscribe.err"))?;
    assert!(status.success(), "tidewire subscribe failed: {err}");
    assert!(
        err.contains("reconnected to b"),
        "the command did not report its reconnection: {err}"
    );
    assert_eq!(seen, published, "every notification once, in order");
    Ok(())
}

/// Publishes one notification for `audience` at `node`; returns the reply.
async fn publish_for(dir: &Path, node: &str, audience: &str) -> Result<pb::PublishReply> {
    let json = serde_json::json!({
        "kind": "alert", "routes": ["mediterranean.west"], "handling": "H0",
        "audience": [audience], "fields": {"narrative": "go-fast boat sighted off Almeria"}
    });
    let ch = conn(dir, node).connect().await?;
    Ok(pb::publisher_client::PublisherClient::new(ch)
        .publish(pb::PublishRequest {
            notification_json: json.to_string(),
            idempotency_key: String::new(),
        })
        .await?
        .into_inner())
}

/// SIGHUP makes a running node read its roster again: a centre added to the roster (CeCLAD-M,
/// with `tidewire keys generate --roster`) is a destination from then on, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_puts_a_changed_roster_in_force_without_a_restart() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (dir, a, _b) = running_pair(tmp.path()).await?;
    let first = status(&dir, "a").await?;
    assert_eq!(first.roster_nodes, 2, "{first:?}");
    assert!(first.roster_sha256.starts_with("sha256:"), "{first:?}");
    let before = publish_for(&dir, "a", "node:ceclad-m").await?;
    assert!(before.destinations.is_empty(), "{before:?}");
    assert_eq!(before.unmatched_audience, ["node:ceclad-m"], "{before:?}");

    let added = Command::new(env!("CARGO_BIN_EXE_tidewire"))
        .args([
            "keys",
            "generate",
            "--node",
            "ceclad-m",
            "--country",
            "FR",
            "--out",
        ])
        .arg(dir.join("ceclad-m"))
        .arg("--roster")
        .arg(dir.join("roster.toml"))
        .env_clear()
        .output()?;
    ensure!(
        added.status.success(),
        "keys generate: {}",
        String::from_utf8_lossy(&added.stderr)
    );
    a.sighup()?;
    let after = eventually(
        Duration::from_secs(10),
        "a publish at a goes to ceclad-m once a has the new roster",
        async || {
            let r = publish_for(&dir, "a", "node:ceclad-m").await?;
            ensure!(r.destinations == ["ceclad-m"], "{r:?}");
            Ok(r)
        },
    )
    .await;
    assert!(after.unmatched_audience.is_empty(), "{after:?}");
    // `status` shows the roster in force.
    let now = status(&dir, "a").await?;
    assert_eq!(now.roster_nodes, 3, "{now:?}");
    assert_ne!(now.roster_sha256, first.roster_sha256);
    // And a is still the node it was: its link to b comes back under the new roster.
    eventually(
        Duration::from_secs(20),
        "the a–b link is up again",
        async || link_up(&dir, "a", "b").await,
    )
    .await;
    Ok(())
}

/// A centre joins a running federation: `tidewire pki add-node` writes it and its roster entry,
/// SIGHUP gives the running nodes the new roster, and the new node, started as it is, links up
/// and exchanges notifications both ways without any other node restarting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_centre_added_with_pki_add_node_joins_the_running_federation_on_sighup() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (dir, a, b) = running_pair(tmp.path()).await?;
    let added = Command::new(env!("CARGO_BIN_EXE_tidewire"))
        .args(["--json", "pki", "add-node", "--node", "c", "--links", "c:a"])
        .args(["--country", "FR", "--federation"])
        .arg(&dir)
        .env_clear()
        .output()?;
    ensure!(
        added.status.success(),
        "pki add-node: {}",
        String::from_utf8_lossy(&added.stderr)
    );
    let out: serde_json::Value = serde_json::from_slice(&added.stdout)?;
    assert_eq!(out["links"], serde_json::json!(["a"]), "{out}");
    let a_config = std::fs::read_to_string(dir.join("a/node.toml"))?;
    assert!(
        a_config.contains("peer = \"c\""),
        "a gets a link back: {a_config}"
    );
    for n in [&a, &b] {
        n.sighup()?;
    }
    for n in ["a", "b"] {
        eventually(
            Duration::from_secs(10),
            "the running nodes hold the new roster",
            async || {
                let s = status(&dir, n).await?;
                ensure!(s.roster_nodes == 3, "{n}: {} nodes", s.roster_nodes);
                Ok(())
            },
        )
        .await;
    }
    let _c = NodeProcess::start(&dir, "c", 1)?;
    eventually(
        Duration::from_secs(20),
        "c's link to a comes up",
        async || link_up(&dir, "c", "a").await,
    )
    .await;
    let from_c = publish_for(&dir, "c", "node:b").await?;
    assert_eq!(from_c.destinations, ["b"], "{from_c:?}");
    let to_c = publish_for(&dir, "a", "node:c").await?;
    assert_eq!(to_c.destinations, ["c"], "{to_c:?}");
    eventually(
        Duration::from_secs(20),
        "c's notification at b (through a) and a's at c",
        async || {
            ensure!(received_ids(&dir, "b").await?.contains(&from_c.id));
            ensure!(received_ids(&dir, "c").await?.contains(&to_c.id));
            Ok(())
        },
    )
    .await;
    Ok(())
}

/// A centre leaves a running federation: it goes from the roster and from its peer's
/// `[[link]]`s, and one SIGHUP puts both in force. The peer checks the new roster against the
/// links it will run with (not those it started with), closes the link, and drops what it had
/// queued for the departed centre, on its ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_centre_that_leaves_is_let_go_on_sighup_with_its_queued_copies_dropped() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (dir, a, mut b) = running_pair(tmp.path()).await?;
    b.kill_9()?;
    let mut queued = Vec::new();
    for _ in 0..2 {
        let r = publish_for(&dir, "a", "node:b").await?;
        assert_eq!(r.destinations, ["b"], "{r:?}");
        queued.push(r.id);
    }

    let roster_path = dir.join("roster.toml");
    let mut roster = tidewire_core::keys::Roster::load(&roster_path)?;
    roster.remove("b").context("b is in the roster")?;
    std::fs::write(&roster_path, roster.to_toml())?;
    let config = dir.join("a/node.toml");
    let text = std::fs::read_to_string(&config)?;
    let start = text.find("[[link]]").context("a's [[link]] to b")?;
    let end = text[start..]
        .find("url =")
        .and_then(|u| text[start + u..].find('\n').map(|e| start + u + e + 1))
        .context("the link's url")?;
    std::fs::write(&config, format!("{}{}", &text[..start], &text[end..]))?;

    a.sighup()?;
    let now = eventually(
        Duration::from_secs(10),
        "a lets b go: roster, link and queue",
        async || {
            let s = status(&dir, "a").await?;
            ensure!(s.roster_nodes == 1, "roster of {} nodes", s.roster_nodes);
            ensure!(s.links.is_empty(), "links {:?}", s.links);
            let dropped = audit_ids(&dir, "a", "dropped").await?;
            ensure!(dropped == queued, "dropped {dropped:?}, queued {queued:?}");
            Ok(s)
        },
    )
    .await;
    assert_eq!(
        now.counters.get("published"),
        Some(&2),
        "{:?}",
        now.counters
    );
    // Publishing for b now finds nobody: b is no longer a destination.
    let after = publish_for(&dir, "a", "node:b").await?;
    assert!(after.destinations.is_empty(), "{after:?}");
    assert_eq!(after.unmatched_audience, ["node:b"], "{after:?}");
    Ok(())
}
