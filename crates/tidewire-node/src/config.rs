//! `node.toml`: parsed strictly, validated into [`NodeConfig`] with errors that name the key and
//! the fix. Relative paths are resolved against the file's directory. `TIDEWIRE_`-prefixed
//! variables from an environment map passed in override single keys.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tidewire_core::model::{CountryCode, NodeId, check_org};

/// Why a config file was refused.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ConfigError {
    /// The file.
    pub file: String,
    /// What is wrong (with line for syntax errors) and how to fix it.
    pub message: String,
}

/// The file as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Node id (`dakar`).
    pub id: String,
    /// ISO 3166 alpha-2 country.
    pub country: String,
    /// Organisation.
    pub org: String,
    /// gRPC listen address (`127.0.0.1:7401`; port 0 picks a free one).
    pub listen: String,
    /// Prometheus metrics listen address; absent = no metrics endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<String>,
    /// Data directory.
    pub data_dir: String,
    /// The node's ed25519 signing key (PKCS#8 PEM, mode 0600).
    pub signing_key: String,
    /// The federation roster.
    pub roster: String,
    /// The data-protection policy; absent = deny everything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The user table (client identities, roles, clearances).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<String>,
    /// TLS material.
    pub tls: TlsFile,
    /// Direct peers.
    #[serde(default, rename = "link", skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<LinkFile>,
    /// Limits.
    #[serde(default)]
    pub limits: Limits,
}

/// `[tls]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    /// The federation CA certificate (PEM).
    pub ca: String,
    /// This node's certificate (PEM).
    pub cert: String,
    /// This node's TLS private key (PEM, mode 0600).
    pub key: String,
}

/// `[[link]]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkFile {
    /// The peer's node id.
    pub peer: String,
    /// The peer's federation URL (`https://127.0.0.1:7400`).
    pub url: String,
}

/// The longest `limits.retention_hours` or `limits.durable_idle_hours` (100 years).
const MAX_RETENTION_HOURS: f64 = 876_000.0;

/// `[limits]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest gRPC message accepted.
    pub max_message_bytes: usize,
    /// Publishes per second per node (token bucket).
    pub publish_rate_per_s: u32,
    /// Hops a notification may take.
    pub hop_budget: u32,
    /// Unacknowledged transfers in flight per link.
    pub link_window: usize,
    /// How long this node keeps what it holds (stored copies, their seen-set entries, the
    /// local feed), in hours; fractions allowed. A copy goes this long after it was created or
    /// received, whichever is later (sooner if it expires); a copy created longer ago than
    /// this is not accepted. The ledger is kept whole.
    pub retention_hours: f64,
    /// Seconds a subscriber has to acknowledge before redelivery.
    pub redelivery_s: u64,
    /// Hours a durable subscription may go unconnected before it is ended (its cursor and
    /// interest removed, as by `tidewire unsubscribe`); fractions allowed. Absent: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durable_idle_hours: Option<f64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 4 * 1024 * 1024,
            publish_rate_per_s: 50_000,
            hop_budget: 16,
            link_window: 2048,
            retention_hours: 24.0 * 30.0,
            redelivery_s: 30,
            durable_idle_hours: None,
        }
    }
}

/// A validated configuration with absolute paths.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Node id.
    pub id: NodeId,
    /// Country.
    pub country: CountryCode,
    /// Organisation.
    pub org: String,
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Metrics listen address.
    pub metrics_listen: Option<SocketAddr>,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Signing key file.
    pub signing_key: PathBuf,
    /// Roster file.
    pub roster: PathBuf,
    /// Policy file.
    pub policy: Option<PathBuf>,
    /// Users file.
    pub users: Option<PathBuf>,
    /// CA certificate.
    pub tls_ca: PathBuf,
    /// Node certificate.
    pub tls_cert: PathBuf,
    /// Node TLS key.
    pub tls_key: PathBuf,
    /// Peers.
    pub links: Vec<(NodeId, String)>,
    /// Limits.
    pub limits: Limits,
}

