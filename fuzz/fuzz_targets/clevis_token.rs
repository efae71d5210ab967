#![no_main]
// Any bytes as a LUKS2 token's JSON, read the way nbde-unlock reads clevis tokens: the
// keyslot list, the flattened JWE, then the typed pin (tang, sss with nested pins, null,
// tpm2) and what the boot integrations ask of it. Also the text as a compact JWE.
use serde_json::Value;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(clevis) = nbde_proto::ClevisJwe::from_compact(text) {
            inspect(&clevis);
        }
    }
    let Ok(token) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let _slots: Vec<u32> = token
        .get("keyslots")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|s| s.as_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    if let Some(jwe) = token.get("jwe") {
        if let Ok(jwe) = nbde_proto::Jwe::from_flattened(jwe) {
            if let Ok(clevis) = nbde_proto::ClevisJwe::parse(jwe) {
                inspect(&clevis);
            }
        }
    }
});

fn inspect(clevis: &nbde_proto::ClevisJwe) {
    let _ = clevis.name();
    let _ = clevis.tang_pins().len();
    let _ = clevis.needs_network();
    let _ = clevis.requires_network();
    let _ = clevis.uses("tpm2");
}
