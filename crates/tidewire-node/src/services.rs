//! The gRPC services. Protobuf types stop here: requests are converted to core types at once, and
//! every error goes through the one `From<NodeError> for tonic::Status`.

use std::pin::Pin;
use std::sync::Arc;

use futures::{FutureExt, Stream, StreamExt};
use tidewire_core::NotificationId;
use tidewire_proto::v1 as pb;
use tidewire_proto::v1::link_frame::Frame;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::auth::{Caller, caller};
use crate::error::NodeError;
use crate::ledger;
use crate::node::{Author, Node, Published};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// `tidewire.v1.Federation`.
#[derive(Debug, Clone)]
pub struct FederationService(pub Arc<Node>);

#[tonic::async_trait]
impl pb::federation_server::Federation for FederationService {
    type LinkStream = BoxStream<pb::LinkFrame>;

    #[tracing::instrument(skip_all, fields(node = %self.0.id()))]
    async fn link(
        &self,
        req: Request<Streaming<pb::LinkFrame>>,
    ) -> Result<Response<Self::LinkStream>, Status> {
        let node = self.0.clone();
        let who = caller(&node, &req).inspect_err(|e| {
            let claimed = crate::auth::claimed_node(&req);
            // A node the roster does not have (one that left the federation, or is not in it
            // yet) is told apart from a certificate that is not the roster's for the node it
            // names, or names none.
            if claimed
                .as_ref()
                .is_some_and(|n| node.roster().get(n.as_str()).is_none())
            {
                node.counters.refuse("not_in_roster");
                tracing::warn!(error = %e, "link refused: the node is not in the roster");
            } else {
                node.counters.refuse("impersonation");
                tracing::warn!(error = %e, "link refused: the certificate is not a roster node's");
            }
            // The link it claims to be, if this node has one, shows why it stays down.
            if let Some(peer) = claimed
                && let Some(l) = node
                    .links
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_mut(&peer)
            {
                l.last_error = format!("its link was refused: {e}");
            }
        })?;
        let peer = match who {
            Caller::Node(n) => n,
            Caller::User(u) => {
                return Err(NodeError::PermissionDenied(format!(
                    "client `{}` is not a federation node; only nodes may open links",
                    u.name
                ))
                .into());
            }
        };
        let mut inbound = req.into_inner();
        let hello = match inbound.message().await? {
            Some(pb::LinkFrame {
                frame: Some(Frame::Hello(h)),
            }) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "the first frame of a link must be a hello",
                ));
            }
        };
        if hello.node != peer.as_str() {
            node.counters.refuse("impersonation");
            tracing::warn!(claimed = %hello.node, certificate = %peer, "link refused: node claims another identity");
            return Err(NodeError::PermissionDenied(format!(
                "certificate belongs to `{peer}` but the hello claims `{}`",
                hello.node
            ))
            .into());
        }
        // Only the peers this node's configuration links it to (after the identity checks, so
        // that a node claiming another's identity is refused as that): a link removed on this
        // side (SIGHUP) stays closed even if the peer still dials it.
        if !node
            .links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&peer)
        {
            node.counters.refuse("not_a_link");
            tracing::warn!(peer = %peer, "link refused: no [[link]] for this peer");
            return Err(NodeError::PermissionDenied(format!(
                "`{me}` has no [[link]] to `{peer}`: add one to `{me}`'s node.toml and send it \
                 SIGHUP, or remove the link on `{peer}`'s side",
                me = node.id()
            ))
            .into());
        }
        node.note_peer_limit(&peer, hello.max_message_bytes);
        let (tx, rx) = mpsc::channel(1024);
        tx.send(pb::LinkFrame {
            frame: Some(Frame::Hello(pb::Hello {
                node: node.id().to_string(),
                protocol: 1,
                max_message_bytes: node.cfg.limits.max_message_bytes as u64,
            })),
        })
        .await
        .map_err(|_| Status::unavailable("link closed"))?;
        let cancel = node.shutdown.child_token();
        let n = node.clone();
        let span = tracing::info_span!("link", peer = %peer, side = "accept");
        node.tracker
            .spawn(crate::link::run_session(n, peer, inbound, tx, cancel).instrument(span));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx).map(Ok))))
    }
}

/// Most publishes of one stream awaiting their fsync at a time.
const PUBLISH_STREAM_WINDOW: usize = 256;

