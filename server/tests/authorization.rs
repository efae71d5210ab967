//! The authorization matrix: every admin endpoint × every role × own org / other org,
//! generated from one table of what each endpoint needs. Allowed means a 2xx; anything
//! else must be 403 (401 without a token).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{Request, StatusCode};
use nbde_server::api::Role;
use nbde_server::http::admin::{new_token, token_hash};
use nbde_server::http::{AppState, Settings, app};
use nbde_server::kek::Kek;
use nbde_server::keys;
use nbde_server::store::{EscrowKeyRow, NewEscrowRow, Store};
use serde_json::json;
use tower::ServiceExt;

/// What an endpoint needs in its org.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Needs {
    Min(Role),
    /// Approver of a group matching the request's device, or owner.
    Approve,
}

struct Endpoint {
    method: &'static str,
    /// `{org}` is replaced by the org under test; `{req}` by that org's request id.
    path: &'static str,
    body: Option<serde_json::Value>,
    needs: Needs,
}

const UUID: &str = "6f1c2d3e-4a5b-4c6d-8e7f-901a2b3c4d5e";

/// One escrow key for both orgs, so a fixed upload body fits whichever org is asked.
fn escrow_key() -> (nbde_proto::Jwk, String) {
    let secret = nbde_proto::EcScalar::from_bytes(nbde_proto::Curve::P256, &[7; 32]).unwrap();
    let jwk = nbde_proto::Jwk::from_point(&secret.public_point());
    let kid = jwk.thumbprint(nbde_proto::ThumbprintHash::S256).unwrap();
    (jwk, kid)
}

fn sealed_header_backup() -> String {
    let (jwk, kid) = escrow_key();
    let mut header = serde_json::Map::new();
    header.insert("kid".into(), kid.into());
    nbde_proto::Jwe::encrypt_ecdh_es(header, &jwk.point().unwrap(), b"header")
        .unwrap()
        .to_compact()
}

fn endpoints() -> Vec<Endpoint> {
    use Needs::*;
    let e = |method, path, body: Option<serde_json::Value>, needs| Endpoint {
        method,
        path,
        body,
        needs,
    };
    vec![
        e(
            "POST",
            "/admin/v1/orgs/{org}/settings",
            Some(json!({"require_source": true})),
            Min(Role::Owner),
        ),
        e(
            "GET",
            "/admin/v1/orgs/{org}/devices",
            None,
            Min(Role::Viewer),
        ),
        e(
            "POST",
            "/admin/v1/orgs/{org}/devices",
            Some(json!({"name": "new", "curve": "P-256"})),
            Min(Role::Owner),
        ),
        e(
            "GET",
            "/admin/v1/orgs/{org}/devices/dev",
            None,
            Min(Role::Viewer),
        ),
        e(
            "POST",
            "/admin/v1/orgs/{org}/devices/dev/mode",
            Some(json!({"mode": "managed"})),
            Min(Role::Owner),
        ),
        e(
            "GET",
            "/admin/v1/orgs/{org}/escrow-key",
            None,
            Min(Role::Viewer),
        ),
        e(
            "POST",
            "/admin/v1/orgs/{org}/escrow-key",
            Some(json!({"jwk": escrow_key().0.to_value()})),
            Min(Role::Owner),
        ),
        e(
            "POST",
            "/admin/v1/orgs/{org}/devices/dev/escrow",
            Some(json!({"jwe": sealed_header_backup(), "uuid": UUID})),
            Min(Role::Owner),
        ),
        e(
            "GET",
            "/admin/v1/orgs/{org}/devices/dev/escrow",
            None,
            Min(Role::Owner),
        ),
        e(
            "POST",
            "/admin/v1/orgs/{org}/devices/dev/escrow/rm",
            None,
            Min(Role::Owner),
        ),
        e(
            "POST",
            "/admin/v1/orgs/{org}/devices/dev/disable",
            None,
            Min(Role::Owner),
        ),
        e(
            "POST",
            "/admin/v1/orgs/{org}/devices/dev/enable",
            None,
            Min(Role::Owner),
        ),
        e(
            "POST",
            "/admin/v1/orgs/{org}/devices/dev/rotate",
            None,
            Min(Role::Owner),
        ),
        e(
            "POST",
            "/admin/v1/orgs/{org}/devices/dev/retire",
            None,
            Min(Role::Owner),
        ),
        e(
            "POST",
            "/admin/v1/orgs/{org}/devices/dev/allow-once",
            None,
            Min(Role::Owner),
        ),
        e(
            "POST",
            "/admin/v1/orgs/{org}/devices/dev/tags",
            Some(json!({"tags": {"a": "b"}})),
            Min(Role::Owner),
        ),
        e(
            "POST",
            "/admin/v1/orgs/{org}/devices/dev/sources",
            Some(json!({"add": ["10.0.0.0/8"]})),
            Min(Role::Owner),
        ),
        e(
            "POST",
            "/admin/v1/orgs/{org}/devices/dev/netlists/lab/attach",
            None,
            Min(Role::Owner),
        ),
        e(
            "POST",
            "/admin/v1/orgs/{org}/devices/dev/netlists/lab/detach",
            None,
            Min(Role::Owner),
        ),
        e(
            "GET",
            "/admin/v1/orgs/{org}/netlists",
            None,
            Min(Role::Viewer),
        ),
        e(
            "POST",
            "/admin/v1/orgs/{org}/netlists",
            Some(json!({"name": "n2", "cidrs": ["::1"]})),
            Min(Role::Owner),
        ),
        e(
            "POST",
            "/admin/v1/orgs/{org}/netlists/lab/rm",
            None,
            Min(Role::Owner),
        ),
        e(
            "GET",
            "/admin/v1/orgs/{org}/groups",
            None,
            Min(Role::Viewer),
        ),
        e(
            "POST",
            "/admin/v1/orgs/{org}/groups",
            Some(json!({"name": "g2", "tags": {"x": "y"}})),
            Min(Role::Owner),
        ),
        e(
            "POST",
            "/admin/v1/orgs/{org}/groups/g/rm",
            None,
            Min(Role::Owner),
        ),
        e(
            "POST",
            "/admin/v1/orgs/{org}/accounts",
            Some(json!({"name": "zed", "role": "viewer"})),
            Min(Role::Owner),
        ),
        e(
            "GET",
            "/admin/v1/requests?org={org}",
            None,
            Min(Role::Viewer),
        ),
        e("POST", "/admin/v1/requests/{req}/approve", None, Approve),
        e("POST", "/admin/v1/requests/{req}/deny", None, Approve),
        e("POST", "/admin/v1/requests/{req}/defer", None, Approve),
        e(
            "GET",
            "/admin/v1/history?org={org}",
            None,
            Min(Role::Viewer),
        ),
        e("GET", "/admin/v1/audit?org={org}", None, Min(Role::Viewer)),
    ]
}

