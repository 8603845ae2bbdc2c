//! CUDA builds only: candle-kernels links `-lcudart`; scripts/build-cuda.sh points
//! `CUDART_LINK_DIR` at a directory whose `libcudart.a` is CUDA's static runtime, so the binary
//! does not need libcudart.so at run time. CPU builds ignore this. The search path set here
//! reaches every artifact that links the engines: the gateway and the engines' test executables.
fn main() {
    println!("cargo:rerun-if-env-changed=CUDART_LINK_DIR");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        if let Some(dir) = std::env::var_os("CUDART_LINK_DIR") {
            println!("cargo:rustc-link-search=native={}", dir.to_string_lossy());
        }
    }
}
