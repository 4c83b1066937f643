//! Data-protection policy on the one egress path, end to end with real nodes over real mTLS
//! (DESIGN invariants 1 "nothing leaves unfiltered", 2 "relays narrow, never widen" and 8 "every
//! disclosure is on the ledger with the policy version that allowed it"):
//!
//! - along `maoc-n → dakar → accra`, every node's policy narrows the copy and the custody chain
//!   says which node withheld what under which rule;
//! - a policy flipped 50 times under load leaves a ledger whose every `transfer` names the
//!   version that decided it, and the copies received agree with that version;
//! - a recording peer holding `accra`'s real certificate links to a real `maoc-n` and records the
//!   bytes it is sent: no value the policy withholds from `accra` ever occurs in them, and every
//!   envelope verifies with exactly the fields the policy lets through.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};
use tidewire::demo::LocalFederation;
use tidewire_core::fields::PathPattern;
use tidewire_proto::v1 as pb;
use tidewire_proto::v1::link_frame::Frame;
use tokio::sync::mpsc;

type Channel = tonic::transport::Channel;

mod common;

use common::{admin, audit, line, publish, publish_on, wait_for};

async fn apply(f: &LocalFederation, node: &str, text: &str) -> String {
    admin(f, node)
        .await
        .policy_apply(pb::PolicyApplyRequest {
            policy_toml: text.to_owned(),
        })
        .await
        .unwrap_or_else(|e| panic!("policy_apply at {node}: {e}\n{text}"))
        .into_inner()
        .content_hash
}

fn detail(e: &pb::AuditEntry) -> Value {
    serde_json::from_str(&e.detail_json).expect("detail is JSON")
}

/// `detail.withheld` of a transfer entry as (path, rule) pairs.
fn withheld_of(e: &pb::AuditEntry) -> BTreeSet<(String, String)> {
    detail(e)["withheld"]
        .as_array()
        .expect("withheld is a list")
        .iter()
        .map(|w| {
            (
                w["path"].as_str().expect("path").to_owned(),
                w["rule"].as_str().expect("rule").to_owned(),
            )
        })
        .collect()
}

/// Subscribes at `node` as the federation's admin client from the beginning of its feed and
/// collects deliveries until every id in `ids` has arrived (bounded).
async fn deliveries(
    f: &LocalFederation,
    node: &str,
    ids: &BTreeSet<String>,
    within: Duration,
) -> HashMap<String, pb::Delivery> {
    let mut feed = pb::subscriber_client::SubscriberClient::new(
        f.conn(node).connect().await.expect("connect"),
    )
    .subscribe(pb::SubscribeRequest {
        start: pb::subscribe_request::Start::Beginning as i32,
        ..Default::default()
    })
    .await
    .expect("subscribe")
    .into_inner();
    let deadline = Instant::now() + within;
    let mut out = HashMap::new();
    while !ids.iter().all(|i| out.contains_key(i)) {
        let left = deadline.saturating_duration_since(Instant::now());
        let next = match tokio::time::timeout(left, feed.message()).await {
            Ok(m) => m,
            Err(_) => panic!(
                "timed out at {node}: {} of {} deliveries arrived",
                ids.iter().filter(|i| out.contains_key(*i)).count(),
                ids.len()
            ),
        };
        let d = next
            .expect("subscription failed")
            .expect("subscription ended");
        out.insert(d.id.clone(), d);
    }
    out
}

fn body(d: &pb::Delivery) -> Value {
    serde_json::from_str(&d.fields_json).expect("fields_json is JSON")
}

