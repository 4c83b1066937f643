//! Proves that identity on links and client calls comes from the certificate, not from what the
//! caller says: a node certificate whose link hello claims another node is refused with
//! `PermissionDenied` and counted as `impersonation`, and a client certificate issued by another
//! federation's CA cannot even call `Status`. The roster's certificate pins hold on both sides
//! of a link: a node dialing a peer refuses a server that presents a certificate the roster no
//! longer pins for it, before sending it anything.

use std::time::Duration;

use tidewire_proto::v1 as pb;
use tidewire_proto::v1::link_frame::Frame;
use tidewire_testkit::{Kit, eventually};
use tokio_stream::wrappers::ReceiverStream;

/// Opens a `Link` to `node` with the certificate and key in `cert` and `key`, its hello
/// claiming to be `claim`; returns the node's answer to the call.
async fn open_link(
    kit: &Kit,
    node: &str,
    cert: &std::path::Path,
    key: &std::path::Path,
    claim: &str,
) -> anyhow::Result<Result<tonic::Response<tonic::Streaming<pb::LinkFrame>>, tonic::Status>> {
    let channel = kit.channel_as(node, cert, key).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::LinkFrame {
        frame: Some(Frame::Hello(pb::Hello {
            node: claim.into(),
            protocol: 1,
            ..Default::default()
        })),
    })
    .await?;
    Ok(pb::federation_client::FederationClient::new(channel)
        .link(ReceiverStream::new(rx))
        .await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impersonating_another_node_is_refused_and_counted() -> anyhow::Result<()> {
    let kit = Kit::start(&["a", "b", "c"], &["a:b", "b:c"]).await?;
    let dir = kit.dir().to_owned();
    // b's own, valid node certificate, dialing a's Federation service but saying it is c.
    let refused = open_link(
        &kit,
        "a",
        &dir.join("b/tls.pem"),
        &dir.join("b/tls.key"),
        "c",
    )
    .await?
    .expect_err("a hello that contradicts the certificate must be refused");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("`b`") && refused.message().contains("`c`"),
        "the message names both identities: {}",
        refused.message()
    );
    assert_eq!(kit.refused("a", "impersonation").await?, 1);
    // c, which a has no link with, saying it is b: refused as the impersonation it is, before
    // anything is said about links.
    let refused = open_link(
        &kit,
        "a",
        &dir.join("c/tls.pem"),
        &dir.join("c/tls.key"),
        "b",
    )
    .await?
    .expect_err("a hello that contradicts the certificate must be refused");
    assert!(
        refused.message().contains("belongs to `c`") && refused.message().contains("`b`"),
        "{}",
        refused.message()
    );
    assert_eq!(kit.refused("a", "impersonation").await?, 2);
    assert_eq!(kit.refused("a", "not_a_link").await?, 0);

    // The genuine b's link is untouched.
    eventually!(Duration::from_secs(5), "a's real link to b stays up", {
        let s = kit.status("a").await?;
        anyhow::ensure!(
            s.links.iter().any(|l| l.peer == "b" && l.up),
            "{:?}",
            s.links
        );
        Ok(())
    });
    kit.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ca_is_refused() -> anyhow::Result<()> {
    let kit = Kit::start(&["a"], &[]).await?;
    // Same node and client names, but a separate federation with its own CA.
    let foreign = tempfile::tempdir()?;
    tidewire::pki::init(&tidewire::pki::InitOptions::dev(
        foreign.path(),
        &["a"],
        &[],
    ))?;
    let (cert, key) = (
        foreign.path().join("client/admin.pem"),
        foreign.path().join("client/admin.key"),
    );
    let attempt = async {
        let channel = kit.channel_as("a", &cert, &key).await?;
        pb::admin_client::AdminClient::new(channel)
            .status(pb::StatusRequest {})
            .await
            .map_err(|s| anyhow::anyhow!("{}", tidewire_node::tls::error_chain(&s)))
    };
    let err = attempt
        .await
        .expect_err("a certificate from another CA must not get a status");
    println!("status with a foreign certificate: {err:#}");
    // The reason, as the node's TLS alert says it (the gRPC error above may only say that the
    // connection closed, see `Kit::tls_refusal`).
    let reason = kit
        .tls_refusal("a", &cert, &key)
        .await?
        .expect("the node refuses the foreign certificate during TLS");
    assert!(
        reason.contains("certificate") && reason.contains("CA"),
        "the error says the certificate is not from the federation's CA: {reason}"
    );
    // Control: the same probe with the federation's own client certificate is accepted.
    let own = kit.dir().join("client");
    assert_eq!(
        kit.tls_refusal("a", &own.join("admin.pem"), &own.join("admin.key"))
            .await?,
        None
    );
    // The federation's own client still gets through.
    kit.status("a").await?;
    kit.stop().await;
    Ok(())
}

/// A TLS server presenting a given certificate (no client certificate asked), which counts the
/// handshakes it completes and the bytes it is sent after them.
struct Impostor {
    addr: std::net::SocketAddr,
    handshakes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    bytes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Impostor {
    async fn start(cert_pem: &[u8], key_pem: &[u8]) -> anyhow::Result<Impostor> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        use std::sync::atomic::Ordering;
        use tokio::io::AsyncReadExt;

        let certs = CertificateDer::pem_slice_iter(cert_pem).collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(key_pem)?;
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let handshakes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let bytes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (h, b) = (handshakes.clone(), bytes.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, h, b) = (acceptor.clone(), h.clone(), b.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    h.fetch_add(1, Ordering::SeqCst);
                    let mut buf = [0u8; 4096];
                    while let Ok(n @ 1..) = tls.read(&mut buf).await {
                        b.fetch_add(n, Ordering::SeqCst);
                    }
                });
            }
        });
        Ok(Impostor {
            addr,
            handshakes,
            bytes,
            task,
        })
    }
}

