#![no_main]
// Any text: parse as a JWS in any serialization and verify it as a Tang advertisement.
libfuzzer_sys::fuzz_target!(|data: &str| {
    if let Ok(jws) = nbde_proto::Jws::parse(data) {
        let _ = jws.payload_bytes();
        let _ = nbde_proto::KeySet::from_verified_adv(&jws);
    }
});
