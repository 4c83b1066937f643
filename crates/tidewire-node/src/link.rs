//! Links to direct peers: one bidirectional stream per peer carrying transfers, acks and
//! link-state. The node with the smaller id dials (with capped exponential backoff and jitter);
//! the other accepts. Both ends then run the same [`run_session`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::{Stream, StreamExt};
use prost::Message;
use tidewire_core::NodeId;
use tidewire_core::timefmt;
use tidewire_proto::v1 as pb;
use tidewire_proto::v1::link_frame::Frame;
use tidewire_store::{Op, Space};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::ledger::LedgerEntry;
use crate::node::{
    Due, Node, Numbered, OutboxItem, PendingIngest, PurgeReason, Received, Taken, be_u64,
    decode_expiry, expiry_entry, parse_outbox_key,
};
use crate::routing::Announcement;

/// Signing domain of link-state announcements.
pub const LINK_STATE_DOMAIN: &[u8] = b"tidewire/v1/link-state\0";

/// How many transfers one receive batch handles before acknowledging.
const RECV_BATCH: usize = 512;
/// How many outbox entries one send round reads per destination.
const SEND_BATCH: usize = 256;
/// Receive batches verified and queued for commit but not yet acknowledged, per link.
const RECV_PIPELINE: usize = 4;
/// Send rounds prepared and queued for commit but not yet written to the link.
const SEND_PIPELINE: usize = 4;

/// A running session, so a newer one can replace it and floods can reach it.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    id: u64,
    /// Frames to send to the peer.
    pub tx: mpsc::Sender<pb::LinkFrame>,
    cancel: CancellationToken,
}

/// Live sessions by peer.
#[derive(Debug, Default)]
pub struct Sessions {
    map: std::sync::Mutex<HashMap<NodeId, SessionHandle>>,
    next: AtomicU64,
}

impl Sessions {
    fn register(
        &self,
        peer: &NodeId,
        tx: mpsc::Sender<pb::LinkFrame>,
        cancel: CancellationToken,
    ) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let old = self
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(peer.clone(), SessionHandle { id, tx, cancel });
        if let Some(old) = old {
            old.cancel.cancel();
        }
        id
    }

    fn deregister(&self, peer: &NodeId, id: u64) -> bool {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(peer).is_some_and(|h| h.id == id) {
            map.remove(peer);
            true
        } else {
            false
        }
    }

    /// Ends the live session with `peer`, if there is one.
    pub fn end(&self, peer: &NodeId) -> bool {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(peer).inspect(|h| h.cancel.cancel()).is_some()
    }

    /// Ends every live session; each is opened again by the side that dials it (after the
    /// first backoff step), under what the node holds then.
    pub fn end_all(&self) -> usize {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        for h in map.values() {
            h.cancel.cancel();
        }
        map.len()
    }

    /// Senders of every live session except `except`.
    pub fn others(&self, except: Option<&NodeId>) -> Vec<(NodeId, mpsc::Sender<pb::LinkFrame>)> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(k, _)| Some(*k) != except)
            .map(|(k, h)| (k.clone(), h.tx.clone()))
            .collect()
    }
}

/// Builds and signs this node's current link-state announcement.
pub fn own_link_state(node: &Node) -> pb::LinkState {
    link_state(node, node.interests())
}

fn link_state(node: &Node, interests: Vec<String>) -> pb::LinkState {
    let seq = node.ls_seq.fetch_add(1, Ordering::SeqCst) + 1;
    let neighbours = node
        .routing
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .live()
        .iter()
        .map(|n| n.to_string())
        .collect();
    let body = pb::LinkStateBody {
        node: node.id().to_string(),
        seq,
        at_ms: timefmt::now_ms(),
        neighbours,
        interests,
        key_id: node.key().key_id().to_owned(),
    }
    .encode_to_vec();
    let signature = node.key().sign(LINK_STATE_DOMAIN, &body).to_vec();
    pb::LinkState {
        body: body.into(),
        signature: signature.into(),
    }
}

/// Sends this node's announcement to every live session, and remembers the interests it carried
/// (for [`announce_interests`]).
pub fn announce(node: &Node) {
    let interests = node.interests();
    interests.clone_into(
        &mut node
            .announced_interests
            .lock()
            .unwrap_or_else(|p| p.into_inner()),
    );
    let ls = link_state(node, interests);
    for (_, tx) in node.sessions.others(None) {
        let _ = tx.try_send(pb::LinkFrame {
            frame: Some(Frame::LinkState(ls.clone())),
        });
    }
}

