//! Route feeds for local subscribers: the node's feed is read from disk at each subscriber's own
//! pace (a slow one never holds up anyone else), filtered by the request, the user's clearance and
//! allowed routes, and passed through the policy for the user's role before anything is sent.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::Stream;
use tidewire_core::fields::FieldPath;
use tidewire_core::model::{Kind, RoutePattern};
use tidewire_policy::{Decision, FieldAction, Party};
use tidewire_proto::v1 as pb;
use tidewire_store::{Op, Space};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::auth::caller;
use crate::error::NodeError;
use crate::ledger::LedgerEntry;
use crate::node::{Filtered, Gated, Node, Taken, be_u64, take_gated};
use crate::users::User;

/// `tidewire.v1.Subscriber`.
#[derive(Debug, Clone)]
pub struct SubscriberService(pub Arc<Node>);

fn cursor_key(user: &str, durable: &str) -> Vec<u8> {
    [user.as_bytes(), &[0], durable.as_bytes()].concat()
}

/// Prefix of the `Meta` keys of durable subscriptions' interests.
pub(crate) const INTEREST: &[u8] = b"interest\0";

/// `Meta` key of a durable subscription's interest (its route patterns, JSON).
fn interest_key(cursor_key: &[u8]) -> Vec<u8> {
    [INTEREST, cursor_key].concat()
}

/// `Meta` key of when a durable subscription was last connected (Unix ms, big-endian).
fn activity_key(cursor_key: &[u8]) -> Vec<u8> {
    [b"active\0".as_slice(), cursor_key].concat()
}

/// The write that records a durable subscription as active now.
fn touch(cursor_key: &[u8]) -> Op {
    Op::put(
        Space::Meta,
        activity_key(cursor_key),
        tidewire_core::timefmt::now_ms().to_be_bytes().to_vec(),
    )
}

/// The stream reading a durable subscription, and how to end it with the reason.
#[derive(Debug)]
pub struct DurableReader {
    stop: CancellationToken,
    why: Mutex<Option<ReaderEnd>>,
}

/// Why a durable subscription's stream was ended from outside it.
#[derive(Debug, Clone, Copy)]
enum ReaderEnd {
    /// A newer stream reads the subscription now.
    TakenOver,
    /// The subscription was ended (`tidewire unsubscribe`).
    Forgotten,
}

impl DurableReader {
    fn end(&self, why: ReaderEnd) {
        *self.why.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
        self.stop.cancel();
    }

    /// What the stream ends with.
    fn status(&self, user: &str, durable: &str) -> Status {
        let why = *self.why.lock().unwrap_or_else(|p| p.into_inner());
        Status::from(match why {
            Some(ReaderEnd::Forgotten) => NodeError::NotFound(format!(
                "durable subscription `{durable}` of `{user}` was ended (tidewire unsubscribe)"
            )),
            _ => NodeError::Conflict(format!(
                "durable subscription `{durable}` of `{user}` was taken over by a newer \
                 connection; one reader follows a durable subscription at a time"
            )),
        })
    }
}

/// Marks a durable subscription connected while a stream serves it; when the last stream
/// ends, records the time (durably, without waiting) from which its idleness counts. A durable
/// subscription has one reader: a new stream takes it over, and `reader` ends the older one.
struct DurableGuard {
    node: Arc<Node>,
    key: Vec<u8>,
    reader: Arc<DurableReader>,
}

impl DurableGuard {
    fn new(node: Arc<Node>, key: Vec<u8>) -> DurableGuard {
        *node
            .live_durables
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_insert(0) += 1;
        let reader = Arc::new(DurableReader {
            stop: CancellationToken::new(),
            why: Mutex::new(None),
        });
        if let Some(older) = node
            .durable_readers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone(), reader.clone())
        {
            older.end(ReaderEnd::TakenOver);
        }
        DurableGuard { node, key, reader }
    }
}

