#![no_main]
// A hostile Tang server's advertisement: any key set (off-curve and truncated points,
// wrong curves, bogus private members, conflicting key_ops) that is genuinely signed, so
// the fuzzer gets past the signature to what a client does with the keys it then trusts:
// pick the exchange key, take its point and thumbprint, and encrypt to it as `clevis
// encrypt tang` does; and the unsigned copy a JWE header carries (`KeySet::from_value`).
//
// The signing key is a fixed P-256 key added to the set (P-256 keeps a signature at a
// fraction of P-521's cost, so the target runs at thousands of inputs a second); a
// hostile signing key in the input must make verification fail, never pass.
use std::sync::LazyLock;

use nbde_proto::{Curve, EcScalar, Jwe, Jwk, Jws, KeySet, ThumbprintHash};
use serde_json::{Map, Value, json};

static SIGNER: LazyLock<Jwk> = LazyLock::new(|| {
    // Any valid scalar: a fixed one keeps a crashing input reproducible.
    let scalar = EcScalar::from_bytes(Curve::P256, &[7u8; 32]).expect("valid P-256 scalar");
    let mut jwk = Jwk::from_scalar(&scalar);
    jwk.set("alg", "ES256".into());
    jwk.set("key_ops", json!(["sign", "verify"]));
    jwk
});

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(Value::Object(mut set)) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    // The copy inside a JWE header is read without a signature.
    let _ = KeySet::from_value(&Value::Object(set.clone()));
    let Some(Value::Array(keys)) = set.get_mut("keys") else {
        return;
    };
    keys.push(SIGNER.to_public().to_value());
    let payload = serde_json::to_vec(&Value::Object(set)).expect("serializable");
    let jws = Jws::sign(&payload, &[(&*SIGNER, Map::new())]).expect("fixed key signs");
    let jws = Jws::parse(&jws.to_string()).expect("our own flattened JWS parses");
    let Ok(trusted) = KeySet::from_verified_adv(&jws) else {
        return;
    };
    // Only our key signed, so every signing key of a set that passed is ours: a hostile
    // signing key (off-curve, another curve, another point) must have been refused.
    let ours = SIGNER.point().expect("our point");
    assert!(
        trusted
            .signing_keys()
            .all(|k| k.point().is_ok_and(|p| p == ours))
    );
    let signer_thp = SIGNER.thumbprint(ThumbprintHash::S256).expect("thumbprint");
    assert!(trusted.is_signed_with_thumbprint(&signer_thp));
    // What `clevis encrypt tang` does with the advertisement it now trusts.
    let Ok(exchange) = trusted.exchange_key() else {
        return;
    };
    let mut public = exchange.to_public();
    public.remove("key_ops");
    public.remove("alg");
    let Ok(point) = public.point() else {
        return;
    };
    let _ = public.thumbprint(ThumbprintHash::S256);
    let Ok(jwe) = Jwe::encrypt_ecdh_es(Map::new(), &point, b"fuzz") else {
        return;
    };
    // If the hostile set also carried the matching private scalar, the JWE opens with it.
    if let Ok(scalar) = exchange.scalar()
        && Jwk::from_scalar(&scalar).point().is_ok_and(|p| p == point)
    {
        let opened = jwe.decrypt_ecdh_es(&scalar).expect("own key opens own JWE");
        assert_eq!(&opened[..], b"fuzz");
    }
});
