//! NVML opened at run time. Only the calls keel needs are resolved, each by
//! the versioned name the driver has exported since NVML 5 (`_v2` where one
//! exists), so that one build runs on every driver of the last decade.

use super::{samples_of, GpuReading, MemoryBytes};
use keel_model::{MetricSample, Name, Timestamp};
use libloading::Library;
use std::ffi::{c_char, c_int, c_uint, c_ulonglong, c_void, CStr};

/// The driver's soname (the unversioned `.so` comes only with the SDK).
pub const LIBRARY: &str = "libnvidia-ml.so.1";

const NVML_SUCCESS: c_int = 0;
const NVML_ERROR_NOT_SUPPORTED: c_int = 3;
const NVML_CLOCK_SM: c_uint = 1;
const NVML_TEMPERATURE_GPU: c_uint = 0;
const NVML_PCIE_UTIL_TX_BYTES: c_uint = 0;
const NVML_PCIE_UTIL_RX_BYTES: c_uint = 1;

type Device = *mut c_void;

#[repr(C)]
#[derive(Default)]
struct Utilization {
    gpu: c_uint,
    memory: c_uint,
}

#[repr(C)]
#[derive(Default)]
struct Memory {
    total: c_ulonglong,
    free: c_ulonglong,
    used: c_ulonglong,
}

/// Why NVML could not be used, naming the library, symbol or call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NvmlError {
    #[error("cannot load {library} (is the NVIDIA driver installed?): {reason}")]
    Load { library: String, reason: String },
    #[error("{library} has no {symbol}: {reason}")]
    Symbol {
        library: String,
        symbol: &'static str,
        reason: String,
    },
    #[error("{call}{}: {message} (NVML error {code})", gpu.map(|g| format!(" on GPU {g}")).unwrap_or_default())]
    Call {
        call: &'static str,
        gpu: Option<u32>,
        code: i32,
        message: String,
    },
}

/// What one read found besides its samples.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NvmlStats {
    pub gpus: u32,
    pub samples: u64,
    /// Fields a device does not support (`NVML_ERROR_NOT_SUPPORTED`), skipped.
    pub unsupported: u64,
}

/// The resolved entry points. Function pointers copied out of the library,
/// valid as long as `Nvml::_lib` stays loaded.
struct Api {
    shutdown: unsafe extern "C" fn() -> c_int,
    error_string: unsafe extern "C" fn(c_int) -> *const c_char,
    count: unsafe extern "C" fn(*mut c_uint) -> c_int,
    handle: unsafe extern "C" fn(c_uint, *mut Device) -> c_int,
    utilization: unsafe extern "C" fn(Device, *mut Utilization) -> c_int,
    memory: unsafe extern "C" fn(Device, *mut Memory) -> c_int,
    power: unsafe extern "C" fn(Device, *mut c_uint) -> c_int,
    clock: unsafe extern "C" fn(Device, c_uint, *mut c_uint) -> c_int,
    temperature: unsafe extern "C" fn(Device, c_uint, *mut c_uint) -> c_int,
    pcie: unsafe extern "C" fn(Device, c_uint, *mut c_uint) -> c_int,
}

/// An initialised NVML; shut down on drop.
pub struct Nvml {
    api: Api,
    // Declared after `api`, so it is unloaded after the pointers are gone.
    _lib: Library,
}

macro_rules! resolve {
    ($lib:expr, $path:expr, $name:literal) => {{
        // SAFETY: the type named at the use site is the C prototype that
        // nvml.h declares for this symbol.
        let sym = unsafe { $lib.get(concat!($name, "\0").as_bytes()) };
        *sym.map_err(|e| NvmlError::Symbol {
            library: $path.to_string(),
            symbol: $name,
            reason: e.to_string(),
        })?
    }};
}

impl Nvml {
    /// Loads the driver's NVML and initialises it.
    pub fn load() -> Result<Nvml, NvmlError> {
        Nvml::load_from(LIBRARY)
    }