struct Fixture {
    _dir: tempfile::TempDir,
    state: Arc<AppState>,
    /// role → token, all members of org "a" only.
    tokens: Vec<(Role, String)>,
    /// org → its pending request id
    requests: Vec<(&'static str, i64)>,
}

fn token_for(store: &Store, account: i64) -> String {
    let token = new_token().unwrap();
    store.add_token(account, &token_hash(&token)).unwrap();
    token
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path())
        .unwrap()
        .with_kek(Kek::generate().unwrap())
        .unwrap();
    let mut tokens = Vec::new();
    let mut ids = Vec::new();
    for role in [Role::Owner, Role::Approver, Role::Viewer] {
        ids.push((
            role,
            store
                .add_account(&format!("{role:?}").to_lowercase(), false)
                .unwrap(),
        ));
    }
    for org in ["a", "b"] {
        store
            .add_org(org, &keys::generate_signing_key().unwrap())
            .unwrap();
        store
            .add_device(
                org,
                "dev",
                &keys::generate_exchange_key(nbde_proto::Curve::P256).unwrap(),
            )
            .unwrap();
        store
            .netlist_add(org, "lab", &["10.0.0.0/8".parse().unwrap()])
            .unwrap();
        store
            .set_tags(org, "dev", &[("tier".into(), "db".into())])
            .unwrap();
        let (jwk, kid) = escrow_key();
        let jwk = jwk.to_value().to_string();
        let jwe = sealed_header_backup();
        let row = NewEscrowRow {
            uuid: UUID,
            kid: &kid,
            jwe: &jwe,
            by: "owner",
        };
        store
            .set_escrow_key(
                org,
                &EscrowKeyRow {
                    kid: kid.clone(),
                    jwk,
                },
            )
            .unwrap();
        store.put_escrow(org, "dev", &row).unwrap();
        // In both orgs the approver account is a group approver, but it is a member of "a" only.
        store
            .group_add(
                org,
                "g",
                &[("tier".into(), "db".into())],
                &["approver".into()],
                900,
            )
            .unwrap();
    }
    for (role, id) in &ids {
        store.add_member(*id, "a", *role).unwrap();
        tokens.push((*role, token_for(&store, *id)));
    }
    let state = Arc::new(AppState::new(store, None, Settings::default()).unwrap());
    let mut requests = Vec::new();
    for org in ["a", "b"] {
        let device_id = state.key_ring().device(org, "dev").unwrap().id;
        let snapshot = state.store.snapshot(device_id).unwrap().unwrap();
        let decision = nbde_server::policy::decide(&snapshot, "127.0.0.1".parse().unwrap());
        let entry = nbde_server::store::history::Entry {
            org: Some(org.into()),
            device: Some("dev".into()),
            peer: "127.0.0.1".into(),
            kid: None,
            decision: decision.label(),
            reason: decision.reason.clone(),
        };
        assert!(
            state
                .store
                .apply(device_id, &decision.effect, &entry)
                .unwrap()
        );
        let id = state
            .store
            .requests(Some(&[org.to_string()]), true)
            .unwrap()[0]
            .id;
        requests.push((org, id));
    }
    Fixture {
        _dir: dir,
        state,
        tokens,
        requests,
    }
}

