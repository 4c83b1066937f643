//! The command line as a user runs it, against real nodes over mTLS: `publish`, `status` and
//! `audit`, in their human and `--json` forms, and their errors. Each test runs the real
//! `tidewire` binary with `--federation DIR`, as the README shows.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use tidewire::demo::LocalFederation;

/// What a run of the binary left: exit success, stdout, stderr.
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs `tidewire ARGS` with `--federation` pointing at `f`'s directory.
async fn tidewire(f: &LocalFederation, args: &[&str]) -> Run {
    tidewire_fed(f, args, "").await
}

/// [`tidewire`] with `input` on its standard input.
async fn tidewire_fed(f: &LocalFederation, args: &[&str], input: &str) -> Run {
    use tokio::io::AsyncWriteExt;

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tidewire"))
        .args(args)
        .arg("--federation")
        .arg(&f.dir)
        .env_clear()
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running tidewire");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(input.as_bytes())
        .await
        .expect("writing stdin");
    drop(stdin);
    let out = child.wait_with_output().await.expect("tidewire ends");
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The README's example notification (`docs/examples/notification.json`): for accra and
/// Senegal (dakar).
fn readme_example() -> serde_json::Value {
    serde_json::from_str(include_str!("../../../docs/examples/notification.json"))
        .expect("docs/examples/notification.json is JSON")
}

/// Publishes the README's example at maoc-n and waits until accra has received it.
async fn published_at_maoc_n_and_received_at_accra(f: &LocalFederation) -> String {
    let id = publish(f, "maoc-n", &readme_example()).await;
    wait_for(Duration::from_secs(20), "accra receives it", async || {
        has(f, "accra", &id, "received").await
    })
    .await;
    id
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("writing a test file");
    path.display().to_string()
}

/// The replies of a `--json publish` of several notifications, one JSON line each, every one
/// queued for accra and dakar.
fn replies_queued_for_accra_and_dakar(run: &Run) -> Vec<serde_json::Value> {
    run.stdout
        .lines()
        .map(|l| {
            let reply: serde_json::Value = serde_json::from_str(l).expect("a JSON line each");
            assert_eq!(
                reply["destinations"],
                serde_json::json!(["accra", "dakar"]),
                "{reply}"
            );
            reply
        })
        .collect()
}

/// Waits until accra and dakar have both received notification `id`.
async fn received_at_accra_and_dakar(f: &LocalFederation, id: &str) {
    wait_for(
        Duration::from_secs(20),
        "accra and dakar to receive what maoc-n published",
        async || has(f, "accra", id, "received").await && has(f, "dakar", id, "received").await,
    )
    .await;
}

/// The README's JSON-lines example goes as one stream, each line published and delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_examples_file_of_json_lines_is_published_and_delivered() {
    let (_tmp, f) = line().await;
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/examples/notifications.jsonl"
    );
    let run = tidewire(
        &f,
        &["--json", "publish", "--node", "maoc-n", "--file", file],
    )
    .await;
    assert!(run.ok, "publish failed: {}", run.stderr);
    let ids: Vec<String> = replies_queued_for_accra_and_dakar(&run)
        .iter()
        .map(|r| r["id"].as_str().expect("an id").to_owned())
        .collect();
    assert_eq!(ids.len(), 3, "one reply per line: {}", run.stdout);
    for id in &ids {
        received_at_accra_and_dakar(&f, id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_prints_the_id_and_where_it_is_queued_and_json_on_request() {
    let (tmp, f) = line().await;
    let file = write(tmp.path(), "n.json", &readme_example().to_string());

    let human = tidewire(&f, &["publish", "--node", "maoc-n", "--file", &file]).await;
    assert!(human.ok, "publish failed: {}", human.stderr);
    let first = human.stdout.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("published ") && first.contains("(seq 1)"),
        "{}",
        human.stdout
    );
    assert!(
        human.stdout.contains("queued for: accra, dakar"),
        "{}",
        human.stdout
    );
    let id = first
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    assert_eq!(id.len(), 32, "a 128-bit id in hex: {first}");

    let json = tidewire(
        &f,
        &["--json", "publish", "--node", "maoc-n", "--file", &file],
    )
    .await;
    assert!(json.ok, "publish --json failed: {}", json.stderr);
    let reply: serde_json::Value =
        serde_json::from_str(json.stdout.trim()).expect("one JSON object");
    assert_eq!(reply["origin_seq"], 2, "{reply}");
    assert_eq!(reply["destinations"], serde_json::json!(["accra", "dakar"]));
    let second = reply["id"].as_str().expect("an id").to_owned();
    assert_ne!(
        second, id,
        "a publish without idempotency key is a new notification"
    );

    for id in [&id, &second] {
        received_at_accra_and_dakar(&f, id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_line_of_a_jsonl_file_is_named_and_nothing_of_the_file_is_published() {
    let (tmp, f) = line().await;
    let good = readme_example();
    let mut bad = good.clone();
    bad.as_object_mut().expect("an object").remove("kind");
    let file = write(
        tmp.path(),
        "batch.jsonl",
        &format!("{good}\n{bad}\n{good}\n"),
    );

    let run = tidewire(&f, &["publish", "--node", "maoc-n", "--file", &file]).await;
    assert!(!run.ok, "a file with a bad line must fail: {}", run.stdout);
    assert!(
        run.stderr.contains("batch.jsonl:2") && run.stderr.contains("`kind`"),
        "the error names the line and the field: {}",
        run.stderr
    );
    assert_eq!(counter(&f, "maoc-n", "published").await, 0);

    let broken = write(tmp.path(), "broken.json", "{\"kind\": \"alert\",\n");
    let run = tidewire(&f, &["publish", "--node", "maoc-n", "--file", &broken]).await;
    assert!(!run.ok);
    assert!(
        run.stderr.contains("broken.json") && run.stderr.contains("line 2"),
        "the error names the file and where the JSON breaks: {}",
        run.stderr
    );

    // A pretty-printed file with a bad value: named with the line of its key.
    let mut wrong = good.clone();
    wrong["handling"] = "H9".into();
    let pretty = serde_json::to_string_pretty(&wrong).expect("json");
    let handling_line = pretty
        .lines()
        .position(|l| l.starts_with("  \"handling\""))
        .expect("a top-level handling line")
        + 1;
    let wrong = write(tmp.path(), "wrong.json", &pretty);
    let run = tidewire(&f, &["publish", "--node", "maoc-n", "--file", &wrong]).await;
    assert!(!run.ok);
    assert!(
        run.stderr.contains(&format!(
            "wrong.json: line {handling_line}: notification `handling`"
        )) && run.stderr.contains("use H0, H1, H2 or H3"),
        "the error names the file, line, field and fix: {}",
        run.stderr
    );

    let fixed = write(tmp.path(), "fixed.jsonl", &format!("{good}\n{good}\n"));
    let run = tidewire(&f, &["publish", "--node", "maoc-n", "--file", &fixed]).await;
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(
        run.stdout.matches("published ").count(),
        2,
        "{}",
        run.stdout
    );
    assert_eq!(counter(&f, "maoc-n", "published").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_reads_standard_input_one_notification_or_several() {
    let (_tmp, f) = line().await;
    let one = serde_json::to_string_pretty(&readme_example()).expect("json");
    let run = tidewire_fed(&f, &["publish", "--node", "maoc-n", "--file", "-"], &one).await;
    assert!(run.ok, "{}", run.stderr);
    assert!(
        run.stdout.starts_with("published ") && run.stdout.contains("from stdin:1"),
        "a pretty-printed notification is one: {}",
        run.stdout
    );

    let mut alert = readme_example();
    alert["case_ref"] = "MAOC-2026-0143".into();
    let lines = format!("{}\n\n{}\n{}\n", readme_example(), alert, readme_example());
    let run = tidewire_fed(
        &f,
        &["--json", "publish", "--node", "maoc-n", "--file", "-"],
        &lines,
    )
    .await;
    assert!(run.ok, "{}", run.stderr);
    let names: Vec<String> = replies_queued_for_accra_and_dakar(&run)
        .iter()
        .map(|r| r["file"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        names,
        ["stdin:1", "stdin:3", "stdin:4"],
        "named by the line each starts on"
    );
    assert_eq!(counter(&f, "maoc-n", "published").await, 4);

    let broken = format!("{}\n{{\"kind\": \n", readme_example());
    let run = tidewire_fed(&f, &["publish", "--node", "maoc-n", "--file", "-"], &broken).await;
    assert!(!run.ok);
    assert!(
        run.stderr.contains("stdin: not JSON at line 3"),
        "the error says where the input breaks: {}",
        run.stderr
    );
    let empty = tidewire_fed(&f, &["publish", "--node", "maoc-n", "--file", "-"], "\n").await;
    assert!(!empty.ok);
    assert!(
        empty.stderr.contains("no notification to publish"),
        "{}",
        empty.stderr
    );
    assert_eq!(
        counter(&f, "maoc-n", "published").await,
        4,
        "nothing of a bad input is published"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_links_routes_and_counters_as_a_table_and_as_json() {
    let (_tmp, f) = line().await;
    publish(&f, "maoc-n", &readme_example()).await;
    // Counters move once what they count is durable and acknowledged: wait for them, so that
    // the two outputs below show the same figures.
    wait_for(
        Duration::from_secs(20),
        "dakar delivers its copy and relays accra's",
        async || {
            counter(&f, "dakar", "delivered").await == 1
                && counter(&f, "dakar", "forwarded").await == 1
        },
    )
    .await;

    let table = tidewire(&f, &["status", "--node", "dakar"]).await;
    assert!(table.ok, "{}", table.stderr);
    let out = &table.stdout;
    assert!(out.starts_with("node dakar (SN, dakar)"), "{out}");
    assert!(
        out.lines()
            .next()
            .is_some_and(|l| l.contains("policy version 1 (sha256:")),
        "the policy in force, by version and hash: {out}"
    );
    for peer in ["accra", "maoc-n"] {
        assert!(
            out.lines()
                .any(|l| l.split_whitespace().take(2).eq([peer, "up"])),
            "link to {peer} shown up: {out}"
        );
    }
    assert!(out.contains("routes") && out.contains("counters"), "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("store writable   log ")
            && l.contains("replayed 0 batches at start   commits ")
            && l.contains(" slow, 99% within ")
            && l.contains(" ms, longest ")),
        "the store's state, a fresh start: {out}"
    );
    let row = |name: &str| {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    // One envelope (copy) per destination: dakar's own and accra's, which dakar relays.
    assert_eq!(row("received"), Some(2), "{out}");
    assert_eq!(row("delivered"), Some(1), "{out}");
    assert_eq!(row("forwarded"), Some(1), "{out}");

    let json = tidewire(&f, &["--json", "status", "--node", "dakar"]).await;
    assert!(json.ok, "{}", json.stderr);
    let s: serde_json::Value = serde_json::from_str(&json.stdout).expect("one JSON object");
    assert_eq!(s["node"], "dakar");
    assert_eq!(s["country"], "SN");
    assert_eq!(s["policy_number"], 1, "{s}");
    assert!(
        s["policy_version"]
            .as_str()
            .is_some_and(|v| v.starts_with("sha256:")),
        "{s}"
    );
    let links = s["links"].as_array().expect("links");
    assert_eq!(links.len(), 2, "{s}");
    assert!(
        links.iter().all(|l| l["up"] == true && l["backlog"] == 0),
        "{s}"
    );
    assert_eq!(s["counters"]["received"], 2, "{s}");
    assert_eq!(s["counters"]["verified"], 2, "{s}");
    let names: Vec<&String> = s["counters"]
        .as_object()
        .expect("counters")
        .keys()
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "counters in name order");
    let routes = s["routes"].as_array().expect("routes");
    assert!(
        routes
            .iter()
            .any(|r| r["node"] == "maoc-n" && r["next_hop"] == "maoc-n" && r["distance"] == 1),
        "{s}"
    );
    let store = &s["store"];
    assert_eq!(store["writable"], true, "{s}");
    assert_eq!(store["replayed_at_start"], 0, "{s}");
    assert!(
        store["commits"].as_u64().is_some_and(|n| n >= 1)
            && store["slow_commits"].as_u64().is_some()
            && store["longest_commit_ms"]
                .as_u64()
                .zip(store["commit_p99_ms"].as_u64())
                .is_some_and(|(longest, p99)| p99 <= longest),
        "dakar's commits (it stored what it received): {s}"
    );
    assert!(
        store["log_segments"].as_u64().is_some_and(|n| n >= 1)
            && store["log_bytes"].as_u64().is_some_and(|n| n > 0),
        "dakar's log holds what it received: {s}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_of_a_node_not_in_the_federation_or_not_running_fails_and_says_why() {
    let (_tmp, f) = line().await;
    let unknown = tidewire(&f, &["status", "--node", "lagos"]).await;
    assert!(!unknown.ok);
    assert!(
        unknown.stderr.contains("`lagos` is not in")
            && unknown.stderr.contains("accra, dakar, maoc-n"),
        "names the node and the ones there are: {}",
        unknown.stderr
    );

    // Port 1 on loopback: nothing listens there.
    let down = tidewire(&f, &["status", "--node", "https://127.0.0.1:1"]).await;
    assert!(!down.ok);
    assert!(
        down.stderr
            .contains("cannot reach node at https://127.0.0.1:1")
            && down.stderr.contains("is a node running there?"),
        "{}",
        down.stderr
    );
}

/// A node of a federation directory that is not running: the error gives the command that
/// starts it.
#[test]
fn status_of_a_node_not_started_gives_the_command_that_starts_it() {
    let (_tmp, fed) = pki_init("accra", "");
    let fed_s = fed.to_str().expect("utf-8");
    let run = tidewire_bare(&["status", "--federation", fed_s, "--node", "accra"]);
    assert!(!run.ok);
    let start = format!(
        "start it with `tidewire node run --config {}`",
        fed.join("accra/node.toml").display()
    );
    assert!(
        run.stderr.contains("cannot reach node at") && run.stderr.contains(&start),
        "{}",
        run.stderr
    );
}

/// A node by URL with an identity directory, as an operator outside the federation directory
/// types it: `pki init`'s development admin (`client/admin.pem`) works as `--identity`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_by_url_with_the_development_client_as_identity() {
    let (_tmp, f) = line().await;
    let url = format!("https://{}", f.nodes["dakar"].addr);
    let client = f.dir.join("client");
    let run = tidewire_bare(&[
        "status",
        "--node",
        &url,
        "--identity",
        client.to_str().expect("utf-8 path"),
    ]);
    assert!(run.ok, "{}", run.stderr);
    assert!(
        run.stdout.starts_with("node dakar (SN, dakar)"),
        "{}",
        run.stdout
    );

    let wrong = tidewire_bare(&[
        "status",
        "--node",
        &url,
        "--identity",
        f.dir.to_str().expect("utf-8 path"),
    ]);
    assert!(!wrong.ok);
    assert!(
        wrong.stderr.contains("no client.pem and client.key there"),
        "{}",
        wrong.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_query_and_verify_answer_what_was_disclosed_to_whom() {
    let (_tmp, f) = line().await;
    let id = published_at_maoc_n_and_received_at_accra(&f).await;

    let q = tidewire(
        &f,
        &[
            "--json",
            "audit",
            "query",
            "--node",
            "maoc-n",
            "--destination",
            "accra",
        ],
    )
    .await;
    assert!(q.ok, "{}", q.stderr);
    let entries: Vec<serde_json::Value> = q
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line per entry"))
        .collect();
    assert_eq!(entries.len(), 1, "{}", q.stdout);
    let e = &entries[0];
    assert_eq!(e["event"], "transfer");
    assert_eq!(e["notification"], id.as_str());
    assert_eq!(e["destination"], "node:accra");
    assert!(
        e["policy_version"]
            .as_str()
            .is_some_and(|v| v.starts_with("sha256:")),
        "the policy in force is named: {e}"
    );
    assert_eq!(e["detail"]["via"], "dakar", "{e}");

    // By rule and by time: "what went out under this rule, this month?"
    let count = |args: &'static [&'static str]| {
        let f = &f;
        async move {
            let mut all = vec!["--json", "audit", "query", "--node", "maoc-n"];
            all.extend_from_slice(args);
            let run = tidewire(f, &all).await;
            assert!(run.ok, "{args:?}: {}", run.stderr);
            run.stdout.lines().count()
        }
    };
    assert_eq!(count(&["--rule", "federation-partners"]).await, 2);
    assert_eq!(count(&["--rule", "no-such-rule"]).await, 0);
    assert_eq!(
        count(&["--since", "2020-01-01", "--until", "2999-01-01"]).await,
        3
    );
    assert_eq!(count(&["--since", "2999-01-01"]).await, 0);
    assert_eq!(count(&["--until", "2020-01-01T00:00:00Z"]).await, 0);
    let bad = tidewire(
        &f,
        &["audit", "query", "--node", "maoc-n", "--since", "last week"],
    )
    .await;
    assert!(!bad.ok);
    assert!(
        bad.stderr.contains("--since") && bad.stderr.contains("write 2026-11-01"),
        "{}",
        bad.stderr
    );

    let v = tidewire(&f, &["audit", "verify", "--node", "maoc-n"]).await;
    assert!(v.ok, "{}", v.stderr);
    assert!(
        v.stdout.starts_with("ledger intact: 3 entries"),
        "published, and a transfer each to accra and dakar: {}",
        v.stdout
    );
}

#[test]
fn pki_init_writes_a_federation_ready_to_run_and_never_overwrites_one() {
    use std::os::unix::fs::PermissionsExt;

    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("fed");
    let init = |nodes: &str, links: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tidewire"))
            .args(["pki", "init", "--nodes", nodes, "--links", links])
            .args(["--base-port", "7400", "--out"])
            .arg(&out)
            .env_clear()
            .output()
            .expect("running tidewire pki init")
    };
    let first = init("maoc-n,dakar,accra", "maoc-n:dakar,dakar:accra");
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );

    // Ports in the order the nodes were named, from --base-port (written, not bound here).
    let fed: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.join("federation.json")).expect("federation.json"),
    )
    .expect("federation.json is JSON");
    for (node, port) in [("maoc-n", 7400), ("dakar", 7401), ("accra", 7402)] {
        assert_eq!(
            fed["nodes"][node]["client_url"],
            format!("https://127.0.0.1:{port}"),
            "{fed}"
        );
        let config = std::fs::read_to_string(out.join(node).join("node.toml")).expect("node.toml");
        assert!(
            config.contains(&format!("listen = \"127.0.0.1:{port}\"")),
            "{config}"
        );
    }
    let dakar = std::fs::read_to_string(out.join("dakar/node.toml")).expect("node.toml");
    assert_eq!(
        dakar.matches("[[link]]").count(),
        2,
        "dakar links both ways: {dakar}"
    );

    // Secrets are readable by their owner only, whatever the umask.
    let mode = |p: &str| {
        std::fs::metadata(out.join(p))
            .unwrap_or_else(|e| panic!("{p}: {e}"))
            .permissions()
            .mode()
            & 0o777
    };
    for secret in [
        "ca.key",
        "client/admin.key",
        "dakar/dakar.key",
        "dakar/tls.key",
        "dakar/users.toml",
    ] {
        assert_eq!(mode(secret), 0o600, "{secret}");
    }
    // So is what the node will store.
    assert_eq!(mode("dakar/data"), 0o700, "dakar/data");

    let key_before = std::fs::read(out.join("dakar/dakar.key")).expect("key");
    let again = init("maoc-n,dakar", "maoc-n:dakar");
    assert!(
        !again.status.success(),
        "a second init into the same directory must fail"
    );
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already holds a federation"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(
        std::fs::read(out.join("dakar/dakar.key")).expect("key"),
        key_before,
        "the existing signing key is untouched"
    );
}

/// `tidewire pki init --out TMP/fed` with these nodes and links (`"a:b,b:c"`, or `""` for
/// none). Returns the temporary directory, which the caller keeps alive, and the federation.
fn pki_init(nodes: &str, links: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let fed = tmp.path().join("fed");
    let mut args = vec![
        "pki",
        "init",
        "--nodes",
        nodes,
        "--out",
        fed.to_str().expect("utf-8"),
    ];
    if !links.is_empty() {
        args.extend(["--links", links]);
    }
    let init = tidewire_bare(&args);
    assert!(init.ok, "{}", init.stderr);
    (tmp, fed)
}

/// Runs `tidewire ARGS` with nothing else: no federation, an empty environment.
fn tidewire_bare(args: &[&str]) -> Run {
    tidewire_env(args, &[])
}

/// Runs `tidewire ARGS` with only the environment variables `vars`.
fn tidewire_env(args: &[&str], vars: &[(&str, &str)]) -> Run {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidewire"))
        .args(args)
        .env_clear()
        .envs(vars.iter().copied())
        .output()
        .expect("running tidewire");
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `node run` on a `node.toml` whose listen address is taken (the node started twice, most
/// often) names the file, the line of `listen` and what to check; set by an override, it names
/// the variable instead.
#[test]
fn node_run_on_an_address_it_cannot_bind_names_the_file_line_and_fix() {
    let (_tmp, fed) = pki_init("accra", "");
    let config = fed.join("accra/node.toml");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let text = std::fs::read_to_string(&config).expect("node.toml");
    let line = text
        .lines()
        .position(|l| l.starts_with("listen = "))
        .expect("a listen line")
        + 1;
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("listen = ") {
                format!("listen = \"{addr}\"\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&config, text).expect("write node.toml");
    let config_s = config.to_str().expect("utf-8");
    let run = tidewire_bare(&["node", "run", "--config", config_s]);
    assert!(!run.ok, "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "{config_s}: line {line}: key `listen`: cannot bind {addr}"
        )) && run.stderr.contains("already running"),
        "{}",
        run.stderr
    );
    let addr_s = addr.to_string();
    let overridden = tidewire_env(
        &["node", "run", "--config", config_s],
        &[("TIDEWIRE_LISTEN", &addr_s)],
    );
    assert!(
        !overridden.ok
            && overridden
                .stderr
                .contains("key `listen` (set by TIDEWIRE_LISTEN): cannot bind"),
        "{}",
        overridden.stderr
    );
    // Nothing was started: the data directory was not created.
    assert!(!fed.join("accra/data/store").exists());
    drop(taken);
}

/// `pki issue-client` ends with the command that uses the new identity, for its role: a
/// publisher publishes, a subscriber follows one of its own routes.
#[test]
fn pki_issue_client_shows_the_command_for_the_clients_role() {
    let (_tmp, fed) = pki_init("accra", "");
    let fed_s = fed.to_str().expect("utf-8");
    let issue = |name: &str, role: &str, routes: &str| {
        let run = tidewire_bare(&[
            "pki",
            "issue-client",
            "--federation",
            fed_s,
            "--node",
            "accra",
            "--name",
            name,
            "--role",
            role,
            "--routes",
            routes,
        ]);
        assert!(run.ok, "{}", run.stderr);
        run.stdout
    };
    let desk = issue("aircop-acc", "publisher", "air.aircop.>");
    assert!(
        desk.contains("use it with: tidewire publish --federation")
            && desk.contains("--file notification.json"),
        "{desk}"
    );
    let officer = issue("officer-accra-1", "subscriber", "vessel.imo.*");
    assert!(
        officer.contains("use it with: tidewire subscribe --federation")
            && officer.contains("--route 'vessel.imo.*'"),
        "{officer}"
    );
}

#[test]
fn the_demo_delivers_every_expected_notification_and_says_so() {
    let human = tidewire_bare(&["demo"]);
    assert!(human.ok, "demo failed: {}\n{}", human.stdout, human.stderr);
    let out = &human.stdout;
    assert!(
        out.contains("all 12 expected deliveries arrived, verified end to end"),
        "{out}"
    );
    for section in [
        "publishing 5 case notifications",
        "who received what, along which path",
        "withheld by policy on the way",
        "summary per node",
    ] {
        assert!(out.contains(section), "`{section}` missing: {out}");
    }
    for node in ["maoc-n", "accra", "dakar", "jiatf-s"] {
        assert!(
            out.lines()
                .skip_while(|l| !l.starts_with("summary per node"))
                .any(|l| l.split_whitespace().next() == Some(node)),
            "{node} in the summary: {out}"
        );
    }

    let tmp = tempfile::tempdir().expect("tempdir");
    let kept = tmp.path().join("demo-fed");
    let json = tidewire_bare(&["--json", "demo", "--out", &kept.display().to_string()]);
    assert!(json.ok, "{}", json.stderr);
    let d: serde_json::Value = serde_json::from_str(&json.stdout).expect("one JSON object");
    assert_eq!(d["missing"], serde_json::json!([]), "{d}");
    let deliveries = d["deliveries"].as_array().expect("deliveries");
    assert_eq!(deliveries.len(), 12, "{d}");
    for x in deliveries {
        assert_eq!(
            x["path"][0], x["origin"],
            "a custody path starts at the origin: {x}"
        );
        assert_ne!(x["to"], x["origin"], "{x}");
    }
    assert!(
        kept.join("federation.json").is_file() && kept.join("maoc-n/node.toml").is_file(),
        "--out keeps the federation it ran"
    );
}

/// Rotating a node's signing key: `keys generate --roster` adds the new key to the federation's
/// roster beside the old one (signatures made with either verify), keeping the node's country,
/// organisation and certificate pin.
#[test]
fn keys_generate_adds_a_rotated_key_to_the_federation_roster_beside_the_old_one() {
    use std::os::unix::fs::PermissionsExt;

    let (_tmp, fed) = pki_init("maoc-n,dakar", "maoc-n:dakar");
    let roster = fed.join("roster.toml");
    let before = tidewire_core::keys::Roster::load(&roster).expect("roster");
    let old = before.get("maoc-n").expect("maoc-n").clone();

    let next = fed.join("maoc-n/next");
    let run = tidewire_bare(&[
        "--json",
        "keys",
        "generate",
        "--node",
        "maoc-n",
        "--out",
        next.to_str().expect("utf-8"),
        "--roster",
        roster.to_str().expect("utf-8"),
    ]);
    assert!(run.ok, "{}", run.stderr);
    let after = tidewire_core::keys::Roster::load(&roster).expect("roster");
    let rotated = after.get("maoc-n").expect("maoc-n");
    assert_eq!(rotated.keys.len(), 2, "old and new key");
    assert_eq!(
        rotated.keys[0].key_id, old.keys[0].key_id,
        "the old key stays"
    );
    assert_eq!(rotated.country, old.country);
    assert_eq!(rotated.org, old.org);
    assert_eq!(
        rotated.tls_cert_sha256, old.tls_cert_sha256,
        "the certificate pin stays"
    );
    assert!(after.get("dakar").is_some(), "the other nodes stay");
    let mode = std::fs::metadata(next.join("maoc-n.key"))
        .expect("the new key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "the new key is private: {mode:o}");
}

/// `pki reissue`: a node's new TLS certificate is written and pinned in place of the old one,
/// and nothing else changes; an unknown node is refused by name.
#[test]
fn pki_reissue_pins_the_new_certificate_in_place_of_the_old() {
    use std::os::unix::fs::PermissionsExt;

    let (_tmp, fed) = pki_init("maoc-n,dakar", "maoc-n:dakar");
    let fed_s = fed.to_str().expect("utf-8");
    let roster = fed.join("roster.toml");
    let before = tidewire_core::keys::Roster::load(&roster).expect("roster");
    let old_cert = std::fs::read(fed.join("dakar/tls.pem")).expect("cert");

    let run = tidewire_bare(&[
        "--json",
        "pki",
        "reissue",
        "--federation",
        fed_s,
        "--node",
        "dakar",
    ]);
    assert!(run.ok, "{}", run.stderr);
    let out: serde_json::Value = serde_json::from_str(run.stdout.trim()).expect("json");
    let after = tidewire_core::keys::Roster::load(&roster).expect("roster");
    let (old, new) = (
        before.get("dakar").expect("dakar"),
        after.get("dakar").expect("dakar"),
    );
    let new_cert = std::fs::read(fed.join("dakar/tls.pem")).expect("cert");
    assert_ne!(new_cert, old_cert, "a new certificate is written");
    assert_eq!(
        new.tls_cert_sha256,
        tidewire_node::tls::pem_cert_sha256(&new_cert),
        "the roster pins the new certificate"
    );
    assert_eq!(
        out["replaced"].as_str(),
        old.tls_cert_sha256.map(hex::encode).as_deref(),
        "{out}"
    );
    let key_ids = |n: &tidewire_core::keys::RosterNode| {
        n.keys.iter().map(|k| k.key_id.clone()).collect::<Vec<_>>()
    };
    assert_eq!(key_ids(new), key_ids(old), "signing keys stay");
    assert_eq!(
        after.get("maoc-n").map(|n| n.tls_cert_sha256),
        before.get("maoc-n").map(|n| n.tls_cert_sha256),
        "other nodes stay"
    );
    let mode = std::fs::metadata(fed.join("dakar/tls.key"))
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "the new key is private: {mode:o}");

    let run = tidewire_bare(&["pki", "reissue", "--federation", fed_s, "--node", "lagos"]);
    assert!(!run.ok);
    assert!(
        run.stderr.contains("`lagos` is not in") && run.stderr.contains("dakar, maoc-n"),
        "{}",
        run.stderr
    );
}

/// `pki add-node` refuses what would make a federation inconsistent, and says what to fix:
/// an id already there, a link that does not join the new node, a peer not in the federation.
#[test]
fn pki_add_node_refuses_a_duplicate_id_or_a_link_to_nowhere() {
    let (_tmp, fed) = pki_init("maoc-n,dakar", "maoc-n:dakar");
    let fed_s = fed.to_str().expect("utf-8");
    let roster_before = std::fs::read_to_string(fed.join("roster.toml")).expect("roster");
    for (args, says) in [
        (vec!["--node", "dakar"], "`dakar` is already in"),
        (
            vec!["--node", "ceclad-m", "--links", "maoc-n:dakar"],
            "each link joins `ceclad-m` to a node",
        ),
        (
            vec!["--node", "ceclad-m", "--links", "ceclad-m:lagos"],
            "`lagos` is not in",
        ),
    ] {
        let mut all = vec!["pki", "add-node", "--federation", fed_s];
        all.extend(args);
        let run = tidewire_bare(&all);
        assert!(!run.ok, "{all:?} must fail");
        assert!(run.stderr.contains(says), "{all:?}: {}", run.stderr);
    }
    assert_eq!(
        std::fs::read_to_string(fed.join("roster.toml")).expect("roster"),
        roster_before,
        "a refused add-node changes nothing"
    );
    assert!(
        !fed.join("ceclad-m").exists(),
        "nor writes a node directory"
    );

    let run = tidewire_bare(&[
        "pki",
        "add-node",
        "--federation",
        fed_s,
        "--node",
        "ceclad-m",
        "--links",
        "ceclad-m:maoc-n",
    ]);
    assert!(run.ok, "{}", run.stderr);
    assert!(run.stdout.contains("SIGHUP"), "{}", run.stdout);
    let roster = tidewire_core::keys::Roster::load(&fed.join("roster.toml")).expect("roster");
    let c = roster.get("ceclad-m").expect("ceclad-m in the roster");
    assert_eq!(c.country.to_string(), "FR", "a known centre's country");
    assert!(c.tls_cert_sha256.is_some(), "its certificate is pinned");
    let fedn = tidewire::pki::Federation::load(&fed).expect("federation.json");
    assert!(fedn.nodes.contains_key("ceclad-m"));
    // Its node.toml is ready to run: it loads, links to maoc-n, and names files that exist.
    let cfg = tidewire_node::NodeConfig::load(
        &fed.join("ceclad-m/node.toml"),
        &std::collections::HashMap::new(),
    )
    .expect("node.toml loads");
    assert_eq!(cfg.links.len(), 1);
    assert_eq!(cfg.links[0].0.as_str(), "maoc-n");
}

/// `policy explain`, offline: the README's notification against maoc-n's starting policy.
#[test]
fn policy_explain_shows_each_field_decision_and_warns_about_a_node_not_in_the_roster() {
    let (tmp, fed) = pki_init("maoc-n,dakar,accra", "maoc-n:dakar,dakar:accra");
    let n = write(tmp.path(), "n.json", &readme_example().to_string());
    let policy = fed.join("maoc-n/policy.toml").display().to_string();
    let roster = fed.join("roster.toml").display().to_string();
    let explain = |to: &str, json: bool| {
        let mut args = vec![
            "policy", "explain", "--policy", &policy, "--roster", &roster,
        ];
        args.extend(["--to", to, &n]);
        if json {
            args.insert(0, "--json");
        }
        tidewire_bare(&args)
    };
    let run = explain("node:accra", false);
    assert!(run.ok, "{}", run.stderr);
    assert!(
        run.stdout.contains("ALLOW (rule federation-partners)"),
        "{}",
        run.stdout
    );
    let dob = run
        .stdout
        .lines()
        .find(|l| l.starts_with("persons[0].dob"))
        .unwrap_or_else(|| panic!("a dob row: {}", run.stdout));
    assert!(dob.contains("generalise:year"), "{dob}");
    assert!(
        run.stderr.is_empty(),
        "no warning for a known node: {}",
        run.stderr
    );

    let json = explain("node:accra", true);
    assert!(json.ok, "{}", json.stderr);
    serde_json::from_str::<serde_json::Value>(&json.stdout).expect("--json is one JSON value");

    let unknown = explain("node:lagos", false);
    assert!(unknown.ok, "{}", unknown.stderr);
    assert!(
        unknown.stderr.contains("the roster has no node `lagos`")
            && unknown.stderr.contains("accra, dakar, maoc-n"),
        "{}",
        unknown.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_policy_file_is_named_with_its_line_and_applying_it_changes_nothing() {
    let (tmp, f) = line().await;
    let good = f.dir.join("dakar/policy.toml").display().to_string();
    let check = tidewire_bare(&["policy", "check", &good]);
    assert!(check.ok, "{}", check.stderr);
    assert!(check.stdout.contains("ok, version 1"), "{}", check.stdout);

    let bad = write(
        tmp.path(),
        "bad.toml",
        "version = 1\n[[rule]]\nid = \"x\"\nto = \"node:accra\"\n",
    );
    let check = tidewire_bare(&["policy", "check", &bad]);
    assert!(!check.ok);
    assert!(
        check.stderr.contains("bad.toml: line 4"),
        "names the file and the line: {}",
        check.stderr
    );

    let before = tidewire(&f, &["policy", "show", "--node", "dakar"]).await;
    assert!(before.ok, "{}", before.stderr);
    let apply = tidewire(&f, &["policy", "apply", "--node", "dakar", &bad]).await;
    assert!(!apply.ok, "a bad policy must not be applied");
    assert!(apply.stderr.contains("line 4"), "{}", apply.stderr);
    let after = tidewire(&f, &["policy", "show", "--node", "dakar"]).await;
    assert_eq!(
        before.stdout.lines().next(),
        after.stdout.lines().next(),
        "the node keeps the policy version it had"
    );

    // A changed policy under the same version: applied, with the one it replaces named and a
    // warning to raise the version; on the ledger, the replaced policy too.
    let text = std::fs::read_to_string(f.dir.join("dakar/policy.toml")).expect("policy");
    let same_version = write(
        tmp.path(),
        "edited.toml",
        &text.replace(
            "[[rule]]\nid = \"local-officers\"",
            "[[rule]]\nid = \"local-desk\"",
        ),
    );
    let apply = tidewire(&f, &["policy", "apply", "--node", "dakar", &same_version]).await;
    assert!(apply.ok, "{}", apply.stderr);
    assert!(
        apply.stdout.contains("local-desk") && apply.stdout.contains("replaces version 1 (sha256:"),
        "{}",
        apply.stdout
    );
    assert!(
        apply
            .stderr
            .contains("edited.toml: version 1 is not above the version it replaces (1)"),
        "{}",
        apply.stderr
    );
    let raised = write(
        tmp.path(),
        "raised.toml",
        &text.replacen("version = 1", "version = 2", 1),
    );
    let apply = tidewire(
        &f,
        &["--json", "policy", "apply", "--node", "dakar", &raised],
    )
    .await;
    assert!(apply.ok && apply.stderr.is_empty(), "{}", apply.stderr);
    let reply: serde_json::Value = serde_json::from_str(&apply.stdout).expect("json");
    assert_eq!(reply["version"], 2);
    assert_eq!(reply["replaces"]["version"], 1);
    let ledger = tidewire(
        &f,
        &[
            "--json",
            "audit",
            "query",
            "--node",
            "dakar",
            "--event",
            "policy_applied",
        ],
    )
    .await;
    let last: serde_json::Value =
        serde_json::from_str(ledger.stdout.lines().last().expect("an entry")).expect("json");
    assert_eq!(last["detail"]["version"], 2, "{last}");
    assert_eq!(last["detail"]["replaces"]["version"], 1, "{last}");
    // The same file again: said to change no rule, and no warning about its version.
    let again = tidewire(&f, &["policy", "apply", "--node", "dakar", &raised]).await;
    assert!(again.ok && again.stderr.is_empty(), "{}", again.stderr);
    assert!(
        again
            .stdout
            .contains("the same as the policy it replaces: no rule changed"),
        "{}",
        again.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cases_lists_what_a_node_holds_and_shows_one_with_its_history() {
    let (_tmp, f) = line().await;
    let id = published_at_maoc_n_and_received_at_accra(&f).await;

    let list = tidewire(&f, &["cases", "list", "--node", "accra"]).await;
    assert!(list.ok, "{}", list.stderr);
    let row = list
        .stdout
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{id} listed: {}", list.stdout));
    assert!(
        row.contains("maoc-n")
            && row.contains("vessel_of_interest")
            && row.contains("MAOC-2026-0142"),
        "{row}"
    );

    let show = tidewire(
        &f,
        &["--json", "cases", "show", "--node", "accra", &id[..8]],
    )
    .await;
    assert!(show.ok, "a prefix of the id is enough: {}", show.stderr);
    let c: serde_json::Value = serde_json::from_str(&show.stdout).expect("one JSON object");
    assert_eq!(c["copies"][0]["id"], id.as_str(), "{c}");
    let events: Vec<&str> = c["history"]
        .as_array()
        .expect("history")
        .iter()
        .filter_map(|e| e["event"].as_str())
        .collect();
    assert!(events.contains(&"received"), "{c}");
    assert_eq!(
        c["history"][0]["detail"]["path"],
        serde_json::json!(["maoc-n", "dakar"]),
        "{c}"
    );

    let none = tidewire(&f, &["cases", "show", "--node", "accra", "ffff"]).await;
    assert!(!none.ok);
    assert!(
        none.stderr
            .contains("no notification `ffff` is held by accra"),
        "{}",
        none.stderr
    );

    // Recalled: no copy any more, but the ledger still tells what happened to it.
    let recall = serde_json::json!({
        "kind": "recall", "case_ref": "MAOC-2026-0142", "routes": ["atlantic.south-america.west-africa"],
        "handling": "H0", "audience": ["node:accra"], "recalls": id, "fields": {"narrative": "wrong vessel"}
    });
    publish(&f, "maoc-n", &recall).await;
    wait_for(Duration::from_secs(20), "the recall at accra", async || {
        common::has(&f, "accra", &id, "recalled").await
    })
    .await;
    let gone = tidewire(&f, &["cases", "show", "--node", "accra", &id[..12]]).await;
    assert!(gone.ok, "{}", gone.stderr);
    assert!(
        gone.stdout.contains("no copy of") && gone.stdout.contains(" recalled "),
        "{}",
        gone.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_the_same_file_again_publishes_nothing_twice() {
    let (tmp, f) = line().await;
    let n = readme_example();
    let mut other = n.clone();
    other["case_ref"] = "MAOC-2026-0143".into();
    // Two equal lines are two notifications; the file, run twice, is still three.
    let file = write(tmp.path(), "batch.jsonl", &format!("{n}\n{n}\n{other}\n"));
    let first = tidewire(
        &f,
        &["--json", "publish", "--node", "maoc-n", "--file", &file],
    )
    .await;
    assert!(first.ok, "{}", first.stderr);
    let again = tidewire(
        &f,
        &["--json", "publish", "--node", "maoc-n", "--file", &file],
    )
    .await;
    assert!(again.ok, "{}", again.stderr);
    let replies = |out: &str| -> Vec<serde_json::Value> {
        out.lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line per notification"))
            .collect()
    };
    let (first, again) = (replies(&first.stdout), replies(&again.stdout));
    assert_eq!(first.len(), 3);
    assert_eq!(again.len(), 3);
    let ids: std::collections::BTreeSet<&str> =
        first.iter().filter_map(|r| r["id"].as_str()).collect();
    assert_eq!(ids.len(), 3, "three notifications: {first:?}");
    for (a, b) in first.iter().zip(&again) {
        assert_eq!(a["duplicate"], false, "{a}");
        assert_eq!(b["duplicate"], true, "{b}");
        assert_eq!(a["id"], b["id"], "the retry answers with the id it had");
    }
    assert_eq!(counter(&f, "maoc-n", "published").await, 3);

    let human = tidewire(&f, &["publish", "--node", "maoc-n", "--file", &file]).await;
    assert!(human.ok, "{}", human.stderr);
    assert_eq!(
        human.stdout.matches("already published").count(),
        3,
        "{}",
        human.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_export_pages_through_a_ledger_longer_than_one_reply() {
    let (tmp, f) = line().await;
    let n = readme_example().to_string();
    let lines = format!("{n}\n").repeat(400);
    let file = write(tmp.path(), "many.jsonl", &lines);
    let run = tidewire(&f, &["publish", "--node", "maoc-n", "--file", &file]).await;
    assert!(run.ok, "{}", run.stderr);
    // 400 `published` and 800 `transfer` entries once both copies of each are on their way.
    wait_for(
        Duration::from_secs(30),
        "maoc-n to send every copy",
        async || counter(&f, "maoc-n", "forwarded").await == 800,
    )
    .await;

    let export = tidewire(&f, &["audit", "export", "--node", "maoc-n"]).await;
    assert!(export.ok, "{}", export.stderr);
    let seqs: Vec<u64> = export
        .stdout
        .lines()
        .map(|l| {
            let e: serde_json::Value = serde_json::from_str(l).expect("a JSON line per entry");
            e["seq"].as_u64().expect("a seq")
        })
        .collect();
    let total = seqs.len() as u64;
    assert!(total >= 1200, "{total} entries exported");
    assert_eq!(
        seqs,
        (1..=total).collect::<Vec<_>>(),
        "every entry once, in order"
    );
    let verify = tidewire(&f, &["audit", "verify", "--node", "maoc-n"]).await;
    assert!(
        verify
            .stdout
            .starts_with(&format!("ledger intact: {total} entries")),
        "{}",
        verify.stdout
    );

    let transfers = tidewire(
        &f,
        &[
            "--json", "audit", "query", "--node", "maoc-n", "--event", "transfer", "--limit",
            "5000",
        ],
    )
    .await;
    assert!(transfers.ok, "{}", transfers.stderr);
    assert_eq!(transfers.stdout.lines().count(), 800);
    let few = tidewire(&f, &["audit", "query", "--node", "maoc-n", "--limit", "5"]).await;
    assert_eq!(few.stdout.lines().count(), 5, "{}", few.stdout);

    // The case listing pages the same way: accra holds the 400, read 150 at a time.
    wait_for(
        Duration::from_secs(30),
        "accra to hold all 400",
        async || counter(&f, "accra", "delivered").await == 400,
    )
    .await;
    let mut admin = admin(&f, "accra").await;
    let (mut ids, mut after) = (Vec::new(), String::new());
    loop {
        let r = admin
            .cases_list(tidewire_proto::v1::CasesListRequest {
                limit: 150,
                after: after.clone(),
                ..Default::default()
            })
            .await
            .expect("cases list")
            .into_inner();
        assert!(r.items.len() <= 150);
        ids.extend(r.items.into_iter().map(|i| i.id));
        if r.next.is_empty() {
            break;
        }
        after = r.next;
    }
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        (ids.len(), sorted),
        (400, ids),
        "every copy once, in id order"
    );
    let list = tidewire(&f, &["cases", "list", "--node", "accra", "--limit", "1000"]).await;
    assert_eq!(list.stdout.lines().count(), 400, "{}", list.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_a_notification_already_past_its_expiry_warns_and_it_goes_nowhere() {
    let (tmp, f) = line().await;
    let mut stale = readme_example();
    stale["expires_at"] = "2020-01-01T00:00:00Z".into();
    let file = write(tmp.path(), "stale.json", &stale.to_string());
    let run = tidewire(
        &f,
        &["--json", "publish", "--node", "maoc-n", "--file", &file],
    )
    .await;
    assert!(run.ok, "still published: {}", run.stderr);
    assert!(
        run.stderr
            .contains("expires_at 2020-01-01T00:00:00Z is already past"),
        "{}",
        run.stderr
    );
    let id = serde_json::from_str::<serde_json::Value>(run.stdout.trim()).expect("JSON")["id"]
        .as_str()
        .expect("an id")
        .to_owned();
    wait_for(
        Duration::from_secs(20),
        "maoc-n to record both copies as expired",
        async || events(&f, "maoc-n", &id, "expired").await == 2,
    )
    .await;
    assert_eq!(events(&f, "maoc-n", &id, "transfer").await, 0);
}