    /// Loads NVML from `path` (a soname or a file) and initialises it.
    pub fn load_from(path: &str) -> Result<Nvml, NvmlError> {
        // SAFETY: loading runs the library's initialisers; NVML's only set up
        // its own state.
        let lib = unsafe { Library::new(path) }.map_err(|e| NvmlError::Load {
            library: path.to_string(),
            reason: e.to_string(),
        })?;
        let init: unsafe extern "C" fn() -> c_int = resolve!(lib, path, "nvmlInit_v2");
        let api = Api {
            shutdown: resolve!(lib, path, "nvmlShutdown"),
            error_string: resolve!(lib, path, "nvmlErrorString"),
            count: resolve!(lib, path, "nvmlDeviceGetCount_v2"),
            handle: resolve!(lib, path, "nvmlDeviceGetHandleByIndex_v2"),
            utilization: resolve!(lib, path, "nvmlDeviceGetUtilizationRates"),
            memory: resolve!(lib, path, "nvmlDeviceGetMemoryInfo"),
            power: resolve!(lib, path, "nvmlDeviceGetPowerUsage"),
            clock: resolve!(lib, path, "nvmlDeviceGetClockInfo"),
            temperature: resolve!(lib, path, "nvmlDeviceGetTemperature"),
            pcie: resolve!(lib, path, "nvmlDeviceGetPcieThroughput"),
        };
        // SAFETY: nvmlInit_v2 takes no arguments and may be called any time.
        let ret = unsafe { init() };
        if ret != NVML_SUCCESS {
            // No `Nvml` yet, so nothing shuts down what never started.
            return Err(call_error(&api, "nvmlInit_v2", None, ret));
        }
        Ok(Nvml { api, _lib: lib })
    }

    fn error(&self, call: &'static str, gpu: Option<u32>, code: c_int) -> NvmlError {
        call_error(&self.api, call, gpu, code)
    }

    /// `Ok(None)` when the device does not support the field (counted).
    fn field<T>(
        &self,
        call: &'static str,
        gpu: u32,
        ret: c_int,
        value: T,
        unsupported: &mut u64,
    ) -> Result<Option<T>, NvmlError> {
        match ret {
            NVML_SUCCESS => Ok(Some(value)),
            NVML_ERROR_NOT_SUPPORTED => {
                *unsupported += 1;
                Ok(None)
            }
            code => Err(self.error(call, Some(gpu), code)),
        }
    }

    pub fn device_count(&self) -> Result<u32, NvmlError> {
        let mut n: c_uint = 0;
        // SAFETY: the out-pointer is valid for the call.
        let ret = unsafe { (self.api.count)(&mut n) };
        if ret != NVML_SUCCESS {
            return Err(self.error("nvmlDeviceGetCount_v2", None, ret));
        }
        Ok(n)
    }

    /// Reads GPU `index`; the second value counts fields it does not support.
    /// Takes about 40 ms: NVML samples PCIe throughput over 20 ms per direction.
    pub fn read_gpu(&self, index: u32) -> Result<(GpuReading, u64), NvmlError> {
        let mut dev: Device = std::ptr::null_mut();
        // SAFETY: the out-pointer is valid for the call.
        let ret = unsafe { (self.api.handle)(index, &mut dev) };
        if ret != NVML_SUCCESS {
            return Err(self.error("nvmlDeviceGetHandleByIndex_v2", Some(index), ret));
        }
        let mut skipped = 0;
        let mut r = GpuReading {
            index,
            ..GpuReading::default()
        };
        // SAFETY (every call below): `dev` is a handle NVML just returned,
        // valid until shutdown; each out-pointer is a live local of the
        // type nvml.h declares.
        let mut u = Utilization::default();
        let ret = unsafe { (self.api.utilization)(dev, &mut u) };
        r.util_percent = self.field(
            "nvmlDeviceGetUtilizationRates",
            index,
            ret,
            u.gpu,
            &mut skipped,
        )?;
        let mut m = Memory::default();
        let ret = unsafe { (self.api.memory)(dev, &mut m) };
        let mem = MemoryBytes {
            total: m.total,
            free: m.free,
            used: m.used,
        };
        r.memory = self.field("nvmlDeviceGetMemoryInfo", index, ret, mem, &mut skipped)?;
        let mut v: c_uint = 0;
        let ret = unsafe { (self.api.power)(dev, &mut v) };
        r.power_mw = self.field("nvmlDeviceGetPowerUsage", index, ret, v, &mut skipped)?;
        let ret = unsafe { (self.api.clock)(dev, NVML_CLOCK_SM, &mut v) };
        r.sm_clock_mhz = self.field("nvmlDeviceGetClockInfo", index, ret, v, &mut skipped)?;
        let ret = unsafe { (self.api.temperature)(dev, NVML_TEMPERATURE_GPU, &mut v) };
        r.temp_c = self.field("nvmlDeviceGetTemperature", index, ret, v, &mut skipped)?;
        let ret = unsafe { (self.api.pcie)(dev, NVML_PCIE_UTIL_TX_BYTES, &mut v) };
        r.pcie_tx_kib_s = self.field("nvmlDeviceGetPcieThroughput", index, ret, v, &mut skipped)?;
        let ret = unsafe { (self.api.pcie)(dev, NVML_PCIE_UTIL_RX_BYTES, &mut v) };
        r.pcie_rx_kib_s = self.field("nvmlDeviceGetPcieThroughput", index, ret, v, &mut skipped)?;
        Ok((r, skipped))
    }

