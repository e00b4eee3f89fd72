//! What this CPU can do for the matrix products, detected once at run time.
//!
//! Every fast path is chosen from these flags, never from compile-time
//! target features: one binary has to run correctly on CPUs with and without
//! AVX-512, VNNI, bf16 dot products or AMX.

use std::sync::OnceLock;

/// The instruction-set features the CPU kernels care about.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuFeatures {
    /// AVX2 with FMA (Haswell, Zen 1 and later).
    pub avx2_fma: bool,
    /// AVX-512 foundation plus the byte/word and vector-length subsets.
    pub avx512: bool,
    /// `vdpbf16ps`: bf16 pair dot products into f32 (Cooper Lake, Sapphire Rapids, Zen 4).
    pub avx512_bf16: bool,
    /// `vpdpwssd` on 512-bit vectors (Cascade Lake, Ice Lake, Zen 4).
    pub avx512_vnni: bool,
    /// `vpdpwssd` on 256-bit vectors with a VEX encoding (Alder Lake, Sierra Forest).
    pub avx_vnni: bool,
    /// AMX tiles with bf16 products, usable by this process (CPUID reports
    /// them and the kernel granted the tile state).
    pub amx_bf16: bool,
    /// An Intel CPU (CPUID vendor `GenuineIntel`). Its cores issue 512-bit
    /// f32 FMAs on two ports but `vdpbf16ps` on one, so AVX512-BF16 gives
    /// bf16 no lead over f32 there; AMD's Zen 4 halves its 512-bit FMAs
    /// instead, and bf16 runs at twice f32's rate.
    pub intel: bool,
}

static FEATURES: OnceLock<CpuFeatures> = OnceLock::new();

impl CpuFeatures {
    /// The running CPU's features (detected on first use).
    pub fn get() -> CpuFeatures {
        *FEATURES.get_or_init(detect)
    }

    /// Whether the CPU has native bf16 dot products (the matrix products
    /// then run at twice f32's rate or better).
    pub fn native_bf16(&self) -> bool {
        self.amx_bf16 || self.avx512_bf16
    }

    /// The detected flags, space-separated, in `/proc/cpuinfo` spelling.
    pub fn flags(&self) -> String {
        let all = [
            (self.avx2_fma, "avx2 fma"),
            (self.avx512, "avx512f avx512bw avx512vl"),
            (self.avx512_bf16, "avx512_bf16"),
            (self.avx512_vnni, "avx512_vnni"),
            (self.avx_vnni, "avx_vnni"),
            (self.amx_bf16, "amx_tile amx_bf16"),
        ];
        let set: Vec<&str> = all.iter().filter(|f| f.0).map(|f| f.1).collect();
        if set.is_empty() {
            "none of avx2/avx512/vnni/bf16/amx".to_string()
        } else {
            set.join(" ")
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn detect() -> CpuFeatures {
    let avx512 = is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl");
    CpuFeatures {
        avx2_fma: is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
        avx512,
        avx512_bf16: avx512 && is_x86_feature_detected!("avx512bf16"),
        avx512_vnni: avx512 && is_x86_feature_detected!("avx512vnni"),
        avx_vnni: is_x86_feature_detected!("avx2") && is_x86_feature_detected!("avxvnni"),
        amx_bf16: amx_bf16_usable(),
        intel: vendor_is_intel(),
    }
}

#[cfg(target_arch = "x86_64")]
fn vendor_is_intel() -> bool {
    // SAFETY: CPUID leaf 0 exists on every x86_64 CPU.
    #[allow(unused_unsafe)]
    let leaf0 = unsafe { std::arch::x86_64::__cpuid(0) };
    // The vendor string is EBX, EDX, ECX: "Genu" "ineI" "ntel".
    [leaf0.ebx, leaf0.edx, leaf0.ecx] == [0x756e_6547, 0x4965_6e69, 0x6c65_746e]
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> CpuFeatures {
    CpuFeatures::default()
}

/// CPUID leaf 7 reports AMX-TILE (EDX bit 24) and AMX-BF16 (bit 22); Linux
/// then hands out the 8 KB tile state only to a process that asks for it
/// (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`), once per process.
/// Without that grant the first tile instruction would kill the process.
#[cfg(target_arch = "x86_64")]
fn amx_bf16_usable() -> bool {
    const AMX_BF16: u32 = 1 << 22;
    const AMX_TILE: u32 = 1 << 24;
    // SAFETY: CPUID is available on every x86_64 CPU; leaf 7 is checked
    // against the maximum basic leaf first. (Newer compilers consider the
    // intrinsics safe; the block keeps older ones building.)
    #[allow(unused_unsafe)]
    let leaf7 = unsafe {
        let max = std::arch::x86_64::__cpuid(0).eax;
        if max < 7 {
            return false;
        }
        std::arch::x86_64::__cpuid_count(7, 0)
    };
    if leaf7.edx & (AMX_BF16 | AMX_TILE) != AMX_BF16 | AMX_TILE {
        return false;
    }
    request_tile_state()
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tile_state() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain syscall with integer arguments; failure is reported
    // through its return value.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    rc == 0
}

#[cfg(all(target_arch = "x86_64", not(target_os = "linux")))]
fn request_tile_state() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_is_stable_and_consistent() {
        let f = CpuFeatures::get();
        assert_eq!(f, CpuFeatures::get());
        // The wider features imply the narrower ones the kernels assume.
        assert!(!f.avx512_bf16 || f.avx512);
        assert!(!f.avx512_vnni || f.avx512);
        assert!(!f.flags().is_empty());
        println!("CPU features: {}", f.flags());
    }
}
