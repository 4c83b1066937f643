//! How the command line reaches a node: `--node URL` with `--identity DIR`, or
//! `--federation DIR --node NAME` using the development client of `tidewire pki init`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use tonic::transport::Channel;

use crate::pki::Federation;

/// Connection flags shared by every client command.
#[derive(Debug, Clone, clap::Args)]
pub struct Conn {
    /// The node: a URL (`https://127.0.0.1:7401`) or, with --federation, a node name.
    #[arg(long)]
    pub node: String,
    /// A federation directory from `tidewire pki init`.
    #[arg(long)]
    pub federation: Option<PathBuf>,
    /// A client identity directory (client.pem, client.key, ca.pem), e.g. from `pki issue-client`,
    /// or the `client` directory of `pki init` (admin.pem, admin.key, ca.pem).
    #[arg(long)]
    pub identity: Option<PathBuf>,
}

fn read(p: &Path) -> Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
}

impl Conn {
    /// Resolves the URL, server name and identity, and connects. With `--federation DIR` and a
    /// node name, the node must present the TLS certificate `DIR/roster.toml` pins for it.
    pub async fn connect(&self) -> Result<Channel> {
        let (url, domain, ca, cert, key) = self.resolve()?;
        let pin = self.pin()?;
        let own = tidewire_node::tls::Pem {
            ca: &ca,
            cert: &cert,
            key: &key,
        };
        tidewire_node::tls::connect_pinned(own, &url, domain.as_deref(), pin, |e| {
            e.initial_stream_window_size(Some(4 * 1024 * 1024))
                .initial_connection_window_size(Some(16 * 1024 * 1024))
        })
        .await
        .map_err(|e| match e {
            tidewire_node::tls::LinkConnectError::NotPinned(why) => {
                anyhow::anyhow!("refusing the node at {url}: {why}")
            }
            tidewire_node::tls::LinkConnectError::Refused(why) => {
                anyhow::anyhow!("cannot reach node at {url}: {why}{}", self.refused_hint())
            }
            tidewire_node::tls::LinkConnectError::Other(why) => {
                anyhow::anyhow!("cannot reach node at {url}: {why}")
            }
        })
    }

    /// What to try when nothing listens at the node's address: start it (with the command, for
    /// a node of a federation directory) or check the URL.
    fn refused_hint(&self) -> String {
        match &self.federation {
            Some(dir) if !self.node.contains("://") => format!(
                " (is it running? start it with `tidewire node run --config {}`)",
                dir.join(&self.node).join("node.toml").display()
            ),
            _ => " (is a node running there? check the URL and its `listen` address)".to_owned(),
        }
    }

    /// The certificate pin of the node named by `--node` in `DIR/roster.toml`, when a
    /// federation directory is given and has a roster.
    fn pin(&self) -> Result<Option<[u8; 32]>> {
        let Some(dir) = &self.federation else {
            return Ok(None);
        };
        let path = dir.join("roster.toml");
        if self.node.contains("://") || !path.exists() {
            return Ok(None);
        }
        let roster = tidewire_core::keys::Roster::load(&path)?;
        Ok(roster.get(&self.node).and_then(|n| n.tls_cert_sha256))
    }

    #[allow(clippy::type_complexity)]
    fn resolve(&self) -> Result<(String, Option<String>, Vec<u8>, Vec<u8>, Vec<u8>)> {
        let is_url = self.node.contains("://");
        if let Some(identity) = &self.identity {
            let url = if is_url {
                self.node.clone()
            } else if let Some(dir) = &self.federation {
                Federation::load(dir)?
                    .nodes
                    .get(&self.node)
                    .map(|n| n.client_url.clone())
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "--node `{}` is not in the federation {}",
                            self.node,
                            dir.display()
                        )
                    })?
            } else {
                bail!(
                    "--node `{}` is not a URL; give https://HOST:PORT, or add --federation DIR",
                    self.node
                );
            };
            let domain = (!is_url).then(|| tidewire_node::tls::node_dns_name(&self.node));
            let (cert, key) = identity_files(identity)?;
            return Ok((
                url,
                domain,
                read(&identity.join("ca.pem"))?,
                read(&cert)?,
                read(&key)?,
            ));
        }
        let Some(dir) = &self.federation else {
            bail!(
                "no client identity: add --federation DIR (from `tidewire pki init`) or --identity DIR (from `tidewire pki issue-client`)"
            );
        };
        let fed = Federation::load(dir)?;
        let (url, domain) = if is_url {
            (self.node.clone(), None)
        } else {
            let n = fed.node(dir, &self.node)?;
            (
                n.client_url.clone(),
                Some(tidewire_node::tls::node_dns_name(&self.node)),
            )
        };
        Ok((
            url,
            domain,
            read(&dir.join(&fed.ca))?,
            read(&dir.join(&fed.client.cert))?,
            read(&dir.join(&fed.client.key))?,
        ))
    }
}

/// Turns a gRPC status into one clear line.
pub fn status_error(s: tonic::Status) -> anyhow::Error {
    let detail = tidewire_node::tls::error_chain(&s);
    // The connection failed, or the node went away: not a refusal.
    if is_transport(&s) {
        return if s.code() == tonic::Code::Unavailable {
            anyhow::anyhow!("the node is unavailable: {detail}")
        } else {
            anyhow::anyhow!("the connection to the node was lost: {detail}")
        };
    }
    if s.message().is_empty() || detail.contains(s.message()) && s.code() == tonic::Code::Unknown {
        anyhow::anyhow!("node refused the request ({:?}): {detail}", s.code())
    } else {
        anyhow::anyhow!("node refused the request ({:?}): {}", s.code(), s.message())
    }
}

/// Whether a status means the connection failed (worth reconnecting), not that the node
/// refused or failed the request.
pub fn is_transport(e: &tonic::Status) -> bool {
    matches!(e.code(), tonic::Code::Unavailable | tonic::Code::Cancelled)
        || (e.code() == tonic::Code::Unknown && e.message().contains("h2 protocol error"))
}

/// The certificate and key of a client identity directory: `client.pem` and `client.key` (as
/// `pki issue-client` writes them), or else its one `NAME.pem` with `NAME.key` beside it (as
/// `pki init` writes the development admin, `client/admin.pem`).
fn identity_files(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let (cert, key) = (dir.join("client.pem"), dir.join("client.key"));
    if cert.exists() {
        return Ok((cert, key));
    }
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("--identity {}: cannot read the directory", dir.display()))?;
    let pairs: Vec<(PathBuf, PathBuf)> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| e == "pem")
                && p.file_name().is_some_and(|n| n != "ca.pem")
        })
        .map(|p| {
            let key = p.with_extension("key");
            (p, key)
        })
        .filter(|(_, key)| key.exists())
        .collect();
    match <[_; 1]>::try_from(pairs) {
        Ok([pair]) => Ok(pair),
        Err(pairs) if pairs.is_empty() => bail!(
            "--identity {}: no client.pem and client.key there; give a directory from `tidewire pki issue-client`",
            dir.display()
        ),
        Err(pairs) => bail!(
            "--identity {}: several identities there ({}); give a directory holding one",
            dir.display(),
            pairs
                .iter()
                .map(|(c, _)| c.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}
