//! The user table: client identities (certificates issued by the federation CA), their role,
//! clearance and allowed routes. It is a TOML file beside `node.toml`, re-read when it changes,
//! so that `tidewire pki issue-client` and `tidewire users` take effect without a restart.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tidewire_core::model::{Handling, RoutePattern};

use crate::error::NodeError;

/// Roles a client may have.
pub const ROLES: [&str; 4] = ["admin", "publisher", "subscriber", "auditor"];

/// One user as written in `users.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    /// The client name (its certificate names `NAME.client.tidewire`).
    pub name: String,
    /// `admin`, `publisher`, `subscriber` or `auditor`.
    pub role: String,
    /// Highest handling code the user may see (`H0`..`H3`).
    pub clearance: String,
    /// Route patterns the user may follow and publish on.
    #[serde(default = "all_routes")]
    pub routes: Vec<String>,
    /// SHA-256 of the certificate (hex), pinned when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_sha256: Option<String>,
    /// Revoked users are refused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revoked: bool,
}

fn all_routes() -> Vec<String> {
    vec![">".into()]
}

/// `users.toml`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsersFile {
    /// The users.
    #[serde(default, rename = "user")]
    pub users: Vec<UserEntry>,
}

impl UsersFile {
    /// Parses and validates the text.
    pub fn parse(text: &str) -> Result<UsersFile, String> {
        let f: UsersFile =
            toml::from_str(text).map_err(|e| tidewire_core::tomlfile::describe(text, &e))?;
        for (i, u) in f.users.iter().enumerate() {
            if !ROLES.contains(&u.role.as_str()) {
                return Err(format!(
                    "user[{i}].role: `{}` is not a role; use one of {}",
                    u.role,
                    ROLES.join(", ")
                ));
            }
            Handling::parse_level(&u.clearance).map_err(|e| format!("user[{i}].clearance: {e}"))?;
            for r in &u.routes {
                r.parse::<RoutePattern>()
                    .map_err(|e| format!("user[{i}].routes: {e}"))?;
            }
        }
        Ok(f)
    }

    /// Reads a file; a missing file is an empty table.
    pub fn load(path: &Path) -> Result<UsersFile, String> {
        match std::fs::read_to_string(path) {
            Ok(t) => Self::parse(&t).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(UsersFile::default()),
            Err(e) => Err(format!("{}: cannot read: {e}", path.display())),
        }
    }

    /// Writes the file (mode 0600: it names who may see what).
    pub fn save(&self, path: &Path) -> Result<(), String> {
        let text = format!(
            "# Tidewire user table: client certificates, roles and clearances.\n{}",
            toml::to_string(self).map_err(|e| e.to_string())?
        );
        // Write beside and rename, so a node re-reading the table never sees it half written.
        let tmp = path.with_extension("toml.new");
        tidewire_core::keys::write_private(&tmp, text.as_bytes())
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// An authenticated client.
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    /// Name.
    pub name: String,
    /// Role.
    pub role: String,
    /// Highest handling level (0..=3).
    pub clearance: u8,
    /// Allowed route patterns.
    pub routes: Vec<RoutePattern>,
    /// SHA-256 of the certificate it authenticated with.
    pub cert_sha256: [u8; 32],
}

/// The table, reloaded when the file changes.
#[derive(Debug)]
pub struct Users {
    path: Option<PathBuf>,
    cache: Mutex<(Option<Stamp>, UsersFile)>,
}

/// What identifies one version of the file: a rename changes the inode even within one tick of
/// the clock, and the length catches most in-place edits.
type Stamp = (SystemTime, u64, u64);

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let ino = 0;
    Some((m.modified().ok()?, m.len(), ino))
}

impl Users {
    /// Loads the table at start-up (errors are fatal then).
    pub fn open(path: Option<PathBuf>) -> Result<Users, NodeError> {
        let file = match &path {
            Some(p) => UsersFile::load(p).map_err(NodeError::Config)?,
            None => UsersFile::default(),
        };
        let mtime = path.as_deref().and_then(stamp);
        Ok(Users {
            path,
            cache: Mutex::new((mtime, file)),
        })
    }

    fn current(&self) -> UsersFile {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = &self.path {
            let mtime = stamp(p);
            if mtime != cache.0 {
                match UsersFile::load(p) {
                    Ok(f) => *cache = (mtime, f),
                    Err(e) => {
                        tracing::warn!(error = %e, "user table not reloaded; keeping the previous one")
                    }
                }
            }
        }
        cache.1.clone()
    }

    /// Every entry.
    pub fn list(&self) -> Vec<UserEntry> {
        self.current().users
    }

    /// Finds the user a certificate belongs to.
    pub fn authenticate(&self, name: &str, cert_sha256: &[u8; 32]) -> Result<User, NodeError> {
        let table = self.current();
        let u = table.users.iter().find(|u| u.name == name).ok_or_else(|| {
            NodeError::PermissionDenied(format!(
                "client `{name}` is not in this node's user table; issue it with `tidewire pki issue-client` or add it with `tidewire users add`"
            ))
        })?;
        if u.revoked {
            return Err(NodeError::PermissionDenied(format!(
                "client `{name}` has been revoked"
            )));
        }
        if let Some(pin) = &u.cert_sha256
            && !pin.eq_ignore_ascii_case(&hex::encode(cert_sha256))
        {
            return Err(NodeError::PermissionDenied(format!(
                "client `{name}` presented a certificate other than the one registered for it"
            )));
        }
        Ok(User {
            name: u.name.clone(),
            role: u.role.clone(),
            clearance: Handling::parse_level(&u.clearance).unwrap_or(0),
            routes: u.routes.iter().filter_map(|r| r.parse().ok()).collect(),
            cert_sha256: *cert_sha256,
        })
    }

    /// Checks that an authenticated user still holds the access it had: a long-lived stream
    /// calls this so that revoking a user, or changing its role, clearance, routes or
    /// certificate, takes effect on streams already open, not only on the next connection.
    pub fn recheck(&self, user: &User) -> Result<(), NodeError> {
        let now = self.authenticate(&user.name, &user.cert_sha256)?;
        if now != *user {
            return Err(NodeError::Aborted(format!(
                "the access of client `{}` changed (role, clearance or routes); subscribe again to follow under it",
                user.name
            )));
        }
        Ok(())
    }
}
