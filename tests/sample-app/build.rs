//! Bakes the source revision into the library (see build/revision.rs).

include!("../../core/build/revision.rs");

fn main() {
    emit_revision();
}