    /// One reading of every GPU, as dcgm-exporter samples of `node` at `ts`.
    pub fn read(
        &self,
        node: &str,
        ts: Timestamp,
    ) -> Result<(Vec<MetricSample>, NvmlStats), NvmlError> {
        let node = Name::from(node);
        let mut stats = NvmlStats {
            gpus: self.device_count()?,
            ..NvmlStats::default()
        };
        let mut out = Vec::new();
        for i in 0..stats.gpus {
            let (r, skipped) = self.read_gpu(i)?;
            stats.unsupported += skipped;
            samples_of(&r, &node, ts, &mut out);
        }
        stats.samples = out.len() as u64;
        Ok((out, stats))
    }
}

fn call_error(api: &Api, call: &'static str, gpu: Option<u32>, code: c_int) -> NvmlError {
    // SAFETY: nvmlErrorString accepts any code and returns a static string
    // (or null, handled below); it works before nvmlInit too.
    let p = unsafe { (api.error_string)(code) };
    let message = if p.is_null() {
        "unknown error".to_string()
    } else {
        // SAFETY: non-null pointers from nvmlErrorString are NUL-terminated
        // static strings.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    };
    NvmlError::Call {
        call,
        gpu,
        code,
        message,
    }
}

impl Drop for Nvml {
    fn drop(&mut self) {
        // SAFETY: NVML was initialised in `load_from`; the library is still
        // loaded, since fields drop after this runs.
        unsafe { (self.api.shutdown)() };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_library_is_a_clear_error() {
        let e = Nvml::load_from("libnvidia-ml-that-is-not-here.so.1")
            .err()
            .expect("no such library");
        let msg = e.to_string();
        assert!(matches!(e, NvmlError::Load { .. }), "{e:?}");
        assert!(
            msg.starts_with("cannot load libnvidia-ml-that-is-not-here.so.1"),
            "{msg}"
        );
    }

    #[test]
    fn a_library_without_nvml_names_the_symbol() {
        // Any loadable library that is not NVML: the C library itself.
        let e = Nvml::load_from("libc.so.6")
            .err()
            .expect("libc is not NVML");
        assert!(
            matches!(
                e,
                NvmlError::Symbol {
                    symbol: "nvmlInit_v2",
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(
            e.to_string().contains("libc.so.6 has no nvmlInit_v2"),
            "{e}"
        );
    }

    #[test]
    fn call_errors_name_the_call_and_gpu() {
        let e = NvmlError::Call {
            call: "nvmlDeviceGetPowerUsage",
            gpu: Some(2),
            code: 15,
            message: "GPU is lost".into(),
        };
        assert_eq!(
            e.to_string(),
            "nvmlDeviceGetPowerUsage on GPU 2: GPU is lost (NVML error 15)"
        );
    }
}