const MAOC_TO_DAKAR: &str = "to-dakar-in-full";
const MAOC_TO_ACCRA: &str = "to-ghana-no-narrative";
const DAKAR_TO_ACCRA: &str = "relay-to-accra-no-persons";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hops_narrow_by_every_policy_and_the_custody_chain_says_who_withheld_what() {
    let (_tmp, f) = line().await;
    let maoc_hash = apply(
        &f,
        "maoc-n",
        &format!(
            r#"version = 2
default = "deny"

[[rule]]
id = "{MAOC_TO_DAKAR}"
to = ["node:dakar"]
allow = ["*"]

[[rule]]
id = "{MAOC_TO_ACCRA}"
to = ["country:GH"]
allow = ["*"]
redact = ["narrative"]

[[rule]]
id = "local-officers"
to = ["role:*"]
allow = ["*"]
"#
        ),
    )
    .await;
    let dakar_hash = apply(
        &f,
        "dakar",
        &format!(
            r#"version = 2
default = "deny"

[[rule]]
id = "local-officers"
to = ["role:*"]
allow = ["*"]

[[rule]]
id = "{DAKAR_TO_ACCRA}"
to = ["node:accra"]
allow = ["*"]
redact = ["persons[*]"]

[[rule]]
id = "to-maoc-n"
to = ["node:maoc-n"]
allow = ["*"]
"#
        ),
    )
    .await;

    let n = json!({
        "kind": "vessel_of_interest", "case_ref": "MAOC-3HOPS", "routes": ["atlantic.west-africa"],
        "handling": "H1", "audience": ["node:dakar", "node:accra"],
        "fields": {
            "vessel": {"name": "MV Example", "imo": "9387421"},
            "persons": [{"name": "J. Doe", "nationality": "CO"}, {"name": "R. Roe", "role": "crew"}],
            "narrative": "Mother ship suspected of transhipment off the Bijagos."
        }
    });
    let persons: BTreeSet<String> = [
        "persons[0].name",
        "persons[0].nationality",
        "persons[1].name",
        "persons[1].role",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    let id = publish(&f, "maoc-n", &n).await;

    // What accra's admin sees, from the beginning of accra's feed.
    let ids: BTreeSet<String> = [id.clone()].into();
    let d = deliveries(&f, "accra", &ids, Duration::from_secs(20))
        .await
        .remove(&id)
        .expect("delivery");
    let b = body(&d);
    assert_eq!(
        b,
        json!({"vessel": {"name": "MV Example", "imo": "9387421"}}),
        "accra must receive the vessel only: {}",
        d.fields_json
    );
    assert!(b.get("persons").is_none() && b.get("narrative").is_none());
    assert_eq!(d.path, ["maoc-n", "dakar"], "custody path");
    let by = |node: &str| -> Vec<&pb::WithheldInfo> {
        d.withheld.iter().filter(|w| w.by == node).collect()
    };
    let by_maoc = by("maoc-n");
    let by_dakar = by("dakar");
    assert_eq!(
        by_maoc.len(),
        1,
        "maoc-n withheld the narrative: {:?}",
        d.withheld
    );
    assert_eq!(by_maoc[0].rule, MAOC_TO_ACCRA);
    assert_eq!(
        by_dakar.len(),
        persons.len(),
        "dakar withheld every person field: {:?}",
        d.withheld
    );
    assert!(by_dakar.iter().all(|w| w.rule == DAKAR_TO_ACCRA));
    assert_eq!(
        d.withheld.len(),
        1 + persons.len(),
        "nothing else is withheld, and every withholding is attributed: {:?}",
        d.withheld
    );
    // Withheld fields travel as their digests only.
    assert!(
        d.withheld
            .iter()
            .all(|w| w.path_or_digest.len() == 64 && hex::decode(&w.path_or_digest).is_ok())
    );

    // Accra verified everything it received: signatures, custody chain, every field.
    let (counters, refused) = f.nodes["accra"].node.counters.snapshot();
    assert!(counters["verified"] >= 1, "{counters:?}");
    assert!(refused.is_empty(), "accra refused something: {refused:?}");
    let received = audit(&f, "accra", &id, "received").await;
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].destination, "node:dakar");
    assert_eq!(detail(&received[0])["path"], json!(["maoc-n", "dakar"]));
    assert_eq!(detail(&received[0])["withheld"], json!(1 + persons.len()));

    // Dakar itself received the narrative (its own copy) ...
    let at_dakar = audit(&f, "dakar", &id, "received").await;
    assert_eq!(at_dakar.len(), 1);
    assert_eq!(
        detail(&at_dakar[0])["withheld"],
        json!(0),
        "dakar may see everything"
    );
    // ... and its ledger says it withheld the persons from accra, under its rule and version.
    wait_for(
        Duration::from_secs(10),
        "dakar's transfer record",
        || async { !audit(&f, "dakar", &id, "transfer").await.is_empty() },
    )
    .await;
    let dakar_transfers = audit(&f, "dakar", &id, "transfer").await;
    assert_eq!(dakar_transfers.len(), 1, "{dakar_transfers:?}");
    let t = &dakar_transfers[0];
    assert_eq!(t.destination, "node:accra");
    assert_eq!(t.policy_version, dakar_hash);
    assert_eq!(t.rule, DAKAR_TO_ACCRA);
    assert_eq!(detail(t)["via"], "accra");
    assert_eq!(detail(t)["origin"], "maoc-n");
    assert_eq!(
        withheld_of(t),
        persons
            .iter()
            .map(|p| (p.clone(), DAKAR_TO_ACCRA.to_owned()))
            .collect(),
        "dakar withholds exactly the person fields (the narrative never reached it in this copy)"
    );

    // Maoc-n's ledger: the copy for accra via dakar lost the narrative; dakar's own copy did not.
    let maoc_transfers = audit(&f, "maoc-n", &id, "transfer").await;
    let to = |dest: &str| -> &pb::AuditEntry {
        let hits: Vec<_> = maoc_transfers
            .iter()
            .filter(|e| e.destination == dest)
            .collect();
        assert_eq!(hits.len(), 1, "one transfer to {dest}: {maoc_transfers:?}");
        hits[0]
    };
    let for_accra = to("node:accra");
    assert_eq!(detail(for_accra)["via"], "dakar");
    assert_eq!(for_accra.policy_version, maoc_hash);
    assert_eq!(
        for_accra.rule,
        format!("{MAOC_TO_DAKAR}+{MAOC_TO_ACCRA}"),
        "next hop ∩ final destination"
    );
    assert_eq!(
        withheld_of(for_accra),
        [("narrative".to_owned(), MAOC_TO_ACCRA.to_owned())].into()
    );
    let for_dakar = to("node:dakar");
    assert_eq!(detail(for_dakar)["via"], "dakar");
    assert_eq!(for_dakar.policy_version, maoc_hash);
    assert_eq!(for_dakar.rule, MAOC_TO_DAKAR);
    assert!(withheld_of(for_dakar).is_empty());
    f.stop().await;
}

