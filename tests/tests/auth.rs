//! Proves that identity on links and client calls comes from the certificate, not from what the
//! caller says: a node certificate whose link hello claims another node is refused with
//! `PermissionDenied` and counted as `impersonation`, and a client certificate issued by another
//! federation's CA cannot even call `Status`.

use std::time::Duration;

use tidewire_proto::v1 as pb;
use tidewire_proto::v1::link_frame::Frame;
use tidewire_testkit::{Kit, eventually};
use tokio_stream::wrappers::ReceiverStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impersonating_another_node_is_refused_and_counted() -> anyhow::Result<()> {
    let kit = Kit::start(&["a", "b", "c"], &["a:b", "b:c"]).await?;
    let dir = kit.dir().to_owned();
    // b's own, valid node certificate, dialing a's Federation service but saying it is c.
    let channel = kit
        .channel_as("a", &dir.join("b/tls.pem"), &dir.join("b/tls.key"))
        .await?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::LinkFrame {
        frame: Some(Frame::Hello(pb::Hello {
            node: "c".into(),
            protocol: 1,
            ..Default::default()
        })),
    })
    .await?;
    let refused = pb::federation_client::FederationClient::new(channel)
        .link(ReceiverStream::new(rx))
        .await
        .expect_err("a hello that contradicts the certificate must be refused");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("`b`") && refused.message().contains("`c`"),
        "the message names both identities: {}",
        refused.message()
    );
    assert_eq!(kit.refused("a", "impersonation").await?, 1);

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
