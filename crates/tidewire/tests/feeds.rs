//! Route feeds for liaison officers, end to end, with real nodes over real mTLS and real client
//! identities from `pki::issue_client`:
//!
//! - every subscriber receives exactly what its route patterns, its clearance, its allowed
//!   routes and the node's policy let it see — no more, no less — checked against an expected
//!   set computed independently of the node's code (the policy is the starting one of
//!   `pki init`, under which every local role may see everything);
//! - a durable subscription resumes after a disconnect and after a restart of the whole
//!   federation with no gap and no duplicate of what it acknowledged;
//! - a subscriber that stops reading holds up nobody else (and loses nothing itself);
//! - a durable subscription left unconnected past `limits.durable_idle_hours` is ended, a
//!   connected one never is;
//! - wildcard audiences (`node:*`) go only to nodes whose subscribers announced interest in a
//!   matching route (interest routing), while relays carry them without keeping a copy.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tidewire::client::Conn;
use tidewire::demo::LocalFederation;
use tidewire_proto::v1 as pb;

const NODES: [&str; 3] = ["maoc-n", "dakar", "accra"];

// ---------------------------------------------------------------------------------------------
// Helpers

mod common;

use common::{audit, line, publish, wait_for};

/// Issues a subscriber identity registered at `node`.
fn issue(dir: &Path, node: &str, name: &str, clearance: &str, routes: &[&str]) -> PathBuf {
    issue_as(dir, node, name, "subscriber", clearance, routes)
}

/// Issues an identity with `role` registered at `node`.
fn issue_as(
    dir: &Path,
    node: &str,
    name: &str,
    role: &str,
    clearance: &str,
    routes: &[&str],
) -> PathBuf {
    tidewire::pki::issue_client(&tidewire::pki::IssueOptions {
        federation: dir.to_owned(),
        node: node.into(),
        name: name.into(),
        role: role.into(),
        clearance: clearance.into(),
        routes: routes.iter().map(|s| s.to_string()).collect(),
        out: None,
    })
    .expect("issue client")
}

/// How a subscriber identity reaches its node.
fn who(dir: &Path, node: &str, identity: &Path) -> Conn {
    Conn {
        node: node.into(),
        federation: Some(dir.to_owned()),
        identity: Some(identity.to_owned()),
    }
}

/// Whether a status is the transport failing (the connection went away), not the node
/// refusing or failing the request.
fn transport(e: &tonic::Status) -> bool {
    e.code() == tonic::Code::Unavailable
        || (e.code() == tonic::Code::Unknown && e.message().starts_with("h2 protocol error"))
}

/// A feed followed as a liaison client follows it. The node closes a connection whose HTTP/2
/// keepalive pings go unanswered for 3 s, which happens when a debug build of three
/// federations shares two busy cores; when that cuts the stream, the feed subscribes again
/// after the last cursor it received (what START_CURSOR is for), so that nothing is lost and
/// nothing repeated. Statuses the node itself sends are never retried, and every resumption
/// is printed.
struct Feed {
    conn: Conn,
    req: pb::SubscribeRequest,
    stream: tonic::Streaming<pb::Delivery>,
    last: Option<u64>,
    resumed: usize,
}

async fn open_stream(conn: &Conn, req: &pb::SubscribeRequest) -> tonic::Streaming<pb::Delivery> {
    let mut tries = 0;
    loop {
        let r = match conn.connect().await {
            Ok(ch) => pb::subscriber_client::SubscriberClient::new(ch)
                .subscribe(req.clone())
                .await
                .map(|r| r.into_inner()),
            Err(e) => Err(tonic::Status::unavailable(e.to_string())),
        };
        match r {
            Ok(s) => return s,
            Err(e) if transport(&e) && tries < 5 => tries += 1,
            Err(e) => panic!("subscribe at {}: {e}", conn.node),
        }
    }
}

impl Feed {
    async fn open(
        conn: Conn,
        routes: &[&str],
        kinds: &[&str],
        start: pb::subscribe_request::Start,
        durable: &str,
    ) -> Feed {
        let req = pb::SubscribeRequest {
            routes: routes.iter().map(|s| s.to_string()).collect(),
            kinds: kinds.iter().map(|s| s.to_string()).collect(),
            start: start as i32,
            cursor: 0,
            durable: durable.into(),
        };
        let stream = open_stream(&conn, &req).await;
        Feed {
            conn,
            req,
            stream,
            last: None,
            resumed: 0,
        }
    }

    /// The next delivery, or `None` when the node ends the stream.
    async fn next(&mut self) -> Option<pb::Delivery> {
        loop {
            match self.stream.next().await {
                Some(Ok(d)) => {
                    self.last = Some(d.cursor);
                    return Some(d);
                }
                None => return None,
                Some(Err(e)) if transport(&e) && self.resumed < 10 => {
                    self.resumed += 1;
                    eprintln!(
                        "feed at {}: connection lost ({e}); resuming after cursor {:?}",
                        self.conn.node, self.last
                    );
                    let mut req = self.req.clone();
                    if let Some(c) = self.last {
                        req.start = pb::subscribe_request::Start::Cursor as i32;
                        req.cursor = c;
                    }
                    self.stream = open_stream(&self.conn, &req).await;
                }
                Some(Err(e)) => panic!("feed at {}: {e}", self.conn.node),
            }
        }
    }
}

/// Publishes many notifications on one PublishStream, each with its case reference as the
/// idempotency key; asserts every one was acknowledged. If the connection is lost (see
/// [`Feed`]), the unacknowledged rest is sent again with the same keys, as a client does.
async fn publish_all(f: &LocalFederation, node: &str, ns: Vec<serde_json::Value>) -> Vec<String> {
    let reqs: Vec<pb::PublishRequest> = ns
        .iter()
        .map(|n| pb::PublishRequest {
            notification_json: n.to_string(),
            idempotency_key: n["case_ref"].as_str().expect("case_ref").to_owned(),
        })
        .collect();
    let mut ids = Vec::with_capacity(reqs.len());
    let mut retries = 0;
    while ids.len() < reqs.len() {
        assert!(retries <= 5, "publishing at {node} kept failing");
        let rest = futures::stream::iter(reqs[ids.len()..].to_vec());
        let ch = f.conn(node).connect().await.expect("connect");
        let mut replies = match pb::publisher_client::PublisherClient::new(ch)
            .publish_stream(rest)
            .await
        {
            Ok(r) => r.into_inner(),
            Err(e) if transport(&e) && retries < 5 => {
                retries += 1;
                continue;
            }
            Err(e) => panic!("publish stream at {node}: {e}"),
        };
        loop {
            match replies.next().await {
                Some(Ok(r)) => {
                    assert_eq!(
                        r.error_code, 0,
                        "publish at {node} refused: {}",
                        r.error_message
                    );
                    ids.push(r.id);
                }
                None => {
                    retries += 1;
                    break;
                }
                Some(Err(e)) if transport(&e) && retries < 5 => {
                    retries += 1;
                    eprintln!(
                        "publishing at {node}: connection lost ({e}); sending the rest again"
                    );
                    break;
                }
                Some(Err(e)) => panic!("publish stream at {node}: {e}"),
            }
        }
    }
    assert_eq!(
        ids.len(),
        reqs.len(),
        "every publish at {node} is acknowledged"
    );
    ids
}

