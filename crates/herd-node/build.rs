//! Links the addon as Node expects (symbols resolved from the `node` process at load time).
fn main() {
    napi_build::setup();
}
