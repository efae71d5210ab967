//! The console's defences through the router: cookie flags, sign-in limits, the Origin
//! check, form tokens, roles behind the pages, typed confirmation, and session expiry
//! (the browser itself is in `tests/console/browser.py`).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use nbde_proto::Curve;
use nbde_server::api::Role;
use nbde_server::http::admin::{new_token, token_hash};
use nbde_server::http::{AppState, Settings, app};
use nbde_server::kek::Kek;
use nbde_server::keys;
use nbde_server::policy::DeviceState;
use nbde_server::store::Store;
use tower::ServiceExt;

struct Console {
    router: Router,
    state: Arc<AppState>,
    dir: tempfile::TempDir,
    owner: String,
    viewer: String,
}

fn console() -> Console {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path())
        .unwrap()
        .with_kek(Kek::generate().unwrap())
        .unwrap();
    store
        .add_org("acme", &keys::generate_signing_key().unwrap())
        .unwrap();
    let exchange = keys::generate_exchange_key(Curve::P256).unwrap();
    store.add_device("acme", "db1", &exchange).unwrap();
    let mut tokens = Vec::new();
    for (name, role) in [("olive", Role::Owner), ("victor", Role::Viewer)] {
        let id = store.add_account(name, false).unwrap();
        store.add_member(id, "acme", role).unwrap();
        let token = new_token().unwrap();
        store.add_token(id, &token_hash(&token)).unwrap();
        tokens.push(token);
    }
    let settings = Settings {
        console_origin: Some("http://localhost".into()),
        ..Settings::default()
    };
    let state = Arc::new(AppState::new(store, None, settings).unwrap());
    let router = app(state.clone()).layer(MockConnectInfo(SocketAddr::from(([192, 0, 2, 7], 1))));
    let viewer = tokens.pop().unwrap();
    let owner = tokens.pop().unwrap();
    Console {
        router,
        state,
        dir,
        owner,
        viewer,
    }
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