fn share_all() -> String {
    r#"version = 10
default = "deny"

[[rule]]
id = "share-all"
to = ["node:*"]
allow = ["*"]
"#
    .to_owned()
}

fn no_narrative() -> String {
    r#"version = 11
default = "deny"

[[rule]]
id = "no-narrative"
to = ["node:*"]
allow = ["*"]
redact = ["narrative"]
"#
    .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_reload_under_load_records_the_version_used_for_every_transfer() {
    const COUNT: usize = 400;
    const FLIPS: usize = 50;
    let (_tmp, f) = line().await;
    let (a_text, b_text) = (share_all(), no_narrative());
    let hash_a = apply(&f, "maoc-n", &a_text).await;
    let hash_b = tidewire_policy::Policy::parse(&b_text)
        .expect("policy B")
        .content_hash()
        .to_owned();
    assert_ne!(hash_a, hash_b);

    // Publish continuously in the background ...
    let published = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let ch = f.conn("maoc-n").connect().await.expect("connect");
    let publisher = {
        let (published, done) = (published.clone(), done.clone());
        tokio::spawn(async move {
            let mut ids = Vec::with_capacity(COUNT);
            for i in 0..COUNT {
                let n = json!({
                    "kind": "alert", "case_ref": format!("LOAD-{i}"), "routes": ["atlantic.west-africa"],
                    "handling": "H1", "audience": ["node:dakar", "node:accra"],
                    "fields": {"vessel": {"name": format!("MV Load {i}")},
                               "narrative": format!("narrative number {i}")}
                });
                ids.push(publish_on(ch.clone(), &n).await);
                published.fetch_add(1, Ordering::SeqCst);
            }
            done.store(true, Ordering::SeqCst);
            ids
        })
    };
    // ... while the policy flips between A and B.
    let mut applied = Vec::new();
    for i in 0..FLIPS {
        let due = (i + 1) * COUNT / (FLIPS + 1);
        wait_for(Duration::from_secs(60), "publishing progress", || {
            let (published, done) = (published.clone(), done.clone());
            async move { published.load(Ordering::SeqCst) >= due || done.load(Ordering::SeqCst) }
        })
        .await;
        let (text, want) = if i % 2 == 0 {
            (&b_text, &hash_b)
        } else {
            (&a_text, &hash_a)
        };
        let got = apply(&f, "maoc-n", text).await;
        assert_eq!(&got, want);
        applied.push(got);
    }
    let ids: BTreeSet<String> = publisher.await.expect("publisher").into_iter().collect();
    assert_eq!(ids.len(), COUNT);
    assert!(
        done.load(Ordering::SeqCst) && published.load(Ordering::SeqCst) == COUNT,
        "every publish succeeded"
    );

    // Every policy change is on the ledger.
    let changes: Vec<String> = audit(&f, "maoc-n", "", "policy_applied")
        .await
        .into_iter()
        .map(|e| e.policy_version)
        .filter(|v| *v == hash_a || *v == hash_b)
        .collect();
    assert_eq!(changes.len(), 1 + FLIPS, "the first apply and every flip");
    assert_eq!(changes[1..], applied[..]);

    // Every notification is transferred twice (dakar's copy and accra's via dakar), each
    // recorded with the version that decided it.
    wait_for(
        Duration::from_secs(90),
        "every transfer to be acknowledged",
        || async {
            audit(&f, "maoc-n", "", "transfer")
                .await
                .iter()
                .filter(|e| ids.contains(&e.notification))
                .count()
                >= 2 * COUNT
        },
    )
    .await;
    let mut under: BTreeMap<(String, String), bool> = BTreeMap::new(); // (id, dest) -> under A
    let mut used = BTreeMap::<&str, usize>::new();
    for e in audit(&f, "maoc-n", "", "transfer").await {
        assert!(ids.contains(&e.notification), "unexpected transfer {e:?}");
        let withheld = withheld_of(&e);
        let a = if e.policy_version == hash_a {
            assert!(withheld.is_empty(), "version A withholds nothing: {e:?}");
            assert_eq!(e.rule, "share-all");
            true
        } else if e.policy_version == hash_b {
            assert_eq!(
                withheld,
                [("narrative".to_owned(), "no-narrative".to_owned())].into(),
                "version B withholds the narrative: {e:?}"
            );
            assert_eq!(e.rule, "no-narrative");
            false
        } else {
            panic!("transfer under an unknown policy version: {e:?}");
        };
        *used.entry(if a { "A" } else { "B" }).or_default() += 1;
        assert_eq!(detail(&e)["via"], "dakar");
        let dest = e.destination.trim_start_matches("node:").to_owned();
        assert!(dest == "dakar" || dest == "accra", "{e:?}");
        assert!(
            under.insert((e.notification.clone(), dest), a).is_none(),
            "one transfer per notification and destination: {e:?}"
        );
    }
    assert_eq!(under.len(), 2 * COUNT);
    assert_eq!(
        used.len(),
        2,
        "the flips happened under load, so both versions decided transfers: {used:?}"
    );

    // What dakar and accra received agrees with the version of each transfer.
    for node in ["dakar", "accra"] {
        let got = deliveries(&f, node, &ids, Duration::from_secs(60)).await;
        for id in &ids {
            let b = body(&got[id]);
            let under_a = under[&(id.clone(), node.to_owned())];
            assert_eq!(
                b.get("narrative").is_some(),
                under_a,
                "{node}'s copy of {id} must carry the narrative iff maoc-n sent it under A: {b}"
            );
            assert!(b["vessel"]["name"].is_string());
        }
    }
    let (_, refused) = f.nodes["accra"].node.counters.snapshot();
    assert!(refused.is_empty(), "accra refused: {refused:?}");
    f.stop().await;
}

/// A peer that is not a Tidewire node but holds `accra`'s real identity: it dials `maoc-n`'s
/// Federation service over mTLS with accra's certificate, says hello as accra, records every
/// transfer it is sent (and the bytes of every other frame) and acknowledges it.
struct RecordingPeer {
    transfers: Arc<Mutex<Vec<pb::Transfer>>>,
    other: Arc<Mutex<Vec<Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RecordingPeer {
    async fn link_as_accra(dir: &Path, url: &str) -> RecordingPeer {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let read = |p: &str| std::fs::read(dir.join(p)).expect("read pki file");
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read("ca.pem")))
            .identity(Identity::from_pem(
                read("accra/tls.pem"),
                read("accra/tls.key"),
            ))
            .domain_name(tidewire_node::tls::node_dns_name("maoc-n"));
        let channel = Channel::from_shared(url.to_owned())
            .expect("url")
            .tls_config(tls)
            .expect("tls")
            .connect()
            .await
            .expect("connect to maoc-n as accra");
        let mut client = pb::federation_client::FederationClient::new(channel)
            .max_decoding_message_size(16 * 1024 * 1024);
        let (tx, rx) = mpsc::channel(1024);
        tx.send(pb::LinkFrame {
            frame: Some(Frame::Hello(pb::Hello {
                node: "accra".into(),
                protocol: 1,
                ..Default::default()
            })),
        })
        .await
        .expect("hello");
        let mut inbound = client
            .link(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("maoc-n accepts accra's certificate")
            .into_inner();
        match inbound.message().await.expect("hello back") {
            Some(pb::LinkFrame {
                frame: Some(Frame::Hello(h)),
            }) => assert_eq!(h.node, "maoc-n"),
            other => panic!("expected maoc-n's hello, got {other:?}"),
        }
        let transfers = Arc::new(Mutex::new(Vec::new()));
        let other = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let (transfers, other) = (transfers.clone(), other.clone());
            tokio::spawn(async move {
                let _client = client;
                while let Ok(Some(frame)) = inbound.message().await {
                    match frame.frame {
                        Some(Frame::Transfer(t)) => {
                            let up_to = t.seq;
                            transfers.lock().expect("lock").push(t);
                            let ack = pb::LinkFrame {
                                frame: Some(Frame::Ack(pb::Ack {
                                    up_to,
                                    refused: Vec::new(),
                                })),
                            };
                            if tx.send(ack).await.is_err() {
                                return;
                            }
                        }
                        Some(Frame::LinkState(ls)) => {
                            other.lock().expect("lock").push(ls.body.to_vec());
                        }
                        Some(Frame::Routed(r)) => {
                            other.lock().expect("lock").push(r.body.to_vec());
                        }
                        _ => {}
                    }
                }
            })
        };
        RecordingPeer {
            transfers,
            other,
            task,
        }
    }

    fn transfers(&self) -> Vec<pb::Transfer> {
        self.transfers.lock().expect("lock").clone()
    }
}