async fn call(
    state: &Arc<AppState>,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
    token: Option<&str>,
) -> StatusCode {
    let router = app(state.clone()).layer(MockConnectInfo(SocketAddr::from(([127, 0, 0, 1], 1))));
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let body = body
        .map(|b| Body::from(b.to_string()))
        .unwrap_or_else(Body::empty);
    router
        .oneshot(request.body(body).unwrap())
        .await
        .unwrap()
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_every_role_own_and_other_org() {
    let mut checked = 0;
    for endpoint in endpoints() {
        for role in [Role::Owner, Role::Approver, Role::Viewer] {
            for org in ["a", "b"] {
                // A fresh fixture per case: a change made by one case cannot hide another.
                let f = fixture();
                let token = &f.tokens.iter().find(|(r, _)| *r == role).unwrap().1;
                let request_id = f.requests.iter().find(|(o, _)| *o == org).unwrap().1;
                let path = endpoint
                    .path
                    .replace("{org}", org)
                    .replace("{req}", &request_id.to_string());
                let own = org == "a";
                let allowed = own
                    && match endpoint.needs {
                        Needs::Min(needed) => role >= needed,
                        Needs::Approve => matches!(role, Role::Owner | Role::Approver),
                    };
                let status = call(
                    &f.state,
                    endpoint.method,
                    &path,
                    endpoint.body.as_ref(),
                    Some(token),
                )
                .await;
                if allowed {
                    assert!(
                        status.is_success(),
                        "{role:?} {} {path}: {status}",
                        endpoint.method
                    );
                } else {
                    assert_eq!(
                        status,
                        StatusCode::FORBIDDEN,
                        "{role:?} {} {path}",
                        endpoint.method
                    );
                }
                let anonymous = call(
                    &f.state,
                    endpoint.method,
                    &path,
                    endpoint.body.as_ref(),
                    None,
                )
                .await;
                assert_eq!(
                    anonymous,
                    StatusCode::UNAUTHORIZED,
                    "{} {path}",
                    endpoint.method
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, endpoints().len() * 6);
}

#[tokio::test]
async fn server_wide_verbs_and_scoped_listings() {
    let f = fixture();
    let viewer = &f.tokens.iter().find(|(r, _)| *r == Role::Viewer).unwrap().1;
    // Only an administrator creates organisations.
    for (_, token) in &f.tokens {
        let status = call(
            &f.state,
            "POST",
            "/admin/v1/orgs",
            Some(&json!({"name": "c"})),
            Some(token),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }
    // Unscoped reads show only the caller's orgs.
    let router = app(f.state.clone()).layer(MockConnectInfo(SocketAddr::from(([127, 0, 0, 1], 1))));
    let response = router
        .oneshot(
            Request::builder()
                .uri("/admin/v1/requests")
                .header("authorization", format!("Bearer {viewer}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let bytes = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let orgs: Vec<&str> = v["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["org"].as_str().unwrap())
        .collect();
    assert_eq!(orgs, ["a"]);
}

#[tokio::test]
async fn tokens_can_be_added_and_revoked() {
    let f = fixture();
    let viewer = f
        .tokens
        .iter()
        .find(|(r, _)| *r == Role::Viewer)
        .unwrap()
        .1
        .clone();
    let router =
        || app(f.state.clone()).layer(MockConnectInfo(SocketAddr::from(([127, 0, 0, 1], 1))));
    let send = |method: &str, uri: &str, token: &str| {
        Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap()
    };
    let response = router()
        .oneshot(send("POST", "/admin/v1/tokens", &viewer))
        .await
        .unwrap();
    assert!(response.status().is_success());
    let bytes = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let second = v["token"].as_str().unwrap().to_owned();
    let id = v["token_id"].as_i64().unwrap();
    assert_eq!(
        call(
            &f.state,
            "GET",
            "/admin/v1/history?org=a",
            None,
            Some(&second)
        )
        .await,
        StatusCode::OK
    );
    // Another account cannot revoke it; its owner can.
    let owner = f
        .tokens
        .iter()
        .find(|(r, _)| *r == Role::Owner)
        .unwrap()
        .1
        .clone();
    let path = format!("/admin/v1/tokens/{id}/revoke");
    assert_eq!(
        router()
            .oneshot(send("POST", &path, &owner))
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    assert!(
        router()
            .oneshot(send("POST", &path, &viewer))
            .await
            .unwrap()
            .status()
            .is_success()
    );
    assert_eq!(
        call(
            &f.state,
            "GET",
            "/admin/v1/history?org=a",
            None,
            Some(&second)
        )
        .await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(
            &f.state,
            "GET",
            "/admin/v1/history?org=a",
            None,
            Some(&viewer)
        )
        .await,
        StatusCode::OK
    );
}
