//! The Tang routes through the router itself (no socket): shapes, status codes, and
//! thousands of hostile `/rec` bodies that must never give a 5xx or a panic.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use nbde_proto::{Curve, Jwk, Jws, KeySet, ThumbprintHash, b64};
use nbde_server::http::{AppState, Settings, app};
use nbde_server::kek::Kek;
use nbde_server::keys;
use nbde_server::ratelimit::RateLimits;
use nbde_server::store::Store;
use serde_json::{Value, json};
use tower::ServiceExt;

struct Fixture {
    _dir: tempfile::TempDir,
    state: Arc<AppState>,
    exchange: Jwk,
    signing: Jwk,
}

fn fixture(curve: Curve) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path())
        .unwrap()
        .with_kek(Kek::generate().unwrap())
        .unwrap();
    let signing = keys::generate_signing_key().unwrap();
    let exchange = keys::generate_exchange_key(curve).unwrap();
    store.add_org("acme", &signing).unwrap();
    store.add_device("acme", "web1", &exchange).unwrap();
    // Thousands of requests from one address to one device below are about the API, not
    // the buckets (tests/policy_e2e.rs has theirs).
    let settings = Settings {
        rate_limits: RateLimits::lifted(),
        ..Settings::default()
    };
    let state = Arc::new(AppState::new(store, None, settings).unwrap());
    let parse = |t: &str| Jwk::from_value(serde_json::from_str(t).unwrap()).unwrap();
    Fixture {
        _dir: dir,
        state,
        exchange: parse(&exchange),
        signing: parse(&signing),
    }
}

async fn call(
    state: &Arc<AppState>,
    method: &str,
    uri: &str,
    body: Vec<u8>,
) -> (StatusCode, String, Vec<u8>) {
    let router =
        app(state.clone()).layer(MockConnectInfo(SocketAddr::from(([192, 0, 2, 7], 4711))));
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::from(body))
        .unwrap();
    let response = router.oneshot(request).await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, content_type, bytes)
}

fn kid(f: &Fixture) -> String {
    f.exchange.thumbprint(ThumbprintHash::S256).unwrap()
}