/// Reads deliveries of `feed` in the background into a shared list.
fn collect(mut feed: Feed) -> (Arc<Mutex<Vec<pb::Delivery>>>, tokio::task::JoinHandle<()>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    let h = tokio::spawn(async move {
        while let Some(d) = feed.next().await {
            g.lock().expect("lock").push(d);
        }
    });
    (got, h)
}

/// The next delivery, within a bound.
async fn next(feed: &mut Feed) -> pb::Delivery {
    tokio::time::timeout(Duration::from_secs(30), feed.next())
        .await
        .expect("a delivery within 30 s")
        .expect("the stream is open")
}

/// Asserts that nothing arrives on `feed` within `window` (a bounded check for extras).
async fn assert_quiet(feed: &mut Feed, window: Duration, what: &str) {
    if let Ok(Some(d)) = tokio::time::timeout(window, feed.next()).await {
        panic!("{what}: unexpected delivery {}", d.case_ref);
    }
}

/// Route-pattern matching, written here independently of `RoutePattern::matches`: `*` is one
/// segment, `>` is one or more trailing segments.
fn matches(pattern: &str, route: &str) -> bool {
    let p: Vec<&str> = pattern.split('.').collect();
    let r: Vec<&str> = route.split('.').collect();
    for (i, seg) in p.iter().enumerate() {
        match *seg {
            ">" => return r.len() > i,
            "*" if i < r.len() => {}
            s if r.get(i) == Some(&s) => {}
            _ => return false,
        }
    }
    p.len() == r.len()
}

/// A small deterministic generator (xorshift64*), so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) % n
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Exactly what patterns, clearance and policy allow

/// A liaison officer: where registered, what it follows, its clearance and allowed routes.
struct Officer {
    node: &'static str,
    follows: &'static [&'static str],
    kinds: &'static [&'static str],
    clearance: u8,
    allowed: &'static [&'static str],
}

const fn o(
    node: &'static str,
    follows: &'static [&'static str],
    kinds: &'static [&'static str],
    clearance: u8,
    allowed: &'static [&'static str],
) -> Officer {
    Officer {
        node,
        follows,
        kinds,
        clearance,
        allowed,
    }
}

const ALL: &[&str] = &[">"];

/// 20 officers over the three nodes, with overlapping patterns, every clearance, and some with
/// restricted allowed routes (including one whose allowed routes share nothing with what it
/// follows, so it must receive nothing).
const OFFICERS: [Officer; 20] = [
    o("maoc-n", &["atlantic.>"], &[], 3, ALL),
    o("dakar", &["atlantic.west-africa.>"], &[], 2, ALL),
    o("accra", &["vessel.imo.*"], &[], 1, ALL),
    o("maoc-n", &["air.>"], &[], 0, ALL),
    o("dakar", &[">"], &[], 3, &["atlantic.west-africa.>"]),
    o("accra", &[">"], &[], 2, ALL),
    o(
        "maoc-n",
        &["atlantic.west-africa.>"],
        &[],
        0,
        &["atlantic.>"],
    ),
    o("dakar", &["vessel.imo.*"], &[], 3, &["vessel.imo.9387421"]),
    o(
        "accra",
        &["atlantic.>"],
        &[],
        1,
        &["atlantic.west-africa.>", "air.>"],
    ),
    o("maoc-n", &[">"], &[], 1, &["vessel.>", "air.aircop.>"]),
    o("dakar", &["air.>"], &[], 2, ALL),
    o("accra", &["atlantic.west-africa.>"], &[], 3, ALL),
    o("maoc-n", &["vessel.imo.*"], &[], 2, &["vessel.imo.*"]),
    o("dakar", &["atlantic.>"], &[], 0, ALL),
    o("accra", &["air.>"], &[], 3, &["air.aircop.>"]),
    o("maoc-n", &[">"], &["seizure", "vessel_of_interest"], 0, ALL),
    o("dakar", &[">"], &[], 1, &["atlantic.>", "vessel.>"]),
    o("accra", &[">"], &[], 3, ALL),
    o(
        "maoc-n",
        &["atlantic.>", "vessel.imo.*"],
        &["alert"],
        2,
        &["atlantic.south-america.>"],
    ),
    o("accra", &["air.>"], &[], 2, &["vessel.>"]),
];

const ROUTES: [&str; 10] = [
    "atlantic.west-africa.bijagos",
    "atlantic.west-africa",
    "atlantic.south-america.west-africa",
    "atlantic.caribbean",
    "vessel.imo.9387421",
    "vessel.imo.9123456",
    "vessel.imo.9387421.crew",
    "air.aircop.lfw",
    "air.cargo",
    "indian-ocean.somalia",
];

const KINDS: [&str; 4] = ["alert", "seizure", "vessel_of_interest", "route_update"];

/// What the test knows of one published notification.
struct Sent {
    case_ref: String,
    origin: &'static str,
    kind: &'static str,
    routes: Vec<&'static str>,
    level: u8,
    /// Nodes the audience names explicitly.
    audience: BTreeSet<&'static str>,
}

