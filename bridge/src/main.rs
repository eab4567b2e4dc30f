//! The `openhqm-bridge` binary; everything lives in the library so custom builds
//! can register their own backends first.

fn main() {
    openhqm_bridge::main();
}
