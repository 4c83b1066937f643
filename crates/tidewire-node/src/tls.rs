//! TLS material for links and clients: every connection is mutual TLS under the federation CA.
//! Who is on the other end is decided from the certificate the peer presented, never from what
//! it says about itself.

use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tonic::transport::{Certificate, Endpoint, Identity, ServerTlsConfig};

use crate::error::NodeError;

/// Suffix of the DNS name in a node's certificate.
const NODE_DNS_SUFFIX: &str = ".node.tidewire";

/// The DNS name in a node's certificate.
pub fn node_dns_name(node: &str) -> String {
    format!("{node}{NODE_DNS_SUFFIX}")
}

/// The node id a certificate's DNS name claims (`ID.node.tidewire`), if it names a node.
pub fn node_of_dns_name(name: &str) -> Option<&str> {
    name.strip_suffix(NODE_DNS_SUFFIX)
}

/// The DNS name in a client's certificate.
pub fn client_dns_name(name: &str) -> String {
    format!("{name}.client.tidewire")
}

/// Loaded PEM material.
#[derive(Clone)]
pub struct TlsMaterial {
    /// CA certificate PEM.
    pub ca_pem: Vec<u8>,
    /// Own certificate PEM.
    pub cert_pem: Vec<u8>,
    /// Own key PEM (secret).
    key_pem: Vec<u8>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("key_pem", &"***")
            .finish_non_exhaustive()
    }
}

impl TlsMaterial {
    /// Reads the three PEM files; the key must be mode 0600.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<TlsMaterial, NodeError> {
        let read = |p: &Path| {
            std::fs::read(p)
                .map_err(|e| NodeError::Config(format!("{}: cannot read: {e}", p.display())))
        };
        tidewire_core::keys::check_private_mode(key)
            .map_err(|e| NodeError::Config(format!("{}: {e}", key.display())))?;
        let m = TlsMaterial {
            ca_pem: read(ca)?,
            cert_pem: read(cert)?,
            key_pem: read(key)?,
        };
        for (what, pem, p) in [
            ("certificate", &m.ca_pem, ca),
            ("certificate", &m.cert_pem, cert),
        ] {
            if !String::from_utf8_lossy(pem).contains("BEGIN CERTIFICATE") {
                return Err(NodeError::Config(format!(
                    "{}: not a PEM {what}",
                    p.display()
                )));
            }
        }
        if !String::from_utf8_lossy(&m.key_pem).contains("PRIVATE KEY") {
            return Err(NodeError::Config(format!(
                "{}: not a PEM private key",
                key.display()
            )));
        }
        Ok(m)
    }

    /// Server side: present our certificate and require one signed by the CA.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
    }

    /// Opens a link's channel to `url`: mutual TLS under the CA, the server named
    /// `server_name`, and its certificate checked against the roster's pin for the peer
    /// (`pin`) before a byte of the link is sent (see [`connect_pinned`]).
    pub async fn connect_link(
        &self,
        url: &str,
        server_name: &str,
        pin: Option<[u8; 32]>,
    ) -> Result<tonic::transport::Channel, LinkConnectError> {
        let own = Pem {
            ca: &self.ca_pem,
            cert: &self.cert_pem,
            key: &self.key_pem,
        };
        connect_pinned(own, url, Some(server_name), pin, |e| {
            e.http2_keep_alive_interval(Duration::from_secs(1))
                .keep_alive_timeout(Duration::from_secs(3))
                .keep_alive_while_idle(true)
                .initial_stream_window_size(Some(4 * 1024 * 1024))
                .initial_connection_window_size(Some(16 * 1024 * 1024))
        })
        .await
    }
}

/// The PEM material of one side of a mutual-TLS connection: the CA it trusts, its certificate
/// and its key.
#[derive(Clone, Copy)]
pub struct Pem<'a> {
    /// The CA certificate(s).
    pub ca: &'a [u8],
    /// Own certificate.
    pub cert: &'a [u8],
    /// Own key (secret).
    pub key: &'a [u8],
}

impl std::fmt::Debug for Pem<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pem")
            .field("key", &"***")
            .finish_non_exhaustive()
    }
}

