//! Which device a model runs on: `auto`, `cpu`, `cuda[:N]` or `metal[:N]`
//! (`ABSTRACTGATEWAY_DEVICE`). `auto` takes the first GPU this binary can drive and falls back
//! to the CPU, saying why; naming a GPU that cannot be used is an error, never a silent fallback.

use std::fmt;
use std::str::FromStr;

use candle_core::Device;

use crate::EngineError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
    Metal(usize),
}

impl FromStr for DeviceSpec {
    type Err = EngineError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim().to_ascii_lowercase();
        let (kind, ordinal) = match s.split_once(':') {
            Some((k, n)) => {
                let n = n
                    .parse::<usize>()
                    .map_err(|_| EngineError::Device(format!("'{s}': the device ordinal must be a number, as in cuda:0")))?;
                (k.to_string(), n)
            }
            None => (s.clone(), 0),
        };
        match kind.as_str() {
            "auto" | "" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(ordinal)),
            "metal" => Ok(DeviceSpec::Metal(ordinal)),
            _ => Err(EngineError::Device(format!("'{s}' (expected auto, cpu, cuda:N or metal:N)"))),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Auto => write!(f, "auto"),
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceSpec::Metal(n) => write!(f, "metal:{n}"),
        }
    }
}

/// The device chosen for a spec, with a line saying what was chosen and why.
pub struct Selected {
    pub device: Device,
    pub name: String,
    pub note: String,
}

/// Free memory where a model on `dev` lives: the host's available RAM for the CPU, the GPU's
/// free memory for CUDA; None where it cannot be asked (Metal).
pub fn free_bytes(dev: &Device) -> Option<u64> {
    match dev {
        Device::Cpu => std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("MemAvailable:"))?;
            let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kb * 1024)
        }),
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => {
            let (free, _total) = dev.as_cuda_device().ok()?.cuda_stream().context().mem_get_info().ok()?;
            Some(free as u64)
        }
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

pub fn select(spec: DeviceSpec) -> Result<Selected, EngineError> {
    select_inner(spec).map_err(EngineError::Device)
}

fn select_inner(spec: DeviceSpec) -> Result<Selected, String> {
    let cpu = |note: String| Selected {
        device: Device::Cpu,
        name: "cpu".into(),
        note,
    };
    match spec {
        DeviceSpec::Cpu => Ok(cpu("cpu (as configured)".into())),
        DeviceSpec::Cuda(n) => cuda(n),
        DeviceSpec::Metal(n) => metal(n),
        DeviceSpec::Auto => {
            let mut why = Vec::new();
            match cuda(0) {
                Ok(s) => return Ok(s),
                Err(e) => why.push(e),
            }
            if cfg!(feature = "metal") {
                match metal(0) {
                    Ok(s) => return Ok(s),
                    Err(e) => why.push(e),
                }
            }
            Ok(cpu(format!("cpu (auto: {})", why.join("; "))))
        }
    }
}

/// The shared libraries a CUDA build loads at run time (cudarc `dynamic-loading`). Missing ones
/// would otherwise surface as a panic at the first kernel launch, so they are checked up front.
#[cfg(feature = "cuda")]
const CUDA_LIBS: [&str; 5] = [
    "libcuda.so.1",
    "libcublas.so.13",
    "libcublasLt.so.13",
    "libcurand.so.10",
    "libnvrtc.so.13",
];

#[cfg(feature = "cuda")]
fn cuda(ordinal: usize) -> Result<Selected, String> {
    let missing: Vec<&str> = CUDA_LIBS
        .iter()
        .copied()
        // SAFETY: loading these libraries runs their initialisers, the same as cudarc will.
        .filter(|lib| unsafe { libloading::Library::new(lib) }.is_err())
        .collect();
    if missing.contains(&"libcuda.so.1") {
        return Err("cuda: no NVIDIA driver on this host (libcuda.so.1 cannot be loaded)".into());
    }
    if !missing.is_empty() {
        return Err(format!(
            "cuda: CUDA 13 libraries not found: {} (put their directory on LD_LIBRARY_PATH)",
            missing.join(", ")
        ));
    }
    let device = Device::new_cuda(ordinal).map_err(|e| format!("cuda:{ordinal}: {e}"))?;
    if std::env::var_os("ABSTRACTGATEWAY_CUDA_EVENT_TRACKING").is_none() {
        if let Device::Cuda(d) = &device {
            // cudarc gives every allocation two CUDA events and records one at every use, to
            // order work across streams; a model's tensors all live on its device's one stream,
            // so that host time per kernel launch (a decode step launches hundreds) buys
            // nothing. Setting the variable keeps candle's default, for before/after timings.
            // SAFETY: no tensor of this device is used on another stream.
            unsafe { d.disable_event_tracking() };
        }
    }
    Ok(Selected {
        device,
        name: format!("cuda:{ordinal}"),
        note: format!("cuda:{ordinal}"),
    })
}

#[cfg(not(feature = "cuda"))]
fn cuda(_ordinal: usize) -> Result<Selected, String> {
    Err("cuda: this binary was built without CUDA (build it with scripts/build-cuda.sh)".into())
}

fn metal(ordinal: usize) -> Result<Selected, String> {
    if !cfg!(feature = "metal") {
        return Err("metal: this binary was built without Metal".into());
    }
    let device = Device::new_metal(ordinal).map_err(|e| format!("metal:{ordinal}: {e}"))?;
    Ok(Selected {
        device,
        name: format!("metal:{ordinal}"),
        note: format!("metal:{ordinal}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        assert_eq!("auto".parse::<DeviceSpec>().unwrap(), DeviceSpec::Auto);
        assert_eq!("CPU".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        assert_eq!("metal:1".parse::<DeviceSpec>().unwrap(), DeviceSpec::Metal(1));
        let err = "tpu".parse::<DeviceSpec>().unwrap_err().to_string();
        assert!(err.contains("expected auto, cpu, cuda:N or metal:N"), "{err}");
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        assert_eq!(DeviceSpec::Cuda(2).to_string(), "cuda:2");
    }

    #[test]
    fn cpu_and_auto_always_resolve() {
        assert!(select(DeviceSpec::Cpu).unwrap().device.is_cpu());
        // Without a usable GPU, auto lands on the CPU and says why.
        let s = select(DeviceSpec::Auto).unwrap();
        if s.device.is_cpu() {
            assert!(s.note.starts_with("cpu (auto: cuda: "), "{}", s.note);
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn naming_a_gpu_without_support_is_an_error() {
        let err = select(DeviceSpec::Cuda(0)).err().unwrap().to_string();
        assert!(err.contains("built without CUDA"), "{err}");
    }
}