const OVERRIDES: [&str; 6] = [
    "TIDEWIRE_LISTEN",
    "TIDEWIRE_METRICS_LISTEN",
    "TIDEWIRE_DATA_DIR",
    "TIDEWIRE_POLICY",
    "TIDEWIRE_ROSTER",
    "TIDEWIRE_USERS",
];

impl NodeConfig {
    /// `limits.retention_hours` in milliseconds.
    pub fn retention_ms(&self) -> i64 {
        (self.limits.retention_hours * 3_600_000.0) as i64
    }

    /// `limits.durable_idle_hours` in milliseconds, if set.
    pub fn durable_idle_ms(&self) -> Option<i64> {
        self.limits
            .durable_idle_hours
            .map(|h| (h * 3_600_000.0) as i64)
    }

    /// Reads, overrides and validates a config file. `env` is the process environment (or a
    /// test's map); only `TIDEWIRE_*` keys are read.
    pub fn load(path: &Path, env: &HashMap<String, String>) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, path, env)
    }

    /// Parses config text as if read from `path`.
    pub fn parse(
        text: &str,
        path: &Path,
        env: &HashMap<String, String>,
    ) -> Result<NodeConfig, ConfigError> {
        let err = |message: String| ConfigError {
            file: path.display().to_string(),
            message,
        };
        let mut f: ConfigFile =
            toml::from_str(text).map_err(|e| err(e.to_string().trim_end().replace('\n', " ")))?;
        for (k, v) in env {
            if !k.starts_with("TIDEWIRE_") || k == "TIDEWIRE_LOG" {
                continue;
            }
            match k.as_str() {
                "TIDEWIRE_LISTEN" => f.listen = v.clone(),
                "TIDEWIRE_METRICS_LISTEN" => f.metrics_listen = Some(v.clone()),
                "TIDEWIRE_DATA_DIR" => f.data_dir = v.clone(),
                "TIDEWIRE_POLICY" => f.policy = Some(v.clone()),
                "TIDEWIRE_ROSTER" => f.roster = v.clone(),
                "TIDEWIRE_USERS" => f.users = Some(v.clone()),
                _ => {
                    return Err(err(format!(
                        "environment variable `{k}` is not a known override; use one of {}",
                        OVERRIDES.join(", ")
                    )));
                }
            }
        }
        let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let abs = |p: &str| {
            let p = Path::new(p);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let id: NodeId = f.id.parse().map_err(|e| err(format!("key `id`: {e}")))?;
        let country = f
            .country
            .parse()
            .map_err(|e| err(format!("key `country`: {e}")))?;
        check_org(&f.org).map_err(|e| err(format!("key `org`: {e}")))?;
        let addr = |key: &str, v: &str| -> Result<SocketAddr, ConfigError> {
            v.parse().map_err(|_| {
                err(format!("key `{key}`: `{v}` is not a socket address; write e.g. `127.0.0.1:7401` (port 0 picks a free port)"))
            })
        };
        let listen = addr("listen", &f.listen)?;
        let metrics_listen = f
            .metrics_listen
            .as_deref()
            .map(|m| addr("metrics_listen", m))
            .transpose()?;
        let must_exist = |key: &str, p: PathBuf| -> Result<PathBuf, ConfigError> {
            if p.is_file() {
                Ok(p)
            } else {
                Err(err(format!(
                    "key `{key}`: file {} does not exist; fix the path (relative paths start at the config file's directory) or run `tidewire pki init`",
                    p.display()
                )))
            }
        };
        let mut links = Vec::new();
        for (i, l) in f.links.iter().enumerate() {
            let peer: NodeId = l
                .peer
                .parse()
                .map_err(|e| err(format!("link[{i}].peer: {e}")))?;
            if peer == id {
                return Err(err(format!("link[{i}].peer: a node cannot link to itself")));
            }
            if !(l.url.starts_with("https://")) {
                return Err(err(format!(
                    "link[{i}].url: `{}` must be an https:// URL (links always use mutual TLS)",
                    l.url
                )));
            }
            if links.iter().any(|(p, _)| *p == peer) {
                return Err(err(format!("link[{i}].peer: `{peer}` is linked twice")));
            }
            links.push((peer, l.url.clone()));
        }
        if f.limits.max_message_bytes < 64 * 1024 {
            return Err(err("limits.max_message_bytes: at least 65536".into()));
        }
        if f.limits.hop_budget == 0 || f.limits.hop_budget > 64 {
            return Err(err("limits.hop_budget: between 1 and 64".into()));
        }
        if f.limits.link_window == 0 {
            return Err(err("limits.link_window: at least 1".into()));
        }
        let hours = |key: &str, h: f64| {
            if h.is_finite() && h > 0.0 && h <= MAX_RETENTION_HOURS {
                Ok(())
            } else {
                Err(err(format!(
                    "limits.{key}: `{h}` is not a number of hours between 0 and \
                     {MAX_RETENTION_HOURS} (fractions allowed: 0.5 is 30 minutes; 720 is 30 days)"
                )))
            }
        };
        hours("retention_hours", f.limits.retention_hours)?;
        if let Some(h) = f.limits.durable_idle_hours {
            hours("durable_idle_hours", h)?;
        }
        Ok(NodeConfig {
            id,
            country,
            org: f.org,
            listen,
            metrics_listen,
            data_dir: abs(&f.data_dir),
            signing_key: must_exist("signing_key", abs(&f.signing_key))?,
            roster: must_exist("roster", abs(&f.roster))?,
            policy: f
                .policy
                .as_deref()
                .map(|p| must_exist("policy", abs(p)))
                .transpose()?,
            users: f.users.as_deref().map(abs),
            tls_ca: must_exist("tls.ca", abs(&f.tls.ca))?,
            tls_cert: must_exist("tls.cert", abs(&f.tls.cert))?,
            tls_key: must_exist("tls.key", abs(&f.tls.key))?,
            links,
            limits: f.limits,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) {
        for f in ["k.key", "roster.toml", "ca.pem", "c.pem", "c.key"] {
            std::fs::write(dir.join(f), "x").unwrap();
        }
    }

    const BASE: &str = r#"
id = "dakar"
country = "SN"
org = "dakar"
listen = "127.0.0.1:7401"
data_dir = "data"
signing_key = "k.key"
roster = "roster.toml"
[tls]
ca = "ca.pem"
cert = "c.pem"
key = "c.key"
"#;

    #[test]
    fn environment_overrides_replace_single_keys() {
        let dir = tempfile::tempdir().unwrap();
        files(dir.path());
        let env: HashMap<String, String> = [
            ("TIDEWIRE_LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
            (
                "TIDEWIRE_DATA_DIR".to_owned(),
                "/var/lib/tidewire".to_owned(),
            ),
            ("PATH".to_owned(), "/usr/bin".to_owned()),
        ]
        .into();
        let cfg = NodeConfig::parse(BASE, &dir.path().join("node.toml"), &env).unwrap();
        assert_eq!(cfg.listen.port(), 0);
        assert_eq!(cfg.data_dir, PathBuf::from("/var/lib/tidewire"));
        assert_eq!(
            cfg.signing_key,
            dir.path().join("k.key"),
            "relative paths start at the file"
        );
    }

    #[test]
    fn an_unknown_tidewire_variable_is_refused_with_the_known_ones() {
        let dir = tempfile::tempdir().unwrap();
        files(dir.path());
        let env: HashMap<String, String> = [("TIDEWIRE_LISTN".to_owned(), "x".to_owned())].into();
        let e = NodeConfig::parse(BASE, &dir.path().join("node.toml"), &env)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("TIDEWIRE_LISTN") && e.contains("TIDEWIRE_LISTEN"),
            "{e}"
        );
    }

    #[test]
    fn links_must_use_https_and_name_a_valid_peer() {
        let dir = tempfile::tempdir().unwrap();
        files(dir.path());
        let text = BASE.replace(
            "[tls]",
            "[[link]]\npeer = \"accra\"\nurl = \"http://127.0.0.1:7402\"\n\n[tls]",
        );
        let e = NodeConfig::parse(&text, &dir.path().join("node.toml"), &HashMap::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("https://"), "{e}");
    }
}
