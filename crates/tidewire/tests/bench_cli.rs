//! The benchmark's contract as a user runs it: `tidewire bench relay … --json` prints one JSON
//! object with `throughput_per_s`, `p50_ms`, `p99_ms` and `peak_rss_mib` (docs/BENCHMARKS.md),
//! in process and with every node as its own process. Small counts: this checks the command and
//! its output, not the speed (speed is measured, never asserted).

use std::process::Command;

use anyhow::{Context, Result, ensure};

/// Runs `tidewire bench relay ARGS` and returns what it printed on standard output.
fn bench_output(args: &[&str]) -> Result<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_tidewire"))
        .args(["bench", "relay"])
        .args(args)
        .env_clear()
        .output()
        .context("running tidewire bench relay")?;
    ensure!(
        out.status.success(),
        "tidewire bench relay {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// `tidewire bench relay --json ARGS`: its one JSON object.
fn bench(args: &[&str]) -> Result<serde_json::Value> {
    let stdout = bench_output(&[&["--json"], args].concat())?;
    let line = stdout.lines().last().context("no output")?;
    serde_json::from_str(line).with_context(|| format!("not one JSON object: {line}"))
}

/// The figure `key` per node, checked to name nodes a and b.
fn per_node<'a>(
    r: &'a serde_json::Value,
    key: &str,
) -> Result<&'a serde_json::Map<String, serde_json::Value>> {
    let per = r[key]
        .as_object()
        .with_context(|| format!("{key} in {r}"))?;
    ensure!(
        per.keys().map(String::as_str).eq(["a", "b"]),
        "{key} is per node a and b: {r}"
    );
    Ok(per)
}

/// Each node process's worker threads, as its own `status` reported them, a then b.
fn threads_per_node(r: &serde_json::Value) -> Result<Vec<Option<u64>>> {
    Ok(per_node(r, "worker_threads_per_node")?
        .values()
        .map(serde_json::Value::as_u64)
        .collect())
}

fn assert_sane(r: &serde_json::Value, count: u64) {
    let n = |k: &str| {
        r[k].as_f64()
            .unwrap_or_else(|| panic!("`{k}` missing or not a number in {r}"))
    };
    assert_eq!(r["count"].as_u64(), Some(count), "{r}");
    assert!(n("throughput_per_s") > 0.0, "{r}");
    assert!(
        n("p50_ms") <= n("p99_ms") && n("p99_ms") <= n("max_ms"),
        "{r}"
    );
    assert!(n("peak_rss_mib") > 0.0, "{r}");
    assert!(n("cpu_us_per_notification") > 0.0, "{r}");
    // The latency split where the last node received each notification: both parts of every
    // notification add up to its whole, so each part's percentiles are within the whole's.
    for part in ["to_last_node", "at_last_node"] {
        let (p50, p99) = (n(&format!("{part}_p50_ms")), n(&format!("{part}_p99_ms")));
        assert!(
            p50 <= p99 && p50 <= n("p50_ms") && p99 <= n("p99_ms"),
            "{part}: {r}"
        );
    }
}

#[test]
fn bench_relay_in_process_prints_the_documented_json() -> Result<()> {
    let r = bench(&["--hops", "2", "--count", "60"])?;
    assert_sane(&r, 60);
    assert_eq!(r["hops"].as_u64(), Some(2));
    assert_eq!(r["nodes_in_process"].as_u64(), Some(3));
    Ok(())
}