impl Drop for DurableGuard {
    fn drop(&mut self) {
        {
            let mut readers = self
                .node
                .durable_readers
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if readers
                .get(&self.key)
                .is_some_and(|r| Arc::ptr_eq(r, &self.reader))
            {
                readers.remove(&self.key);
            }
        }
        let mut live = self
            .node
            .live_durables
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = live.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                live.remove(&self.key);
                drop(live);
                // Skipped if the subscription was ended meanwhile (`forget`, idle expiry).
                if self
                    .node
                    .store
                    .contains(Space::Meta, &interest_key(&self.key))
                    .unwrap_or(false)
                {
                    let _ = self.node.submit_numbered(
                        vec![touch(&self.key)],
                        crate::node::Numbered::default(),
                        Vec::new(),
                    );
                }
            }
        }
    }
}

/// Ends durable subscriptions that nobody has connected to for `limits.durable_idle_hours`
/// (nothing, if it is not set): their cursor and interest go, as with `tidewire unsubscribe`,
/// and the ledger records each. Returns how many were ended.
pub async fn expire_idle_durables(node: &Arc<Node>) -> Result<u64, NodeError> {
    let Some(idle) = node.cfg.durable_idle_ms() else {
        return Ok(0);
    };
    let _turn = node.durable_turn.lock().await;
    let now = tidewire_core::timefmt::now_ms();
    let durables = node
        .store
        .scan(Space::Meta, INTEREST, INTEREST, usize::MAX)?;
    let mut ops = Vec::new();
    let mut entries = Vec::new();
    for (k, _) in durables {
        let key = k[INTEREST.len()..].to_vec();
        if node
            .live_durables
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&key)
        {
            continue;
        }
        let last = node
            .store
            .get(Space::Meta, &activity_key(&key))?
            .and_then(|v| Some(i64::from_be_bytes(v.as_slice().try_into().ok()?)));
        match last {
            // From before activity was recorded: idleness counts from now.
            None => ops.push(touch(&key)),
            Some(at) if at < now.saturating_sub(idle) => {
                let mut parts = key.splitn(2, |b| *b == 0);
                let user = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                let name = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                tracing::info!(user = %user, durable = %name, "idle durable subscription ended");
                let mut e = LedgerEntry::new("subscription_ended");
                e.destination = format!("user:{user}");
                e.detail = serde_json::json!({
                    "durable": name,
                    "reason": "idle",
                    "idle_hours": node.cfg.limits.durable_idle_hours,
                    "last_connected_at": tidewire_core::timefmt::format_ms(at),
                });
                entries.push(e);
                ops.extend([
                    Op::delete(Space::Cursors, key.clone()),
                    Op::delete(Space::Meta, interest_key(&key)),
                    Op::delete(Space::Meta, activity_key(&key)),
                ]);
            }
            Some(_) => {}
        }
    }
    let ended = entries.len() as u64;
    if !ops.is_empty() {
        node.commit(ops, entries).await?;
    }
    if ended > 0 {
        crate::link::announce_interests(node);
    }
    Ok(ended)
}

/// Withdraws a live subscription's interest when its stream ends.
struct InterestGuard {
    node: Arc<Node>,
    patterns: Vec<String>,
}

impl Drop for InterestGuard {
    fn drop(&mut self) {
        self.node.remove_interest(&self.patterns);
        crate::link::announce_interests(&self.node);
    }
}

/// What a subscription asked to follow, on top of what its user may see.
#[derive(Debug)]
pub(crate) struct Filter {
    routes: Vec<RoutePattern>,
    kinds: Vec<Kind>,
}

/// At most this many deliveries wait, prepared ahead, for their subscriptions.
const DELIVER_AHEAD_MAX: usize = 4096;

/// Deliveries are prepared ahead for a subscription only while it is within this many feed
/// entries of the head: one that is catching up reads the feed and records its deliveries in
/// rounds, as before.
const DELIVER_AHEAD_LAG: u64 = 64;

/// A live subscription, as the commits that grow the feed see it (see [`LiveSubs`]).
#[derive(Debug)]
struct Live {
    user: User,
    filter: Arc<Filter>,
    /// The last feed entry it has read.
    at: AtomicU64,
}

