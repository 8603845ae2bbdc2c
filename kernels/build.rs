//! CUDA builds only (`--features cuda`): compiles `cuda/*.cu` to PTX with nvcc, which the CUDA
//! build's toolchain provides (scripts/build-cuda.sh puts it on PATH; `NVCC` or `CUDA_ROOT` name
//! another). The PTX is for `compute_$CUDA_COMPUTE_CAP` (default 80, the first with bf16), so the
//! driver compiles it for the GPU it finds. CPU builds need no CUDA toolchain and skip this.
use std::path::PathBuf;
use std::process::Command;

const KERNELS: [&str; 1] = ["paged_decode"];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=NVCC");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let nvcc = std::env::var("NVCC")
        .ok()
        .or_else(|| std::env::var("CUDA_ROOT").ok().map(|r| format!("{r}/bin/nvcc")))
        .unwrap_or_else(|| "nvcc".into());
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "80".into());
    for name in KERNELS {
        let src = format!("cuda/{name}.cu");
        println!("cargo:rerun-if-changed={src}");
        let status = Command::new(&nvcc)
            .args(["--ptx", "-O3", "-std=c++17", &format!("-arch=compute_{cap}"), &src, "-o"])
            .arg(out.join(format!("{name}.ptx")))
            .status()
            .unwrap_or_else(|e| panic!("running {nvcc} for {src}: {e} (scripts/build-cuda.sh provides nvcc)"));
        assert!(status.success(), "{nvcc} failed on {src}");
    }
}
