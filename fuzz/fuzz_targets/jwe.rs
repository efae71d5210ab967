#![no_main]
// Any text: parse as compact or flattened JWE, re-serialize, decrypt with a fixed key.
libfuzzer_sys::fuzz_target!(|data: &str| {
    if let Ok(jwe) = nbde_proto::Jwe::parse(data) {
        let again = nbde_proto::Jwe::parse_compact(&jwe.to_compact()).expect("round trip");
        assert_eq!(again, jwe);
        let _ = jwe.decrypt(&[0u8; 32]);
        let _ = jwe.epk();
    }
});
