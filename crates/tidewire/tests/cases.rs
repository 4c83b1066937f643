//! `Admin.CasesList` over real mTLS: it honours its limit (reading pages, never every stored
//! copy at once), finds one notification by id prefix however many are held, and refuses a
//! prefix that is not hexadecimal.

mod common;

use common::{admin, federation, publish_alerts};
use tidewire_proto::v1 as pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cases_list_honours_its_limit_and_finds_one_by_id_prefix() {
    let (_tmp, f) = federation(&["maoc-n"], &[]).await;
    let ids = publish_alerts(&f, "maoc-n", "node:maoc-n", 5).await;
    let mut a = admin(&f, "maoc-n").await;
    let list = |limit, id_prefix: &str| pb::CasesListRequest {
        limit,
        id_prefix: id_prefix.into(),
        ..Default::default()
    };
    let all = a.cases_list(list(0, "")).await.unwrap().into_inner().items;
    assert_eq!(all.len(), 5);
    let two = a.cases_list(list(2, "")).await.unwrap().into_inner().items;
    assert_eq!(two.len(), 2, "limit 2");

    // An odd number of digits, in capitals: the prefix is matched digit by digit.
    let wanted = &ids[3];
    let found = a
        .cases_list(list(0, &wanted[..7].to_ascii_uppercase()))
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(found.iter().any(|c| &c.id == wanted), "{found:?}");
    assert!(
        found.iter().all(|c| c.id.starts_with(&wanted[..7])),
        "{found:?}"
    );

    let refused = a.cases_list(list(0, "not-hex")).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("not-hex"),
        "{}",
        refused.message()
    );
    f.stop().await;
}
