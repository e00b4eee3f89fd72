//! The numeric precision a model computes at, and the choice per device.

use candle_core::Device;

use crate::cpu::CpuFeatures;
use crate::packed::{self, WeightFormat};

/// Numeric precision of the model's computation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Precision {
    /// 32-bit float throughout.
    F32,
    /// 16-bit float (candle's ops; for accelerators).
    F16,
    /// bfloat16: on the CPU the vision tower's matrix products take bf16
    /// operands and accumulate in f32; everything else stays f32.
    Bf16,
    /// Symmetric int8 matrix products (per-feature weight scales, per-row
    /// activation scales) in the CPU vision tower; everything else f32.
    Int8,
}

impl Precision {
    /// Lower-case name (`f32`, `f16`, `bf16`, `int8`).
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
            Self::Int8 => "int8",
        }
    }

    /// The fastest precision that keeps the embeddings at f32's answers on
    /// `device`, and why: f16 on CUDA; bf16 on a CPU whose bf16 dot products
    /// outrun its f32 FMAs (AMX tiles, or AVX512-BF16 on AMD); f32 on every
    /// other CPU. On Intel without AMX, `vdpbf16ps` has one port to the
    /// FMAs' two, and the bf16 tower measured 0.58x the f32 one; elsewhere
    /// bf16 or f16 would be widened in software. int8 is never chosen
    /// automatically: it moves embeddings further.
    pub fn auto(device: &Device) -> (Self, String) {
        if device.is_cuda() {
            return (Self::F16, "CUDA device".to_string());
        }
        if !device.is_cpu() {
            return (Self::F32, "accelerator not yet measured".to_string());
        }
        Self::auto_for_cpu(&CpuFeatures::get())
    }

    /// [`Self::auto`] for a CPU with `features`.
    pub fn auto_for_cpu(features: &CpuFeatures) -> (Self, String) {
        let flags = features.flags();
        if features.amx_bf16 {
            (Self::Bf16, format!("CPU has AMX bf16 tiles ({flags})"))
        } else if features.avx512_bf16 && !features.intel {
            (Self::Bf16, format!("CPU has AVX512-BF16 ({flags})"))
        } else if features.avx512_bf16 {
            (
                Self::F32,
                format!(
                    "Intel CPU with AVX512-BF16 but no AMX: bf16 is slower than f32 here ({flags})"
                ),
            )
        } else {
            (
                Self::F32,
                format!("CPU has no native bf16 dot products ({flags})"),
            )
        }
    }

    /// The packed-weight format the fused CPU forward uses at this
    /// precision; `None` where it uses gemm's f32 panels (f32 on CPUs with
    /// AVX-512) or does not run (f16).
    pub(crate) fn packed_format(self) -> Option<WeightFormat> {
        match self {
            Self::F32 if packed::f32_blocked_preferred() => Some(WeightFormat::F32),
            Self::Bf16 => Some(WeightFormat::Bf16),
            Self::Int8 => Some(WeightFormat::int8_for_cpu()),
            Self::F32 | Self::F16 => None,
        }
    }

    /// The kernel this precision's CPU matrix products run on here
    /// (chosen, and checked, on first use).
    pub fn cpu_kernel(self) -> &'static str {
        match (self.packed_format(), self) {
            (Some(format), _) => packed::kernel_choice(format).name,
            (None, Self::F32) => "gemm f32",
            (None, _) => "candle f16",
        }
    }

    /// Whether this precision runs natively on this CPU (no software
    /// widening): f32 always, bf16 with AMX or AVX512-BF16, int8 with AVX2
    /// or better; f16 never (candle widens it element by element).
    pub fn native_on_cpu(self, features: &CpuFeatures) -> bool {
        match self {
            Self::F32 => true,
            Self::Bf16 => features.native_bf16(),
            Self::Int8 => features.avx2_fma || features.avx512_vnni,
            Self::F16 => false,
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_follows_the_cpu_features() {
        let none = CpuFeatures::default();
        assert_eq!(Precision::auto_for_cpu(&none).0, Precision::F32);
        let zen3 = CpuFeatures {
            avx2_fma: true,
            ..none
        };
        assert_eq!(Precision::auto_for_cpu(&zen3).0, Precision::F32);
        let zen4 = CpuFeatures {
            avx512: true,
            avx512_bf16: true,
            avx512_vnni: true,
            ..zen3
        };
        assert_eq!(Precision::auto_for_cpu(&zen4).0, Precision::Bf16);
        // Sapphire Rapids without the tile state (a VM that withholds AMX).
        let spr_no_amx = CpuFeatures {
            intel: true,
            avx_vnni: true,
            ..zen4
        };
        let (p, why) = Precision::auto_for_cpu(&spr_no_amx);
        assert_eq!(p, Precision::F32);
        assert!(why.contains("no AMX"), "{why}");
        let spr = CpuFeatures {
            amx_bf16: true,
            ..spr_no_amx
        };
        let (p, why) = Precision::auto_for_cpu(&spr);
        assert_eq!(p, Precision::Bf16);
        assert!(why.contains("AMX"), "{why}");
        // This machine: whatever it is, auto never picks int8 or f16.
        let (here, why) = Precision::auto(&Device::Cpu);
        println!("auto on this CPU: {here} ({why})");
        assert!(matches!(here, Precision::F32 | Precision::Bf16));
        assert!(here.native_on_cpu(&CpuFeatures::get()));
    }
}
