#![no_main]
// Any JSON: read as a JWK, take its point, scalar and every thumbprint.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data)
        && let Ok(jwk) = nbde_proto::Jwk::from_value(value)
    {
        let _ = jwk.point();
        let _ = jwk.scalar();
        for hash in nbde_proto::ThumbprintHash::ALL {
            if let Ok(thp) = jwk.thumbprint(hash) {
                assert!(jwk.matches_thumbprint(&thp));
            }
        }
        let _ = nbde_proto::KeySet::from_value(&jwk.to_value());
    }
});
