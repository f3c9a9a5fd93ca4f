//! `uniffi-bindgen`: generates the Kotlin, Swift and Python sources of
//! `mesh-ffi` from its compiled library. Run through
//! `bindings/mesh-ffi/generate.sh`.

fn main() {
    uniffi::uniffi_bindgen_main()
}
