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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// MiB of memory for the store's page cache (sled's). More keeps more of a large store in
    /// memory: fewer reads from disk, and a steadier tail latency.
    pub store_cache_mib: u64,
    /// Threads that run the node's tasks (links, publishers, subscribers, verification).
    /// Absent: one per core. Give a node fewer when it shares its machine with other busy
    /// processes, other nodes among them: threads beyond the cores it can have only wait for
    /// them, and that waiting is what a notification's tail latency is made of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_threads: Option<usize>,
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
            store_cache_mib: tidewire_store::CACHE_BYTES >> 20,
            worker_threads: None,
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

impl NodeConfig {
    /// The keys of `fresh` (this node's `node.toml` read again) that differ from this running
    /// configuration and that only a restart puts in force: everything but the `[[link]]`s,
    /// which SIGHUP applies. A `listen` with port 0 (any free port) is not a change.
    pub fn restart_needed(&self, fresh: &NodeConfig) -> Vec<&'static str> {
        let listen_changed = fresh.listen.port() != 0 && fresh.listen != self.listen;
        let metrics_changed = match (fresh.metrics_listen, self.metrics_listen) {
            (Some(f), Some(r)) => f.port() != 0 && f != r,
            (f, r) => f.is_some() != r.is_some(),
        };
        [
            ("id", fresh.id != self.id),
            ("country", fresh.country != self.country),
            ("org", fresh.org != self.org),
            ("listen", listen_changed),
            ("metrics_listen", metrics_changed),
            ("data_dir", fresh.data_dir != self.data_dir),
            ("signing_key", fresh.signing_key != self.signing_key),
            ("roster", fresh.roster != self.roster),
            ("policy", fresh.policy != self.policy),
            ("users", fresh.users != self.users),
            ("tls_ca", fresh.tls_ca != self.tls_ca),
            ("tls_cert", fresh.tls_cert != self.tls_cert),
            ("tls_key", fresh.tls_key != self.tls_key),
            ("limits", fresh.limits != self.limits),
        ]
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect()
    }
}

/// How an override's text becomes a TOML value.
#[derive(Clone, Copy)]
enum Kind {
    Text,
    Integer,
    Hours,
}

/// The keys an environment variable may override, each as `TIDEWIRE_` and its path in capitals
/// with `_` for `.` ([`override_var`]: `TIDEWIRE_LIMITS_HOP_BUDGET` sets `limits.hop_budget`).
/// `[[link]]` tables are set in the file only.
const OVERRIDES: [(&str, Kind); 22] = [
    ("id", Kind::Text),
    ("country", Kind::Text),
    ("org", Kind::Text),
    ("listen", Kind::Text),
    ("metrics_listen", Kind::Text),
    ("data_dir", Kind::Text),
    ("signing_key", Kind::Text),
    ("roster", Kind::Text),
    ("policy", Kind::Text),
    ("users", Kind::Text),
    ("tls.ca", Kind::Text),
    ("tls.cert", Kind::Text),
    ("tls.key", Kind::Text),
    ("limits.max_message_bytes", Kind::Integer),
    ("limits.publish_rate_per_s", Kind::Integer),
    ("limits.hop_budget", Kind::Integer),
    ("limits.link_window", Kind::Integer),
    ("limits.retention_hours", Kind::Hours),
    ("limits.redelivery_s", Kind::Integer),
    ("limits.durable_idle_hours", Kind::Hours),
    ("limits.store_cache_mib", Kind::Integer),
    ("limits.worker_threads", Kind::Integer),
];

/// The variable that overrides the key at `path`.
fn override_var(path: &str) -> String {
    format!("TIDEWIRE_{}", path.to_uppercase().replace('.', "_"))
}

/// Sets `path` (`limits.hop_budget`) in `table` to `text` read as `kind`; the message says
/// what is wrong with the text.
fn set_override(table: &mut toml::Table, path: &str, text: &str, kind: Kind) -> Result<(), String> {
    let value = match kind {
        Kind::Text => toml::Value::String(text.to_owned()),
        Kind::Integer => toml::Value::Integer(
            text.trim()
                .parse()
                .map_err(|_| format!("`{text}` is not a whole number"))?,
        ),
        Kind::Hours => toml::Value::Float(
            text.trim()
                .parse()
                .map_err(|_| format!("`{text}` is not a number of hours"))?,
        ),
    };
    let (section, key) = match path.split_once('.') {
        Some((section, key)) => (
            table
                .entry(section)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .ok_or_else(|| format!("`{section}` in the file is not a table"))?,
            key,
        ),
        None => (table, path),
    };
    section.insert(key.to_owned(), value);
    Ok(())
}