fn generate(n: usize) -> Vec<(Sent, serde_json::Value)> {
    let countries = [("maoc-n", "PT"), ("dakar", "SN"), ("accra", "GH")];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    (0..n)
        .map(|i| {
            let origin = NODES[i % 3];
            let kind = KINDS[rng.below(KINDS.len() as u64) as usize];
            let mut routes = vec![ROUTES[rng.below(ROUTES.len() as u64) as usize]];
            if rng.below(3) == 0 {
                let second = ROUTES[rng.below(ROUTES.len() as u64) as usize];
                if !routes.contains(&second) {
                    routes.push(second);
                }
            }
            let level = rng.below(4) as u8;
            let mask = 1 + rng.below(7);
            let mut audience = BTreeSet::new();
            let mut entries = Vec::new();
            for (bit, (node, cc)) in countries.iter().enumerate() {
                if mask & (1 << bit) != 0 {
                    audience.insert(*node);
                    // Both explicit forms: a country, or the node by name.
                    entries.push(if rng.below(4) == 0 {
                        format!("node:{node}")
                    } else {
                        format!("country:{cc}")
                    });
                }
            }
            let case_ref = format!("FEED-{i:05}");
            let mut json = serde_json::json!({
                "kind": kind, "case_ref": case_ref, "routes": routes,
                "handling": format!("H{level}"), "audience": entries,
                "fields": {"narrative": format!("notification {i}"),
                           "vessel": {"name": "MV Example", "imo": "9387421"}}
            });
            if level == 3 {
                json["handling_restriction"] = "not for use in asylum proceedings".into();
            }
            (
                Sent {
                    case_ref,
                    origin,
                    kind,
                    routes,
                    level,
                    audience,
                },
                json,
            )
        })
        .collect()
}

/// The expected feed of one officer, from the test's own model: the notification is held at the
/// officer's node (published there, or the node is named in the audience), its handling level is
/// within the clearance, the kind is followed (if kinds are given), and one of its routes is
/// both followed and allowed (what an officer follows is narrowed by what it may follow). The
/// starting policy of `pki init` lets every local role see everything, so the policy allows all.
fn expected(o: &Officer, sent: &[Sent]) -> BTreeSet<String> {
    sent.iter()
        .filter(|s| s.origin == o.node || s.audience.contains(o.node))
        .filter(|s| s.level <= o.clearance)
        .filter(|s| o.kinds.is_empty() || o.kinds.contains(&s.kind))
        .filter(|s| {
            s.routes.iter().any(|r| {
                o.follows.iter().any(|p| matches(p, r)) && o.allowed.iter().any(|p| matches(p, r))
            })
        })
        .map(|s| s.case_ref.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subscriber_receives_exactly_what_patterns_clearance_and_policy_allow() {
    let (_tmp, f) = line().await;
    // The issue asks for 5,000 notifications, and release builds use 5,000. Each one is sealed,
    // relayed over up to two mTLS hops, verified and filtered for 20 feeds: in a debug build on
    // a shared 2-core machine 5,000 take about 16 s alone and twice that beside the other
    // tests of this file, whose connections they starve. Debug builds use 500: the same code
    // paths and the same independent check, and the whole file stays well under 30 s.
    let count = if cfg!(debug_assertions) { 500 } else { 5_000 };

    // Every identity is issued before any client talks to a node (users.toml is re-read when
    // it changes).
    let identities: Vec<PathBuf> = OFFICERS
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let clearance = format!("H{}", o.clearance);
            issue(
                &f.dir,
                o.node,
                &format!("officer-{i:02}"),
                &clearance,
                o.allowed,
            )
        })
        .collect();

    let generated = generate(count);
    let (sent, jsons): (Vec<Sent>, Vec<serde_json::Value>) = generated.into_iter().unzip();
    let half = count / 2;
    let batches = |range: std::ops::Range<usize>| {
        let mut by_node: BTreeMap<&str, Vec<serde_json::Value>> = BTreeMap::new();
        for i in range {
            by_node
                .entry(sent[i].origin)
                .or_default()
                .push(jsons[i].clone());
        }
        by_node
    };

    // The first half is published before anyone subscribes (catch-up from the beginning) ...
    let first = batches(0..half);
    futures::future::join_all(
        first
            .into_iter()
            .map(|(node, ns)| publish_all(&f, node, ns)),
    )
    .await;

    let mut collectors = Vec::new();
    for (o, id) in OFFICERS.iter().zip(&identities) {
        let stream = Feed::open(
            who(&f.dir, o.node, id),
            o.follows,
            o.kinds,
            pb::subscribe_request::Start::Beginning,
            "",
        )
        .await;
        collectors.push(collect(stream));
    }

    // ... and the second half while the feeds are live.
    let second = batches(half..count);
    futures::future::join_all(
        second
            .into_iter()
            .map(|(node, ns)| publish_all(&f, node, ns)),
    )
    .await;

    let want: Vec<BTreeSet<String>> = OFFICERS.iter().map(|o| expected(o, &sent)).collect();
    assert!(
        want.iter().filter(|w| !w.is_empty()).count() >= 18,
        "the generated traffic should give almost every officer something to receive"
    );
    assert!(want[19].is_empty(), "officer-19 follows nothing it may see");
    let counts = || {
        collectors
            .iter()
            .map(|(got, _)| got.lock().expect("lock").len())
            .collect::<Vec<_>>()
    };
    // Wait (bounded) until every feed has reached its expected count; if one never does, the
    // comparison below says which officer misses what.
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline && !counts().iter().zip(&want).all(|(c, w)| *c >= w.len()) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Nothing more may come: watch for extras over a short bounded window.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    for (i, ((got, _), want)) in collectors.iter().zip(&want).enumerate() {
        let got = got.lock().expect("lock");
        let refs: Vec<String> = got.iter().map(|d| d.case_ref.clone()).collect();
        let set: BTreeSet<String> = refs.iter().cloned().collect();
        assert_eq!(
            refs.len(),
            set.len(),
            "officer-{i:02} received a notification twice"
        );
        let extra: Vec<_> = set.difference(want).collect();
        let missing: Vec<_> = want.difference(&set).collect();
        assert!(
            extra.is_empty() && missing.is_empty(),
            "officer-{i:02} at {}: {} extra {:?}, {} missing {:?}",
            OFFICERS[i].node,
            extra.len(),
            extra.iter().take(5).collect::<Vec<_>>(),
            missing.len(),
            missing.iter().take(5).collect::<Vec<_>>()
        );
        // What arrived is within clearance, re-checked on the delivery itself.
        for d in got.iter() {
            let level = d
                .handling
                .trim_start_matches('H')
                .parse::<u8>()
                .expect("code");
            assert!(
                level <= OFFICERS[i].clearance,
                "{} above clearance",
                d.case_ref
            );
            assert!(
                d.cursor > 0 && got.iter().filter(|x| x.cursor == d.cursor).count() == 1,
                "cursors are positive and unique"
            );
        }
    }
    for (_, h) in collectors {
        h.abort();
    }
    f.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 2. Durable subscriptions

fn desk_note(case_ref: &str) -> serde_json::Value {
    serde_json::json!({
        "kind": "alert", "case_ref": case_ref, "routes": ["atlantic.west-africa.bijagos"],
        "handling": "H1", "audience": ["country:GH"], "fields": {"narrative": case_ref}
    })
}

/// The README's line with one officer issued at accra: the federation and the officer's
/// connection.
async fn officer_at_accra(
    name: &str,
    clearance: &str,
    routes: &[&str],
) -> (tempfile::TempDir, LocalFederation, Conn) {
    let (tmp, f) = line().await;
    let id = issue(&f.dir, "accra", name, clearance, routes);
    let me = who(&f.dir, "accra", &id);
    (tmp, f, me)
}

/// Reads exactly `n` deliveries.
async fn take(stream: &mut Feed, n: usize) -> Vec<pb::Delivery> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(next(stream).await);
    }
    out
}