fn random_value(rng: &mut StdRng) -> Value {
    Value::String(format!(
        "tw{:016x}{:08x}",
        rng.r#gen::<u64>(),
        rng.r#gen::<u32>()
    ))
}

/// An object with a random non-empty subset of `keys`, each a distinctive random string.
fn random_object(rng: &mut StdRng, keys: &[&str]) -> Value {
    let mut m = Map::new();
    for k in keys {
        if rng.gen_bool(0.6) {
            m.insert((*k).to_owned(), random_value(rng));
        }
    }
    if m.is_empty() {
        let k = keys.choose(rng).expect("keys");
        m.insert((*k).to_owned(), random_value(rng));
    }
    Value::Object(m)
}

fn random_fields(rng: &mut StdRng) -> Value {
    let mut m = Map::new();
    while m.is_empty() {
        if rng.gen_bool(0.6) {
            m.insert("narrative".into(), random_value(rng));
        }
        if rng.gen_bool(0.6) {
            m.insert(
                "vessel".into(),
                random_object(rng, &["name", "imo", "flag", "callsign"]),
            );
        }
        if rng.gen_bool(0.5) {
            m.insert(
                "cargo".into(),
                random_object(rng, &["declared", "suspected"]),
            );
        }
        if rng.gen_bool(0.6) {
            let n = rng.gen_range(1..=3);
            let persons = (0..n)
                .map(|_| random_object(rng, &["name", "nationality", "passport", "phone"]))
                .collect();
            m.insert("persons".into(), Value::Array(persons));
        }
        if rng.gen_bool(0.4) {
            let mut c = random_object(rng, &["phone", "email"]);
            if rng.gen_bool(0.6) {
                c["address"] = random_object(rng, &["street", "city"]);
            }
            m.insert("contact".into(), c);
        }
    }
    Value::Object(m)
}

