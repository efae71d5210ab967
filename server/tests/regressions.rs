//! One test per fixed bug, through the router only (no store internals), so each also runs
//! against the code before its fix and fails there.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use nbde_proto::{Curve, Jwk, ThumbprintHash, b64};
use nbde_server::http::admin::{new_token, token_hash};
use nbde_server::http::{AppState, Settings, app};
use nbde_server::kek::Kek;
use nbde_server::keys;
use nbde_server::store::Store;
use serde_json::{Value, json};
use tower::ServiceExt;

async fn call(
    state: &Arc<AppState>,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let router =
        app(state.clone()).layer(MockConnectInfo(SocketAddr::from(([192, 0, 2, 7], 4711))));
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = router
        .oneshot(request.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// The audit listing used to take its newest rows first and filter by organisation after:
/// a viewer of one org saw nothing once another org had made `limit` newer changes.
#[tokio::test]
async fn audit_limit_counts_only_rows_the_caller_may_see() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path())
        .unwrap()
        .with_kek(Kek::generate().unwrap())
        .unwrap();
    let admin = store.add_account("owner", true).unwrap();
    let owner = new_token().unwrap();
    store.add_token(admin, &token_hash(&owner)).unwrap();
    let state = Arc::new(AppState::new(store, None, Settings::default()).unwrap());
    let post = |uri: &str, body: Value| {
        let state = state.clone();
        let (uri, owner) = (uri.to_owned(), owner.clone());
        async move {
            let (status, v) =
                call(&state, "POST", &uri, Some(&owner), body.to_string().into()).await;
            assert!(status.is_success(), "{uri}: {status} {v}");
            v
        }
    };
    post("/admin/v1/orgs", json!({"name": "a"})).await;
    post("/admin/v1/orgs", json!({"name": "b"})).await;
    let viewer = post(
        "/admin/v1/orgs/a/accounts",
        json!({"name": "val", "role": "viewer"}),
    )
    .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    // More changes in b than a listing shows by default, all newer than a's.
    for i in 0..110 {
        post(
            "/admin/v1/orgs/b/settings",
            json!({"require_source": i % 2 == 0}),
        )
        .await;
    }
    for uri in ["/admin/v1/audit", "/admin/v1/audit?org=a"] {
        let (status, v) = call(&state, "GET", uri, Some(&viewer), vec![]).await;
        assert_eq!(status, StatusCode::OK);
        let rows = v["audit"].as_array().unwrap();
        let actions: Vec<&str> = rows.iter().map(|r| r["action"].as_str().unwrap()).collect();
        assert_eq!(actions, ["account add viewer", "org add"], "{uri}");
        assert!(rows.iter().all(|r| r["org"] == "a"), "{uri}");
    }
    // The limit still holds where there are more visible rows than it.
    let (_, v) = call(
        &state,
        "GET",
        "/admin/v1/audit?org=b&limit=5",
        Some(&owner),
        vec![],
    )
    .await;
    assert_eq!(v["audit"].as_array().unwrap().len(), 5);
}

fn point_body(crv: &str, x: &[u8], y: &[u8]) -> Vec<u8> {
    json!({"crv": crv, "kty": "EC", "x": b64::encode(x), "y": b64::encode(y)})
        .to_string()
        .into_bytes()
}

/// `/rec` is anonymous: a malformed point used to be answered with the protocol library's
/// own error text in `detail`. The answer is now the bare problem type; the history keeps
/// the detail.
#[tokio::test]
async fn rec_bad_request_answers_a_fixed_problem_without_detail() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path())
        .unwrap()
        .with_kek(Kek::generate().unwrap())
        .unwrap();
    let exchange = keys::generate_exchange_key(Curve::P256).unwrap();
    store
        .add_org("acme", &keys::generate_signing_key().unwrap())
        .unwrap();
    store.add_device("acme", "web1", &exchange).unwrap();
    let tang = tempfile::tempdir().unwrap();
    let tang_dir = nbde_server::tang_dir::TangDir::new(tang.path().to_owned()).unwrap();
    let state = Arc::new(AppState::new(store, Some(tang_dir), Settings::default()).unwrap());

    let exchange = Jwk::from_value(serde_json::from_str(&exchange).unwrap()).unwrap();
    let kid = exchange.thumbprint(ThumbprintHash::S256).unwrap();
    let dir_kid = std::fs::read_dir(tang.path())
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .map(|t| Jwk::from_value(serde_json::from_str(&t).unwrap()).unwrap())
        .find(|k| k.allows("deriveKey"))
        .unwrap()
        .thumbprint(ThumbprintHash::S256)
        .unwrap();
    let good = Curve::P256.random_scalar().unwrap().public_point();
    let mut off_y = good.y().to_vec();
    off_y[31] ^= 1;
    let bodies = [
        point_body("P-256", good.x(), &off_y),
        point_body("P-256", &good.x()[1..], good.y()),
        point_body("P-384", good.x(), good.y()),
        b"not json".to_vec(),
    ];
    for uri in [
        format!("/o/acme/d/web1/rec/{kid}"),
        format!("/rec/{dir_kid}"),
    ] {
        for body in &bodies {
            let (status, problem) = call(&state, "POST", &uri, None, body.clone()).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
            assert_eq!(problem["type"], "bad-request", "{uri}");
            assert!(problem.get("detail").is_none(), "{uri}: {problem}");
        }
    }
    let rows = state.store.history(None, None, 100).unwrap();
    assert_eq!(rows.len(), 8);
    assert!(rows.iter().all(|r| r.decision == "bad-request"));
    assert!(rows.iter().any(|r| r.reason.starts_with("client point:")));
}