fn refs(ds: &[pb::Delivery]) -> Vec<String> {
    ds.iter().map(|d| d.case_ref.clone()).collect()
}

fn names(prefix: &str, r: std::ops::Range<usize>) -> Vec<String> {
    r.map(|i| format!("{prefix}-{i}")).collect()
}

async fn ack(conn: &Conn, cursor: u64) {
    let r = pb::subscriber_client::SubscriberClient::new(conn.connect().await.expect("connect"))
        .ack(pb::AckRequest {
            durable: "desk".into(),
            cursor,
        })
        .await
        .expect("ack")
        .into_inner();
    assert_eq!(r.cursor, cursor);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_subscription_resumes_without_gap_or_duplicate_after_disconnect_and_restart() {
    let (tmp, f) = line().await;
    let dir = f.dir.clone();
    let id = issue(&dir, "accra", "desk-officer", "H3", ALL);
    let start = pb::subscribe_request::Start::Beginning;
    let follows = ["atlantic.>"];

    // Batch A: ten notifications from MAOC-N, relayed through Dakar to Accra.
    for r in names("A", 0..10) {
        publish(&f, "maoc-n", &desk_note(&r)).await;
    }
    let me = who(&dir, "accra", &id);
    let mut s = Feed::open(me.clone(), &follows, &[], start, "desk").await;
    let a = take(&mut s, 10).await;
    assert_eq!(refs(&a), names("A", 0..10));
    // Acknowledge the first half only, then drop the stream.
    ack(&me, a[4].cursor).await;
    drop(s);

    // Batch B arrives while the officer is away.
    for r in names("B", 0..5) {
        publish(&f, "maoc-n", &desk_note(&r)).await;
    }
    let mut s = Feed::open(me.clone(), &follows, &[], start, "desk").await;
    let resumed = take(&mut s, 10).await;
    let mut want = names("A", 5..10);
    want.extend(names("B", 0..5));
    assert_eq!(
        refs(&resumed),
        want,
        "exactly the unacknowledged and the new ones, in order"
    );
    assert!(resumed.windows(2).all(|w| w[0].cursor < w[1].cursor));
    assert_eq!(
        resumed[..5].iter().map(|d| d.cursor).collect::<Vec<_>>(),
        a[5..].iter().map(|d| d.cursor).collect::<Vec<_>>(),
        "redelivered at the same feed positions"
    );
    assert_quiet(
        &mut s,
        Duration::from_millis(500),
        "after the resumed batch",
    )
    .await;
    // Acknowledge up to B-1, then stop the whole federation.
    ack(&me, resumed[6].cursor).await;
    drop(s);
    let fed = f.fed.clone();
    f.stop().await;

    // Restart every node on the same directory; nothing is re-issued.
    let f = LocalFederation::start_existing(&dir, fed, &NODES)
        .await
        .expect("restart");
    f.converge(Duration::from_secs(30))
        .await
        .expect("converge after restart");
    for r in names("C", 0..3) {
        publish(&f, "maoc-n", &desk_note(&r)).await;
    }
    let me = who(&dir, "accra", &id);
    let mut s = Feed::open(me.clone(), &follows, &[], start, "desk").await;
    let after_restart = take(&mut s, 6).await;
    let mut want = names("B", 2..5);
    want.extend(names("C", 0..3));
    assert_eq!(
        refs(&after_restart),
        want,
        "after a restart: the unacknowledged and the new ones, in order"
    );
    assert!(after_restart[0].cursor > resumed[6].cursor);
    assert!(after_restart.windows(2).all(|w| w[0].cursor < w[1].cursor));
    assert_quiet(
        &mut s,
        Duration::from_millis(500),
        "after the restart batch",
    )
    .await;

    // Everything acknowledged: resuming gives nothing old, and the next new one only.
    ack(&me, after_restart[5].cursor).await;
    drop(s);
    let mut s = Feed::open(me.clone(), &follows, &[], start, "desk").await;
    publish(&f, "maoc-n", &desk_note("D-0")).await;
    assert_eq!(next(&mut s).await.case_ref, "D-0");
    assert_quiet(
        &mut s,
        Duration::from_millis(500),
        "after everything was acknowledged",
    )
    .await;
    drop(s);
    f.stop().await;
    drop(tmp);
}

/// The command line's default: a new durable subscription "from now". Its reader goes away
/// before anything arrives, so it never acknowledges; what arrives meanwhile is still kept for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_durable_subscription_from_now_keeps_what_arrives_before_its_first_ack() {
    let (_tmp, f, me) = officer_at_accra("night-officer", "H3", ALL).await;
    let now = pb::subscribe_request::Start::Now;
    let follows = ["atlantic.>"];

    // Delivered before the subscription exists: not part of it.
    publish(&f, "maoc-n", &desk_note("EARLIER")).await;
    let mut probe = Feed::open(
        me.clone(),
        &follows,
        &[],
        pb::subscribe_request::Start::Beginning,
        "",
    )
    .await;
    assert_eq!(next(&mut probe).await.case_ref, "EARLIER");
    drop(probe);

    let s = Feed::open(me.clone(), &follows, &[], now, "night").await;
    drop(s);
    for r in names("AWAY", 0..3) {
        publish(&f, "maoc-n", &desk_note(&r)).await;
    }
    let mut s = Feed::open(me.clone(), &follows, &[], now, "night").await;
    let back = take(&mut s, 3).await;
    assert_eq!(
        refs(&back),
        names("AWAY", 0..3),
        "what arrived while away, and nothing from before the subscription"
    );
    assert_quiet(&mut s, Duration::from_millis(500), "after the missed ones").await;
    f.stop().await;
}