/// The live subscriptions of this node, and the deliveries prepared ahead for them.
///
/// A commit that appends to the local feed (a publish here, an ingest) prepares each new
/// entry's delivery for every live subscription near the head of the feed
/// ([`prepare_deliveries_ahead`]) and writes the `delivered` records in that same commit,
/// instead of the subscription reading the entry once it is durable and recording its
/// delivery in a commit of its own: one commit fewer between a notification's arrival and the
/// officer's screen. The subscription takes a prepared delivery when its reading reaches that
/// entry ([`take_delivery_ahead`]), once the commit is durable.
#[derive(Debug, Default)]
pub struct LiveSubs {
    next: u64,
    subs: HashMap<u64, Arc<Live>>,
    ready: HashMap<(u64, u64), Gated<pb::Delivery>>,
}

/// A delivery prepared ahead for one subscription, waiting for its feed number.
#[derive(Debug)]
pub(crate) struct PendingDelivery {
    /// Index of the entry in the batch's feed entries.
    at: usize,
    sub: u64,
    delivery: pb::Delivery,
}

/// Prepares ahead the deliveries of a batch's new feed entries (`feed`, notification keys) for
/// every live subscription near the head, their `delivered` records added to `entries`.
pub(crate) fn prepare_deliveries_ahead(
    node: &Node,
    feed: &[Vec<u8>],
    entries: &mut Vec<LedgerEntry>,
) -> Vec<PendingDelivery> {
    if feed.is_empty() {
        return Vec::new();
    }
    let subs: Vec<(u64, Arc<Live>)> = {
        let live = node.live_subs.lock().unwrap_or_else(|p| p.into_inner());
        if live.subs.is_empty() || live.ready.len() >= DELIVER_AHEAD_MAX {
            return Vec::new();
        }
        live.subs.iter().map(|(id, l)| (*id, l.clone())).collect()
    };
    let head = node.feed_seq.load(Ordering::SeqCst);
    let mut out = Vec::new();
    for (id, live) in subs {
        if head.saturating_sub(live.at.load(Ordering::Acquire)) >= DELIVER_AHEAD_LAG {
            continue;
        }
        for (at, note) in feed.iter().enumerate() {
            if let Some((delivery, e)) = prepare_local(node, &live.user, &live.filter, 0, note) {
                entries.push(e);
                out.push(PendingDelivery {
                    at,
                    sub: id,
                    delivery,
                });
            }
        }
    }
    out
}

/// Files a batch's deliveries prepared ahead under the feed numbers the batch was given
/// (`seqs[at]`), to be taken once `durable` is raised.
pub(crate) fn file_deliveries_ahead(
    node: &Node,
    pending: Vec<PendingDelivery>,
    seqs: &[u64],
    durable: &Arc<AtomicBool>,
) {
    if pending.is_empty() {
        return;
    }
    let mut live = node.live_subs.lock().unwrap_or_else(|p| p.into_inner());
    for mut p in pending {
        let Some(seq) = seqs.get(p.at).copied() else {
            continue;
        };
        if !live.subs.contains_key(&p.sub) {
            continue;
        }
        p.delivery.cursor = seq;
        live.ready
            .insert((p.sub, seq), Gated::new(p.delivery, durable.clone()));
    }
}

/// Drops the deliveries prepared ahead for feed entries that are deleted (purged).
pub(crate) fn forget_deliveries_ahead(node: &Node, seqs: &std::collections::HashSet<u64>) {
    let mut live = node.live_subs.lock().unwrap_or_else(|p| p.into_inner());
    if !live.ready.is_empty() {
        live.ready.retain(|(_, seq), _| !seqs.contains(seq));
    }
}

/// What subscription `sub` finds prepared ahead for feed entry `seq`.
fn take_delivery_ahead(node: &Node, sub: u64, seq: u64) -> Taken<pb::Delivery> {
    let mut live = node.live_subs.lock().unwrap_or_else(|p| p.into_inner());
    take_gated(
        &mut live.ready,
        &(sub, seq),
        |_| true,
        &node.counters.delivered_ahead,
    )
}