/// Most publishes of a stream sealed and signed as one batch. Sealing is about 40 µs each and
/// runs on an async worker without yielding, so a batch holds the worker for under a
/// millisecond. A batch is what has arrived, not waited for: a full batch when a publisher
/// streams faster than the node takes them, so that receivers then verify one origin signature
/// per 16 notifications.
const PUBLISH_BATCH: usize = 16;

/// `tidewire.v1.Publisher`.
#[derive(Debug, Clone)]
pub struct PublisherService(pub Arc<Node>);

/// The reply to one publish: its id, or (in a stream, which goes on) its error.
fn publish_reply(r: Result<Published, NodeError>) -> pb::PublishReply {
    match r {
        Ok(p) => pb::PublishReply {
            id: p.id.to_string(),
            origin_seq: p.seq,
            duplicate: p.duplicate,
            error_code: 0,
            error_message: String::new(),
            destinations: p.destinations.iter().map(|d| d.to_string()).collect(),
            unmatched_audience: p.unmatched_audience,
            unrouted: p.unrouted.iter().map(|d| d.to_string()).collect(),
        },
        Err(e) => {
            let s: Status = e.into();
            pb::PublishReply {
                error_code: s.code() as i32,
                error_message: s.message().to_owned(),
                ..Default::default()
            }
        }
    }
}

#[tonic::async_trait]
impl pb::publisher_server::Publisher for PublisherService {
    type PublishStreamStream = BoxStream<pb::PublishReply>;

