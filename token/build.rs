//! libcryptsetup looks the plugin's entry points up with `dlvsym(…, "CRYPTSETUP_TOKEN_1.0")`,
//! so they must carry that symbol version; and the library must never be unmapped while a
//! recovery thread it started still runs (`-z nodelete`).
fn main() {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("token.map");
    println!("cargo:rerun-if-changed={}", script.display());
    println!(
        "cargo:rustc-cdylib-link-arg=-Wl,--version-script={}",
        script.display()
    );
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
}