#[test]
fn bench_relay_with_processes_reports_peak_rss_per_node() -> Result<()> {
    let r = bench(&[
        "--processes",
        "--hops",
        "1",
        "--count",
        "60",
        "--persons",
        "0",
    ])?;
    assert_sane(&r, 60);
    assert_eq!(r["fields"].as_u64(), Some(12), "--persons 0: {r}");
    let per = per_node(&r, "peak_rss_mib_per_node")?;
    assert!(
        per.values().all(|v| v.as_f64().is_some_and(|m| m > 0.0)),
        "{r}"
    );
    let cpu = per_node(&r, "cpu_us_per_notification_per_node")?;
    let nodes: f64 = cpu.values().filter_map(serde_json::Value::as_f64).sum();
    assert!(
        nodes > 0.0 && nodes <= r["cpu_us_per_notification"].as_f64().unwrap_or(0.0) + 2.0,
        "the nodes' shares add up to at most the whole: {r}"
    );
    // Each node's longest commit, from its status.
    let commits = per_node(&r, "longest_commit_ms_per_node")?;
    assert!(commits.values().all(serde_json::Value::is_u64), "{r}");
    // And the time 99 % of its commits stayed within: never more than the longest.
    let p99 = per_node(&r, "commit_p99_ms_per_node")?;
    assert!(
        p99.iter()
            .all(|(n, ms)| ms.as_u64() <= commits.get(n).and_then(serde_json::Value::as_u64)),
        "{r}"
    );
    assert_eq!(p99.len(), commits.len(), "{r}");
    // Each node process's own status: the machine's cores shared out, at least one each.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    assert_eq!(threads_per_node(&r)?, [Some((cores / 2).max(1)); 2], "{r}");
    Ok(())
}

#[test]
fn bench_relay_gives_each_node_process_the_worker_threads_asked_for() -> Result<()> {
    let r = bench(&["--processes", "--node-threads", "3", "--count", "60"])?;
    assert_sane(&r, 60);
    // Read back from each node's status: the runtime `node run` built from
    // TIDEWIRE_LIMITS_WORKER_THREADS.
    assert_eq!(threads_per_node(&r)?, [Some(3); 2], "{r}");
    // In one process the nodes share its runtime: the flag is refused, not ignored.
    let e = bench(&["--node-threads", "3", "--count", "20"]).unwrap_err();
    assert!(
        format!("{e:#}").contains("use it with --processes"),
        "{e:#}"
    );
    Ok(())
}

#[test]
fn bench_relay_backlog_times_the_drain_of_the_last_hop() -> Result<()> {
    let r = bench(&[
        "--backlog",
        "--count",
        "200",
        "--persons",
        "0",
        "--size",
        "1024",
    ])?;
    assert_eq!(r["mode"].as_str(), Some("backlog"), "{r}");
    assert_eq!(r["fields"].as_u64(), Some(12), "{r}");
    assert_eq!(
        r["json_bytes"].as_u64(),
        Some(1024),
        "--size pads to 1 KiB: {r}"
    );
    assert_eq!(r["count"].as_u64(), Some(200), "{r}");
    let drained = r["drained"].as_u64().context("drained")?;
    assert!(drained > 0 && drained <= 200, "{r}");
    assert!(
        r["throughput_per_s"].as_f64().is_some_and(|t| t > 0.0),
        "{r}"
    );
    assert!(r["peak_rss_mib"].as_f64().is_some_and(|m| m > 0.0), "{r}");
    assert!(r["p99_ms"].is_null(), "no latency in backlog mode: {r}");
    Ok(())
}

#[test]
fn bench_relay_readable_output_says_what_it_timed() -> Result<()> {
    let stdout = bench_output(&["--count", "40", "--persons", "0"])?;
    let table = stdout
        .lines()
        .skip_while(|l| !l.starts_with("hops "))
        .nth(1)
        .with_context(|| format!("a row under the table's header: {stdout}"))?;
    assert!(table.starts_with("1 ") && table.contains("40"), "{stdout}");
    // As fast as possible over one hop, everything shared the machine: the output says so, and
    // names the mode that times the hop alone.
    assert!(
        stdout.lines().any(|l| l.starts_with("end to end:")
            && l.contains("2 nodes")
            && l.contains("core(s)")
            && l.contains("`--processes --backlog` times the hop alone")),
        "{stdout}"
    );
    // At a set rate, or over two hops, the hop alone is not what the figures are compared
    // with: the line says what shared the machine, without the hint.
    let paced = bench_output(&["--hops", "2", "--count", "40", "--rate", "400"])?;
    assert!(
        paced.lines().any(|l| l.starts_with("end to end:")
            && l.contains("3 nodes")
            && !l.contains("--backlog")),
        "{paced}"
    );
    Ok(())
}