/// Announces this node again if its route interests (live and durable subscriptions) differ
/// from those its last announcement carried; every subscription change ends with this.
pub fn announce_interests(node: &Node) {
    let changed = *node
        .announced_interests
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        != node.interests();
    if changed {
        announce(node);
    }
}

/// Verifies and learns an announcement; floods it on if it was new.
fn learn_link_state(node: &Node, from: &NodeId, ls: pb::LinkState) {
    let Ok(body) = pb::LinkStateBody::decode(ls.body.as_ref()) else {
        node.counters.refuse("bad_link_state");
        return;
    };
    let Ok(origin) = body.node.parse::<NodeId>() else {
        return;
    };
    let roster = node.roster();
    let Some(entry) = roster.get(origin.as_str()) else {
        node.counters.refuse("bad_link_state");
        return;
    };
    let verified = entry
        .keys
        .iter()
        .find(|k| k.key_id == body.key_id)
        .is_some_and(|k| k.verify(LINK_STATE_DOMAIN, &ls.body, &ls.signature));
    if !verified {
        node.counters.refuse("bad_link_state");
        tracing::warn!(peer = %from, node = %origin, "link-state announcement refused: bad signature");
        return;
    }
    let a = Announcement {
        seq: body.seq,
        neighbours: body
            .neighbours
            .iter()
            .filter_map(|n| n.parse().ok())
            .collect(),
        interests: body
            .interests
            .iter()
            .filter_map(|p| p.parse().ok())
            .collect(),
        frame: ls.clone(),
    };
    let new = node
        .routing
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .learn(origin, a);
    if new {
        for (_, tx) in node.sessions.others(Some(from)) {
            let _ = tx.try_send(pb::LinkFrame {
                frame: Some(Frame::LinkState(ls.clone())),
            });
        }
        node.bump_outbox();
    }
}

/// The largest link frame a node with `limits.max_message_bytes = max` sends or takes: an
/// envelope of up to `max` bytes and the transfer around it (sequence number, destinations, a
/// consent grant). An envelope over `max` inside such a frame is then refused by itself (`Ack`
/// refusal `too_large`) instead of failing the frame and, with it, the whole link.
pub fn frame_limit(max: usize) -> usize {
    max.saturating_add(LINK_FRAME_SLACK)
}

/// What a transfer frame adds around its envelope, at most.
const LINK_FRAME_SLACK: usize = 64 * 1024;

/// Marks the link to `peer` up or down. A link removed meanwhile (SIGHUP) is not put back:
/// its session only goes down.
fn set_link(node: &Node, peer: &NodeId, up: bool, error: Option<String>) {
    let up = match node
        .links
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_mut(peer)
    {
        Some(l) => {
            l.up = up;
            if let Some(e) = error {
                l.last_error = e;
            }
            up
        }
        None => false,
    };
    let changed = node
        .routing
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .set_live(peer, up);
    if changed {
        announce(node);
        node.bump_outbox();
    }
}

struct Inflight {
    key: Vec<u8>,
    entry: LedgerEntry,
}