    #[tracing::instrument(skip_all, fields(node = %self.0.id()))]
    async fn publish(
        &self,
        req: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishReply>, Status> {
        let who = caller(&self.0, &req)?;
        let author = Author::user(who.require(&["publisher", "admin"], "publishing")?);
        let r = req.into_inner();
        let done = self
            .0
            .publish(&r.notification_json, &r.idempotency_key, &author)
            .await?;
        Ok(Response::new(publish_reply(Ok(done))))
    }

    #[tracing::instrument(skip_all, fields(node = %self.0.id()))]
    async fn publish_stream(
        &self,
        req: Request<Streaming<pb::PublishRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        let who = caller(&self.0, &req)?;
        let author = Author::user(who.require(&["publisher", "admin"], "publishing")?);
        let label = author.label.clone();
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(256);
        let node = self.0.clone();
        let span = tracing::info_span!("publish-stream", client = %label);
        self.0.tracker.spawn(
            async move {
                // What has arrived is published as one batch (one origin signature for all,
                // queued for the group commit in stream order); up to 256 publishes wait for
                // their fsync at a time, and are answered in order. Once the window is full,
                // the stream is read again only when a whole batch fits: reading as soon as one
                // publish was answered made batches of one to three (and as many origin
                // signatures for receivers to verify) whenever a publisher kept the window full.
                let mut pending = futures::stream::FuturesOrdered::new();
                let mut open = true;
                loop {
                    tokio::select! {
                        item = inbound.next(), if open && pending.len() + PUBLISH_BATCH <= PUBLISH_STREAM_WINDOW => match item {
                            Some(Ok(first)) => {
                                let mut batch = vec![(first.notification_json, first.idempotency_key)];
                                let mut failed = None;
                                while batch.len() < PUBLISH_BATCH {
                                    match inbound.next().now_or_never() {
                                        Some(Some(Ok(r))) => batch.push((r.notification_json, r.idempotency_key)),
                                        Some(Some(Err(e))) => { failed = Some(e); break; }
                                        Some(None) => { open = false; break; }
                                        None => break,
                                    }
                                }
                                for o in node.publish_batch(&batch, &author) {
                                    let node = node.clone();
                                    pending.push_back(async move { node.publish_outcome(o).await });
                                }
                                if let Some(e) = failed { let _ = tx.send(Err(e)).await; return; }
                            }
                            Some(Err(e)) => { let _ = tx.send(Err(e)).await; return; }
                            None => open = false,
                        },
                        Some(done) = pending.next(), if !pending.is_empty() => {
                            if tx.send(Ok(publish_reply(done))).await.is_err() { return; }
                        }
                        else => return,
                    }
                }
            }
            .instrument(span),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// The most a ledger query's reply carries (entries stop being added past it), under gRPC's
/// default 4 MiB message limit.
pub const AUDIT_REPLY_BYTES: usize = 3 * 1024 * 1024;

/// `tidewire.v1.Admin`.
#[derive(Debug, Clone)]
pub struct AdminService(pub Arc<Node>);

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    #[tracing::instrument(skip_all, fields(node = %self.0.id()))]
    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        caller(&self.0, &req)?
            .require(&["admin", "auditor", "publisher", "subscriber"], "status")?;
        let n = &self.0;
        let (counters, refused) = n.counters.snapshot();
        let table = n.routing.lock().unwrap_or_else(|p| p.into_inner()).table();
        let backlog = n.link_backlogs();
        let queues = n.queues();
        let oldest = n.link_oldest_waiting(&queues);
        let policy = n.policy().map(|(p, _)| p);
        let links = n
            .links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(peer, l)| pb::LinkStatus {
                peer: peer.to_string(),
                up: l.up,
                backlog: backlog.get(peer).copied().unwrap_or(0),
                last_error: l.last_error.clone(),
                address: l.url.clone(),
                oldest_waiting_ms: oldest.get(peer).copied().unwrap_or(0),
            })
            .collect();
        Ok(Response::new(pb::StatusReply {
            node: n.id().to_string(),
            country: n.me.country.to_string(),
            org: n.me.org.clone(),
            uptime_s: n.uptime_s(),
            links,
            counters: counters.into_iter().collect(),
            refused: refused.into_iter().collect(),
            policy_version: policy
                .as_ref()
                .map(|p| p.content_hash().to_owned())
                .unwrap_or_default(),
            policy_number: policy.as_ref().map_or(0, |p| p.version()),
            roster_nodes: n.roster().nodes().count() as u32,
            roster_sha256: n.roster_sha256(),
            worker_threads: u32::try_from(
                tokio::runtime::Handle::current().metrics().num_workers(),
            )
            .unwrap_or(u32::MAX),
            queues: queues
                .into_iter()
                .map(|q| pb::QueueStatus {
                    destination: q.dest.to_string(),
                    backlog: q.queued,
                    next_hop: q.next_hop.map(|h| h.to_string()).unwrap_or_default(),
                    oldest_waiting_ms: q.oldest_ms.unwrap_or(0),
                })
                .collect(),
            store: Some({
                let s = n.store.stats();
                let c = n.commit_stats();
                pb::StoreStatus {
                    writable: n.store_writable(),
                    log_segments: s.log_segments,
                    log_bytes: s.log_bytes,
                    since_checkpoint_ms: s
                        .since_checkpoint
                        .map_or(0, |d| (d.as_millis() as u64).max(1)),
                    replayed_at_start: s.replayed_at_open,
                    commits: c.synced,
                    slow_commits: c.slow,
                    longest_commit_ms: c.longest_us.div_ceil(1000),
                    commit_p99_ms: c.quantile_us(0.99).map_or(0, |us| us.div_ceil(1000)),
                }
            }),
            routes: table
                .into_iter()
                .map(|(d, (hop, dist))| pb::RouteEntry {
                    node: d.to_string(),
                    next_hop: hop.to_string(),
                    distance: dist,
                })
                .collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(node = %self.0.id()))]
    async fn policy_apply(
        &self,
        req: Request<pb::PolicyApplyRequest>,
    ) -> Result<Response<pb::PolicyInfo>, Status> {
        let who = caller(&self.0, &req)?;
        who.require(&["admin"], "applying a policy")?;
        let text = req.into_inner().policy_toml;
        let (pol, old) = self.0.apply_policy(&text, &who.label()).await?;
        Ok(Response::new(pb::PolicyInfo {
            version: pol.version(),
            content_hash: pol.content_hash().to_owned(),
            policy_toml: text,
            rules: pol.rule_ids().map(str::to_owned).collect(),
            replaced_version: old.as_ref().map_or(0, |o| o.version()),
            replaced_content_hash: old.map(|o| o.content_hash().to_owned()).unwrap_or_default(),
        }))
    }

    #[tracing::instrument(skip_all, fields(node = %self.0.id()))]
    async fn policy_show(
        &self,
        req: Request<pb::PolicyShowRequest>,
    ) -> Result<Response<pb::PolicyInfo>, Status> {
        caller(&self.0, &req)?.require(&["admin", "auditor"], "showing the policy")?;
        let (pol, text) = self.0.policy().ok_or_else(|| {
            NodeError::NotFound(
                "no policy is configured on this node (everything is denied)".into(),
            )
        })?;
        Ok(Response::new(pb::PolicyInfo {
            version: pol.version(),
            content_hash: pol.content_hash().to_owned(),
            policy_toml: text.to_string(),
            rules: pol.rule_ids().map(str::to_owned).collect(),
            ..Default::default()
        }))
    }

    async fn consent_list(
        &self,
        req: Request<pb::ConsentListRequest>,
    ) -> Result<Response<pb::ConsentListReply>, Status> {
        caller(&self.0, &req)?.require(&["admin", "auditor"], "listing consent requests")?;
        Ok(Response::new(pb::ConsentListReply {
            items: self.0.consent_items()?,
        }))
    }

    async fn consent_decide(
        &self,
        req: Request<pb::ConsentDecideRequest>,
    ) -> Result<Response<pb::ConsentItem>, Status> {
        let who = caller(&self.0, &req)?;
        who.require(&["admin"], "deciding consent")?;
        let r = req.into_inner();
        Ok(Response::new(
            self.0.decide_consent(&r.id, r.grant, &who.label()).await?,
        ))
    }

    async fn consent_ask(
        &self,
        req: Request<pb::ConsentAskRequest>,
    ) -> Result<Response<pb::ConsentItem>, Status> {
        let who = caller(&self.0, &req)?;
        who.require(&["admin"], "asking for onward transfer")?;
        let r = req.into_inner();
        let item = match self
            .0
            .ask_consent(&r.notification, &r.destination, &r.reason, &who.label())
            .await?
        {
            crate::consent::Asked::Queued { kind, case_ref } => pb::ConsentItem {
                id: format!("{}-{}", r.notification, r.destination),
                notification: r.notification,
                requester: self.0.id().to_string(),
                destination: r.destination,
                state: "queued".into(),
                kind,
                case_ref,
                at_ms: tidewire_core::timefmt::now_ms(),
            },
            crate::consent::Asked::Held(rec) => rec.to_pb(),
        };
        Ok(Response::new(item))
    }

    #[tracing::instrument(skip_all, fields(node = %self.0.id()))]
    async fn audit_query(
        &self,
        req: Request<pb::AuditQueryRequest>,
    ) -> Result<Response<pb::AuditQueryReply>, Status> {
        caller(&self.0, &req)?.require(&["admin", "auditor"], "querying the ledger")?;
        let q = req.into_inner();
        let limit = if q.limit == 0 { 1000 } else { q.limit as usize };
        let node = self.0.clone();
        // A query may read the whole ledger: off the async workers, which carry the links.
        let out = tokio::task::spawn_blocking(move || -> Result<_, NodeError> {
            let mut out = Vec::new();
            let mut bytes = 0usize;
            let mut after = q.after;
            'scan: loop {
                let batch = ledger::read(node.store.as_ref(), after, 4096)?;
                if batch.is_empty() {
                    break;
                }
                for e in batch {
                    after = e.seq;
                    let hit = (q.notification.is_empty()
                        || e.notification.starts_with(&q.notification))
                        && (q.destination.is_empty()
                            || e.destination == q.destination
                            || e.destination.ends_with(&format!(":{}", q.destination)))
                        && (q.event.is_empty() || e.event == q.event)
                        && (q.rule.is_empty() || e.rule == q.rule)
                        && (q.since_ms == 0 || e.at_ms >= q.since_ms)
                        && (q.until_ms == 0 || e.at_ms < q.until_ms);
                    if hit {
                        let entry = pb::AuditEntry {
                            seq: e.seq,
                            at_ms: e.at_ms,
                            event: e.event,
                            notification: e.notification,
                            destination: e.destination,
                            policy_version: e.policy_version,
                            rule: e.rule,
                            detail_json: e.detail.to_string(),
                            hash: e.hash,
                        };
                        bytes += prost::Message::encoded_len(&entry) + 4;
                        out.push(entry);
                        // A reply any gRPC client can decode (4 MiB by default): the rest
                        // comes in the next page (`after`).
                        if out.len() >= limit || bytes >= AUDIT_REPLY_BYTES {
                            break 'scan;
                        }
                    }
                }
            }
            Ok(out)
        })
        .await
        .map_err(|e| NodeError::Internal(format!("audit query task: {e}")))??;
        Ok(Response::new(pb::AuditQueryReply { entries: out }))
    }

    async fn audit_verify(
        &self,
        req: Request<pb::AuditVerifyRequest>,
    ) -> Result<Response<pb::AuditVerifyReply>, Status> {
        caller(&self.0, &req)?.require(&["admin", "auditor"], "verifying the ledger")?;
        let node = self.0.clone();
        let c = tokio::task::spawn_blocking(move || ledger::verify(node.store.as_ref()))
            .await
            .map_err(|e| NodeError::Internal(format!("ledger verification task: {e}")))?
            .map_err(NodeError::from)?;
        Ok(Response::new(pb::AuditVerifyReply {
            ok: c.problem.is_none(),
            entries: c.entries,
            head: c.head,
            problem: c.problem.unwrap_or_default(),
        }))
    }

    async fn cases_list(
        &self,
        req: Request<pb::CasesListRequest>,
    ) -> Result<Response<pb::CasesListReply>, Status> {
        let who = caller(&self.0, &req)?;
        let user = who.require(&["admin", "auditor", "publisher"], "listing cases")?;
        // The node's administrators and auditors see every case it holds; a publishing client
        // (an integration system) only those it could have published: every route within its
        // routes, and handling within its clearance.
        let scope = (user.role == "publisher").then(|| CaseScope {
            routes: user.routes.clone(),
            clearance: user.clearance,
        });
        let q = req.into_inner();
        let limit = match q.limit {
            0 => 1000,
            l => l as usize,
        };
        let wanted = q.id_prefix.to_ascii_lowercase();
        if wanted.len() > 32 || !wanted.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(NodeError::Invalid(format!(
                "id prefix `{}` is not up to 32 hexadecimal digits",
                q.id_prefix
            ))
            .into());
        }
        // Whole bytes of the prefix narrow the scan; an odd last digit is checked per entry.
        let prefix = hex::decode(&wanted[..wanted.len() / 2 * 2]).unwrap_or_default();
        let mut from = prefix.clone();
        if !q.after.is_empty() {
            let after = hex::decode(&q.after).map_err(|_| {
                NodeError::Invalid(format!(
                    "cursor `{}` is not one this node gave (`next` of a reply)",
                    q.after
                ))
            })?;
            from = [after.as_slice(), &[0]].concat();
        }
        let node = self.0.clone();
        let listing = CaseListing {
            prefix,
            wanted,
            from,
            limit,
            scope,
            budget: CASES_SCAN_BUDGET,
        };
        let (items, next) =
            tokio::task::spawn_blocking(move || listing.read(&*node.store, node.id().as_str()))
                .await
                .map_err(|e| NodeError::Internal(format!("case listing task: {e}")))??;
        Ok(Response::new(pb::CasesListReply { items, next }))
    }
}

/// How many stored copies one `CasesList` call reads at most, however few of them it returns (a
/// publisher's scope, an id prefix): the reply's `next` goes on from there.
const CASES_SCAN_BUDGET: usize = 20_000;

/// One `CasesList` reply's worth of reading.
struct CaseListing {
    /// Whole bytes of the id prefix: the scan's prefix.
    prefix: Vec<u8>,
    /// The id prefix in lowercase hex, checked per entry (for an odd last digit).
    wanted: String,
    /// The key to read from.
    from: Vec<u8>,
    limit: usize,
    scope: Option<CaseScope>,
    /// How many stored copies to read at most.
    budget: usize,
}

impl CaseListing {
    /// Reads in pages, up to the limit or the budget (never every stored copy at once): the
    /// items, and the cursor to go on from (empty once the listing is complete).
    fn read(
        self,
        store: &dyn tidewire_store::Store,
        me: &str,
    ) -> Result<(Vec<pb::CaseItem>, String), NodeError> {
        let mut items = Vec::new();
        // The last key read: the next page starts right after it, and so does the next reply.
        let mut last_key: Option<Vec<u8>> = None;
        let mut scanned = 0usize;
        'pages: while items.len() < self.limit {
            // Whole pages even near the limit: a scope or an odd prefix digit may pass over
            // many entries.
            let from = match &last_key {
                Some(k) => [k.as_slice(), &[0]].concat(),
                None => self.from.clone(),
            };
            let page = store.scan(
                tidewire_store::Space::Notifications,
                &self.prefix,
                &from,
                256,
            )?;
            if page.is_empty() {
                break;
            }
            for (k, v) in page {
                if items.len() >= self.limit || scanned >= self.budget {
                    break 'pages;
                }
                scanned += 1;
                last_key = Some(k.clone());
                let Ok(id) = NotificationId::from_slice(&k[..16.min(k.len())]) else {
                    continue;
                };
                let id = id.to_string();
                if !id.starts_with(&self.wanted) {
                    continue;
                }
                let holder = String::from_utf8_lossy(&k[16.min(k.len())..]).into_owned();
                let Some((meta, _)) = crate::node::decode_stored(&v) else {
                    continue;
                };
                if self
                    .scope
                    .as_ref()
                    .is_some_and(|s| !s.covers(&meta.routes, &v))
                {
                    continue;
                }
                items.push(pb::CaseItem {
                    id,
                    origin: meta.origin,
                    kind: meta.kind,
                    case_ref: meta.case_ref,
                    routes: meta.routes,
                    created_at_ms: meta.created_at_ms,
                    state: if holder == me {
                        "held".into()
                    } else {
                        format!("in transit to {holder}")
                    },
                });
            }
        }
        // A full reply may have more after it, and so may one that stopped at the budget; a
        // short one ended the listing.
        let next = match last_key {
            Some(k) if items.len() >= self.limit || scanned >= self.budget => hex::encode(k),
            _ => String::new(),
        };
        Ok((items, next))
    }
}

