#![no_main]
// Any bytes as the body of POST /rec, checked as nbde-server's client_point checks it
// (server/src/http/tang.rs): JSON, a JWK, its key_ops/use and alg, then the point, on its
// curve. (The multiplication that follows a checked point is left to the tests: at
// ~0.5 ms for P-521 it would cap the fuzzer at a few thousand runs a second.)
use nbde_proto::Jwk;
use serde_json::Value;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let Ok(client) = Jwk::from_value(value) else {
        return;
    };
    let declares_ops =
        client.as_map().contains_key("key_ops") || client.as_map().contains_key("use");
    if declares_ops && !client.allows("deriveKey") {
        return;
    }
    if client
        .str_member("alg")
        .ok()
        .flatten()
        .is_some_and(|alg| alg != "ECMR")
    {
        return;
    }
    if let Ok(point) = client.point() {
        let _ = (point.curve(), point.x().len(), point.y().len());
    }
});
