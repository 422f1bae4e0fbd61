//! Links the module with immediate binding (`-z now`): every Envoy callback it imports is
//! resolved when Envoy loads it, so an Envoy that lacks one refuses the module at load time
//! (with the symbol's name) instead of failing on the first request that would call it.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,now");
}
