//! Who is calling: decided from the client certificate the caller presented over mutual TLS.

use tidewire_core::NodeId;

use crate::error::NodeError;
use crate::node::Node;
use crate::tls;
use crate::users::User;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq)]
pub enum Caller {
    /// A federation node (only the Federation service accepts these).
    Node(NodeId),
    /// A client from the user table.
    User(User),
}

impl Caller {
    /// A label for logs and the ledger.
    pub fn label(&self) -> String {
        match self {
            Caller::Node(n) => format!("node:{n}"),
            Caller::User(u) => format!("user:{}", u.name),
        }
    }

    /// Requires a user with one of `roles`.
    pub fn require(&self, roles: &[&str], what: &str) -> Result<&User, NodeError> {
        match self {
            Caller::User(u) if roles.contains(&u.role.as_str()) => Ok(u),
            Caller::User(u) => Err(NodeError::PermissionDenied(format!(
                "client `{}` has role `{}`; {what} needs one of: {}",
                u.name,
                u.role,
                roles.join(", ")
            ))),
            Caller::Node(n) => Err(NodeError::PermissionDenied(format!(
                "node `{n}` may only use the Federation service, not {what}"
            ))),
        }
    }
}

/// The node a request's client certificate names, whether or not the roster has it or pins
/// that certificate: what a refused link is reported against.
pub fn claimed_node<T>(req: &tonic::Request<T>) -> Option<NodeId> {
    let certs = req.peer_certs()?;
    let name = tls::cert_dns_name(certs.first()?.as_ref())?;
    tls::node_of_dns_name(&name)?.parse().ok()
}

/// Identifies the caller of a request from its TLS certificate.
pub fn caller<T>(node: &Node, req: &tonic::Request<T>) -> Result<Caller, NodeError> {
    let certs = req.peer_certs().ok_or_else(|| {
        NodeError::Unauthenticated("no client certificate: connect with mutual TLS and a certificate from the federation CA".into())
    })?;
    let der = certs
        .first()
        .ok_or_else(|| NodeError::Unauthenticated("empty client certificate chain".into()))?;
    let fp = tls::cert_sha256(der.as_ref());
    let roster = node.roster();
    if let Some(n) = roster.by_cert(&fp) {
        return Ok(Caller::Node(n.id.clone()));
    }
    let name = tls::cert_dns_name(der.as_ref()).ok_or_else(|| {
        NodeError::Unauthenticated(
            "the client certificate names no DNS subject alternative name".into(),
        )
    })?;
    if let Some(id) = tls::node_of_dns_name(&name) {
        let entry = roster.get(id).ok_or_else(|| {
            NodeError::PermissionDenied(format!(
                "certificate names node `{id}`, which is not in the roster"
            ))
        })?;
        if entry.tls_cert_sha256.is_some() {
            return Err(NodeError::PermissionDenied(format!(
                "certificate names node `{id}` but is not the certificate the roster pins for it"
            )));
        }
        return Ok(Caller::Node(entry.id.clone()));
    }
    if let Some(user) = name.strip_suffix(".client.tidewire") {
        return Ok(Caller::User(node.users.authenticate(user, &fp)?));
    }
    Err(NodeError::PermissionDenied(format!(
        "certificate name `{name}` is neither a node nor a client of this federation"
    )))
}
