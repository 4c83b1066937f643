//! `Admin.CasesList` over real mTLS: it honours its limit (reading pages, never every stored
//! copy at once), finds one notification by id prefix however many are held, refuses a prefix
//! that is not hexadecimal, and shows a publishing client only the cases within its routes and
//! clearance.

mod common;

use common::{admin, federation, publish, publish_alerts};
use tidewire::client::Conn;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_lists_only_the_cases_within_its_routes_and_clearance() {
    let (_tmp, f) = federation(&["maoc-n"], &[]).await;
    let note = |case_ref: &str, route: &str, handling: &str| {
        serde_json::json!({
            "kind": "alert", "case_ref": case_ref, "routes": [route], "handling": handling,
            "audience": ["node:maoc-n"], "fields": {"narrative": "vessel sighted"}
        })
    };
    publish(&f, "maoc-n", &note("ATL-H0", "atlantic.west-africa", "H0")).await;
    publish(&f, "maoc-n", &note("ATL-H2", "atlantic.west-africa", "H2")).await;
    publish(&f, "maoc-n", &note("AIR-H0", "air.aircop.lfw", "H0")).await;

    let cases = |items: Vec<pb::CaseItem>| {
        let mut refs: Vec<String> = items.into_iter().map(|c| c.case_ref).collect();
        refs.sort();
        refs
    };
    let all = admin(&f, "maoc-n")
        .await
        .cases_list(pb::CasesListRequest::default())
        .await
        .expect("admin lists")
        .into_inner()
        .items;
    assert_eq!(cases(all), ["AIR-H0", "ATL-H0", "ATL-H2"]);

    let identity = tidewire::pki::issue_client(&tidewire::pki::IssueOptions {
        federation: f.dir.clone(),
        node: "maoc-n".into(),
        name: "atlantic-desk".into(),
        role: "publisher".into(),
        clearance: "H1".into(),
        routes: vec!["atlantic.>".into()],
        out: None,
    })
    .expect("issue the publisher");
    let desk = Conn {
        node: "maoc-n".into(),
        federation: Some(f.dir.clone()),
        identity: Some(identity),
    };
    let mut desk = pb::admin_client::AdminClient::new(desk.connect().await.expect("connect"));
    let seen = desk
        .cases_list(pb::CasesListRequest {
            limit: 1,
            ..Default::default()
        })
        .await
        .expect("a publisher lists")
        .into_inner();
    assert_eq!(
        cases(seen.items),
        ["ATL-H0"],
        "neither another route nor a handling above H1"
    );
    assert!(!seen.next.is_empty(), "a full page says where to go on");
    let rest = desk
        .cases_list(pb::CasesListRequest {
            after: seen.next,
            ..Default::default()
        })
        .await
        .expect("the next page")
        .into_inner();
    assert!(rest.items.is_empty(), "{:?}", rest.items);
    f.stop().await;
}