/// Interest routing announces what a subscription can receive: the routes asked for, narrowed
/// to those its officer may follow. Asking for more than that draws nothing extra to the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriptions_interest_is_narrowed_to_the_routes_its_officer_may_follow() {
    let (_tmp, f, me) = officer_at_accra("atlantic-desk", "H3", &["atlantic.>"]).await;
    let now = pb::subscribe_request::Start::Now;
    let announced = || f.nodes["accra"].node.interests();

    // Outside what the officer may follow: accepted (it delivers nothing), announced nowhere.
    let outside = Feed::open(me.clone(), &["caribbean.>"], &[], now, "").await;
    assert!(announced().is_empty(), "{:?}", announced());
    // Everything: narrowed to the officer's atlantic.>.
    let everything = Feed::open(me.clone(), &[">"], &[], now, "").await;
    assert_eq!(announced(), vec!["atlantic.>".to_owned()]);
    drop(everything);
    // Partly inside: the part inside.
    let _part = Feed::open(me.clone(), &["*.west-africa"], &[], now, "").await;
    wait_for(
        Duration::from_secs(10),
        "the `>` interest withdrawn",
        || {
            let now = announced();
            async move { now == vec!["atlantic.west-africa".to_owned()] }
        },
    )
    .await;
    drop(outside);

    // The officer is told which asked patterns lie outside (a response header, which
    // `tidewire subscribe` prints as a warning); a pattern partly inside draws none.
    let warning = async |routes: &[&str]| {
        let r = pb::subscriber_client::SubscriberClient::new(me.connect().await.expect("connect"))
            .subscribe(pb::SubscribeRequest {
                routes: routes.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            })
            .await
            .expect("subscribe");
        r.metadata()
            .get(tidewire_node::subscribe::ROUTES_WARNING)
            .map(|v| v.to_str().expect("ascii").to_owned())
    };
    let told = warning(&["caribbean.>", "atlantic.west-africa"])
        .await
        .expect("a warning");
    assert!(
        told.contains("`caribbean.>`")
            && !told.contains("west-africa")
            && told.contains("atlantic-desk")
            && told.contains("atlantic.>"),
        "{told}"
    );
    assert_eq!(warning(&["*.west-africa"]).await, None);
    f.stop().await;
}

/// A client's routes bound what it publishes as well as what it follows: an AIRCOP airport
/// desk allowed `air.aircop.>` publishes there, and a notification on any other route is
/// refused (PERMISSION_DENIED, naming the route and the fix) without a trace on the node, alone
/// or in a stream whose other publishes go through. A subscriber may not publish at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_publishes_only_on_the_routes_its_entry_allows() {
    let (_tmp, f) = line().await;
    let dir = f.dir.clone();
    let desk = issue_as(
        &dir,
        "maoc-n",
        "aircop-lfw",
        "publisher",
        "H1",
        &["air.aircop.>"],
    );
    let desk = who(&dir, "maoc-n", &desk);
    let note = |route: &str| {
        serde_json::json!({
            "kind": "seizure", "routes": [route], "handling": "H1",
            "audience": ["node:dakar"], "fields": {"narrative": "courier stopped at Lomé"}
        })
        .to_string()
    };
    let request = |route: &str| pb::PublishRequest {
        notification_json: note(route),
        idempotency_key: String::new(),
    };
    let mut client =
        pb::publisher_client::PublisherClient::new(desk.connect().await.expect("connect"));
    client
        .publish(request("air.aircop.lfw"))
        .await
        .expect("on its own route");
    let refused = client
        .publish(request("atlantic.west-africa"))
        .await
        .expect_err("outside its routes");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("user:aircop-lfw")
            && refused.message().contains("air.aircop.>")
            && refused
                .message()
                .contains("`atlantic.west-africa` is not one of them")
            && refused.message().contains("users.toml"),
        "{}",
        refused.message()
    );

    // In a stream, the refused one is answered with its error; the others go through.
    let replies: Vec<pb::PublishReply> = client
        .publish_stream(futures::stream::iter([
            request("air.aircop.dkr"),
            request("vessel.imo.9387421"),
            request("air.aircop.acc"),
        ]))
        .await
        .expect("stream")
        .into_inner()
        .map(|r| r.expect("reply"))
        .collect()
        .await;
    let codes: Vec<i32> = replies.iter().map(|r| r.error_code).collect();
    assert_eq!(
        codes,
        [0, tonic::Code::PermissionDenied as i32, 0],
        "{replies:?}"
    );
    let published = common::status(&f, "maoc-n").await.counters["published"];
    assert_eq!(published, 3, "the refused ones left nothing");

    let officer = issue(&dir, "maoc-n", "officer-1", "H1", &[">"]);
    let denied = pb::publisher_client::PublisherClient::new(
        who(&dir, "maoc-n", &officer)
            .connect()
            .await
            .expect("connect"),
    )
    .publish(request("air.aircop.lfw"))
    .await
    .expect_err("a subscriber does not publish");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    f.stop().await;
}

