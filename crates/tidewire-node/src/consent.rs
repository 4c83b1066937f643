//! Onward-transfer consent (DESIGN invariant 4). A relay that wants to pass an H2 notification to
//! a destination outside the origin's audience holds it and sends the origin a signed consent
//! request, routed hop by hop. The origin answers at once from a standing consent in its policy,
//! or its administrator grants or refuses. A grant travels with the notification so every node on
//! the way, and the destination, can check it; all of it is on the ledgers.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use prost::Message;
use tidewire_core::{Handling, NodeId, NotificationId, timefmt};
use tidewire_policy::Party;
use tidewire_proto::v1 as pb;
use tidewire_proto::v1::link_frame::Frame;
use tidewire_proto::v1::routed_body::Message as RoutedMessage;
use tidewire_store::{Op, Space};

use crate::error::NodeError;
use crate::ledger::LedgerEntry;
use crate::node::{ConsentRecord, Node, Numbered, OutboxItem, note_key, stored_header};

/// How long a held consent request that reached the next hop waits before it is sent again.
pub const CONSENT_RESEND: Duration = Duration::from_secs(30);

/// Signing domain of routed control messages.
pub const ROUTED_DOMAIN: &[u8] = b"tidewire/v1/routed\0";

/// Store key of a grant for (notification, destination).
pub fn grant_key(id: &NotificationId, dest: &NodeId) -> Vec<u8> {
    [id.0.as_slice(), dest.as_str().as_bytes()].concat()
}

/// What ConsentAsk did.
#[derive(Debug)]
pub enum Asked {
    /// Inside the audience, or onward transfer allowed: queued now. The notification's kind
    /// and case reference, for the answer.
    Queued {
        /// Its kind.
        kind: String,
        /// Its case reference.
        case_ref: String,
    },
    /// Held; the origin was asked.
    Held(Box<ConsentRecord>),
}

impl Node {
    fn sign_routed(&self, to: &NodeId, message: RoutedMessage) -> pb::Routed {
        let body = pb::RoutedBody {
            from: self.id().to_string(),
            to: to.to_string(),
            id: rand::random::<[u8; 16]>().to_vec().into(),
            at_ms: timefmt::now_ms(),
            key_id: self.key().key_id().to_owned(),
            message: Some(message),
        }
        .encode_to_vec();
        let signature = self.key().sign(ROUTED_DOMAIN, &body).to_vec();
        pb::Routed {
            body: body.into(),
            signature: signature.into(),
        }
    }

    /// Sends a routed message towards its destination by the current next hop.
    fn send_routed(&self, to: &NodeId, routed: pb::Routed) -> Result<(), NodeError> {
        let hop = self
            .routing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .next_hop(to)
            .cloned()
            .ok_or_else(|| {
                NodeError::Invalid(format!(
                    "no route to `{to}` right now; retry when its links are up"
                ))
            })?;
        let tx = self
            .sessions
            .others(None)
            .into_iter()
            .find(|(p, _)| *p == hop)
            .map(|(_, tx)| tx)
            .ok_or_else(|| {
                NodeError::Invalid(format!("the link to `{hop}` is down; retry later"))
            })?;
        tx.try_send(pb::LinkFrame {
            frame: Some(Frame::Routed(routed)),
        })
        .map_err(|_| NodeError::Invalid(format!("the link to `{hop}` is congested; retry")))
    }

    /// Verifies a routed message's signature against the roster; returns its body.
    fn verify_routed(&self, r: &pb::Routed) -> Option<pb::RoutedBody> {
        let body = pb::RoutedBody::decode(r.body.as_ref()).ok()?;
        let roster = self.roster();
        let entry = roster.get(&body.from)?;
        let key = entry.keys.iter().find(|k| k.key_id == body.key_id)?;
        (key.valid_at(body.at_ms) && key.verify(ROUTED_DOMAIN, &r.body, &r.signature))
            .then_some(body)
    }

    /// Whether `grant` (an encoded Routed) is the origin's consent for `id` to `dest`.
    pub fn grant_valid(
        &self,
        grant: &[u8],
        id: &NotificationId,
        origin: &NodeId,
        dest: &NodeId,
    ) -> bool {
        let Ok(r) = pb::Routed::decode(grant) else {
            return false;
        };
        let Some(body) = self.verify_routed(&r) else {
            return false;
        };
        matches!(body.message, Some(RoutedMessage::ConsentAnswer(a))
            if body.from == origin.as_str() && a.granted && a.notification == id.to_string() && a.destination == dest.as_str())
    }