/// The line (from 1) where `key` is set in `text`: `listen`, `tls.cert`, `limits.hop_budget`,
/// or `link[1].url` (the second `[[link]]` table).
fn line_of(text: &str, key: &str) -> Option<usize> {
    let (table, index, name) = match key.split_once('.') {
        None => ("", 0, key),
        Some((t, name)) => match t.split_once('[') {
            Some((t, i)) => (t, i.strip_suffix(']')?.parse().ok()?, name),
            None => (t, 0, name),
        },
    };
    let mut current = "";
    let mut at = 0usize;
    let mut arrays: HashMap<&str, usize> = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let l = line.trim();
        if let Some(h) = l.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            current = h.trim();
            let count = arrays.entry(current).or_insert(0);
            at = *count;
            *count += 1;
        } else if let Some(h) = l.strip_prefix('[').and_then(|r| r.split(']').next()) {
            current = h.trim();
            at = 0;
        } else if current == table
            && at == index
            && l.split_once('=').is_some_and(|(k, _)| k.trim() == name)
        {
            return Some(n + 1);
        }
    }
    None
}

/// Where `key` got its value, as an error names it: `line N: key `listen``, or
/// `key `listen` (set by TIDEWIRE_LISTEN)` when the override `var` set it.
fn key_at(text: &str, var: Option<&str>, key: &str) -> String {
    match (var, line_of(text, key)) {
        (Some(var), _) => format!("key `{key}` (set by {var})"),
        (None, Some(line)) => format!("line {line}: key `{key}`"),
        (None, None) => format!("key `{key}`"),
    }
}