impl Drop for Impostor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_a_certificate_the_roster_no_longer_pins_is_refused_by_the_node_dialing_it()
-> anyhow::Result<()> {
    use std::sync::atomic::Ordering;

    let mut builder = Kit::builder(&["a", "b"], &["a:b"])?;
    let dir = builder.dir().to_owned();
    // b's certificate and key as they were before b was issued new ones: leaked, say. They are
    // still signed by the federation's CA and still name b.
    let old_cert = std::fs::read(dir.join("b/tls.pem"))?;
    let old_key = std::fs::read(dir.join("b/tls.key"))?;
    let reissued = tidewire::pki::reissue(&dir, "b")?;
    assert!(
        reissued.replaced.is_some() && reissued.replaced.as_deref() != Some(&reissued.sha256),
        "the roster pins the new certificate in place of the old: {reissued:?}"
    );
    // Whoever holds the old ones answers at the address a dials for b.
    let impostor = Impostor::start(&old_cert, &old_key).await?;
    builder.route_link_via("a", "b", impostor.addr)?;
    let kit = builder.without("b").start().await?;

    eventually!(
        Duration::from_secs(10),
        "a refuses the server and says why",
        {
            anyhow::ensure!(kit.refused("a", "impersonation").await? >= 1);
            let s = kit.status("a").await?;
            let link = s
                .links
                .iter()
                .find(|l| l.peer == "b")
                .ok_or_else(|| anyhow::anyhow!("no link b: {:?}", s.links))?;
            anyhow::ensure!(
                !link.up && link.last_error.contains("not the one the roster pins"),
                "{link:?}"
            );
            Ok(())
        }
    );
    // a dials again (and is refused again); once the server has finished a second handshake,
    // anything a might have sent on the first connection would have arrived.
    eventually!(
        Duration::from_secs(10),
        "the server saw a's handshake twice (so the refusal is the pin's, not TLS's)",
        {
            anyhow::ensure!(impostor.handshakes.load(Ordering::SeqCst) >= 2);
            Ok(())
        }
    );
    assert_eq!(
        impostor.bytes.load(Ordering::SeqCst),
        0,
        "a sent the server nothing: no HTTP/2, no hello"
    );
    kit.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_presenting_a_certificate_the_roster_no_longer_pins_is_refused_and_counted()
-> anyhow::Result<()> {
    // a dials b (the smaller id dials); a is re-issued a certificate, and whoever holds its old
    // one dials b as a.
    let builder = Kit::builder(&["a", "b"], &["a:b"])?;
    let dir = builder.dir().to_owned();
    let (old_cert, old_key) = (dir.join("a-old.pem"), dir.join("a-old.key"));
    std::fs::copy(dir.join("a/tls.pem"), &old_cert)?;
    std::fs::copy(dir.join("a/tls.key"), &old_key)?;
    tidewire::pki::reissue(&dir, "a")?;
    let kit = builder.without("a").start().await?;

    let refused = open_link(&kit, "b", &old_cert, &old_key, "a")
        .await?
        .expect_err("a's old certificate must not open a link");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("not the certificate the roster pins"),
        "{}",
        refused.message()
    );
    assert_eq!(kit.refused("b", "impersonation").await?, 1);
    // b's link to a shows why it is down.
    let s = kit.status("b").await?;
    let link = s
        .links
        .iter()
        .find(|l| l.peer == "a")
        .ok_or_else(|| anyhow::anyhow!("no link a: {:?}", s.links))?;
    assert!(
        !link.up && link.last_error.contains("its link was refused"),
        "{link:?}"
    );
    kit.stop().await;
    Ok(())
}

/// The command line holds nodes to the same pins: with `--federation DIR --node b`, a server
/// presenting b's old certificate (CA-signed and naming b, but no longer the one
/// `DIR/roster.toml` pins) is refused before anything is sent to it, notification or request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_refuses_a_node_whose_certificate_the_roster_no_longer_pins()
-> anyhow::Result<()> {
    use std::sync::atomic::Ordering;

    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("fed");
    tidewire::pki::init(&tidewire::pki::InitOptions::dev(
        &dir,
        &["a", "b"],
        &["a:b"],
    ))?;
    let old_cert = std::fs::read(dir.join("b/tls.pem"))?;
    let old_key = std::fs::read(dir.join("b/tls.key"))?;
    tidewire::pki::reissue(&dir, "b")?;
    let impostor = Impostor::start(&old_cert, &old_key).await?;
    let mut fed = tidewire::pki::Federation::load(&dir)?;
    fed.nodes
        .get_mut("b")
        .ok_or_else(|| anyhow::anyhow!("b"))?
        .client_url = format!("https://{}", impostor.addr);
    std::fs::write(dir.join("federation.json"), serde_json::to_string(&fed)?)?;

    let conn = tidewire::client::Conn {
        node: "b".into(),
        federation: Some(dir.clone()),
        identity: None,
    };
    let err = conn
        .connect()
        .await
        .expect_err("b's old certificate must be refused");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("refusing the node") && msg.contains("not the one the roster pins"),
        "{msg}"
    );
    // Whatever the client might have sent on the first connection would have arrived by the
    // time the server has finished a second connection's handshake.
    let _ = conn.connect().await;
    eventually!(Duration::from_secs(5), "the server saw both handshakes", {
        anyhow::ensure!(impostor.handshakes.load(Ordering::SeqCst) >= 2);
        Ok(())
    });
    assert_eq!(impostor.bytes.load(Ordering::SeqCst), 0, "nothing was sent");
    Ok(())
}