/// Registers a live subscription for deliveries prepared ahead, until dropped.
struct LiveGuard {
    node: Arc<Node>,
    id: u64,
    live: Arc<Live>,
}

impl LiveGuard {
    fn new(node: Arc<Node>, user: User, filter: Arc<Filter>, at: u64) -> LiveGuard {
        let live = Arc::new(Live {
            user,
            filter,
            at: AtomicU64::new(at),
        });
        let id = {
            let mut subs = node.live_subs.lock().unwrap_or_else(|p| p.into_inner());
            subs.next += 1;
            let id = subs.next;
            subs.subs.insert(id, live.clone());
            id
        };
        LiveGuard { node, id, live }
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        let mut subs = self
            .node
            .live_subs
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        subs.subs.remove(&self.id);
        subs.ready.retain(|(sub, _), _| *sub != self.id);
    }
}

/// Builds the delivery a user may see of one feed entry, or `None` if it is not for them.
/// This is the egress path to local subscribers.
fn prepare_local(
    node: &Node,
    user: &User,
    filter: &Filter,
    cursor: u64,
    note: &[u8],
) -> Option<(pb::Delivery, LedgerEntry)> {
    let copy = match node.stored_copy(note) {
        Ok(c) => c,
        // Recalled, expired or purged since it was appended: nothing to deliver.
        Err(crate::node::NoCopy::Missing) => return None,
        Err(e) => {
            // Never silent: an officer misses this one, and the operator must know.
            tracing::error!(cursor, user = %user.name, problem = ?e, "a feed entry could not be read; it is not delivered");
            return None;
        }
    };
    let view = &copy.view;
    let h = &view.header;
    if h.expired(tidewire_core::timefmt::now_ms()) || h.handling.level() > user.clearance {
        return None;
    }
    let route_ok = h.routes.iter().any(|r| {
        user.routes.iter().any(|p| p.matches(r))
            && (filter.routes.is_empty() || filter.routes.iter().any(|p| p.matches(r)))
    });
    if !route_ok || (!filter.kinds.is_empty() && !filter.kinds.contains(&h.kind)) {
        return None;
    }
    let (policy, _) = node.policy()?;
    let shown = node.filtered_for(note, &user.role, policy.content_hash(), || {
        filter_for_role(node, &policy, view, &user.role)
    })?;
    let mut e = LedgerEntry::new("delivered");
    e.notification = h.id.to_string();
    e.destination = format!("user:{}", user.name);
    e.policy_version = policy.content_hash().to_owned();
    e.rule.clone_from(&shown.rule);
    e.detail = serde_json::json!({"role": user.role, "withheld": shown.withheld.len()});
    Some((
        pb::Delivery {
            cursor,
            id: h.id.to_string(),
            origin: h.origin.to_string(),
            kind: h.kind.to_string(),
            routes: h.routes.iter().map(|r| r.to_string()).collect(),
            handling: h.handling.code().to_owned(),
            handling_restriction: h.handling.restriction().unwrap_or_default().to_owned(),
            grading: h.grading.to_string(),
            purposes: h.purposes.clone(),
            case_ref: h.case_ref.clone(),
            created_at_ms: h.created_at_ms,
            expires_at_ms: h.expires_at_ms.unwrap_or(0),
            fields_json: shown.fields_json.clone(),
            withheld: shown.withheld.clone(),
            path: shown.path.clone(),
            skipped: 0,
            received_at_ms: copy.received_at_ms,
        },
        e,
    ))
}