/// An error about `key` of the config file at `path` found only once the node runs with it (an
/// address it cannot bind), told as a loading error is: the file, then the line of the key or
/// the environment override that set it, then `message`.
pub fn key_error(
    path: &Path,
    env: &HashMap<String, String>,
    key: &str,
    message: &str,
) -> ConfigError {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let var = override_var(key);
    let var = env.contains_key(&var).then_some(var.as_str());
    ConfigError {
        file: path.display().to_string(),
        message: format!("{}: {message}", key_at(&text, var, key)),
    }
}

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
            toml::from_str(text).map_err(|e| err(tidewire_core::tomlfile::describe(text, &e)))?;
        // Keys set by an environment override, and the variable that set each.
        let mut overridden: HashMap<&str, &str> = HashMap::new();
        let mut table: Option<toml::Table> = None;
        for (k, v) in env {
            // TIDEWIRE_LOG is the log filter, read by the command.
            if !k.starts_with("TIDEWIRE_") || k == "TIDEWIRE_LOG" {
                continue;
            }
            let Some(&(key, kind)) = OVERRIDES.iter().find(|(path, _)| override_var(path) == *k)
            else {
                let known: Vec<String> = OVERRIDES.iter().map(|(p, _)| override_var(p)).collect();
                return Err(err(format!(
                    "environment variable `{k}` is not a known override; use one of {}",
                    known.join(", ")
                )));
            };
            if table.is_none() {
                table = Some(
                    toml::from_str(text)
                        .map_err(|e| err(tidewire_core::tomlfile::describe(text, &e)))?,
                );
            }
            let t = table.as_mut().expect("parsed above");
            set_override(t, key, v, kind).map_err(|m| err(format!("{k}: {m}")))?;
            overridden.insert(key, k.as_str());
        }
        if let Some(t) = table {
            f = toml::Value::Table(t)
                .try_into()
                .map_err(|e: toml::de::Error| {
                    let vars: Vec<&str> = overridden.values().copied().collect();
                    err(format!(
                        "with the overrides of {}: {}",
                        vars.join(", "),
                        e.message().trim()
                    ))
                })?;
        }
        // A value that is wrong: says where it was set (the line, or the variable) and which
        // key it is.
        let bad = |key: &str, message: String| {
            err(format!(
                "{}: {message}",
                key_at(text, overridden.get(key).copied(), key)
            ))
        };
        let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let abs = |p: &str| {
            let p = Path::new(p);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let id: NodeId =
            f.id.parse::<NodeId>()
                .map_err(|e| bad("id", e.to_string()))?;
        let country = f
            .country
            .parse::<CountryCode>()
            .map_err(|e| bad("country", e.to_string()))?;
        check_org(&f.org).map_err(|e| bad("org", e.to_string()))?;
        let addr = |key: &str, v: &str| -> Result<SocketAddr, ConfigError> {
            v.parse().map_err(|_| {
                bad(key, format!("`{v}` is not a socket address; write e.g. `127.0.0.1:7401` (port 0 picks a free port)"))
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
                Err(bad(
                    key,
                    format!(
                        "file {} does not exist; fix the path (relative paths start at the config file's directory) or run `tidewire pki init`",
                        p.display()
                    ),
                ))
            }
        };
        let mut links = Vec::new();
        for (i, l) in f.links.iter().enumerate() {
            let peer: NodeId = l
                .peer
                .parse::<NodeId>()
                .map_err(|e| bad(&format!("link[{i}].peer"), e.to_string()))?;
            if peer == id {
                return Err(bad(
                    &format!("link[{i}].peer"),
                    "a node cannot link to itself".into(),
                ));
            }
            if !(l.url.starts_with("https://")) {
                return Err(bad(
                    &format!("link[{i}].url"),
                    format!(
                        "`{}` must be an https:// URL (links always use mutual TLS)",
                        l.url
                    ),
                ));
            }
            if links.iter().any(|(p, _)| *p == peer) {
                return Err(bad(
                    &format!("link[{i}].peer"),
                    format!("`{peer}` is linked twice"),
                ));
            }
            links.push((peer, l.url.clone()));
        }
        if f.limits.max_message_bytes < 64 * 1024 {
            return Err(bad("limits.max_message_bytes", "at least 65536".into()));
        }
        if f.limits.hop_budget == 0 || f.limits.hop_budget > 64 {
            return Err(bad("limits.hop_budget", "between 1 and 64".into()));
        }
        if f.limits.link_window == 0 {
            return Err(bad("limits.link_window", "at least 1".into()));
        }
        if !(8..=65_536).contains(&f.limits.store_cache_mib) {
            return Err(bad(
                "limits.store_cache_mib",
                format!(
                    "between 8 and 65536 (MiB of memory for the store's page cache; {} by default)",
                    Limits::default().store_cache_mib
                ),
            ));
        }
        if f.limits
            .worker_threads
            .is_some_and(|n| !(1..=1024).contains(&n))
        {
            return Err(bad(
                "limits.worker_threads",
                "between 1 and 1024 (threads for the node's tasks; leave it out for one per core)"
                    .into(),
            ));
        }
        let hours = |key: &str, h: f64| {
            if h.is_finite() && h > 0.0 && h <= MAX_RETENTION_HOURS {
                Ok(())
            } else {
                Err(bad(
                    &format!("limits.{key}"),
                    format!(
                        "`{h}` is not a number of hours above 0 and at most \
                         {MAX_RETENTION_HOURS} (fractions allowed: 0.5 is 30 minutes; 720 is 30 \
                         days)"
                    ),
                ))
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
    fn a_reread_config_names_the_keys_only_a_restart_puts_in_force() {
        let dir = tempfile::tempdir().unwrap();
        files(dir.path());
        let path = dir.path().join("node.toml");
        let none = HashMap::new();
        let running = NodeConfig::parse(BASE, &path, &none).unwrap();
        let link = "\n[[link]]\npeer = \"accra\"\nurl = \"https://127.0.0.1:7402\"\n";
        let linked = NodeConfig::parse(&format!("{BASE}{link}"), &path, &none).unwrap();
        assert!(
            running.restart_needed(&linked).is_empty(),
            "links are SIGHUP's"
        );
        let changed = format!(
            "{}\n[limits]\nhop_budget = 4\n",
            BASE.replace("127.0.0.1:7401", "127.0.0.1:7409")
        );
        let changed = NodeConfig::parse(&changed, &path, &none).unwrap();
        assert_eq!(running.restart_needed(&changed), ["listen", "limits"]);
        // A running node bound to a port the file leaves to the system (port 0).
        let any = NodeConfig::parse(&BASE.replace(":7401", ":0"), &path, &none).unwrap();
        assert!(running.restart_needed(&any).is_empty());
    }

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
    fn every_single_key_can_be_overridden_and_a_bad_override_names_its_variable() {
        let dir = tempfile::tempdir().unwrap();
        files(dir.path());
        std::fs::write(dir.path().join("other.pem"), "x").unwrap();
        let path = dir.path().join("node.toml");
        let env = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        // A table the file does not have ([limits]) and one it has ([tls]).
        let cfg = NodeConfig::parse(
            BASE,
            &path,
            &env(&[
                ("TIDEWIRE_LIMITS_HOP_BUDGET", "8"),
                ("TIDEWIRE_LIMITS_RETENTION_HOURS", "0.5"),
                ("TIDEWIRE_LIMITS_DURABLE_IDLE_HOURS", "168"),
                ("TIDEWIRE_LIMITS_STORE_CACHE_MIB", "256"),
                ("TIDEWIRE_LIMITS_WORKER_THREADS", "1"),
                ("TIDEWIRE_TLS_CERT", "other.pem"),
                ("TIDEWIRE_ORG", "ofnac"),
                ("TIDEWIRE_LOG", "debug"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.limits.hop_budget, 8);
        assert_eq!(cfg.retention_ms(), 1_800_000);
        assert_eq!(cfg.durable_idle_ms(), Some(168 * 3_600_000));
        assert_eq!(cfg.limits.store_cache_mib, 256);
        assert_eq!(cfg.limits.worker_threads, Some(1));
        assert_eq!(cfg.tls_cert, dir.path().join("other.pem"));
        assert_eq!(cfg.org, "ofnac");
        assert_eq!(cfg.limits.link_window, Limits::default().link_window);

        let e = NodeConfig::parse(BASE, &path, &env(&[("TIDEWIRE_LIMITS_HOP_BUDGET", "many")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("TIDEWIRE_LIMITS_HOP_BUDGET") && e.contains("not a whole number"),
            "{e}"
        );
        let e = NodeConfig::parse(BASE, &path, &env(&[("TIDEWIRE_LIMITS_HOP_BUDGET", "0")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(
                "key `limits.hop_budget` (set by TIDEWIRE_LIMITS_HOP_BUDGET): between 1 and 64"
            ),
            "{e}"
        );
        let e = NodeConfig::parse(
            BASE,
            &path,
            &env(&[("TIDEWIRE_LIMITS_STORE_CACHE_MIB", "1")]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains(
                "key `limits.store_cache_mib` (set by TIDEWIRE_LIMITS_STORE_CACHE_MIB): between 8 \
                 and 65536"
            ),
            "{e}"
        );
        let e = NodeConfig::parse(
            BASE,
            &path,
            &env(&[("TIDEWIRE_LIMITS_WORKER_THREADS", "0")]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains(
                "key `limits.worker_threads` (set by TIDEWIRE_LIMITS_WORKER_THREADS): between 1 \
                 and 1024"
            ),
            "{e}"
        );
        let defaults = NodeConfig::parse(BASE, &path, &env(&[])).unwrap();
        assert_eq!(defaults.limits.worker_threads, None, "absent: one per core");
    }

    #[test]
    fn a_misspelt_key_is_named_on_one_line_with_its_place_and_the_key_meant() {
        let dir = tempfile::tempdir().unwrap();
        files(dir.path());
        let path = dir.path().join("node.toml");
        let text = BASE.replacen("listen =", "listne =", 1);
        let line = text.lines().position(|l| l.starts_with("listne")).unwrap() + 1;
        let e = NodeConfig::parse(&text, &path, &HashMap::new())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!(
                "{}: line {line}, column 1: unknown key `listne`",
                path.display()
            )),
            "{e}"
        );
        assert!(e.ends_with("did you mean `listen`?"), "{e}");
        assert!(!e.contains('\n') && !e.contains(" | "), "one line: {e}");
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

    #[test]
    fn a_bad_value_names_its_line_or_the_variable_that_set_it() {
        let dir = tempfile::tempdir().unwrap();
        files(dir.path());
        let path = dir.path().join("node.toml");
        // The second [[link]] is the bad one.
        let text = BASE.replace(
            "[tls]",
            "[[link]]\npeer = \"accra\"\nurl = \"https://127.0.0.1:7402\"\n\n\
             [[link]]\npeer = \"maoc-n\"\nurl = \"http://127.0.0.1:7403\"\n\n[tls]",
        );
        let url_line = text.lines().position(|l| l.contains("7403")).unwrap() + 1;
        let e = NodeConfig::parse(&text, &path, &HashMap::new())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("line {url_line}: key `link[1].url`")),
            "{e}"
        );

        let text = format!("{BASE}\n[limits]\nhop_budget = 0\n");
        let line = text
            .lines()
            .position(|l| l.starts_with("hop_budget"))
            .unwrap()
            + 1;
        let e = NodeConfig::parse(&text, &path, &HashMap::new())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!(
                "line {line}: key `limits.hop_budget`: between 1 and 64"
            )),
            "{e}"
        );

        // A value from the environment is blamed on the variable, not on the file's line.
        let env: HashMap<String, String> =
            [("TIDEWIRE_LISTEN".to_owned(), "nowhere".to_owned())].into();
        let e = NodeConfig::parse(BASE, &path, &env)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("key `listen` (set by TIDEWIRE_LISTEN): `nowhere`"),
            "{e}"
        );
    }

    #[test]
    fn line_of_finds_keys_in_their_table() {
        let text = "id = \"a\"\n[tls]\ncert = \"x\"\n[[link]]\npeer = \"b\"\n[[link]]\npeer = \"c\"\n\
                    [limits]\nlink_window = 0\n";
        assert_eq!(line_of(text, "id"), Some(1));
        assert_eq!(line_of(text, "tls.cert"), Some(3));
        assert_eq!(line_of(text, "link[0].peer"), Some(5));
        assert_eq!(line_of(text, "link[1].peer"), Some(7));
        assert_eq!(line_of(text, "limits.link_window"), Some(9));
        assert_eq!(line_of(text, "limits.hop_budget"), None);
        assert_eq!(line_of(text, "cert"), None, "a key of another table");
    }
}