/// rustls's client configuration: our certificate, the CA as the only root, HTTP/2 by ALPN.
fn rustls_client(own: Pem<'_>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(own.ca) {
        let c = c.map_err(|e| format!("the CA certificate: {e}"))?;
        roots
            .add(c)
            .map_err(|e| format!("the CA certificate: {e}"))?;
    }
    let certs = CertificateDer::pem_slice_iter(own.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the certificate: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(own.key).map_err(|e| format!("the TLS key: {e}"))?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| format!("the certificate and key: {e}"))?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

/// Opens a gRPC channel to `url` with mutual TLS under the CA: the server must be named
/// `server_name` (default: the URL's host), and, when `pin` is given (the roster pins a
/// certificate for that node), present exactly that certificate, checked before a byte of
/// HTTP/2 is sent. tonic's own TLS checks the name only: a node whose certificate was re-issued
/// (the roster pinning the new one) could still be impersonated with the old one towards
/// whoever dials it. `tune` sets the endpoint's HTTP/2 options.
pub async fn connect_pinned(
    own: Pem<'_>,
    url: &str,
    server_name: Option<&str>,
    pin: Option<[u8; 32]>,
    tune: impl FnOnce(Endpoint) -> Endpoint,
) -> Result<tonic::transport::Channel, LinkConnectError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| LinkConnectError::Other(format!("`{url}` is not a valid URL: {e}")))?;
    if uri.scheme_str() != Some("https") {
        return Err(LinkConnectError::Other(format!(
            "`{url}` is not an https URL; write e.g. https://127.0.0.1:7401"
        )));
    }
    let (Some(authority), Some(host)) = (uri.authority(), uri.host()) else {
        return Err(LinkConnectError::Other(format!("`{url}` names no host")));
    };
    let authority = authority.as_str().to_owned();
    let addr = if uri.port_u16().is_some() {
        authority.clone()
    } else {
        format!("{authority}:443")
    };
    let server_name = server_name.unwrap_or(host.trim_start_matches('[').trim_end_matches(']'));
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned())
        .map_err(|e| LinkConnectError::Other(format!("`{server_name}`: {e}")))?;
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        rustls_client(own).map_err(LinkConnectError::Other)?,
    ));
    let connect = tower::service_fn(move |_: http::Uri| {
        let (connector, name, addr) = (connector.clone(), name.clone(), addr.clone());
        async move {
            let open = async {
                let tcp = tokio::net::TcpStream::connect(&addr).await?;
                tcp.set_nodelay(true)?;
                let tls = connector.connect(name, tcp).await?;
                if let Some(pin) = pin {
                    let presented = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| cert_sha256(c.as_ref()));
                    if presented != Some(pin) {
                        return Err(Box::new(NotPinned(format!(
                            "the server at {addr} presented a certificate (sha256 {}) that is \
                             not the one the roster pins for it (sha256 {}): another server at \
                             that address, or a re-issued certificate the roster does not have \
                             yet",
                            presented.map_or("none".to_owned(), |p| hex::encode(&p[..8])),
                            hex::encode(&pin[..8])
                        ))) as BoxError);
                    }
                }
                Ok(hyper_util::rt::TokioIo::new(tls))
            };
            match tokio::time::timeout(Duration::from_secs(5), open).await {
                Ok(r) => r,
                Err(_) => Err(format!("no TLS connection to {addr} within 5 s").into()),
            }
        }
    });
    // The connector speaks TLS itself, so tonic is given the address as plain `http` (with
    // `https` it would wrap the connection in TLS a second time).
    let endpoint = Endpoint::from_shared(format!("http://{authority}"))
        .map_err(|e| LinkConnectError::Other(format!("`{url}` is not a valid URL: {e}")))?;
    tune(endpoint)
        .connect_with_connector(connect)
        .await
        .map_err(|e| {
            let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(c) = cur {
                if let Some(NotPinned(why)) = c.downcast_ref::<NotPinned>() {
                    return LinkConnectError::NotPinned(why.clone());
                }
                if c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
                {
                    return LinkConnectError::Refused(error_chain(&e));
                }
                cur = c.source();
            }
            LinkConnectError::Other(error_chain(&e))
        })
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The connector's refusal of a server whose certificate is not the pinned one, told apart
/// from other connection errors when it comes back through tonic's error chain.
#[derive(Debug)]
struct NotPinned(String);