#[tokio::test]
async fn adv_is_a_tang_advertisement() {
    let f = fixture(Curve::P521);
    for path in ["/o/acme/d/web1/adv", "/o/acme/d/web1/adv/"] {
        let (status, content_type, body) = call(&f.state, "GET", path, vec![]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type, "application/jose+json");
        let value: Value = serde_json::from_slice(&body).unwrap();
        assert!(
            value.get("signatures").is_none(),
            "flattened with one signing key"
        );
        let jws = Jws::from_value(&value).unwrap();
        assert_eq!(jws.signatures[0].header["alg"], "ES512");
        assert_eq!(jws.signatures[0].header["cty"], "jwk-set+json");
        let set = KeySet::from_verified_adv(&jws).unwrap();
        assert_eq!(set.keys().len(), 2);
        for key in set.keys() {
            assert!(key.as_map().get("d").is_none(), "no private member");
        }
        let exchange = set.exchange_key().unwrap();
        assert_eq!(exchange.as_map()["alg"], "ECMR");
        assert_eq!(exchange.as_map()["key_ops"], json!(["deriveKey"]));
        assert_eq!(
            set.signing_keys().next().unwrap().as_map()["key_ops"],
            json!(["verify"])
        );
    }
    for hash in ThumbprintHash::ALL {
        let thp = f.signing.thumbprint(hash).unwrap();
        let (status, _, _) = call(
            &f.state,
            "GET",
            &format!("/o/acme/d/web1/adv/{thp}"),
            vec![],
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{hash:?}");
    }
    for path in [
        format!("/o/acme/d/web1/adv/{}", kid(&f)),
        "/o/acme/d/web1/adv/nope".into(),
        "/o/acme/d/other/adv".into(),
        "/o/other/d/web1/adv".into(),
        "/adv".into(),
    ] {
        assert_eq!(
            call(&f.state, "GET", &path, vec![]).await.0,
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
    assert_eq!(
        call(&f.state, "GET", "/o/acme/d/web1/rec/x", vec![])
            .await
            .0,
        StatusCode::METHOD_NOT_ALLOWED
    );
}

#[tokio::test]
async fn rec_answers_s_times_x_on_every_curve_as_tangd_does() {
    for curve in Curve::ALL {
        let f = fixture(curve);
        let x = curve.random_scalar().unwrap().public_point();
        let mut request = Jwk::from_point(&x);
        request.set("alg", "ECMR".into());
        let uri = format!("/o/acme/d/web1/rec/{}", kid(&f));
        let (status, content_type, body) = call(
            &f.state,
            "POST",
            &uri,
            request.to_value().to_string().into_bytes(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type, "application/jwk+json");
        let text = String::from_utf8(body).unwrap();
        assert!(
            text.starts_with(r#"{"alg":"ECMR","crv":""#),
            "sorted compact: {text}"
        );
        let reply = Jwk::from_value(serde_json::from_str(&text).unwrap()).unwrap();
        let expected = x.mul(&f.exchange.scalar().unwrap()).unwrap();
        assert_eq!(reply.point().unwrap(), expected);
        let x_text = reply.as_map()["x"].as_str().unwrap();
        assert_eq!(
            b64::decode(x_text, "x").unwrap().len(),
            curve.field_len(),
            "fixed length"
        );
        // Any accepted thumbprint names the key.
        for hash in [ThumbprintHash::S1, ThumbprintHash::S512] {
            let uri = format!(
                "/o/acme/d/web1/rec/{}",
                f.exchange.thumbprint(hash).unwrap()
            );
            let (status, _, _) = call(
                &f.state,
                "POST",
                &uri,
                request.to_value().to_string().into_bytes(),
            )
            .await;
            assert_eq!(status, StatusCode::OK);
        }
        let rows = f
            .state
            .store
            .history(Some("acme"), Some("web1"), 10)
            .unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].peer, "192.0.2.7");
        assert_eq!(rows[0].decision, "allowed");
    }
}

fn point_body(crv: &str, x: &[u8], y: &[u8]) -> Vec<u8> {
    json!({"crv": crv, "kty": "EC", "x": b64::encode(x), "y": b64::encode(y)})
        .to_string()
        .into_bytes()
}

#[tokio::test]
async fn hostile_rec_bodies_are_4xx_and_recorded() {
    let f = fixture(Curve::P521);
    let uri = format!("/o/acme/d/web1/rec/{}", kid(&f));
    let good = Curve::P521.random_scalar().unwrap().public_point();
    let mut off_y = good.y().to_vec();
    off_y[65] ^= 1;
    let p256 = Curve::P256.random_scalar().unwrap().public_point();
    let cases: Vec<(&str, Vec<u8>, StatusCode)> = vec![
        ("off curve", point_body("P-521", good.x(), &off_y), StatusCode::BAD_REQUEST),
        ("identity", point_body("P-521", &[0; 66], &[0; 66]), StatusCode::BAD_REQUEST),
        ("wrong curve", point_body("P-256", p256.x(), p256.y()), StatusCode::BAD_REQUEST),
        ("short coordinates", point_body("P-521", &good.x()[1..], good.y()), StatusCode::BAD_REQUEST),
        ("garbage", b"\x00\xffnot json".to_vec(), StatusCode::BAD_REQUEST),
        ("array", b"[1,2]".to_vec(), StatusCode::BAD_REQUEST),
        ("empty", Vec::new(), StatusCode::BAD_REQUEST),
        ("not EC", br#"{"kty":"oct","k":"AA"}"#.to_vec(), StatusCode::BAD_REQUEST),
        ("alg", json!({"alg":"ES512","crv":"P-521","kty":"EC","x":b64::encode(good.x()),"y":b64::encode(good.y())}).to_string().into_bytes(), StatusCode::BAD_REQUEST),
        ("key_ops", json!({"key_ops":["sign"],"crv":"P-521","kty":"EC","x":b64::encode(good.x()),"y":b64::encode(good.y())}).to_string().into_bytes(), StatusCode::BAD_REQUEST),
        ("oversized", vec![b' '; 65 * 1024], StatusCode::PAYLOAD_TOO_LARGE),
    ];
    for (what, body, expected) in cases {
        let (status, content_type, _) = call(&f.state, "POST", &uri, body).await;
        assert_eq!(status, expected, "{what}");
        if status == StatusCode::BAD_REQUEST {
            assert_eq!(content_type, "application/problem+json", "{what}");
        }
    }
    let rows = f.state.store.history(None, None, 100).unwrap();
    assert_eq!(
        rows.iter().filter(|r| r.decision == "bad-request").count(),
        10
    );
    let unknown = call(
        &f.state,
        "POST",
        "/o/acme/d/web1/rec/unknownkid",
        point_body("P-521", good.x(), good.y()),
    )
    .await;
    assert_eq!(unknown.0, StatusCode::NOT_FOUND);
    let (_, _, metrics) = call(&f.state, "GET", "/metrics", vec![]).await;
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains("nbde_rec_requests_total{decision=\"bad-request\"} 10"),
        "{metrics}"
    );
    assert_eq!(
        call(&f.state, "GET", "/healthz", vec![]).await.0,
        StatusCode::OK
    );
}

/// A small deterministic generator: the run is reproducible from its seed.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[tokio::test]
async fn thousands_of_mutated_bodies_never_give_a_5xx() {
    let f = fixture(Curve::P256);
    let uri = format!("/o/acme/d/web1/rec/{}", kid(&f));
    let good = Curve::P256.random_scalar().unwrap().public_point();
    let base = point_body("P-256", good.x(), good.y());
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut by_status = std::collections::BTreeMap::new();
    for _ in 0..3000 {
        let mut body = base.clone();
        match rng.next() % 4 {
            0 => {
                for _ in 0..(1 + rng.next() % 4) {
                    let i = (rng.next() as usize) % body.len();
                    body[i] = rng.next() as u8;
                }
            }
            1 => body.truncate((rng.next() as usize) % body.len()),
            2 => {
                let i = (rng.next() as usize) % body.len();
                body.insert(i, b"{}[]\",:\\0e-"[(rng.next() % 11) as usize]);
            }
            _ => {
                let len = (rng.next() % 40) as usize;
                let coordinate: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                body = point_body("P-256", &coordinate, good.y());
            }
        }
        let (status, _, _) = call(&f.state, "POST", &uri, body).await;
        assert!(!status.is_server_error(), "5xx for a mutated body");
        *by_status.entry(status.as_u16()).or_insert(0) += 1;
    }
    assert!(
        by_status.get(&400).copied().unwrap_or(0) > 2000,
        "{by_status:?}"
    );
}

#[tokio::test]
async fn admin_api_needs_a_valid_token() {
    let f = fixture(Curve::P256);
    assert_eq!(
        call(&f.state, "GET", "/admin/v1/orgs", vec![]).await.0,
        StatusCode::UNAUTHORIZED
    );
    let router = app(f.state.clone()).layer(MockConnectInfo(SocketAddr::from(([127, 0, 0, 1], 1))));
    let request = Request::builder()
        .uri("/admin/v1/orgs")
        .header("Authorization", "Bearer nbde_wrong")
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        router.oneshot(request).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
}
