//! Arbitrary bytes as a federation link frame, the only bytes a peer sends a node: the frame is
//! decoded as `tidewire.v1.LinkFrame`, then each part a node reads is parsed the way the node
//! parses it (node ids, envelopes against a fixed roster, link-state and routed bodies, route
//! patterns). Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use tidewire_core::envelope;
use tidewire_core::{NodeId, RoutePattern};
use tidewire_fuzz::roster;
use tidewire_proto::v1 as pb;
use tidewire_proto::v1::link_frame::Frame;

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = pb::LinkFrame::decode(data) else {
        return;
    };
    match frame.frame {
        Some(Frame::Hello(h)) => {
            let _ = h.node.parse::<NodeId>();
        }
        Some(Frame::Transfer(t)) => {
            let _ = envelope::verify_bytes(&t.envelope, roster());
            for d in &t.destinations {
                let _ = d.parse::<NodeId>();
            }
            let _ = pb::Routed::decode(t.consent_grant.as_ref())
                .map(|r| pb::RoutedBody::decode(r.body.as_ref()));
        }
        Some(Frame::LinkState(ls)) => {
            if let Ok(body) = pb::LinkStateBody::decode(ls.body.as_ref()) {
                let _ = body.node.parse::<NodeId>();
                for n in &body.neighbours {
                    let _ = n.parse::<NodeId>();
                }
                for p in &body.interests {
                    let _ = p.parse::<RoutePattern>();
                }
            }
        }
        Some(Frame::Routed(r)) => {
            if let Ok(body) = pb::RoutedBody::decode(r.body.as_ref()) {
                let _ = (body.from.parse::<NodeId>(), body.to.parse::<NodeId>());
            }
        }
        Some(Frame::Ack(_)) | None => {}
    }
});