/// Redact patterns for the random policies; each names at least one step, so it is more
/// specific than the rule's `allow = ["*"]` and wins wherever it matches.
const PATTERNS: [&str; 17] = [
    "narrative",
    "vessel",
    "vessel.name",
    "vessel.imo",
    "vessel.*",
    "cargo.suspected",
    "persons",
    "persons[*].name",
    "persons[*].passport",
    "persons[0]",
    "persons[1].phone",
    "*.name",
    "*.phone",
    "contact.address",
    "contact.address.street",
    "contact.*",
    "cargo",
];

/// One expected copy: the leaves the policy lets through and the values it withholds.
struct Expected {
    clear: BTreeMap<String, Value>,
    withheld: BTreeMap<String, String>,
}

fn expected(n: &Value, patterns: &[PathPattern]) -> Expected {
    let parsed = tidewire_core::Notification::from_value(n).expect("valid notification");
    let mut clear = BTreeMap::new();
    let mut withheld = BTreeMap::new();
    for leaf in parsed.fields {
        let value: Value = serde_json::from_slice(&leaf.value).expect("canonical JSON");
        let path = leaf.path.to_string();
        if patterns.iter().any(|p| p.matches(&leaf.path)) {
            withheld.insert(path, value.as_str().expect("string values").to_owned());
        } else {
            clear.insert(path, value);
        }
    }
    Expected { clear, withheld }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bytes_sent_to_a_destination_never_contain_a_withheld_value() {
    const ROUNDS: usize = 8;
    const PER_ROUND: usize = 3;
    let seed: u64 = std::env::var("POLICY_EGRESS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x7d_e3a9_1c05);
    let mut rng = StdRng::seed_from_u64(seed);
    let _ = rustls::crypto::ring::default_provider().install_default();

    // A federation of two on paper (maoc-n and accra, linked); only maoc-n runs, on a port of
    // its own choosing, and the recording peer plays accra with accra's real certificate.
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("f");
    let mut fed = tidewire::pki::init(&tidewire::pki::InitOptions::dev(
        &dir,
        &["maoc-n", "accra"],
        &["maoc-n:accra"],
    ))
    .expect("pki init");
    let config = dir.join("maoc-n").join("node.toml");
    let text = std::fs::read_to_string(&config).expect("node.toml");
    let old = fed.nodes["maoc-n"]
        .client_url
        .trim_start_matches("https://")
        .to_owned();
    let edited = text.replace(&format!("listen = \"{old}\""), "listen = \"127.0.0.1:0\"");
    assert_ne!(edited, text, "node.toml has a listen key to edit");
    std::fs::write(&config, edited).expect("write node.toml");
    let f = LocalFederation::start_existing(&dir, fed.clone(), &["maoc-n"])
        .await
        .expect("start maoc-n");
    let url = format!("https://{}", f.nodes["maoc-n"].addr);
    if let Some(n) = fed.nodes.get_mut("maoc-n") {
        n.client_url.clone_from(&url);
        n.federation_url.clone_from(&url);
    }
    std::fs::write(
        dir.join("federation.json"),
        serde_json::to_string_pretty(&fed).expect("json"),
    )
    .expect("write federation.json");
    // 'accra' < 'maoc-n': accra dials, so the recording peer is the dialing side.
    let peer = RecordingPeer::link_as_accra(&dir, &url).await;
    wait_for(
        Duration::from_secs(10),
        "maoc-n to route to accra",
        || async {
            f.nodes["maoc-n"]
                .node
                .routing
                .lock()
                .expect("routing")
                .next_hop(&"accra".parse().expect("id"))
                .is_some()
        },
    )
    .await;
    let roster = tidewire_core::keys::Roster::load(&dir.join("roster.toml")).expect("roster");

    let mut all_withheld: Vec<(String, String)> = Vec::new(); // (context, value)
    let mut seen_ids = BTreeSet::new();
    for round in 0..ROUNDS {
        let k = rng.gen_range(0..=4);
        let chosen: Vec<&str> = PATTERNS.choose_multiple(&mut rng, k).copied().collect();
        let redact = if chosen.is_empty() {
            String::new()
        } else {
            format!(
                "redact = [{}]\n",
                chosen
                    .iter()
                    .map(|p| format!("\"{p}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let policy = format!(
            "version = {}\ndefault = \"deny\"\n\n[[rule]]\nid = \"to-accra\"\nto = [\"node:accra\"]\nallow = [\"*\"]\n{redact}\n[[rule]]\nid = \"local-officers\"\nto = [\"role:*\"]\nallow = [\"*\"]\n",
            round + 1
        );
        let hash = apply(&f, "maoc-n", &policy).await;
        let patterns: Vec<PathPattern> =
            chosen.iter().map(|p| p.parse().expect("pattern")).collect();

        let mut want: HashMap<String, Expected> = HashMap::new();
        for i in 0..PER_ROUND {
            let n = json!({
                "kind": "alert", "case_ref": format!("PROP-{round}-{i}"),
                "routes": ["atlantic.west-africa"], "handling": "H1", "audience": ["node:accra"],
                "fields": random_fields(&mut rng),
            });
            let exp = expected(&n, &patterns);
            let id = publish(&f, "maoc-n", &n).await;
            let ctx =
                format!("seed {seed}, round {round}, policy redact {chosen:?}, notification {n}");
            for (path, v) in &exp.withheld {
                all_withheld.push((format!("{ctx}, field {path}"), v.clone()));
            }
            want.insert(id, exp);
        }
        seen_ids.extend(want.keys().cloned());
        wait_for(
            Duration::from_secs(20),
            "the round's transfers at the recording peer",
            || async { peer.transfers().len() >= seen_ids.len() },
        )
        .await;

        for t in peer.transfers() {
            let (_, view) = tidewire_core::envelope::verify_bytes(&t.envelope, &roster)
                .unwrap_or_else(|e| {
                    panic!("seed {seed}: a recorded envelope does not verify: {e}")
                });
            let id = view.header.id.to_string();
            let Some(exp) = want.get(&id) else { continue };
            let ctx = format!("seed {seed}, round {round}, redact {chosen:?}, {id}");
            assert_eq!(t.destinations, ["accra"], "{ctx}");
            let got: BTreeMap<String, Value> = view
                .fields
                .iter()
                .map(|fld| {
                    assert!(fld.transformed.is_none(), "{ctx}: nothing is generalised");
                    (fld.path.clone(), fld.value())
                })
                .collect();
            assert_eq!(got, exp.clear, "{ctx}: exactly the non-withheld fields");
            assert_eq!(view.withheld.len(), exp.withheld.len(), "{ctx}");
            assert!(
                view.withheld
                    .iter()
                    .all(|w| w.by.as_deref() == Some("maoc-n")
                        && w.rule_id.as_deref() == Some("to-accra")),
                "{ctx}: {:?}",
                view.withheld
            );
            assert_eq!(view.custody.len(), 1, "{ctx}");
            assert_eq!(
                (
                    view.custody[0].node.as_str(),
                    view.custody[0].to.as_str(),
                    view.custody[0].policy_version.as_str()
                ),
                ("maoc-n", "accra", hash.as_str()),
                "{ctx}"
            );
            for v in exp.withheld.values() {
                assert!(
                    !contains(&t.envelope, v.as_bytes()),
                    "{ctx}: withheld value {v} is in the bytes sent to accra"
                );
            }
            // Positive control: the search does find what was disclosed.
            for v in exp.clear.values() {
                let v = v.as_str().expect("string");
                assert!(contains(&t.envelope, v.as_bytes()), "{ctx}: {v} missing");
            }
        }
        // The ledger records the same withholdings, under this round's version.
        wait_for(
            Duration::from_secs(10),
            "the round's transfer records",
            || async {
                let entries = audit(&f, "maoc-n", "", "transfer").await;
                want.keys()
                    .all(|id| entries.iter().any(|e| &e.notification == id))
            },
        )
        .await;
        for e in audit(&f, "maoc-n", "", "transfer").await {
            let Some(exp) = want.get(&e.notification) else {
                continue;
            };
            assert_eq!(e.policy_version, hash);
            assert_eq!(e.destination, "node:accra");
            let paths: BTreeSet<String> = withheld_of(&e).into_iter().map(|(p, _)| p).collect();
            assert_eq!(
                paths,
                exp.withheld.keys().cloned().collect::<BTreeSet<_>>(),
                "seed {seed}: ledger of {}",
                e.notification
            );
        }
    }

    // One transfer per notification, and no withheld value anywhere in anything recorded.
    let transfers = peer.transfers();
    assert_eq!(transfers.len(), ROUNDS * PER_ROUND, "no resends, no extras");
    let other = peer.other.lock().expect("lock").clone();
    for (ctx, v) in &all_withheld {
        for bytes in transfers
            .iter()
            .map(|t| t.envelope.as_ref())
            .chain(other.iter().map(Vec::as_slice))
        {
            assert!(!contains(bytes, v.as_bytes()), "{ctx}: {v} was sent");
        }
    }
    assert!(
        !all_withheld.is_empty(),
        "seed {seed}: the random policies withheld something"
    );
    peer.task.abort();
    drop(peer);
    f.stop().await;
}

/// Local subscribers share what their role may see of a copy, decided once per copy and role;
/// a new policy must decide again, never serve what the old one allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_policy_decides_again_what_local_subscribers_see() {
    let (_tmp, f) = common::federation(&["dakar"], &[]).await;
    let rule = |version: u32, redact: &str| {
        format!(
            "version = {version}\ndefault = \"deny\"\n\n[[rule]]\nid = \"local-v{version}\"\nto = [\"role:*\"]\nallow = [\"*\"]\nredact = [{redact}]\n"
        )
    };
    let first = apply(&f, "dakar", &rule(1, "")).await;
    let id = publish(
        &f,
        "dakar",
        &json!({
            "kind": "alert", "routes": ["atlantic.west-africa"], "handling": "H0",
            "audience": ["node:dakar"],
            "fields": {"vessel": {"name": "MV Example"}, "narrative": "rendezvous at dawn"}
        }),
    )
    .await;
    let ids = BTreeSet::from([id.clone()]);
    // Two readers with the same role: both see the narrative.
    for _ in 0..2 {
        let got = deliveries(&f, "dakar", &ids, Duration::from_secs(10)).await;
        assert_eq!(body(&got[&id])["narrative"], "rendezvous at dawn");
    }

    let second = apply(&f, "dakar", &rule(2, "\"narrative\"")).await;
    assert_ne!(first, second);
    let got = deliveries(&f, "dakar", &ids, Duration::from_secs(10)).await;
    let d = &got[&id];
    assert!(body(d).get("narrative").is_none(), "{}", d.fields_json);
    assert_eq!(body(d)["vessel"]["name"], "MV Example");
    assert!(
        d.withheld.iter().any(|w| w.path_or_digest == "narrative"),
        "{:?}",
        d.withheld
    );
    let delivered = audit(&f, "dakar", &id, "delivered").await;
    assert_eq!(
        delivered.last().map(|e| e.policy_version.as_str()),
        Some(second.as_str()),
        "the last delivery names the policy that decided it"
    );
    f.stop().await;
}