/// What a publishing client may list of the cases a node holds.
struct CaseScope {
    routes: Vec<tidewire_core::model::RoutePattern>,
    clearance: u8,
}

impl CaseScope {
    /// Whether a stored copy (`stored`, with these routes) is within the scope. A copy whose
    /// routes or header do not parse is not.
    fn covers(&self, routes: &[String], stored: &[u8]) -> bool {
        let routes_ok = routes.iter().all(|r| {
            r.parse::<tidewire_core::model::Route>()
                .is_ok_and(|r| self.routes.iter().any(|p| p.matches(&r)))
        });
        routes_ok
            && crate::node::stored_header(stored)
                .is_some_and(|h| h.handling.level() <= self.clearance)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidewire_store::{MemStore, Op, Space, Store};

    /// A store holding `n` copies with ids `[i, 0, 0, …]`, held here, in key order.
    fn copies(n: u8) -> (MemStore, Vec<Vec<u8>>) {
        let store = MemStore::default();
        let meta = crate::node::StoredMeta {
            origin: "maoc-n".into(),
            kind: "alert".into(),
            case_ref: "MAOC-2026-0001".into(),
            routes: vec!["atlantic.west-africa".into()],
            created_at_ms: 1,
            expires_at_ms: 0,
            from: String::new(),
            received_at_ms: 1,
        };
        let keys: Vec<Vec<u8>> = (0..n)
            .map(|i| {
                let mut k = vec![i];
                k.resize(16, 0);
                k.extend_from_slice(b"maoc-n");
                k
            })
            .collect();
        let ops: Vec<Op> = keys
            .iter()
            .map(|k| {
                Op::put(
                    Space::Notifications,
                    k.clone(),
                    crate::node::encode_stored(&meta, b""),
                )
            })
            .collect();
        store.apply(&ops).unwrap();
        (store, keys)
    }

    fn listing(wanted: &str, from: Vec<u8>, limit: usize, budget: usize) -> CaseListing {
        CaseListing {
            prefix: Vec::new(),
            wanted: wanted.into(),
            from,
            limit,
            scope: None,
            budget,
        }
    }

    #[test]
    fn a_listing_stops_at_its_budget_and_goes_on_from_its_cursor() {
        let (store, keys) = copies(10);
        // An odd digit no id starts with: nothing to return, but only 4 copies read per reply,
        // each reply saying where to go on, until the last says the listing is complete.
        let mut from = Vec::new();
        let mut replies = Vec::new();
        loop {
            let (items, next) = listing("f", from, 100, 4).read(&store, "maoc-n").unwrap();
            assert!(items.is_empty());
            replies.push(next.clone());
            if next.is_empty() {
                break;
            }
            from = [hex::decode(&next).unwrap(), vec![0]].concat();
        }
        assert_eq!(
            replies,
            [hex::encode(&keys[3]), hex::encode(&keys[7]), String::new()]
        );

        // Within the budget, a full reply's cursor is its last item.
        let (items, next) = listing("", Vec::new(), 3, 4)
            .read(&store, "maoc-n")
            .unwrap();
        assert_eq!(items.len(), 3);
        assert!(items.iter().all(|c| c.state == "held"));
        assert_eq!(next, hex::encode(&keys[2]));
        // And a short one ends the listing.
        let (items, next) = listing("", Vec::new(), 100, 1000)
            .read(&store, "maoc-n")
            .unwrap();
        assert_eq!((items.len(), next.as_str()), (10, ""));
    }
}