/// Runs one established session until the stream ends, fails or `cancel` fires.
pub async fn run_session<S>(
    node: Arc<Node>,
    peer: NodeId,
    mut incoming: S,
    out: mpsc::Sender<pb::LinkFrame>,
    cancel: CancellationToken,
) where
    S: Stream<Item = Result<pb::LinkFrame, tonic::Status>> + Unpin + Send,
{
    let session_cancel = cancel.child_token();
    let sid = node
        .sessions
        .register(&peer, out.clone(), session_cancel.clone());
    // The link was removed (SIGHUP) while this session was being opened.
    if !node
        .links
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains_key(&peer)
    {
        node.sessions.deregister(&peer, sid);
        return;
    }
    tracing::info!(peer = %peer, "link up");
    set_link(&node, &peer, true, None);
    // Give the new neighbour everything we know about the federation.
    let _ = out
        .send(pb::LinkFrame {
            frame: Some(Frame::LinkState(own_link_state(&node))),
        })
        .await;
    let known: Vec<pb::LinkState> = node
        .routing
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .announcements()
        .map(|a| a.frame.clone())
        .collect();
    for ls in known {
        let _ = out
            .send(pb::LinkFrame {
                frame: Some(Frame::LinkState(ls)),
            })
            .await;
    }

    let (ack_tx, ack_rx) = mpsc::unbounded_channel::<pb::Ack>();
    let sender = node.tracker.spawn(
        send_loop(
            node.clone(),
            peer.clone(),
            out.clone(),
            ack_rx,
            session_cancel.clone(),
        )
        .instrument(tracing::info_span!("link-send", peer = %peer)),
    );

    // Receive batches are verified and queued for the group commit here, then acknowledged in
    // order by the acker once durable, so the next batch is verified while this one syncs.
    let (pending_tx, pending_rx) = mpsc::channel::<(u64, Vec<u64>, PendingIngest)>(RECV_PIPELINE);
    let acker = node.tracker.spawn(
        ack_loop(pending_rx, out.clone(), session_cancel.clone())
            .instrument(tracing::info_span!("link-ack", peer = %peer)),
    );
    let mut error = None;
    let mut chunks = (&mut incoming).ready_chunks(RECV_BATCH);
    loop {
        let chunk = tokio::select! {
            _ = session_cancel.cancelled() => break,
            c = chunks.next() => c,
        };
        let Some(chunk) = chunk else {
            error = Some("peer closed the link".to_owned());
            break;
        };
        let mut transfers = Vec::new();
        let mut failed = None;
        for f in chunk {
            match f {
                Ok(pb::LinkFrame {
                    frame: Some(Frame::Transfer(t)),
                }) => transfers.push(t),
                Ok(pb::LinkFrame {
                    frame: Some(Frame::Ack(a)),
                }) => {
                    let _ = ack_tx.send(a);
                }
                Ok(pb::LinkFrame {
                    frame: Some(Frame::LinkState(ls)),
                }) => learn_link_state(&node, &peer, ls),
                Ok(pb::LinkFrame {
                    frame: Some(Frame::Routed(r)),
                }) => node.on_routed(&peer, r).await,
                Ok(_) => {}
                Err(e) => {
                    failed = Some(crate::tls::error_chain(&e));
                    break;
                }
            }
        }
        if !transfers.is_empty() {
            let seqs: Vec<u64> = transfers.iter().map(|t| t.seq).collect();
            let up_to = seqs.iter().copied().max().unwrap_or(0);
            match node.ingest_submit(&peer, transfers) {
                Ok(p) => {
                    if pending_tx.send((up_to, seqs, p)).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    // Not durable: do not acknowledge; the peer resends after reconnecting.
                    tracing::error!(peer = %peer, error = %e, "ingest failed; dropping the link so the peer resends");
                    error = Some(e.to_string());
                    break;
                }
            }
        }
        if let Some(f) = failed {
            error = Some(f);
            break;
        }
    }
    drop(pending_tx);
    if let Ok(Some(e)) = acker.await {
        error = Some(e);
    }
    session_cancel.cancel();
    let _ = sender.await;
    if node.sessions.deregister(&peer, sid) {
        tracing::info!(peer = %peer, reason = error.as_deref().unwrap_or("shutdown"), "link down");
        set_link(&node, &peer, false, error);
    }
}

/// Acknowledges receive batches in order, each once its writes are durable. Returns the error
/// that ended the session, if it was this loop's.
async fn ack_loop(
    mut pending: mpsc::Receiver<(u64, Vec<u64>, PendingIngest)>,
    out: mpsc::Sender<pb::LinkFrame>,
    cancel: CancellationToken,
) -> Option<String> {
    while let Some((up_to, seqs, p)) = pending.recv().await {
        let results = match p.finish().await {
            Ok(r) => r,
            Err(e) => {
                // Not durable: neither this batch nor any later one is acknowledged; the peer
                // resends them after reconnecting (later ones that did land are duplicates).
                tracing::error!(error = %e, "ingest failed; dropping the link so the peer resends");
                cancel.cancel();
                return Some(e.to_string());
            }
        };
        let refused = results
            .iter()
            .zip(&seqs)
            .filter_map(|(r, s)| match r {
                Received::Refused(reason, detail) => Some(pb::Refusal {
                    seq: *s,
                    reason: reason.clone(),
                    detail: detail.clone(),
                }),
                Received::Accepted => None,
            })
            .collect();
        let ack = pb::LinkFrame {
            frame: Some(Frame::Ack(pb::Ack { up_to, refused })),
        };
        if out.send(ack).await.is_err() {
            cancel.cancel();
            return Some("link closed while acknowledging".into());
        }
    }
    None
}

