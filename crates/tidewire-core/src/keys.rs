//! Ed25519 signing keys, key files and the federation roster.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signer, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::CoreError;
use crate::model::{CountryCode, NodeId, check_org};
use crate::timefmt;

/// The fingerprint of a public key: hex of the first 8 bytes of SHA-256 of its 32 bytes.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

/// A node's ed25519 signing key. `Debug` never shows the secret.
#[derive(Clone)]
pub struct SigningKey {
    inner: ed25519_dalek::SigningKey,
    id: String,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("key_id", &self.id)
            .field("secret", &"***")
            .finish()
    }
}

impl SigningKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> SigningKey {
        Self::from_dalek(ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng))
    }

    /// A key from a 32-byte seed (tests and benchmarks).
    pub fn from_seed(seed: [u8; 32]) -> SigningKey {
        Self::from_dalek(ed25519_dalek::SigningKey::from_bytes(&seed))
    }

    fn from_dalek(inner: ed25519_dalek::SigningKey) -> SigningKey {
        let id = key_id(&inner.verifying_key());
        SigningKey { inner, id }
    }

    /// The public half.
    pub fn public(&self) -> VerifyingKey {
        self.inner.verifying_key()
    }

    /// The key id carried in signatures.
    pub fn key_id(&self) -> &str {
        &self.id
    }

    /// Signs `domain ‖ bytes`.
    pub fn sign(&self, domain: &[u8], bytes: &[u8]) -> [u8; 64] {
        let mut msg = Vec::with_capacity(domain.len() + bytes.len());
        msg.extend_from_slice(domain);
        msg.extend_from_slice(bytes);
        self.inner.sign(&msg).to_bytes()
    }

    /// Reads a PKCS#8 PEM key file. Warns through the error if the file is readable by others.
    pub fn load(path: &Path) -> Result<SigningKey, CoreError> {
        let err = |reason: String| CoreError::KeyFile {
            path: path.to_owned(),
            reason,
        };
        check_private_mode(path).map_err(err)?;
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let inner = ed25519_dalek::SigningKey::from_pkcs8_pem(&text).map_err(|e| {
            err(format!(
                "not an ed25519 PKCS#8 PEM private key ({e}); create one with `tidewire keys generate`"
            ))
        })?;
        Ok(Self::from_dalek(inner))
    }

    /// Writes the key as PKCS#8 PEM with mode 0600, and the public key as `.pub` PEM beside it.
    pub fn save(&self, key_path: &Path, pub_path: &Path) -> Result<(), CoreError> {
        let err = |p: &Path, reason: String| CoreError::KeyFile {
            path: p.to_owned(),
            reason,
        };
        let pem = self
            .inner
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| err(key_path, format!("cannot encode: {e}")))?;
        write_private(key_path, pem.as_bytes())
            .map_err(|e| err(key_path, format!("cannot write: {e}")))?;
        let public = self
            .public()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| err(pub_path, format!("cannot encode: {e}")))?;
        std::fs::write(pub_path, public)
            .map_err(|e| err(pub_path, format!("cannot write: {e}")))?;
        Ok(())
    }
}

/// Creates (or truncates) a file with mode 0600 and writes `bytes`, fsync'd.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(bytes)?;
    f.sync_all()
}

/// Refuses secret files that group or others can read.
pub fn check_private_mode(path: &Path) -> Result<(), String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "mode {mode:o} lets others read this secret; run `chmod 600 {}`",
                path.display()
            ));
        }
    }
    let _ = path;
    Ok(())
}

/// One public key of a node, with its validity window (Unix ms; `None` = open).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RosterKey {
    /// The key id (fingerprint).
    pub key_id: String,
    /// The key.
    pub key: VerifyingKey,
    /// Valid from.
    pub not_before_ms: Option<i64>,
    /// Valid until.
    pub not_after_ms: Option<i64>,
}

impl RosterKey {
    /// Whether the key was valid at `at_ms`.
    pub fn valid_at(&self, at_ms: i64) -> bool {
        self.not_before_ms.is_none_or(|t| at_ms >= t)
            && self.not_after_ms.is_none_or(|t| at_ms <= t)
    }

    /// Verifies an ed25519 signature over `domain ‖ bytes` with this key.
    pub fn verify(&self, domain: &[u8], bytes: &[u8], signature: &[u8]) -> bool {
        let Ok(sig) = ed25519_dalek::Signature::from_slice(signature) else {
            return false;
        };
        self.key
            .verify_strict(&[domain, bytes].concat(), &sig)
            .is_ok()
    }

