//! Compute settings shared by every command: device, dtype and thread count.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};

/// Numeric precision requested on the command line.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DTypeArg {
    /// 32-bit float (default on CPU).
    F32,
    /// 16-bit float (default on CUDA; slow on CPUs without native fp16, seed 004).
    F16,
    /// bfloat16.
    Bf16,
}

impl From<DTypeArg> for DType {
    fn from(d: DTypeArg) -> Self {
        match d {
            DTypeArg::F32 => DType::F32,
            DTypeArg::F16 => DType::F16,
            DTypeArg::Bf16 => DType::BF16,
        }
    }
}

/// Flags selecting where and how the model computes.
#[derive(clap::Args, Debug, Clone)]
pub struct ComputeArgs {
    /// Number of compute threads (default: all cores).
    #[arg(long, env = "ONGI_THREADS")]
    pub threads: Option<usize>,
    /// Numeric precision; default follows the device (f32 on CPU, f16 on CUDA).
    #[arg(long, value_enum, env = "ONGI_DTYPE")]
    pub dtype: Option<DTypeArg>,
    /// Device: `cpu`, or `cuda[:N]` in a build with the `cuda` feature.
    #[arg(long, default_value = "cpu", env = "ONGI_DEVICE")]
    pub device: String,
}

/// Resolved compute settings.
pub struct Compute {
    pub device: Device,
    pub dtype: DType,
    pub threads: usize,
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
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("ongi-compute-{i}"))
            .build_global()
            .context("building the compute thread pool")?;
        let device = parse_device(&self.device)?;
        let dtype = self
            .dtype
            .map_or_else(|| ongi_model::clip::default_dtype(&device), DType::from);
        Ok(Compute {
            device,
            dtype,
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