/// A durable subscription has one reader at a time: a second connection takes it over, the
/// first stream ends saying so (ALREADY_EXISTS), and what follows goes to the new reader only.
/// Ending the subscription ends the stream reading it, too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_reader_takes_a_durable_subscription_over() {
    let (_tmp, f, me) = officer_at_accra("shift-officer", "H3", ALL).await;
    let now = pb::subscribe_request::Start::Now;
    let mut first = Feed::open(me.clone(), &["atlantic.>"], &[], now, "desk").await;
    publish(&f, "maoc-n", &desk_note("DAY-SHIFT")).await;
    assert_eq!(next(&mut first).await.case_ref, "DAY-SHIFT");
    ack(&me, first.last.expect("a cursor")).await;

    let mut second = Feed::open(me.clone(), &["atlantic.>"], &[], now, "desk").await;
    let ended = ended_with(&mut first).await;
    assert_eq!(ended.code(), tonic::Code::AlreadyExists, "{ended:?}");
    assert!(
        ended.message().contains("taken over"),
        "{}",
        ended.message()
    );
    publish(&f, "maoc-n", &desk_note("NIGHT-SHIFT")).await;
    assert_eq!(next(&mut second).await.case_ref, "NIGHT-SHIFT");

    // Ended while read: the reader is told (NOT_FOUND), not left acknowledging into nothing.
    forget(&me, "desk").await.expect("forget");
    let ended = ended_with(&mut second).await;
    assert_eq!(ended.code(), tonic::Code::NotFound, "{ended:?}");
    assert!(ended.message().contains("was ended"), "{}", ended.message());
    f.stop().await;
}

/// An acknowledgement names a durable subscription that exists and a cursor the feed holds,
/// and a stream starts at such a cursor: a misspelt name or a cursor past the end (which would
/// skip what has not arrived yet) is refused and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgements_of_unknown_subscriptions_or_future_cursors_are_refused() {
    let (_tmp, f, me) = officer_at_accra("careful-officer", "H3", ALL).await;
    let ack_as = async |durable: &str, cursor: u64| {
        pb::subscriber_client::SubscriberClient::new(me.connect().await.expect("connect"))
            .ack(pb::AckRequest {
                durable: durable.into(),
                cursor,
            })
            .await
    };
    let unknown = ack_as("dsek", 1).await.expect_err("no such subscription");
    assert_eq!(unknown.code(), tonic::Code::NotFound, "{unknown:?}");
    assert!(
        unknown.message().contains("`dsek`"),
        "{}",
        unknown.message()
    );

    let feed = Feed::open(
        me.clone(),
        &["atlantic.>"],
        &[],
        pb::subscribe_request::Start::Now,
        "desk",
    )
    .await;
    drop(feed);
    let future = ack_as("desk", u64::MAX)
        .await
        .expect_err("past the feed's end");
    assert_eq!(future.code(), tonic::Code::InvalidArgument, "{future:?}");
    // Nor may a stream start after a cursor the feed has not reached (another node's cursor).
    let from_future =
        pb::subscriber_client::SubscriberClient::new(me.connect().await.expect("connect"))
            .subscribe(pb::SubscribeRequest {
                start: pb::subscribe_request::Start::Cursor as i32,
                cursor: 1_000_000,
                ..Default::default()
            })
            .await
            .expect_err("a cursor past the feed's end");
    assert_eq!(
        from_future.code(),
        tonic::Code::InvalidArgument,
        "{from_future:?}"
    );
    assert!(
        from_future
            .message()
            .contains("cursors belong to the node that gave them"),
        "{}",
        from_future.message()
    );
    // Nothing changed: what arrives next is still delivered to the subscription.
    publish(&f, "maoc-n", &desk_note("STILL-DELIVERED")).await;
    let mut feed = Feed::open(
        me.clone(),
        &["atlantic.>"],
        &[],
        pb::subscribe_request::Start::Now,
        "desk",
    )
    .await;
    assert_eq!(next(&mut feed).await.case_ref, "STILL-DELIVERED");
    f.stop().await;
}

/// Sets `name`'s clearance, or revokes it, in `node`'s user table, as `tidewire users` does.
fn change_user(
    dir: &Path,
    node: &str,
    name: &str,
    change: impl FnOnce(&mut tidewire_node::users::UserEntry),
) {
    let path = dir.join(node).join("users.toml");
    let mut table = tidewire_node::users::UsersFile::load(&path).expect("users.toml");
    change(
        table
            .users
            .iter_mut()
            .find(|u| u.name == name)
            .expect("the user"),
    );
    table.save(&path).expect("save users.toml");
}

/// The status `feed` ends with, within 10 s; a delivery before it fails the test.
async fn ended_with(feed: &mut Feed) -> tonic::Status {
    match tokio::time::timeout(Duration::from_secs(10), feed.stream.next()).await {
        Ok(Some(Err(e))) => e,
        Ok(Some(Ok(d))) => panic!("delivered {} instead of ending", d.case_ref),
        Ok(None) => panic!("the stream ended without saying why"),
        Err(_) => panic!("the stream still open 10 s after the change"),
    }
}

/// Revoking an officer, or lowering its clearance, takes effect on the subscription it has
/// open, not only on its next connection: the stream ends with the reason, and nothing
/// published afterwards reaches it under the old access.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_of_access_ends_the_open_subscription_with_the_reason() {
    let (_tmp, f, me) = officer_at_accra("rotating-officer", "H3", ALL).await;
    let now = pb::subscribe_request::Start::Now;
    let mut feed = Feed::open(me.clone(), &["atlantic.>"], &[], now, "").await;
    publish(&f, "maoc-n", &desk_note("BEFORE")).await;
    assert_eq!(next(&mut feed).await.case_ref, "BEFORE");

    // Clearance lowered to H0: the stream ends (ABORTED), and a new one follows under H0.
    change_user(&f.dir, "accra", "rotating-officer", |u| {
        u.clearance = "H0".into()
    });
    let ended = ended_with(&mut feed).await;
    assert_eq!(ended.code(), tonic::Code::Aborted, "{ended:?}");
    assert!(
        ended.message().contains("subscribe again"),
        "{}",
        ended.message()
    );
    let mut feed = Feed::open(me.clone(), &["atlantic.>"], &[], now, "").await;
    publish(&f, "maoc-n", &desk_note("H1-ONLY")).await;
    let mut open = desk_note("H0-OPEN");
    open["handling"] = "H0".into();
    publish(&f, "maoc-n", &open).await;
    assert_eq!(
        next(&mut feed).await.case_ref,
        "H0-OPEN",
        "H1 is above the new clearance"
    );

    // Revoked: the stream ends (PERMISSION_DENIED), and subscribing again is refused.
    change_user(&f.dir, "accra", "rotating-officer", |u| u.revoked = true);
    publish(&f, "maoc-n", &open).await;
    let ended = ended_with(&mut feed).await;
    assert_eq!(ended.code(), tonic::Code::PermissionDenied, "{ended:?}");
    assert!(ended.message().contains("revoked"), "{}", ended.message());
    let again = pb::subscriber_client::SubscriberClient::new(me.connect().await.expect("connect"))
        .subscribe(pb::SubscribeRequest {
            routes: vec!["atlantic.>".into()],
            start: now as i32,
            ..Default::default()
        })
        .await
        .expect_err("a revoked officer cannot subscribe");
    assert_eq!(again.code(), tonic::Code::PermissionDenied);
    f.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 3. A stalled subscriber

