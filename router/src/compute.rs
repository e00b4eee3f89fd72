//! Compute settings shared by every command: device, dtype and thread count.

use anyhow::{bail, Context, Result};
use candle_core::Device;
use ongi_model::{CpuFeatures, Precision};

/// Numeric precision requested on the command line.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DTypeArg {
    /// The fastest precision that keeps f32's answers on this device: bf16 on
    /// a CPU with AMX, or AVX512-BF16 on AMD; f32 on other CPUs; f16 on CUDA.
    #[default]
    Auto,
    /// 32-bit float.
    F32,
    /// 16-bit float (for CUDA; CPUs widen it in software, many times slower).
    F16,
    /// bfloat16 matrix products (native on AMX / AVX512-BF16 CPUs).
    Bf16,
    /// int8 matrix products on the CPU (only when asked: embeddings move more).
    Int8,
}

impl DTypeArg {
    /// The precision this request means on `device`, and why.
    pub fn resolve(self, device: &Device) -> (Precision, String) {
        let asked = |p: Precision| (p, "asked for".to_string());
        match self {
            DTypeArg::Auto => Precision::auto(device),
            DTypeArg::F32 => asked(Precision::F32),
            DTypeArg::F16 => asked(Precision::F16),
            DTypeArg::Bf16 => asked(Precision::Bf16),
            DTypeArg::Int8 => asked(Precision::Int8),
        }
    }
}

/// Flags selecting where and how the model computes.
#[derive(clap::Args, Debug, Clone)]
pub struct ComputeArgs {
    /// Number of compute threads (default: all cores).
    #[arg(long, env = "ONGI_THREADS")]
    pub threads: Option<usize>,
    /// Numeric precision; `auto` picks per device and CPU (see `ongi serve --help`).
    #[arg(long, value_enum, default_value_t, env = "ONGI_DTYPE")]
    pub dtype: DTypeArg,
    /// Device: `cpu`, or `cuda[:N]` in a build with the `cuda` feature.
    #[arg(long, default_value = "cpu", env = "ONGI_DEVICE")]
    pub device: String,
}

/// Resolved compute settings.
pub struct Compute {
    pub device: Device,
    pub precision: Precision,
    /// Why that precision (the CPU features that chose it, or "asked for").
    pub precision_reason: String,
    pub threads: usize,
}

impl Compute {
    /// One line naming the precision, why, and the kernels it runs on;
    /// logs a warning first when the precision has no native support here.
    pub fn describe_precision(&self) -> String {
        let kernel = if self.device.is_cpu() {
            self.precision.cpu_kernel()
        } else {
            "candle"
        };
        let line = format!(
            "{} ({}; kernel {kernel})",
            self.precision, self.precision_reason
        );
        line
    }
}

impl ComputeArgs {
    /// Resolves the device and dtype and sizes the global compute thread pool.
    ///
    /// Must run before any other rayon use: the global pool can be built once.
    pub fn resolve(&self) -> Result<Compute> {
        let threads = match self.threads {
            Some(0) => bail!("--threads must be at least 1"),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        // candle sizes its matrix-kernel parallelism from RAYON_NUM_THREADS and
        // runs it on the global rayon pool: set both so exactly `threads` compute.
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
        let built = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("ongi-compute-{i}"))
            .build_global();
        // A second app in the same process (the library's users, tests)
        // shares the pool when it has the size asked for.
        if let Err(e) = built {
            if rayon::current_num_threads() != threads {
                return Err(anyhow::Error::new(e).context(format!(
                    "building the compute thread pool: it already runs {} threads, not {threads}",
                    rayon::current_num_threads()
                )));
            }
        }
        let device = parse_device(&self.device)?;
        let (precision, precision_reason) = self.dtype.resolve(&device);
        // Said once, when the precision is chosen, however often it is described.
        let features = CpuFeatures::get();
        if device.is_cpu() && !precision.native_on_cpu(&features) {
            tracing::warn!(
                "{precision} has no native support on this CPU ({}): it runs slower than f32; \
                 --dtype auto picks the fastest precision here",
                features.flags()
            );
        }
        Ok(Compute {
            device,
            precision,
            precision_reason,
            threads,
        })
    }
}

fn parse_device(spec: &str) -> Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = match s.strip_prefix("cuda:") {
                Some(n) => n
                    .parse::<usize>()
                    .with_context(|| format!("invalid CUDA ordinal in --device {s}"))?,
                None => 0,
            };
            Device::new_cuda(ordinal).with_context(|| {
                format!("--device {s}: CUDA unavailable (build with --features cuda)")
            })
        }
        other => bail!("unknown --device {other:?}: expected cpu or cuda[:N]"),
    }
}