/// What `policy` lets a subscriber with `role` at this node see of a copy, or `None` if it is
/// denied. The same for every subscriber with that role: [`Node::filtered_for`] keeps it.
fn filter_for_role(
    node: &Node,
    policy: &tidewire_policy::Policy,
    view: &tidewire_core::VerifiedView,
    role: &str,
) -> Option<Filtered> {
    let h = &view.header;
    let origin = Party::from_roster(node.roster().get(h.origin.as_str())?);
    let dest = Party::subscriber(
        node.me.node.clone(),
        node.me.country,
        node.me.org.clone(),
        role.to_owned(),
    );
    let Decision::Allow { rule, fields } = policy.evaluate(h, &origin, &view.fields, &dest) else {
        return None;
    };
    // Each field in clear as JSON text: the text received, or a generalised value written out.
    let mut clear: Vec<(&str, std::borrow::Cow<'_, [u8]>)> = Vec::new();
    let mut withheld: Vec<pb::WithheldInfo> = view
        .withheld
        .iter()
        .map(|w| pb::WithheldInfo {
            path_or_digest: w.digest.clone(),
            by: w.by.clone().unwrap_or_default(),
            rule: w.rule_id.clone().unwrap_or_default(),
        })
        .collect();
    for (f, d) in view.fields.iter().zip(fields) {
        let text = match d.action {
            FieldAction::Clear => std::borrow::Cow::Borrowed(&f.json[..]),
            FieldAction::Generalise { value, .. } => {
                std::borrow::Cow::Owned(tidewire_core::fields::canonical(&value))
            }
            FieldAction::Redact => {
                withheld.push(pb::WithheldInfo {
                    path_or_digest: f.path.clone(),
                    by: node.id().to_string(),
                    rule: d.rule.clone(),
                });
                continue;
            }
        };
        clear.push((&f.path, text));
    }
    // Written straight from the fields when they are in document order (they are, unless the
    // origin wrote them otherwise); the tree is built only for the rest.
    let fields_json = tidewire_core::fields::write_in_order(clear.iter().map(|(p, t)| (*p, &**t)))
        .unwrap_or_else(|| {
            let mut parsed: Vec<(FieldPath, serde_json::Value)> = clear
                .into_iter()
                .filter_map(|(p, t)| Some((p.parse().ok()?, serde_json::from_slice(&t).ok()?)))
                .collect();
            tidewire_core::fields::unflatten(parsed.iter_mut().map(|(p, v)| (&*p, v.take())))
                .unwrap_or_default()
                .to_string()
        });
    Some(Filtered {
        policy_hash: policy.content_hash().to_owned(),
        rule,
        fields_json,
        withheld,
        path: view.path(),
    })
}

/// Response header of `Subscribe` naming the asked route patterns the user may follow none of.
pub const ROUTES_WARNING: &str = "tidewire-routes-warning";

#[tonic::async_trait]
impl pb::subscriber_server::Subscriber for SubscriberService {
    type SubscribeStream =
        std::pin::Pin<Box<dyn Stream<Item = Result<pb::Delivery, Status>> + Send>>;

    #[tracing::instrument(skip_all, fields(node = %self.0.id()))]
    async fn subscribe(
        &self,
        req: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let who = caller(&self.0, &req)?;
        let user = who
            .require(&["subscriber", "admin"], "subscribing")?
            .clone();
        let r = req.into_inner();
        let routes = r
            .routes
            .iter()
            .map(|p| {
                p.parse::<RoutePattern>()
                    .map_err(|e| NodeError::Invalid(format!("route pattern: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let kinds = r
            .kinds
            .iter()
            .map(|k| {
                k.parse::<Kind>()
                    .map_err(|e| NodeError::Invalid(format!("kind: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if r.durable.len() > 128 {
            return Err(NodeError::Invalid(
                "durable subscription names are at most 128 bytes".into(),
            )
            .into());
        }
        let node = self.0.clone();
        // A durable subscription connects in one turn with the idle expiry (see
        // `Node::durable_turn`): registered as connected first, so that the expiry skips it.
        let (turn, durable_guard, stored) = if r.durable.is_empty() {
            (None, None, None)
        } else {
            let turn = node.durable_turn.lock().await;
            let guard = DurableGuard::new(node.clone(), cursor_key(&user.name, &r.durable));
            let stored = node
                .store
                .get(Space::Cursors, &guard.key)
                .map_err(NodeError::from)?
                .map(|v| be_u64(&v));
            (Some(turn), Some(guard), stored)
        };
        let last = node.feed_seq.load(std::sync::atomic::Ordering::SeqCst);
        let start = match (pb::subscribe_request::Start::try_from(r.start), stored) {
            // Past the end, it would skip what has not arrived yet: most likely a cursor from
            // another node's feed.
            (Ok(pb::subscribe_request::Start::Cursor), _) if r.cursor > last => {
                return Err(NodeError::Invalid(format!(
                    "cursor {} is past the end of this node's feed ({last}); cursors belong to the \
                     node that gave them",
                    r.cursor
                ))
                .into());
            }
            (Ok(pb::subscribe_request::Start::Cursor), _) => r.cursor,
            (_, Some(c)) => c,
            (Ok(pb::subscribe_request::Start::Beginning), None) => 0,
            _ => last,
        };
        // Interest routing: announce what this subscription can receive (a durable one keeps
        // its interest while disconnected, so notifications keep coming to this node for it):
        // the routes asked for, narrowed to those its user may follow. A pattern asked for that
        // the user may follow none of draws nothing to this node; it is accepted (the stream
        // is still good for the rest, and for routes the user is given later), but named in a
        // response header that the command line prints.
        let (patterns, outside) = if routes.is_empty() {
            (
                user.routes.iter().map(|p| p.to_string()).collect(),
                Vec::new(),
            )
        } else {
            let mut narrowed: Vec<String> = Vec::new();
            let mut outside: Vec<String> = Vec::new();
            for asked in &routes {
                let before = narrowed.len();
                narrowed.extend(
                    user.routes
                        .iter()
                        .filter_map(|may| asked.intersection(may))
                        .map(|p| p.to_string()),
                );
                if narrowed.len() == before {
                    outside.push(format!("`{asked}`"));
                }
            }
            narrowed.sort();
            narrowed.dedup();
            (narrowed, outside)
        };
        let warning = (!outside.is_empty()).then(|| {
            let may: Vec<String> = user.routes.iter().map(|p| p.to_string()).collect();
            format!(
                "{} {} outside the routes `{}` may follow ({}): nothing on {} will be delivered",
                outside.join(", "),
                if outside.len() == 1 { "is" } else { "are" },
                user.name,
                may.join(", "),
                if outside.len() == 1 { "it" } else { "them" }
            )
        });
        if let Some(guard) = &durable_guard {
            let mut ops = vec![
                Op::put(
                    Space::Meta,
                    interest_key(&guard.key),
                    serde_json::to_vec(&patterns).unwrap_or_default(),
                ),
                touch(&guard.key),
            ];
            // A new durable subscription starts here for good: what arrives while its reader is
            // away is kept for it even if it never acknowledged anything.
            if stored.is_none() {
                ops.push(Op::put(
                    Space::Cursors,
                    guard.key.clone(),
                    start.to_be_bytes().to_vec(),
                ));
            }
            node.commit(ops, Vec::new()).await?;
        }
        drop(turn);
        node.add_interest(&patterns);
        crate::link::announce_interests(&node);
        let guard = InterestGuard {
            node: node.clone(),
            patterns,
        };
        let (tx, rx) = mpsc::channel(64);
        let filter = Arc::new(Filter { routes, kinds });
        let live = LiveGuard::new(node.clone(), user.clone(), filter.clone(), start);
        let durable = r.durable.clone();
        let span = tracing::info_span!("subscription", user = %user.name, durable = %durable);
        let stop = node.shutdown.child_token();
        // Ended when a newer stream takes this durable subscription over, or it is ended
        // (never, for a subscription that is not durable).
        let reader = durable_guard.as_ref().map(|g| g.reader.clone());
        let taken = reader.as_ref().map(|r| r.stop.clone()).unwrap_or_default();
        node.tracker.clone().spawn(
            async move {
                let _guard = guard;
                let _durable = durable_guard;
                let live = live;
                let mut changed = node.feed_changed.subscribe();
                let mut cursor = start;
                let mut last_ack = start;
                let mut last_progress = Instant::now();
                let redelivery = Duration::from_secs(node.cfg.limits.redelivery_s);
                // Revoking the user or changing its access ends the stream with the reason.
                let still_allowed = || match node.users.recheck(&user) {
                    Ok(()) => None,
                    Err(e) => {
                        tracing::info!(reason = %e, "subscription ended: the user's access changed");
                        Some(Status::from(e))
                    }
                };
                loop {
                    changed.borrow_and_update();
                    if let Some(r) = reader.as_ref().filter(|r| r.stop.is_cancelled()) {
                        tracing::info!("durable subscription stream ended from outside");
                        let _ = tx.send(Err(r.status(&user.name, &durable))).await;
                        return;
                    }
                    if let Some(status) = still_allowed() {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                    if !durable.is_empty() {
                        let acked = node
                            .store
                            .get(Space::Cursors, &cursor_key(&user.name, &durable))
                            .ok()
                            .flatten()
                            .map(|v| be_u64(&v))
                            .unwrap_or(start);
                        if acked > last_ack {
                            last_ack = acked;
                            last_progress = Instant::now();
                        } else if cursor > last_ack && last_progress.elapsed() >= redelivery {
                            tracing::debug!(
                                from = last_ack,
                                "redelivering unacknowledged notifications"
                            );
                            cursor = last_ack;
                            last_progress = Instant::now();
                        }
                    }
                    let oldest = node
                        .store
                        .scan(Space::Feed, b"", b"", 1)
                        .ok()
                        .and_then(|v| {
                            v.first().map(|(k, _)| {
                                be_u64(k)
                            })
                        });
                    let mut skipped = 0;
                    if let Some(o) = oldest
                        && cursor + 1 < o
                    {
                        skipped = o - cursor - 1;
                        cursor = o - 1;
                    }
                    let batch =
                        match node
                            .store
                            .scan(Space::Feed, b"", &(cursor + 1).to_be_bytes(), 256)
                        {
                            Ok(b) => b,
                            Err(e) => {
                                let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                                return;
                            }
                        };
                    let mut entries = Vec::new();
                    let mut deliveries = Vec::new();
                    let mut idle = batch.is_empty();
                    for (k, v) in batch {
                        let seq = be_u64(&k);
                        // Prepared ahead by the commit that appended it, its delivery already
                        // recorded there; taken once that commit is durable.
                        let prepared = match take_delivery_ahead(&node, live.id, seq) {
                            Taken::Pending => {
                                // Until its commit is durable: the feed's next change says so.
                                idle = true;
                                break;
                            }
                            Taken::Ready(d) => Some(*d),
                            Taken::None => prepare_local(&node, &user, &filter, seq, &v).map(
                                |(d, e)| {
                                    entries.push(e);
                                    d
                                },
                            ),
                        };
                        cursor = seq;
                        if let Some(mut d) = prepared {
                            d.skipped = std::mem::take(&mut skipped);
                            deliveries.push(d);
                        }
                    }
                    live.live.at.store(cursor, Ordering::Release);
                    // Like transfers, deliveries are on the ledger before they leave: a crash
                    // in between may record a delivery the officer never saw (it is redelivered),
                    // never the other way round.
                    if !entries.is_empty()
                        && let Err(e) = node.commit(Vec::new(), entries).await
                    {
                        tracing::error!(error = %e, "could not record deliveries; not sending them");
                        let _ = tx
                            .send(Err(Status::unavailable(
                                "the node could not record deliveries; resubscribe to resume",
                            )))
                            .await;
                        return;
                    }
                    if !deliveries.is_empty()
                        && let Some(status) = still_allowed()
                    {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                    for d in deliveries {
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            // The loop's next turn says so.
                            _ = taken.cancelled() => break,
                            r = tx.send(Ok(d)) => if r.is_err() { return },
                        }
                    }
                    if idle {
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tx.closed() => return,
                            _ = taken.cancelled() => {}
                            _ = changed.changed() => {}
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                }
            }
            .instrument(span),
        );
        let mut response = Response::new(Box::pin(ReceiverStream::new(rx))
            as <Self as pb::subscriber_server::Subscriber>::SubscribeStream);
        if let Some(v) = warning.and_then(|w| w.parse().ok()) {
            response.metadata_mut().insert(ROUTES_WARNING, v);
        }
        Ok(response)
    }

    #[tracing::instrument(skip_all, fields(node = %self.0.id()))]
    async fn ack(&self, req: Request<pb::AckRequest>) -> Result<Response<pb::AckReply>, Status> {
        let who = caller(&self.0, &req)?;
        let user = who.require(&["subscriber", "admin"], "acknowledging")?;
        let r = req.into_inner();
        if r.durable.is_empty() {
            return Err(NodeError::Invalid(
                "acknowledge a durable subscription: give its name".into(),
            )
            .into());
        }
        let key = cursor_key(&user.name, &r.durable);
        let stored = self
            .0
            .store
            .get(Space::Cursors, &key)
            .map_err(NodeError::from)?
            .map(|v| be_u64(&v));
        // Only a subscription that exists, and only up to what the feed holds: an
        // acknowledgement past its end would skip notifications not yet arrived.
        if stored.is_none()
            && !self
                .0
                .store
                .contains(Space::Meta, &interest_key(&key))
                .map_err(NodeError::from)?
        {
            return Err(NodeError::NotFound(format!(
                "`{}` has no durable subscription named `{}` on this node; subscribe with \
                 --durable {} first",
                user.name, r.durable, r.durable
            ))
            .into());
        }
        let last = self.0.feed_seq.load(Ordering::SeqCst);
        if r.cursor > last {
            return Err(NodeError::Invalid(format!(
                "cursor {} is past the end of this node's feed ({last}); acknowledge a cursor \
                 you received",
                r.cursor
            ))
            .into());
        }
        let current = stored.unwrap_or(0);
        let cursor = current.max(r.cursor);
        if cursor > current {
            self.0
                .commit(
                    vec![Op::put(Space::Cursors, key, cursor.to_be_bytes().to_vec())],
                    Vec::new(),
                )
                .await?;
        }
        Ok(Response::new(pb::AckReply { cursor }))
    }

    #[tracing::instrument(skip_all, fields(node = %self.0.id()))]
    async fn forget(
        &self,
        req: Request<pb::ForgetRequest>,
    ) -> Result<Response<pb::ForgetReply>, Status> {
        let who = caller(&self.0, &req)?;
        let user = who.require(&["subscriber", "admin"], "ending a subscription")?;
        let r = req.into_inner();
        if r.durable.is_empty() {
            return Err(NodeError::Invalid("name the durable subscription to end".into()).into());
        }
        let key = cursor_key(&user.name, &r.durable);
        let interest = interest_key(&key);
        let node = &self.0;
        let cursor = node
            .store
            .get(Space::Cursors, &key)
            .map_err(NodeError::from)?;
        let had_interest = node
            .store
            .get(Space::Meta, &interest)
            .map_err(NodeError::from)?
            .is_some();
        if cursor.is_none() && !had_interest {
            return Err(NodeError::NotFound(format!(
                "`{}` has no durable subscription named `{}` on this node",
                user.name, r.durable
            ))
            .into());
        }
        node.commit(
            vec![
                Op::delete(Space::Meta, activity_key(&key)),
                Op::delete(Space::Cursors, key.clone()),
                Op::delete(Space::Meta, interest),
            ],
            Vec::new(),
        )
        .await?;
        // A stream still reading it ends too, saying why (it would otherwise acknowledge into
        // a cursor that no longer exists, and bring it back).
        let reader = node
            .durable_readers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        if let Some(r) = reader {
            r.end(ReaderEnd::Forgotten);
        }
        // Withdraw the interest (live subscriptions keep theirs: they hold their own count).
        crate::link::announce_interests(node);
        tracing::info!(user = %user.name, durable = %r.durable, "durable subscription ended");
        let cursor = cursor.map(|v| be_u64(&v)).unwrap_or(0);
        Ok(Response::new(pb::ForgetReply { cursor }))
    }
}