    /// Handles a routed control message: forward it on, or act on it if it is for us.
    pub async fn on_routed(&self, from: &NodeId, routed: pb::Routed) {
        let Some(body) = self.verify_routed(&routed) else {
            self.counters.refuse("bad_routed_signature");
            tracing::warn!(peer = %from, "routed control message refused: bad signature");
            return;
        };
        {
            let mut seen = self.routed_seen.lock().unwrap_or_else(|p| p.into_inner());
            if seen.len() > 100_000 {
                seen.clear();
            }
            if !seen.insert(body.id.to_vec()) {
                return;
            }
        }
        let Ok(to) = body.to.parse::<NodeId>() else {
            return;
        };
        if to != *self.id() {
            if let Err(e) = self.send_routed(&to, routed) {
                tracing::warn!(to = %to, error = %e, "could not forward a routed control message");
            }
            return;
        }
        let result = match body.message {
            Some(RoutedMessage::ConsentRequest(req)) => {
                self.on_consent_request(&body.from, &routed, req).await
            }
            Some(RoutedMessage::ConsentAnswer(ans)) => {
                self.on_consent_answer(&body.from, &routed, ans).await
            }
            None => Ok(()),
        };
        if let Err(e) = result {
            tracing::warn!(from = %body.from, error = %e, "consent message not handled");
        }
    }

    /// ConsentAsk: pass a held notification to `dest`, asking the origin where consent is needed.
    pub async fn ask_consent(
        &self,
        id: &str,
        dest: &str,
        reason: &str,
        by: &str,
    ) -> Result<Asked, NodeError> {
        let nid: NotificationId = id
            .parse()
            .map_err(|e| NodeError::Invalid(format!("notification: {e}")))?;
        let dest: NodeId = dest
            .parse()
            .map_err(|e| NodeError::Invalid(format!("destination: {e}")))?;
        if self.roster().get(dest.as_str()).is_none() {
            return Err(NodeError::Invalid(format!(
                "destination `{dest}` is not in the roster"
            )));
        }
        let stored = self
            .store
            .get(Space::Notifications, &note_key(&nid, self.id()))?
            .ok_or_else(|| {
                NodeError::NotFound(format!("this node holds no notification `{nid}`"))
            })?;
        let h = stored_header(&stored)
            .ok_or_else(|| NodeError::Internal("stored copy is corrupt".into()))?;
        if h.origin == *self.id()
            || self.audience_nodes(&h).contains(&dest)
            || (h.onward_transfer && h.handling != Handling::H2)
        {
            self.queue_for(
                &nid,
                &dest,
                "released",
                by,
                serde_json::json!({"reason": reason}),
            )
            .await?;
            return Ok(Asked::Queued {
                kind: h.kind.to_string(),
                case_ref: h.case_ref,
            });
        }
        if h.handling != Handling::H2 {
            return Err(NodeError::PermissionDenied(format!(
                "the origin `{}` forbids onward transfer of {nid} beyond its audience (onward_transfer = false)",
                h.origin
            )));
        }
        let rec = ConsentRecord {
            id: format!("{nid}-{dest}"),
            notification: nid.to_string(),
            requester: self.id().to_string(),
            destination: dest.to_string(),
            state: "held".into(),
            kind: h.kind.to_string(),
            case_ref: h.case_ref.clone(),
            at_ms: timefmt::now_ms(),
            origin: h.origin.to_string(),
            reason: reason.to_owned(),
        };
        let mut e = LedgerEntry::new("consent_requested");
        e.notification = nid.to_string();
        e.destination = format!("node:{dest}");
        e.detail = serde_json::json!({"origin": h.origin.as_str(), "reason": reason, "by": by});
        self.commit(vec![rec.put(Space::Held)], vec![e]).await?;
        // Held durably first; if the origin cannot be reached now, `retry_consent` sends the
        // request again until it answers.
        self.send_request(&rec);
        Ok(Asked::Held(Box::new(rec)))
    }

    /// Signs and sends `rec`'s consent request towards its origin; remembers when it left.
    fn send_request(&self, rec: &ConsentRecord) -> bool {
        let Ok(origin) = rec.origin.parse::<NodeId>() else {
            return false;
        };
        let routed = self.sign_routed(
            &origin,
            RoutedMessage::ConsentRequest(pb::ConsentRequest {
                notification: rec.notification.clone(),
                destination: rec.destination.clone(),
                reason: rec.reason.clone(),
            }),
        );
        match self.send_routed(&origin, routed) {
            Ok(()) => {
                self.consent_sent
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(rec.id.clone(), Instant::now());
                true
            }
            Err(e) => {
                tracing::info!(id = %rec.id, origin = %origin, reason = %e, "consent request not sent yet; will retry");
                false
            }
        }
    }