async fn send_loop(
    node: Arc<Node>,
    peer: NodeId,
    out: mpsc::Sender<pb::LinkFrame>,
    mut acks: mpsc::UnboundedReceiver<pb::Ack>,
    cancel: CancellationToken,
) {
    let (rounds, pending) = mpsc::channel(SEND_PIPELINE);
    node.tracker
        .spawn(write_loop(node.clone(), pending, out, cancel.clone()).in_current_span());
    let mut changed = node.outbox_changed.subscribe();
    let mut inflight: BTreeMap<u64, Inflight> = BTreeMap::new();
    let mut counted = InFlightGauge {
        node: &node,
        counted: 0,
    };
    let mut cursors: HashMap<NodeId, Vec<u8>> = HashMap::new();
    let mut seq = 0u64;
    let window = node.cfg.limits.link_window;
    let roster: Vec<NodeId> = node
        .roster()
        .nodes()
        .map(|n| n.id.clone())
        .filter(|n| n != node.id())
        .collect();
    loop {
        changed.borrow_and_update();
        let mut resolved_ops = Vec::new();
        let mut resolved_entries = Vec::new();
        let mut prepared = Vec::new();
        let dests: Vec<NodeId> = {
            let r = node.routing.lock().unwrap_or_else(|p| p.into_inner());
            roster
                .iter()
                .filter(|d| r.next_hop(d) == Some(&peer))
                .cloned()
                .collect()
        };
        // Draining for a graceful stop: nothing new goes, what went is acknowledged.
        let draining = node.draining.is_cancelled();
        for dest in dests.iter().filter(|_| !draining) {
            if inflight.len() >= window {
                break;
            }
            let mut prefix = dest.as_str().as_bytes().to_vec();
            prefix.push(0);
            let from = match cursors.get(dest) {
                Some(c) => {
                    let mut f = c.clone();
                    f.push(0);
                    f
                }
                None => prefix.clone(),
            };
            let room = (window - inflight.len()).min(SEND_BATCH);
            let items = match node.store.scan(Space::Outbox, &prefix, &from, room) {
                Ok(i) => i,
                Err(e) => {
                    tracing::error!(error = %e, "outbox read failed");
                    break;
                }
            };
            for (key, value) in items {
                // A copy prepared ahead by the commit that queued it: its transfer is recorded in
                // that commit, and sent only once that is durable.
                let ahead = match parse_outbox_key(&key) {
                    Some((_, oseq)) => node.take_ahead(&peer, dest, oseq),
                    None => Taken::None,
                };
                if matches!(ahead, Taken::Pending) {
                    break;
                }
                // Where this destination's reading stood before this item: a copy that cannot
                // be read now is read again from there.
                let before = cursors.insert(dest.clone(), key.clone());
                let Some(item) = OutboxItem::decode(&value) else {
                    resolved_ops.push(Op::delete(Space::Outbox, key));
                    continue;
                };
                let copy = match ahead {
                    Taken::Ready(p) => Ok(*p),
                    _ => node.prepare_egress(&peer, dest, &item).inspect(|p| {
                        resolved_entries.push(p.entry.clone());
                    }),
                };
                match copy {
                    Ok(p) => {
                        node.tally_sent(&p);
                        seq += 1;
                        inflight.insert(
                            seq,
                            Inflight {
                                key,
                                entry: p.entry,
                            },
                        );
                        let transfer = pb::Transfer {
                            seq,
                            envelope: Default::default(),
                            destinations: vec![dest.to_string()],
                            hops_left: item.hops_left,
                            consent_grant: p.grant.into(),
                        };
                        prepared.push((transfer, p.env));
                    }
                    Err(skipped) if skipped.keeps_item() => {
                        // Not resolved, never dropped: it stays queued, and this destination
                        // resumes from it on the next wake.
                        match before {
                            Some(c) => cursors.insert(dest.clone(), c),
                            None => cursors.remove(dest),
                        };
                        break;
                    }
                    Err(skipped) => {
                        node.tally_skipped(&skipped);
                        resolved_ops.push(Op::delete(Space::Outbox, key));
                        resolved_entries.extend(skipped.entry.map(|e| *e));
                    }
                }
            }
        }
        // Every disclosure is on the ledger, with the policy version that allowed it, before its
        // bytes leave (one group commit per send round): the writer sends a round's frames only
        // once its records are durable, rounds in order, while this loop prepares the next. A
        // resend after a lost ack is recorded again: it is a second disclosure, possibly under a
        // newer policy.
        // The round's custody entries are signed together; each transfer then gets its bytes.
        let (transfers, envs): (Vec<pb::Transfer>, Vec<_>) = prepared.into_iter().unzip();
        let frames: Vec<pb::LinkFrame> = transfers
            .into_iter()
            .zip(node.sign_round(envs))
            .map(|(t, bytes)| pb::LinkFrame {
                frame: Some(Frame::Transfer(pb::Transfer {
                    envelope: bytes.into(),
                    ..t
                })),
            })
            .collect();
        let sent = frames.len();
        // A round of copies all prepared ahead has nothing new to record.
        let records = !resolved_ops.is_empty() || !resolved_entries.is_empty();
        if sent > 0 || records {
            let receipt = records
                .then(|| node.submit_numbered(resolved_ops, Numbered::default(), resolved_entries));
            if rounds.send((receipt, frames)).await.is_err() {
                return;
            }
        }
        counted.set(inflight.len());
        if sent > 0 && inflight.len() < window {
            continue;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = changed.changed() => if r.is_err() { return },
            a = acks.recv() => match a {
                Some(ack) => complete(&node, &peer, &mut inflight, ack),
                None => return,
            },
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        while let Ok(ack) = acks.try_recv() {
            complete(&node, &peer, &mut inflight, ack);
        }
        counted.set(inflight.len());
    }
}

/// One link's share of `Node::in_flight`; given back when its send loop ends, since its
/// unacknowledged transfers then wait in the outbox to be sent again.
struct InFlightGauge<'a> {
    node: &'a Node,
    counted: usize,
}