    /// The window as text.
    pub fn window(&self) -> String {
        let f = |t: Option<i64>| t.map(timefmt::format_ms).unwrap_or_else(|| "…".into());
        format!("{} to {}", f(self.not_before_ms), f(self.not_after_ms))
    }
}

/// A node the federation trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RosterNode {
    /// Its id.
    pub id: NodeId,
    /// Its country.
    pub country: CountryCode,
    /// Its organisation.
    pub org: String,
    /// SHA-256 of its TLS certificate (DER), pinned; `None` = any certificate of the CA naming it.
    pub tls_cert_sha256: Option<[u8; 32]>,
    /// Its signing keys.
    pub keys: Vec<RosterKey>,
}

/// The federation roster: who is trusted, with which keys.
#[derive(Debug, Clone, Default)]
pub struct Roster {
    nodes: BTreeMap<NodeId, RosterNode>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RosterFile {
    #[serde(default, rename = "node")]
    nodes: Vec<RosterNodeFile>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RosterNodeFile {
    id: String,
    country: String,
    org: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tls_cert_sha256: Option<String>,
    #[serde(default, rename = "key")]
    keys: Vec<RosterKeyFile>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RosterKeyFile {
    public: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    not_before: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    not_after: Option<String>,
}

impl Roster {
    /// Reads and validates a roster file; errors carry the line.
    pub fn load(path: &Path) -> Result<Roster, CoreError> {
        let text = std::fs::read_to_string(path).map_err(|e| CoreError::Roster {
            path: path.to_owned(),
            reason: format!("cannot read: {e}"),
        })?;
        Self::parse(&text).map_err(|reason| CoreError::Roster {
            path: path.to_owned(),
            reason,
        })
    }

    /// Parses roster TOML text.
    pub fn parse(text: &str) -> Result<Roster, String> {
        let file: RosterFile =
            toml::from_str(text).map_err(|e| crate::tomlfile::describe(text, &e))?;
        let mut nodes = BTreeMap::new();
        for (i, n) in file.nodes.into_iter().enumerate() {
            let at = |field: &str, e: &dyn fmt::Display| format!("node[{i}].{field}: {e}");
            let id: NodeId = n.id.parse().map_err(|e| at("id", &e))?;
            let country = n.country.parse().map_err(|e| at("country", &e))?;
            check_org(&n.org).map_err(|e| at("org", &e))?;
            let tls_cert_sha256 = n
                .tls_cert_sha256
                .map(|h| {
                    hex::decode(&h)
                        .ok()
                        .and_then(|b| <[u8; 32]>::try_from(b).ok())
                        .ok_or_else(|| at("tls_cert_sha256", &"expected 64 hex digits"))
                })
                .transpose()?;
            let mut keys = Vec::new();
            for (j, k) in n.keys.into_iter().enumerate() {
                let field = format!("key[{j}]");
                let bytes = B64
                    .decode(k.public.trim())
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .ok_or_else(|| {
                        at(&format!("{field}.public"), &"expected base64 of 32 bytes")
                    })?;
                let key = VerifyingKey::from_bytes(&bytes)
                    .map_err(|e| at(&format!("{field}.public"), &e))?;
                if key.is_weak() {
                    return Err(at(
                        &format!("{field}.public"),
                        &"a weak (small-order) key is never valid; generate a new one",
                    ));
                }
                let time = |t: Option<String>, name: &str| {
                    t.map(|t| {
                        timefmt::parse_rfc3339_ms(&t)
                            .map_err(|e| at(&format!("{field}.{name}"), &e))
                    })
                    .transpose()
                };
                keys.push(RosterKey {
                    key_id: key_id(&key),
                    key,
                    not_before_ms: time(k.not_before, "not_before")?,
                    not_after_ms: time(k.not_after, "not_after")?,
                });
            }
            if keys.is_empty() {
                return Err(at("key", &"a node needs at least one [[node.key]]"));
            }
            if nodes.contains_key(&id) {
                return Err(at("id", &format!("`{id}` appears twice")));
            }
            nodes.insert(
                id.clone(),
                RosterNode {
                    id,
                    country,
                    org: n.org,
                    tls_cert_sha256,
                    keys,
                },
            );
        }
        Ok(Roster { nodes })
    }

    /// The roster as TOML text.
    pub fn to_toml(&self) -> String {
        let file = RosterFile {
            nodes: self
                .nodes
                .values()
                .map(|n| RosterNodeFile {
                    id: n.id.to_string(),
                    country: n.country.to_string(),
                    org: n.org.clone(),
                    tls_cert_sha256: n.tls_cert_sha256.map(hex::encode),
                    keys: n
                        .keys
                        .iter()
                        .map(|k| RosterKeyFile {
                            public: B64.encode(k.key.as_bytes()),
                            not_before: k.not_before_ms.map(timefmt::format_ms),
                            not_after: k.not_after_ms.map(timefmt::format_ms),
                        })
                        .collect(),
                })
                .collect(),
        };
        format!(
            "# Tidewire federation roster: the nodes this federation trusts and their signing keys.\n{}",
            toml::to_string(&file).unwrap_or_default()
        )
    }

    /// Adds or replaces a node.
    pub fn upsert(&mut self, node: RosterNode) {
        self.nodes.insert(node.id.clone(), node);
    }

    /// Takes a node out (a centre leaving the federation); returns its entry if it had one.
    pub fn remove(&mut self, id: &str) -> Option<RosterNode> {
        let key = self.nodes.keys().find(|k| k.as_str() == id)?.clone();
        self.nodes.remove(&key)
    }

    /// Looks a node up.
    pub fn get(&self, id: &str) -> Option<&RosterNode> {
        self.nodes
            .iter()
            .find(|(k, _)| k.as_str() == id)
            .map(|(_, v)| v)
    }

    /// Every node.
    pub fn nodes(&self) -> impl Iterator<Item = &RosterNode> {
        self.nodes.values()
    }

    /// The node whose pinned TLS certificate has this SHA-256.
    pub fn by_cert(&self, sha256: &[u8; 32]) -> Option<&RosterNode> {
        self.nodes
            .values()
            .find(|n| n.tls_cert_sha256.as_ref() == Some(sha256))
    }
}

impl RosterNode {
    /// A node entry with one open-ended key.
    pub fn new(id: NodeId, country: CountryCode, org: String, key: VerifyingKey) -> RosterNode {
        RosterNode {
            id,
            country,
            org,
            tls_cert_sha256: None,
            keys: vec![RosterKey {
                key_id: key_id(&key),
                key,
                not_before_ms: None,
                not_after_ms: None,
            }],
        }
    }
}

/// Paths of a node's key pair under `dir`.
pub fn key_paths(dir: &Path, node: &NodeId) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{node}.key")),
        dir.join(format!("{node}.pub")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_are_private_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let k = SigningKey::generate();
        let (kp, pp) = key_paths(dir.path(), &"dakar".parse().unwrap());
        k.save(&kp, &pp).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&kp).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let back = SigningKey::load(&kp).unwrap();
        assert_eq!(back.public(), k.public());
        assert!(!format!("{back:?}").contains(&hex::encode(k.inner.to_bytes())));
        assert!(format!("{back:?}").contains("***"));
    }

    #[test]
    fn loading_a_world_readable_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let k = SigningKey::generate();
        let (kp, pp) = key_paths(dir.path(), &"dakar".parse().unwrap());
        k.save(&kp, &pp).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&kp, std::fs::Permissions::from_mode(0o644)).unwrap();
            let e = SigningKey::load(&kp).unwrap_err().to_string();
            assert!(e.contains("chmod 600"), "{e}");
        }
    }

    #[test]
    fn roster_round_trips_and_reports_lines() {
        let mut r = Roster::default();
        let k = SigningKey::generate();
        r.upsert(RosterNode::new(
            "accra".parse().unwrap(),
            "GH".parse().unwrap(),
            "accra".into(),
            k.public(),
        ));
        let text = r.to_toml();
        let back = Roster::parse(&text).unwrap();
        assert_eq!(back.get("accra").unwrap().keys[0].key_id, k.key_id());
        let e = Roster::parse(
            "[[node]]\nid = \"accra\"\ncountry = \"GH\"\norg = \"accra\"\ncolour = 1\n",
        )
        .unwrap_err();
        assert!(e.contains("line 5") && e.contains("colour"), "{e}");
        let e =
            Roster::parse("[[node]]\nid = \"Accra\"\ncountry = \"GH\"\norg = \"a\"\n").unwrap_err();
        assert!(e.contains("node[0].id"), "{e}");
    }
}