    /// Sends again every held request the origin has not answered: those never sent (no route
    /// when asked) at once, the others every [`CONSENT_RESEND`] (an answer may have been lost
    /// while this node was unreachable: the origin answers a repeated request from its recorded
    /// decision). A request whose notification is gone (expired, recalled) is closed. Returns
    /// how many requests were sent.
    pub async fn retry_consent(&self) -> Result<usize, NodeError> {
        let mut sent = 0;
        for rec in self.held_items()? {
            if rec.state != "held" || rec.origin.is_empty() {
                continue;
            }
            let nid: NotificationId = match rec.notification.parse() {
                Ok(n) => n,
                Err(_) => continue,
            };
            if !self
                .store
                .contains(Space::Notifications, &note_key(&nid, self.id()))?
            {
                let mut closed = rec.clone();
                closed.state = "expired".into();
                let mut e = LedgerEntry::new("dropped");
                e.notification = rec.notification.clone();
                e.destination = format!("node:{}", rec.destination);
                e.detail = serde_json::json!({"reason": "the notification expired or was recalled before the origin answered"});
                self.commit(vec![closed.put(Space::Held)], vec![e]).await?;
                continue;
            }
            let recent = self
                .consent_sent
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&rec.id)
                .is_some_and(|t| t.elapsed() < CONSENT_RESEND);
            if !recent && self.send_request(&rec) {
                sent += 1;
            }
        }
        Ok(sent)
    }

    async fn queue_for(
        &self,
        id: &NotificationId,
        dest: &NodeId,
        event: &str,
        by: &str,
        detail: serde_json::Value,
    ) -> Result<(), NodeError> {
        let item = OutboxItem {
            id: *id,
            hops_left: self.cfg.limits.hop_budget,
            holder: self.id().clone(),
        };
        let mut e = LedgerEntry::new(event);
        e.notification = id.to_string();
        e.destination = format!("node:{dest}");
        e.detail = serde_json::json!({"by": by, "detail": detail});
        let numbered = Numbered {
            outbox: vec![(dest.clone(), item)],
            ..Numbered::default()
        };
        self.commit_numbered(Vec::new(), numbered, vec![e]).await?;
        self.bump_outbox();
        Ok(())
    }

    /// At the origin: answer from a standing consent, or hold for the administrator.
    async fn on_consent_request(
        &self,
        requester: &str,
        routed: &pb::Routed,
        req: pb::ConsentRequest,
    ) -> Result<(), NodeError> {
        let nid: NotificationId = req
            .notification
            .parse()
            .map_err(|e| NodeError::Invalid(format!("{e}")))?;
        let dest: NodeId = req
            .destination
            .parse()
            .map_err(|e| NodeError::Invalid(format!("{e}")))?;
        let stored = self
            .store
            .get(Space::Notifications, &note_key(&nid, self.id()))?;
        let header = stored.as_deref().and_then(stored_header);
        let Some(header) = header.filter(|h| h.origin == *self.id()) else {
            return Err(NodeError::NotFound(format!(
                "consent asked for {nid}, which this node did not originate or no longer holds"
            )));
        };
        if let Some(v) = self
            .store
            .get(Space::Consent, format!("{nid}-{dest}").as_bytes())?
            && let Ok(earlier) = serde_json::from_slice::<ConsentRecord>(&v)
        {
            // A repeated request (the relay retries until it hears back): answer from the
            // recorded decision, or keep waiting for the administrator.
            return match earlier.state.as_str() {
                "granted" => self.answer_consent(&earlier, true, "an earlier decision"),
                "refused" => self.answer_consent(&earlier, false, "an earlier decision"),
                _ => Ok(()),
            };
        }
        let standing = match (self.policy(), self.roster().get(dest.as_str())) {
            (Some((p, _)), Some(n)) => p
                .standing_consent(&header, &Party::from_roster(n))
                .map(str::to_owned),
            _ => None,
        };
        let _ = routed;
        let mut rec = ConsentRecord {
            id: format!("{nid}-{dest}"),
            notification: nid.to_string(),
            requester: requester.to_owned(),
            destination: dest.to_string(),
            state: "pending".into(),
            kind: header.kind.to_string(),
            case_ref: header.case_ref.clone(),
            at_ms: timefmt::now_ms(),
            origin: self.id().to_string(),
            reason: req.reason.clone(),
        };
        let mut e = LedgerEntry::new("consent_requested");
        e.notification = nid.to_string();
        e.destination = format!("node:{dest}");
        e.detail = serde_json::json!({"requester": requester, "reason": req.reason});
        let mut entries = vec![e];
        if let Some(rule) = &standing {
            rec.state = "granted".into();
            let mut g = LedgerEntry::new("consent_granted");
            g.notification = nid.to_string();
            g.destination = format!("node:{dest}");
            g.rule = rule.clone();
            g.detail = serde_json::json!({"requester": requester, "by": "standing consent"});
            entries.push(g);
        }
        self.commit(vec![rec.put(Space::Consent)], entries).await?;
        if let Some(rule) = standing {
            self.answer_consent(&rec, true, &format!("standing consent `{rule}`"))?;
        }
        Ok(())
    }

    /// At the origin: sends the signed answer to the requester.
    pub fn answer_consent(
        &self,
        rec: &ConsentRecord,
        granted: bool,
        decided_by: &str,
    ) -> Result<(), NodeError> {
        let requester: NodeId = rec
            .requester
            .parse()
            .map_err(|e| NodeError::Internal(format!("{e}")))?;
        let routed = self.sign_routed(
            &requester,
            RoutedMessage::ConsentAnswer(pb::ConsentAnswer {
                notification: rec.notification.clone(),
                destination: rec.destination.clone(),
                granted,
                decided_by: decided_by.to_owned(),
            }),
        );
        self.send_routed(&requester, routed)
    }

    /// At the relay: release on a grant, drop on a refusal.
    async fn on_consent_answer(
        &self,
        from: &str,
        routed: &pb::Routed,
        ans: pb::ConsentAnswer,
    ) -> Result<(), NodeError> {
        let key = format!("{}-{}", ans.notification, ans.destination);
        let Some(v) = self.store.get(Space::Held, key.as_bytes())? else {
            return Err(NodeError::NotFound(format!(
                "consent answer for `{key}`, which this node is not holding"
            )));
        };
        let mut rec: ConsentRecord =
            serde_json::from_slice(&v).map_err(|e| NodeError::Internal(e.to_string()))?;
        let nid: NotificationId = ans
            .notification
            .parse()
            .map_err(|e| NodeError::Invalid(format!("{e}")))?;
        let dest: NodeId = ans
            .destination
            .parse()
            .map_err(|e| NodeError::Invalid(format!("{e}")))?;
        let origin: NodeId = from
            .parse()
            .map_err(|e| NodeError::Invalid(format!("{e}")))?;
        self.counters
            .consent_answers
            .fetch_add(1, Ordering::Relaxed);
        if rec.state != "held" {
            // Answered before, or closed meanwhile (the notification or its destination went).
            tracing::debug!(id = %rec.id, state = %rec.state, "consent answer for a request no longer held");
            return Ok(());
        }
        let grant = routed.encode_to_vec();
        if ans.granted && self.grant_valid(&grant, &nid, &origin, &dest) {
            rec.state = "released".into();
            let item = OutboxItem {
                id: nid,
                hops_left: self.cfg.limits.hop_budget,
                holder: self.id().clone(),
            };
            let mut e = LedgerEntry::new("released");
            e.notification = nid.to_string();
            e.destination = format!("node:{dest}");
            e.detail = serde_json::json!({"consent_by": from, "decided_by": ans.decided_by});
            self.commit_numbered(
                vec![
                    rec.put(Space::Held),
                    Op::put(Space::Grants, grant_key(&nid, &dest), grant),
                ],
                Numbered {
                    outbox: vec![(dest.clone(), item)],
                    ..Numbered::default()
                },
                vec![e],
            )
            .await?;
            self.bump_outbox();
        } else {
            rec.state = "refused".into();
            let mut e = LedgerEntry::new("dropped");
            e.notification = nid.to_string();
            e.destination = format!("node:{dest}");
            e.detail = serde_json::json!({"reason": "the origin refused consent", "decided_by": ans.decided_by});
            self.commit(vec![rec.put(Space::Held)], vec![e]).await?;
        }
        Ok(())
    }

    /// Requests this node holds awaiting an origin's answer.
    pub fn held_items(&self) -> Result<Vec<ConsentRecord>, NodeError> {
        Ok(self
            .store
            .scan(Space::Held, b"", b"", usize::MAX)?
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
            .collect())
    }
}