fn bulky_note(i: usize) -> serde_json::Value {
    let persons: Vec<_> = (0..4)
        .map(|p| serde_json::json!({"name": format!("Person {p}"), "nationality": "CO", "role": "crew"}))
        .collect();
    serde_json::json!({
        "kind": "vessel_of_interest", "case_ref": format!("BULK-{i:06}"),
        "routes": ["atlantic.west-africa.bijagos"], "handling": "H1",
        "audience": ["country:GH"],
        "fields": {
            "vessel": {"name": "MV Example", "imo": "9387421", "flag": "TG",
                       "position": {"lat": 5.61, "lon": -0.19}},
            "persons": persons,
            "narrative": "Mother ship suspected of transhipment off the Bijagos; rendezvous expected \
                          within 48 hours with two go-fast boats from the Guinea-Bissau coast.",
            // About 3 KiB more, so that the 4 MiB HTTP/2 stream window of the stalled client holds
            // only a fifth of the backlog and the rest has to wait at the node.
            "remarks": "observed transhipment pattern; ".repeat(96)
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_does_not_block_others() {
    let (_tmp, f) = line().await;
    // The issue asks for a backlog of 100,000. `tidewire bench relay` covers volumes of that
    // order in release builds; a debug build on a shared 2-core machine uses 5,000 here, still
    // far more than the stream buffers (a 64-entry channel and the HTTP/2 windows), so the
    // stalled subscription is really blocked on its send while the others run.
    let count = if cfg!(debug_assertions) {
        5_000
    } else {
        100_000
    };
    let stalled_id = issue(&f.dir, "accra", "stalled", "H3", ALL);
    let reader_id = issue(&f.dir, "accra", "reader", "H3", ALL);

    // The stalled officer opens its feed and never reads it: the stream stays open and is never
    // polled.
    let stalled = Feed::open(
        who(&f.dir, "accra", &stalled_id),
        &["atlantic.>"],
        &[],
        pb::subscribe_request::Start::Beginning,
        "",
    )
    .await;
    let (got, reader) = collect(
        Feed::open(
            who(&f.dir, "accra", &reader_id),
            &["atlantic.>"],
            &[],
            pb::subscribe_request::Start::Beginning,
            "",
        )
        .await,
    );

    // Publish from MAOC-N, two hops away; publishing must complete despite the stalled feed.
    let ids = publish_all(&f, "maoc-n", (0..count).map(bulky_note).collect()).await;
    assert_eq!(ids.len(), count, "publishing completed");

    wait_for(
        Duration::from_secs(300),
        "the reading subscriber to receive everything",
        || {
            let n = got.lock().expect("lock").len();
            async move { n >= count }
        },
    )
    .await;
    {
        let got = got.lock().expect("lock");
        let set: BTreeSet<&str> = got.iter().map(|d| d.case_ref.as_str()).collect();
        assert_eq!(got.len(), count, "no duplicates");
        assert_eq!(set.len(), count);
        assert!(got.windows(2).all(|w| w[0].cursor < w[1].cursor));
    }
    reader.abort();
    // The stalled one really is behind: the node has handed it only what the stream buffers
    // hold, and the rest waits on disk for it.
    let handed = audit(&f, "accra", "", "delivered")
        .await
        .iter()
        .filter(|e| e.destination == "user:stalled")
        .count();
    assert!(
        handed < count,
        "the stalled subscriber was handed all {count}: it was not stalled"
    );
    eprintln!(
        "stalled subscriber: handed {handed} of {count}, {} waiting at the node",
        count - handed
    );

    // The stalled one lost nothing: when it finally reads, everything is there, in order.
    let (late, late_task) = collect(stalled);
    wait_for(
        Duration::from_secs(300),
        "the stalled subscriber to catch up",
        || {
            let n = late.lock().expect("lock").len();
            async move { n >= count }
        },
    )
    .await;
    assert_eq!(late.lock().expect("lock").len(), count);
    late_task.abort();
    f.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 4. Interest routing of wildcard audiences

async fn backlog(f: &LocalFederation, node: &str) -> u64 {
    common::backlogs(f, node).await.values().sum()
}

fn wildcard(case_ref: &str, route: &str, audience: &str) -> serde_json::Value {
    serde_json::json!({
        "kind": "route_update", "case_ref": case_ref, "routes": [route],
        "handling": "H0", "audience": [audience], "fields": {"narrative": case_ref}
    })
}

/// Whether MAOC-N's routing has learned that Accra's subscribers follow `route`.
fn maoc_n_draws_to_accra(f: &LocalFederation, route: &str) -> bool {
    let accra: tidewire_core::NodeId = "accra".parse().expect("id");
    let route: tidewire_core::Route = route.parse().expect("route");
    f.nodes["maoc-n"]
        .node
        .routing
        .lock()
        .expect("routing")
        .interested(std::slice::from_ref(&route))
        .contains(&accra)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_audiences_reach_only_nodes_with_interest() {
    let (_tmp, f) = line().await;
    let watcher = issue(&f.dir, "accra", "watcher", "H3", ALL);

    // Before anyone subscribes, node:* has no destination at all.
    let early = publish(
        &f,
        "maoc-n",
        &wildcard("WILD-EARLY", "atlantic.west-africa", "node:*"),
    )
    .await;
    // A control notification with an explicit audience, sent after it on the same path: once
    // it has arrived at Accra and MAOC-N's outbox is empty, the wildcard one would have arrived
    // too had it been sent.
    let control = publish(
        &f,
        "maoc-n",
        &wildcard("CONTROL-1", "atlantic.west-africa", "node:accra"),
    )
    .await;
    wait_for(Duration::from_secs(20), "the control at accra", || async {
        !audit(&f, "accra", &control, "received").await.is_empty()
    })
    .await;
    wait_for(
        Duration::from_secs(20),
        "maoc-n's outbox to drain",
        || async { backlog(&f, "maoc-n").await == 0 },
    )
    .await;
    let published = audit(&f, "maoc-n", &early, "published").await;
    let detail: serde_json::Value =
        serde_json::from_str(&published[0].detail_json).expect("detail");
    assert_eq!(detail["destinations"], serde_json::json!([]));
    for node in ["dakar", "accra"] {
        assert!(
            audit(&f, node, &early, "received").await.is_empty(),
            "node:* with no interest anywhere must not reach {node}"
        );
    }

    // An officer at Accra follows atlantic.>; wait until MAOC-N's routing has learned it.
    let mut feed = Feed::open(
        who(&f.dir, "accra", &watcher),
        &["atlantic.>"],
        &[],
        pb::subscribe_request::Start::Now,
        "",
    )
    .await;
    wait_for(
        Duration::from_secs(20),
        "maoc-n to learn accra's interest",
        || {
            let ok = maoc_n_draws_to_accra(&f, "atlantic.west-africa");
            async move { ok }
        },
    )
    .await;

    let wanted = publish(
        &f,
        "maoc-n",
        &wildcard("WILD-ATLANTIC", "atlantic.west-africa", "node:*"),
    )
    .await;
    // A route nobody follows goes nowhere, even now.
    let unwanted = publish(&f, "maoc-n", &wildcard("WILD-AIR", "air.cargo", "node:*")).await;
    assert_eq!(next(&mut feed).await.case_ref, "WILD-ATLANTIC");
    wait_for(Duration::from_secs(20), "accra to receive", || async {
        !audit(&f, "accra", &wanted, "received").await.is_empty()
    })
    .await;
    wait_for(
        Duration::from_secs(20),
        "maoc-n's outbox to drain",
        || async { backlog(&f, "maoc-n").await == 0 },
    )
    .await;
    // Dakar carried it in transit but holds no copy of its own: no local "received".
    assert!(
        audit(&f, "dakar", &wanted, "received").await.is_empty(),
        "dakar has no interest in atlantic routes"
    );
    assert!(audit(&f, "accra", &unwanted, "received").await.is_empty());
    assert!(audit(&f, "dakar", &unwanted, "received").await.is_empty());
    assert!(audit(&f, "accra", &early, "received").await.is_empty());
    let published = audit(&f, "maoc-n", &wanted, "published").await;
    let detail: serde_json::Value =
        serde_json::from_str(&published[0].detail_json).expect("detail");
    assert_eq!(detail["destinations"], serde_json::json!(["accra"]));
    assert_quiet(&mut feed, Duration::from_millis(500), "the watcher's feed").await;
    drop(feed);
    f.stop().await;
}

/// Ends the durable subscription `durable` of the identity `conn` connects as.
async fn forget(conn: &Conn, durable: &str) -> Result<pb::ForgetReply, tonic::Status> {
    pb::subscriber_client::SubscriberClient::new(conn.connect().await.expect("connect"))
        .forget(pb::ForgetRequest {
            durable: durable.into(),
        })
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ending_a_durable_subscription_withdraws_its_interest_and_its_cursor() {
    let (_tmp, f, me) = officer_at_accra("rotating-officer", "H3", ALL).await;
    let maoc_n_sees_interest = || maoc_n_draws_to_accra(&f, "caribbean.lesser-antilles");

    // A durable subscription keeps drawing its routes to Accra while its officer is away.
    let feed = Feed::open(
        me.clone(),
        &["caribbean.>"],
        &[],
        pb::subscribe_request::Start::Now,
        "caribbean-desk",
    )
    .await;
    drop(feed);
    wait_for(
        Duration::from_secs(20),
        "maoc-n to learn the durable interest",
        || {
            let ok = maoc_n_sees_interest();
            async move { ok }
        },
    )
    .await;

    // The officer leaves the post and ends it.
    forget(&me, "caribbean-desk").await.expect("forget");
    wait_for(
        Duration::from_secs(20),
        "maoc-n to drop the withdrawn interest",
        || {
            let gone = !maoc_n_sees_interest();
            async move { gone }
        },
    )
    .await;
    assert!(
        !f.nodes["accra"]
            .node
            .interests()
            .iter()
            .any(|p| p == "caribbean.>"),
        "accra still announces the forgotten subscription"
    );

    // Forgetting it again is a clear NOT_FOUND, and changes nothing.
    let again = forget(&me, "caribbean-desk")
        .await
        .expect_err("already forgotten");
    assert_eq!(again.code(), tonic::Code::NotFound);
    assert!(
        again.message().contains("caribbean-desk"),
        "{}",
        again.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_subscription_left_unconnected_past_the_idle_limit_is_ended() {
    let (_tmp, mut f) = line().await;
    // Accra ends durable subscriptions left unconnected for 1.8 s.
    f.stop_node("accra").await.expect("stop accra");
    common::set_limit(&f, "accra", "durable_idle_hours", "0.0005");
    f.restart_node("accra").await.expect("restart accra");

    let id = issue(&f.dir, "accra", "watch-officer", "H3", ALL);
    let me = who(&f.dir, "accra", &id);
    let open = |name: &'static str| {
        Feed::open(
            me.clone(),
            &["caribbean.>"],
            &[],
            pb::subscribe_request::Start::Now,
            name,
        )
    };
    // One desk stays connected; the other is left.
    let _watched = open("night-desk").await;
    drop(open("left-desk").await);

    let ended = || async {
        audit(&f, "accra", "", "subscription_ended")
            .await
            .into_iter()
            .map(|e| {
                let d: serde_json::Value = serde_json::from_str(&e.detail_json).expect("detail");
                assert_eq!(e.destination, "user:watch-officer");
                assert_eq!(d["reason"], "idle");
                d["durable"].as_str().unwrap_or_default().to_owned()
            })
            .collect::<Vec<_>>()
    };
    // The purge runs every 10 s.
    wait_for(
        Duration::from_secs(40),
        "accra to end the idle durable subscription",
        || async { !ended().await.is_empty() },
    )
    .await;
    // The pass that ended the left desk also saw the connected one, which is older: kept.
    assert_eq!(ended().await, ["left-desk"]);

    let gone = forget(&me, "left-desk")
        .await
        .expect_err("the idle subscription was ended");
    assert_eq!(gone.code(), tonic::Code::NotFound);
    forget(&me, "night-desk")
        .await
        .expect("the connected subscription is still there");
    f.stop().await;
}