impl std::fmt::Display for NotPinned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotPinned {}

/// Why a link could not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkConnectError {
    /// The server's certificate is not the one the roster pins for the peer.
    NotPinned(String),
    /// Nothing listens at the address (the connection was refused): the node is not running
    /// there.
    Refused(String),
    /// Anything else: unreachable, TLS refused, a bad URL.
    Other(String),
}

impl std::fmt::Display for LinkConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkConnectError::NotPinned(s)
            | LinkConnectError::Refused(s)
            | LinkConnectError::Other(s) => f.write_str(s),
        }
    }
}

/// SHA-256 of a DER certificate.
pub fn cert_sha256(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

/// The SHA-256 of the first certificate in a PEM file's text.
pub fn pem_cert_sha256(pem: &[u8]) -> Option<[u8; 32]> {
    pem_cert_der(pem).map(|der| cert_sha256(&der))
}

/// The DER of the first certificate in a PEM file's text.
pub fn pem_cert_der(pem: &[u8]) -> Option<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem)
        .ok()
        .map(|c| c.to_vec())
}

/// The first DNS name of a DER certificate's subject alternative names.
pub fn cert_dns_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
        _ => None,
    })
}

/// Walks an error's source chain into one line, so that the real cause of an mTLS failure
/// (`UnknownCA`, `CertificateRequired`) is shown, not just "transport error".
///
/// A gRPC status is read by its message: its `Display` repeats the whole source chain in
/// `Debug` form. A rustls message's link to its manual is left out.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let own = |e: &(dyn std::error::Error + 'static)| -> String {
        let t = match e.downcast_ref::<tonic::Status>() {
            Some(s) if s.message().is_empty() => s.code().description().to_owned(),
            Some(s) => s.message().to_owned(),
            None => e.to_string(),
        };
        match t.find(": https://") {
            Some(at) => t[..at].to_owned(),
            None => t,
        }
    };
    let mut parts = vec![own(e)];
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = own(s);
        if !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        cur = s.source();
    }
    let text = parts.join(": ");
    match tls_hint(&text) {
        Some(hint) => format!("{text} ({hint})"),
        None => text,
    }
}

/// What a TLS alert or certificate error most likely means on a federation connection. The
/// alert names alone (`DecryptError`, `UnknownCA`) do not tell a user what to fix; in
/// particular a certificate from another development federation (whose CA has the same name)
/// fails its signature check and arrives as `DecryptError`.
fn tls_hint(text: &str) -> Option<&'static str> {
    const FOREIGN: &str = "the certificate was not accepted: it is not signed by the CA this federation trusts; use a certificate issued by this federation's CA";
    const HINTS: [(&str, &str); 8] = [
        ("UnknownCA", FOREIGN),
        ("UnknownIssuer", FOREIGN),
        ("DecryptError", FOREIGN),
        ("BadSignature", FOREIGN),
        (
            "CertificateRequired",
            "the node requires a client certificate issued by the federation CA",
        ),
        (
            "Expired",
            "a certificate is expired or not yet valid; reissue it",
        ),
        (
            "NotValidForName",
            "the node's certificate does not name the node dialed; check the node name and URL",
        ),
        (
            "BadCertificate",
            "the certificate was refused; use one issued by this federation's CA",
        ),
    ];
    HINTS
        .iter()
        .find(|(needle, _)| text.contains(needle))
        .map(|(_, hint)| *hint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_link_reads_as_its_causes_once_without_debug_dumps_or_manual_links() {
        let io = std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "peer closed connection without sending TLS close_notify: https://docs.rs/rustls/latest/rustls/manual/_03_howto/index.html#unexpected-eof",
        );
        let mut status =
            tonic::Status::unknown("h2 protocol error: error reading a body from connection");
        status.set_source(std::sync::Arc::new(io));
        assert_eq!(
            error_chain(&status),
            "h2 protocol error: error reading a body from connection: peer closed connection without sending TLS close_notify"
        );
        assert_eq!(
            error_chain(&tonic::Status::unavailable("")),
            "The service is currently unavailable"
        );
    }
}