async fn send(router: &Router, request: Request<Body>) -> Reply {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn post(path: &str, cookie: Option<&str>, form: &str) -> Request<Body> {
    let mut r = Request::post(path)
        .header(header::HOST, "localhost")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(c) = cookie {
        r = r.header(header::COOKIE, c);
    }
    r.body(Body::from(form.to_owned())).unwrap()
}

fn get(path: &str, cookie: &str) -> Request<Body> {
    Request::get(path)
        .header(header::HOST, "localhost")
        .header(header::COOKIE, cookie)
        .body(Body::empty())
        .unwrap()
}

/// Signs in with `token`; the cookie to send back and the session's form token.
async fn sign_in(c: &Console, token: &str) -> (String, String) {
    let r = send(
        &c.router,
        post("/console/signin", None, &format!("token={token}")),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let set = r.headers[header::SET_COOKIE].to_str().unwrap().to_owned();
    let cookie = set.split(';').next().unwrap().to_owned();
    let page = send(&c.router, get("/console/devices", &cookie)).await;
    let csrf = page
        .body
        .split(r#"name="csrf-token" content=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a csrf-token meta tag")
        .to_owned();
    (cookie, csrf)
}

fn device_state(c: &Console) -> DeviceState {
    c.state.key_ring().device("acme", "db1").unwrap().state
}

#[tokio::test]
async fn the_cookie_is_httponly_strict_and_secure_off_loopback() {
    let c = console();
    let r = send(
        &c.router,
        post("/console/signin", None, &format!("token={}", c.owner)),
    )
    .await;
    let set = r.headers[header::SET_COOKIE].to_str().unwrap();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    assert!(!set.contains("Secure"), "loopback over plain HTTP: {set}");
    let remote = Request::post("/console/signin")
        .header(header::HOST, "nbde.example")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!("token={}", c.owner)))
        .unwrap();
    let r = send(&c.router, remote).await;
    let set = r.headers[header::SET_COOKIE].to_str().unwrap();
    assert!(set.contains("; Secure"), "{set}");
    assert!(
        r.headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .contains("script-src 'self'")
    );
}

#[tokio::test]
async fn sign_in_attempts_are_limited_per_source() {
    let c = console();
    let mut statuses = Vec::new();
    for _ in 0..7 {
        let r = send(&c.router, post("/console/signin", None, "token=nbde_wrong")).await;
        statuses.push(r.status);
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            assert!(r.headers.contains_key(header::RETRY_AFTER));
        }
    }
    assert_eq!(&statuses[..5], [StatusCode::UNAUTHORIZED; 5]);
    assert_eq!(statuses[5], StatusCode::TOO_MANY_REQUESTS);
    // The right token is refused too while the source is limited.
    let r = send(
        &c.router,
        post("/console/signin", None, &format!("token={}", c.owner)),
    )
    .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn forms_need_the_session_token_the_role_and_the_typed_name() {
    let c = console();
    let (cookie, csrf) = sign_in(&c, &c.owner).await;
    let disable = "/console/orgs/acme/devices/db1/disable";

    let r = send(&c.router, post(disable, Some(&cookie), "csrf=forged")).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(device_state(&c), DeviceState::Active);

    let mut cross = post(disable, Some(&cookie), &format!("csrf={csrf}"));
    cross
        .headers_mut()
        .insert(header::ORIGIN, "http://evil.example".parse().unwrap());
    assert_eq!(send(&c.router, cross).await.status, StatusCode::FORBIDDEN);
    assert_eq!(device_state(&c), DeviceState::Active);

    let r = send(
        &c.router,
        post(disable, Some(&cookie), &format!("csrf={csrf}")),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(device_state(&c), DeviceState::Disabled);
    let audit = c.state.store.audit_log(None, 10).unwrap();
    assert!(
        audit
            .iter()
            .any(|a| a.account == "olive" && a.action == "device disable")
    );

    let retire = "/console/orgs/acme/devices/db1/retire";
    let r = send(
        &c.router,
        post(retire, Some(&cookie), &format!("csrf={csrf}&confirm=db")),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(device_state(&c), DeviceState::Disabled);

    let (viewer_cookie, viewer_csrf) = sign_in(&c, &c.viewer).await;
    let page = send(
        &c.router,
        get("/console/orgs/acme/devices/db1", &viewer_cookie),
    )
    .await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        !page.body.contains("/enable\""),
        "a viewer sees no controls"
    );
    let enable = "/console/orgs/acme/devices/db1/enable";
    let r = send(
        &c.router,
        post(enable, Some(&viewer_cookie), &format!("csrf={viewer_csrf}")),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(device_state(&c), DeviceState::Disabled);

    let r = send(
        &c.router,
        post(retire, Some(&cookie), &format!("csrf={csrf}&confirm=db1")),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(device_state(&c), DeviceState::Retired);
}

/// Sets a column of every session row, as time passing would.
fn age_sessions(c: &Console, column: &str, seconds: i64) {
    let db = rusqlite::Connection::open(c.dir.path().join("nbde.sqlite")).unwrap();
    db.execute(
        &format!("UPDATE console_sessions SET {column} = {column} - ?1"),
        [seconds],
    )
    .unwrap();
}

#[tokio::test]
async fn sessions_end_when_idle_when_old_and_at_sign_out() {
    let c = console();
    for (column, seconds) in [("last_seen_at", 31 * 60), ("created_at", 12 * 3600 + 1)] {
        let (cookie, _) = sign_in(&c, &c.owner).await;
        age_sessions(&c, column, seconds);
        let r = send(&c.router, get("/console/devices", &cookie)).await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{column}");
        assert_eq!(r.headers[header::LOCATION], "/console/signin");
        // Deleted on sight: the cookie is worth nothing now.
        let rows: i64 = rusqlite::Connection::open(c.dir.path().join("nbde.sqlite"))
            .unwrap()
            .query_row("SELECT count(*) FROM console_sessions", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 0, "{column}");
    }
    let (cookie, csrf) = sign_in(&c, &c.owner).await;
    let r = send(
        &c.router,
        post("/console/signout", Some(&cookie), &format!("csrf={csrf}")),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert!(
        r.headers[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let r = send(&c.router, get("/console/devices", &cookie)).await;
    assert_eq!(r.headers[header::LOCATION], "/console/signin");
}

#[test]
fn passkeys_need_an_origin_with_a_host_name() {
    use nbde_server::http::console::PasskeyConfig;
    assert!(PasskeyConfig::new("https://nbde.example").is_ok());
    assert!(PasskeyConfig::new("http://localhost:7500").is_ok());
    for origin in ["http://10.0.2.100:8080", "http://[::1]:7500", "not a url"] {
        let e = PasskeyConfig::new(origin).err().expect(origin);
        assert!(e.contains("console origin"), "{e}");
    }
}