impl InFlightGauge<'_> {
    fn set(&mut self, n: usize) {
        if n > self.counted {
            self.node
                .in_flight
                .fetch_add((n - self.counted) as u64, Ordering::AcqRel);
        } else if n < self.counted {
            self.node
                .in_flight
                .fetch_sub((self.counted - n) as u64, Ordering::AcqRel);
        }
        self.counted = n;
    }
}

impl Drop for InFlightGauge<'_> {
    fn drop(&mut self) {
        self.set(0);
    }
}

/// Writes prepared send rounds to the link in order, each once its ledger records are durable.
async fn write_loop(
    node: Arc<Node>,
    mut rounds: mpsc::Receiver<(Option<crate::node::Submitted>, Vec<pb::LinkFrame>)>,
    out: mpsc::Sender<pb::LinkFrame>,
    cancel: CancellationToken,
) {
    while let Some((receipt, frames)) = rounds.recv().await {
        if let Some(receipt) = receipt
            && let Err(e) = node.wait_commit(receipt).await
        {
            tracing::error!(error = %e, "could not record transfers; not sending them");
            cancel.cancel();
            return;
        }
        for frame in frames {
            if out.send(frame).await.is_err() {
                return;
            }
        }
    }
}

/// Refusal reasons that say the peer's roster does not (yet) know a node or key, rather than
/// anything wrong with the envelope.
const PASSING_REFUSALS: [&str; 2] = ["unknown_node", "unknown_key"];

