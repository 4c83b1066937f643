//! Proves invariant 9 for configuration: a bad `node.toml` is refused at load with a message that
//! names the offending key (and the line, for syntax-level errors) and says what is wrong — an
//! unknown key, a certificate file that does not exist, a listen address that is not one.

use std::collections::HashMap;
use std::path::Path;

use tidewire_node::NodeConfig;

/// A real `node.toml` from `tidewire pki init`, with its path (relative paths resolve next to it).
fn real_config(dir: &Path) -> anyhow::Result<(std::path::PathBuf, String)> {
    tidewire::pki::init(&tidewire::pki::InitOptions::dev(dir, &["a", "b"], &["a:b"]))?;
    let path = dir.join("a/node.toml");
    let text = std::fs::read_to_string(&path)?;
    Ok((path, text))
}

fn refused(text: &str, path: &Path) -> String {
    match NodeConfig::parse(text, path, &HashMap::new()) {
        Ok(cfg) => panic!("accepted a bad config: {cfg:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_config_files_give_clear_errors() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let (path, text) = real_config(tmp.path())?;
    NodeConfig::parse(&text, &path, &HashMap::new()).expect("the generated config is valid");

    // An unknown key: named, with its line.
    let with_typo = text.replacen("data_dir =", "listen_port = 7401\ndata_dir =", 1);
    let line = with_typo
        .lines()
        .position(|l| l.starts_with("listen_port"))
        .expect("inserted")
        + 1;
    let msg = refused(&with_typo, &path);
    assert!(msg.contains("listen_port"), "names the key: {msg}");
    assert!(
        msg.contains(&format!("line {line}")),
        "names line {line}: {msg}"
    );
    assert!(
        msg.contains(&path.display().to_string()),
        "names the file: {msg}"
    );

    // A certificate that does not exist: names `tls.cert` and the path it looked at.
    let missing = text.replace("cert = \"tls.pem\"", "cert = \"no-such-cert.pem\"");
    assert_ne!(missing, text, "the generated config names tls.pem");
    let msg = refused(&missing, &path);
    assert!(msg.contains("tls.cert"), "names the key: {msg}");
    let expected = path.parent().expect("dir").join("no-such-cert.pem");
    assert!(
        msg.contains(&expected.display().to_string()),
        "names the path: {msg}"
    );
    // The same through `load`, from a file on disk.
    let file = path.with_file_name("missing-cert.toml");
    std::fs::write(&file, &missing)?;
    let msg = NodeConfig::load(&file, &HashMap::new())
        .expect_err("missing cert")
        .to_string();
    assert!(
        msg.contains("tls.cert") && msg.contains("no-such-cert.pem"),
        "{msg}"
    );

    // A listen address that is not one.
    let listen = text
        .lines()
        .find(|l| l.starts_with("listen ="))
        .expect("listen line")
        .to_owned();
    let bad_listen = text.replace(&listen, "listen = \"localhost:port\"");
    let msg = refused(&bad_listen, &path);
    let listen_line = text
        .lines()
        .position(|l| l.starts_with("listen ="))
        .expect("listen")
        + 1;
    assert!(
        msg.contains(&format!("line {listen_line}: key `listen`")),
        "names the line and the key: {msg}"
    );
    assert!(msg.contains("localhost:port"), "quotes the value: {msg}");
    assert!(
        msg.contains("127.0.0.1:7401"),
        "shows the form to use: {msg}"
    );

    // A retention that is not a positive number of hours; fractions are fine.
    let retention = text
        .lines()
        .find(|l| l.starts_with("retention_hours ="))
        .expect("retention line")
        .to_owned();
    for bad in ["0", "-24", "nan", "1e9"] {
        let msg = refused(
            &text.replace(&retention, &format!("retention_hours = {bad}")),
            &path,
        );
        assert!(
            msg.contains("limits.retention_hours") && msg.contains("0.5 is 30 minutes"),
            "names the key and shows the form: {msg}"
        );
    }
    let msg = refused(
        &text.replace(&retention, &format!("{retention}\ndurable_idle_hours = 0")),
        &path,
    );
    assert!(
        msg.contains("limits.durable_idle_hours"),
        "names the key: {msg}"
    );
    for good in ["0.5", "48"] {
        let cfg = NodeConfig::parse(
            &text.replace(&retention, &format!("retention_hours = {good}")),
            &path,
            &HashMap::new(),
        )
        .expect("a positive retention, whole or not");
        assert_eq!(
            cfg.retention_ms(),
            (good.parse::<f64>()? * 3_600_000.0) as i64
        );
    }
    Ok(())
}

/// `text` with its `listen` line set to `addr`.
fn listening_on(text: &str, addr: &str) -> String {
    text.lines()
        .map(|l| {
            if l.starts_with("listen =") {
                format!("listen = \"{addr}\"")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Starts a node from config `text` (as if read from `path`), which must be refused: the error,
/// and whether the node's store exists afterwards.
async fn refused_at_start(text: &str, path: &Path) -> (String, bool) {
    let cfg = NodeConfig::parse(text, path, &HashMap::new()).expect("the config parses");
    let store = cfg.data_dir.join("store");
    match tidewire_node::start(cfg, tokio_util::sync::CancellationToken::new()).await {
        Ok(r) => {
            r.stop().await;
            panic!("the node started");
        }
        Err(e) => (e.to_string(), store.exists()),
    }
}

/// Files the config points to are read before the store is opened: a node refused for a bad
/// users or policy file has written nothing to its data directory, and says which file and
/// line to fix.
#[tokio::test]
async fn a_node_refused_for_a_bad_file_leaves_its_data_directory_untouched() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let (path, text) = real_config(tmp.path())?;
    let text = listening_on(&text, "127.0.0.1:0");
    let dir = path.parent().expect("dir").to_owned();
    for (file, bad, says) in [
        (
            "users.toml",
            "[[user]]\nnmae = \"x\"\n",
            "did you mean `name`?",
        ),
        (
            "policy.toml",
            "version = 1\ndefault = \"deny\"\n[[rule]]\nid = \"r\"\nto = [\"node:*\"]\nalow = [\"*\"]\n",
            "did you mean `allow`?",
        ),
    ] {
        let original = std::fs::read_to_string(dir.join(file))?;
        std::fs::write(dir.join(file), bad)?;
        let (e, store) = refused_at_start(&text, &path).await;
        assert!(e.contains(file) && e.contains(says), "{file}: {e}");
        assert!(e.contains("line "), "{file}: names the line: {e}");
        assert!(
            !store,
            "{file}: the store was created for a node that did not start"
        );
        std::fs::write(dir.join(file), original)?;
    }
    Ok(())
}

/// A `[[link]]` to a node the roster does not have could never come up: the node refuses to
/// start, naming the peer, the roster and the nodes it does have.
#[tokio::test]
async fn a_link_to_a_node_not_in_the_roster_is_refused_at_start() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let (path, text) = real_config(tmp.path())?;
    let text = listening_on(&text, "127.0.0.1:0")
        + "\n\n[[link]]\npeer = \"lagos\"\nurl = \"https://127.0.0.1:1\"\n";
    let (e, store) = refused_at_start(&text, &path).await;
    assert!(
        e.contains("`lagos`") && e.contains("roster.toml") && e.contains("(it has b)"),
        "{e}"
    );
    assert!(!store, "nothing written for a refused node");
    Ok(())
}

/// A node configured with another node's TLS certificate (a copy-paste slip) would have every
/// link refused by its peers: it refuses to start, naming the file and the roster's pin.
#[tokio::test]
async fn a_node_given_another_nodes_certificate_is_refused_at_start() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let (path, text) = real_config(tmp.path())?;
    let text = listening_on(&text, "127.0.0.1:0")
        .replace("cert = \"tls.pem\"", "cert = \"../b/tls.pem\"")
        .replace("key = \"tls.key\"", "key = \"../b/tls.key\"");
    assert!(
        text.contains("../b/tls.pem"),
        "the generated config names tls.pem"
    );
    let (e, _) = refused_at_start(&text, &path).await;
    assert!(
        e.contains("b/tls.pem")
            && e.contains("not the certificate the roster")
            && e.contains("pins for `a`"),
        "{e}"
    );
    Ok(())
}

/// A listen address already taken (the node started twice, most often) says so and what to do.
#[tokio::test]
async fn a_listen_address_in_use_says_what_to_check() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let (path, text) = real_config(tmp.path())?;
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = taken.local_addr()?;
    let (e, _) = refused_at_start(&listening_on(&text, &addr.to_string()), &path).await;
    assert!(
        e.contains(&format!("key `listen`: cannot bind {addr}")) && e.contains("already running"),
        "{e}"
    );
    drop(taken);
    Ok(())
}
