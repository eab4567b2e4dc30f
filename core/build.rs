//! Bakes the source revision into the library (see build/revision.rs).

include!("build/revision.rs");

fn main() {
    emit_revision();
}