/// Resolves acknowledged transfers: the outbox entry goes and the disclosure is recorded.
fn complete(node: &Arc<Node>, peer: &NodeId, inflight: &mut BTreeMap<u64, Inflight>, ack: pb::Ack) {
    let rest = inflight.split_off(&(ack.up_to + 1));
    let done = std::mem::replace(inflight, rest);
    if done.is_empty() {
        return;
    }
    let refused: HashMap<u64, &pb::Refusal> = ack.refused.iter().map(|r| (r.seq, r)).collect();
    let mut ops = Vec::with_capacity(done.len());
    let mut entries = Vec::with_capacity(done.len());
    let mut forwarded = 0u64;
    for (seq, f) in done {
        let Some(r) = refused.get(&seq) else {
            ops.push(Op::delete(Space::Outbox, f.key));
            forwarded += 1;
            continue;
        };
        // A peer that does not know a node or key yet (its roster lags a key rotation or a new
        // centre) may know it after its next restart: the copy stays queued and goes again
        // when the link is next established. Any other refusal is final.
        let kept = PASSING_REFUSALS.contains(&r.reason.as_str());
        if !kept {
            ops.push(Op::delete(Space::Outbox, f.key));
        }
        tracing::warn!(peer = %peer, reason = %r.reason, detail = %r.detail, kept, "peer refused a transfer");
        node.counters.refuse(&format!("peer_refused_{}", r.reason));
        let mut e = f.entry;
        e.event = "transfer_refused".into();
        e.detail["refused"] = serde_json::json!({"reason": r.reason, "detail": r.detail});
        if kept {
            e.detail["kept"] = serde_json::json!(
                "the copy stays queued and is sent again when the link is next established"
            );
        }
        entries.push(e);
    }
    node.counters
        .forwarded
        .fetch_add(forwarded, Ordering::Relaxed);
    let n = node.clone();
    node.tracker.spawn(
        async move {
            // Removing acknowledged items need not be durable at once: lost in a crash, they are
            // sent again and the peer answers them as duplicates. Refusals are ledger records.
            let done = if entries.is_empty() {
                n.commit_lazy(ops).await
            } else {
                n.commit(ops, entries).await
            };
            if let Err(e) = done {
                tracing::error!(error = %e, "could not record acknowledged transfers");
            }
        }
        .in_current_span(),
    );
}

/// Keeps a dialed link up: connect, run the session, back off (capped, jittered) and retry.
pub async fn dial_loop(node: Arc<Node>, peer: NodeId, url: String, cancel: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    let max = Duration::from_secs(5);
    loop {
        if cancel.is_cancelled() {
            return;
        }
        match connect(&node, &peer, &url).await {
            Ok((inbound, out)) => {
                backoff = Duration::from_millis(100);
                run_session(node.clone(), peer.clone(), inbound, out, cancel.clone()).await;
            }
            Err(e) => {
                tracing::debug!(peer = %peer, url = %url, error = %e, "link dial failed");
                let mut links = node.links.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(l) = links.get_mut(&peer) {
                    l.last_error = e;
                }
            }
        }
        let jitter = 0.8 + rand::random::<f64>() * 0.4;
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff.mul_f64(jitter)) => {}
        }
        backoff = (backoff * 2).min(max);
    }
}

type Inbound = tonic::Streaming<pb::LinkFrame>;

async fn connect(
    node: &Arc<Node>,
    peer: &NodeId,
    url: &str,
) -> Result<(Inbound, mpsc::Sender<pb::LinkFrame>), String> {
    let pin = node
        .roster()
        .get(peer.as_str())
        .and_then(|e| e.tls_cert_sha256);
    let channel = match node
        .tls
        .connect_link(url, &crate::tls::node_dns_name(peer.as_str()), pin)
        .await
    {
        Ok(ch) => ch,
        Err(crate::tls::LinkConnectError::NotPinned(why)) => {
            node.counters.refuse("impersonation");
            tracing::warn!(peer = %peer, url = %url, reason = %why, "link refused: the server is not the node the roster pins");
            return Err(why);
        }
        Err(e) => return Err(e.to_string()),
    };
    let max = frame_limit(node.cfg.limits.max_message_bytes);
    let mut client = pb::federation_client::FederationClient::new(channel)
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let (tx, rx) = mpsc::channel(1024);
    tx.send(pb::LinkFrame {
        frame: Some(Frame::Hello(pb::Hello {
            node: node.id().to_string(),
            protocol: 1,
            max_message_bytes: node.cfg.limits.max_message_bytes as u64,
        })),
    })
    .await
    .map_err(|_| "link closed".to_owned())?;
    let mut inbound = client
        .link(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    match inbound.message().await {
        Ok(Some(pb::LinkFrame {
            frame: Some(Frame::Hello(h)),
        })) if h.node == peer.as_str() => {
            node.note_peer_limit(peer, h.max_message_bytes);
            Ok((inbound, tx))
        }
        Ok(Some(pb::LinkFrame {
            frame: Some(Frame::Hello(h)),
        })) => Err(format!("dialed `{peer}` but `{}` answered", h.node)),
        Ok(_) => Err("peer did not say hello".into()),
        Err(s) => Err(format!("{:?}: {}", s.code(), crate::tls::error_chain(&s))),
    }
}

/// Commits feed entries trimmed by retention (`Op::delete`s in feed order), with the last of
/// them as `FEED_TRIMMED`: the feed's numbering continues past what is trimmed, even all of it,
/// so that after a restart cursors keep their meaning.
async fn commit_trim(node: &Node, mut ops: Vec<Op>) -> Result<(), crate::error::NodeError> {
    let Some(Op::Delete { key: last, .. }) = ops.last() else {
        return Ok(());
    };
    let last = last.clone();
    ops.push(Op::put(
        Space::Meta,
        crate::node::FEED_TRIMMED.as_bytes().to_vec(),
        last,
    ));
    node.commit(ops, Vec::new()).await
}

/// Purges expired content (every copy, everywhere: DESIGN invariant 3) and content held longer
/// than `limits.retention_hours`, and trims the local feed to the retention; subscribers that
/// fall behind are told how much they missed.
pub async fn purge_expired(node: &Arc<Node>) -> Result<u64, crate::error::NodeError> {
    let now = timefmt::now_ms();
    let horizon = now.saturating_sub(node.cfg.retention_ms());
    let mut trimmed = 0u64;
    'feed: loop {
        let batch = node.store.scan(Space::Feed, b"", b"", 1024)?;
        if batch.is_empty() {
            break;
        }
        let mut batch_ops = Vec::new();
        for (k, note) in &batch {
            let old = match node.store.get(Space::Notifications, note)? {
                Some(v) => {
                    crate::node::decode_stored(&v).is_none_or(|(m, _)| m.received_at_ms < horizon)
                }
                None => true,
            };
            if !old {
                commit_trim(node, batch_ops).await?;
                break 'feed;
            }
            batch_ops.push(Op::delete(Space::Feed, k.clone()));
            trimmed += 1;
        }
        commit_trim(node, batch_ops).await?;
    }
    if trimmed > 0 {
        tracing::info!(entries = trimmed, "feed trimmed to retention");
    }
    // Copies due, from the expiry index (never by reading every stored copy). Their seen-set
    // entries go too: a late duplicate of an expired notification is refused as expired, and
    // one of a notification held past the retention as created too long ago, before the
    // seen-set is consulted, so the set need not remember it.
    let mut n = 0u64;
    loop {
        // An entry lists up to a receive batch of copies: 64 entries bound one commit.
        let batch = node.store.scan(Space::Expiry, b"", b"", 64)?;
        let mut ops = Vec::new();
        let mut entries = Vec::new();
        let mut ids = HashSet::new();
        for (k, v) in batch.iter().take_while(|(k, _)| {
            k.len() > 8 && i64::try_from(be_u64(&k[..8])).is_ok_and(|at| at <= now)
        }) {
            ops.push(Op::delete(Space::Expiry, k.clone()));
            // An entry lists the copies stored together; those not due yet are listed again,
            // under the earliest of them.
            let (due, later): (Vec<Due>, Vec<Due>) = decode_expiry(k, v)
                .into_iter()
                .partition(|d| d.at_ms <= now);
            ops.extend(expiry_entry(&later));
            for d in due {
                let retention = match d.why {
                    PurgeReason::Key => {
                        ops.push(Op::delete(Space::Idempotency, d.note));
                        continue;
                    }
                    PurgeReason::Expired => false,
                    PurgeReason::Retention => true,
                };
                let note = d.note.as_slice();
                if node.store.contains(Space::Notifications, note)? {
                    ops.push(Op::delete(Space::Notifications, note.to_vec()));
                    let (id, holder) = note.split_at(16.min(note.len()));
                    let mut e = if retention {
                        let mut e = LedgerEntry::new("purged");
                        e.detail = serde_json::json!({
                            "reason": "retention",
                            "retention_hours": node.cfg.limits.retention_hours,
                            "held_for": String::from_utf8_lossy(holder),
                        });
                        e
                    } else {
                        LedgerEntry::new("expired")
                    };
                    e.notification = hex::encode(id);
                    entries.push(e);
                }
                if note.len() >= 16 && ids.insert(note[..16].to_vec()) {
                    for (seen, _) in
                        node.store
                            .scan(Space::Seen, &note[..16], &note[..16], usize::MAX)?
                    {
                        ops.push(Op::delete(Space::Seen, seen));
                    }
                }
            }
        }
        if ops.is_empty() {
            break;
        }
        n += entries.len() as u64;
        node.commit(ops, entries).await?;
    }
    if n > 0 {
        node.bump_outbox();
    }
    Ok(n)
}
