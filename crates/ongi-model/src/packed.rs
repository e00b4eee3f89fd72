//! Matrix products over weights packed at load: bf16 and int8 for the
//! low-precision CPU forward, and f32 on CPUs whose best f32 kernel is ours
//! (see [`f32_blocked_preferred`]).
//!
//! Only the linear layers' products run here; layer norm, softmax, GELU and
//! the residual stream stay f32 (`vision_cpu.rs`).
//!
//! **Layout.** Weights are packed into blocks of [`NB`] output features,
//! `[steps][NB]` 32-bit lanes each, so a kernel streams one block front to
//! back. An f32 lane holds one value of `k`; a bf16 or int8 lane holds two
//! (elements `k` and `k + 1`: bf16 bits, or an int8 value widened to i16),
//! the operand layout of every pair-dot-product instruction the CPUs have:
//! AMX `tdpbf16ps`, AVX512-BF16 `vdpbf16ps`, VNNI `vpdpwssd`, AVX2
//! `vpmaddwd`. On VNNI CPUs int8 lanes hold four values as bytes instead
//! ([`WeightFormat::Int8Quads`], the operands of `vpdpbusd`, twice the
//! products per instruction). Activations are packed per call: f32 into
//! step-major tiles of the kernel's height (one step's broadcasts share a
//! cache line), the other formats converted into `[rows][lanes]`, with `k`
//! padded to a multiple of 32 (one AMX tile row; 64 for quads) and rows to
//! 16 (one tile's height).
//!
//! **int8** is symmetric: one scale per output feature for the weights, one
//! per row for the activations (`max |x| / 127`, computed per call). The
//! products are exact integer sums (|a·w| ≤ 255 · 127, no overflow at any
//! depth a CLIP layer has); quads offset the activations by 128 (the
//! instruction's unsigned operand) and subtract `128 · Σ w` afterwards, so
//! both layouts, and so every CPU, compute the same int8 answers.
//!
//! **Blocking.** Each block is walked in passes of [`KC_STEPS`] lanes of
//! `k` (16 KB of weights, which stay in L1 while every row tile of the batch
//! uses them), accumulating into one `rows × NB` buffer that stays in L2.
//!
//! **Dispatch.** The kernels are hand-written because no maintained crate
//! offers bf16/int8 pair products with run-time dispatch (`gemm` has f16 and
//! f32 only). Each is picked at run time from [`CpuFeatures`], and before
//! first use it must reproduce a naive product on a small problem; a kernel
//! that fails that check is passed over (and reported) for the next one.

use std::cell::Cell;
use std::sync::OnceLock;

use crate::config::Activation;
use crate::cpu::CpuFeatures;
use crate::error::ModelError;
use crate::kernels::{self, Epilogue, SendPtr};
use crate::team::{part, Team};

/// Output features per packed weight block.
pub(crate) const NB: usize = 32;
/// Lanes of `k` per pass over a block (48 KB of weights at 32 bits per
/// lane). Each pass reloads the accumulators: the AMX kernel, whose tile
/// loads and stores are dear, runs about 10 % faster at 384 lanes than at
/// 128; the vector kernels do not mind.
const KC_STEPS: usize = 384;
/// The 16-bit formats pad rows to a multiple of this (the AMX kernel's
/// tile height) and `k` to a multiple of 32 (one tile row).
const ROW_STEP: usize = 16;

/// The format of packed weights (and of the products' operands).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    /// f32 operands and accumulation.
    F32,
    /// bfloat16 operands, f32 accumulation.
    Bf16,
    /// Symmetric int8 operands (per-feature weight scales, per-row activation
    /// scales), exact i32 accumulation; two values per lane, each widened to
    /// i16.
    Int8,
    /// The same int8 numbers four to a lane as bytes (weights signed,
    /// activations offset by 128 to unsigned), the operands of VNNI's
    /// `vpdpbusd`; the offset's share of every sum is subtracted in the
    /// epilogue, so the products equal [`Self::Int8`]'s bit for bit.
    Int8Quads,
}

impl WeightFormat {
    /// Lower-case name (`f32`, `bf16`, `int8`).
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::Int8 => "int8",
            Self::Int8Quads => "int8-quads",
        }
    }

    /// Whether the products are int8 (integer sums, scaled in the epilogue).
    fn is_int8(self) -> bool {
        matches!(self, Self::Int8 | Self::Int8Quads)
    }

    /// The int8 layout for this CPU: quads where a `vpdpbusd` kernel can
    /// run them (twice the products per instruction of `vpdpwssd`), pairs
    /// elsewhere.
    pub(crate) fn int8_for_cpu() -> Self {
        let f = CpuFeatures::get();
        if f.avx512_vnni || f.avx_vnni {
            Self::Int8Quads
        } else {
            Self::Int8
        }
    }

    /// Values of `k` per 32-bit lane.
    fn per_lane(self) -> usize {
        match self {
            Self::F32 => 1,
            Self::Bf16 | Self::Int8 => 2,
            Self::Int8Quads => 4,
        }
    }

    /// `k` padded as this format's kernels need it.
    fn padded_k(self, k: usize) -> usize {
        match self {
            Self::F32 => k,
            Self::Bf16 | Self::Int8 => k.div_ceil(32) * 32,
            // Rows of lanes stay a multiple of 16 lanes (one 64-byte line).
            Self::Int8Quads => k.div_ceil(64) * 64,
        }
    }

    /// Lanes a row of `k` values takes, padding included.
    fn steps(self, k: usize) -> usize {
        self.padded_k(k) / self.per_lane()
    }
}

/// f32 → bf16 bits, rounding to nearest even (as PyTorch's `.to(bfloat16)`).
#[inline(always)]
fn bf16_bits(v: f32) -> u32 {
    let b = v.to_bits();
    b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16
}

/// `v / scale` rounded to the nearest integer in `[-127, 127]`, as i16 bits.
#[inline(always)]
fn int8_bits(v: f32, inv_scale: f32) -> u32 {
    ((v * inv_scale).round_ties_even().clamp(-127.0, 127.0) as i16 as u16) as u32
}

/// [`int8_bits`] as one signed byte.
#[inline(always)]
fn int8_byte(v: f32, inv_scale: f32) -> u32 {
    int8_bits(v, inv_scale) & 0xff
}

/// [`int8_bits`] plus [`QUAD_OFFSET`], as one unsigned byte (1..=255).
#[inline(always)]
fn int8_offset_byte(v: f32, inv_scale: f32) -> u32 {
    (int8_bits(v, inv_scale) as u16 as i16 as i32 + QUAD_OFFSET) as u32 & 0xff
}

/// What quad activations are offset by: `vpdpbusd` multiplies unsigned
/// bytes by signed ones, so `q + 128` goes in and `128 · Σ w` comes out of
/// every sum again.
const QUAD_OFFSET: i32 = 128;

/// The symmetric int8 scale of a row: `max |v| / 127` (1 for an all-zero row).
fn int8_scale(row: &[f32]) -> f32 {
    let max = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    if max > 0.0 && max.is_finite() {
        max / 127.0
    } else {
        1.0
    }
}

/// A linear layer's weight, converted and packed at load (see the module
/// documentation for the layout).
pub(crate) struct PackedWeight {
    pub(crate) kind: WeightFormat,
    /// Output features.
    pub(crate) out: usize,
    /// Input features (unpadded).
    pub(crate) k: usize,
    /// `[blocks][steps][NB]` lanes.
    data: Lanes,
    /// int8: the weight scale of every output feature; bf16: empty.
    scales: Vec<f32>,
    /// int8 quads: `QUAD_OFFSET · Σ w` of every output feature (its integer
    /// weights), which the epilogue subtracts; otherwise empty.
    offsets: Vec<i32>,
}

impl std::fmt::Debug for PackedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PackedWeight({} [{}, {}])",
            self.kind.name(),
            self.out,
            self.k
        )
    }
}

impl PackedWeight {
    /// Converts and packs a row-major `[out, k]` f32 weight.
    pub(crate) fn pack(w: &[f32], out: usize, k: usize, kind: WeightFormat) -> Self {
        let steps = kind.steps(k);
        let blocks = out.div_ceil(NB);
        let scales: Vec<f32> = if kind.is_int8() {
            w.chunks_exact(k.max(1)).map(int8_scale).collect()
        } else {
            Vec::new()
        };
        let offsets: Vec<i32> = if kind == WeightFormat::Int8Quads {
            w.chunks_exact(k.max(1))
                .zip(&scales)
                .map(|(row, s)| {
                    let sum: i32 = row
                        .iter()
                        .map(|&v| int8_bits(v, 1.0 / s) as u16 as i16 as i32)
                        .sum();
                    QUAD_OFFSET * sum
                })
                .collect()
        } else {
            Vec::new()
        };
        let mut data = Lanes::new();
        data.resize(blocks * steps * NB);
        // One row's lanes, as an activation row would be packed, then
        // spread out to its column of the block.
        let mut lanes = vec![0u32; steps];
        for (o, row) in w.chunks_exact(k.max(1)).take(out).enumerate() {
            match kind {
                WeightFormat::F32 => {
                    for (l, v) in lanes.iter_mut().zip(row) {
                        *l = v.to_bits();
                    }
                }
                WeightFormat::Bf16 => pack_pairs(row, &mut lanes, bf16_bits),
                WeightFormat::Int8 => {
                    let inv = 1.0 / scales[o];
                    pack_pairs(row, &mut lanes, |v| int8_bits(v, inv));
                }
                WeightFormat::Int8Quads => {
                    let inv = 1.0 / scales[o];
                    pack_quads(row, &mut lanes, |v| int8_byte(v, inv));
                }
            }
            let base = (o / NB) * steps * NB + o % NB;
            for (j, l) in lanes.iter().enumerate() {
                data[base + j * NB] = *l;
            }
        }
        Self {
            kind,
            out,
            k,
            data,
            scales,
            offsets,
        }
    }
}

/// One cache line of lanes.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u32; 16]);

// SAFETY: sixteen u32 fill the 64-byte alignment exactly: no padding, and
// every bit pattern is valid.
unsafe impl bytemuck::Zeroable for Line {}
// SAFETY: as above.
unsafe impl bytemuck::Pod for Line {}

/// Zero-initialised 32-bit lanes whose first lane starts a cache line. An
/// AMX tile load whose rows straddle cache lines runs about six times
/// slower than an aligned one, and every packed operand here is read in
/// whole 64-byte rows (`k` is padded to 32 values, blocks are `NB` lanes
/// wide), so aligning the buffers' starts aligns every row.
#[derive(Default)]
struct Lanes {
    lines: Vec<Line>,
    len: usize,
}

impl Lanes {
    const fn new() -> Self {
        Self {
            lines: Vec::new(),
            len: 0,
        }
    }

    /// Grows (zero-filled) or shrinks to `len` lanes.
    fn resize(&mut self, len: usize) {
        self.lines.resize(len.div_ceil(16), Line([0; 16]));
        self.len = len;
    }
}

impl std::ops::Deref for Lanes {
    type Target = [u32];
    fn deref(&self) -> &[u32] {
        &bytemuck::cast_slice(&self.lines)[..self.len]
    }
}

impl std::ops::DerefMut for Lanes {
    fn deref_mut(&mut self) -> &mut [u32] {
        &mut bytemuck::cast_slice_mut(&mut self.lines)[..self.len]
    }
}

/// One call's activations, converted and packed (`[rows_p][steps]` lanes,
/// or f32 row tiles).
struct PackedRows {
    /// At least the packed lanes (a reused buffer may be longer).
    data: Lanes,
    /// Rows held (padded).
    rows_p: usize,
    /// int8: the scale of every row; bf16: empty.
    scales: Vec<f32>,
    /// Lanes per row (f32: per tile row of `k`).
    lda: usize,
    /// Lanes between one step of `k` and the next within a row: 1 for
    /// rows, the tile height for f32 tiles.
    step: usize,
}

fn pack_rows(
    x: &[f32],
    rows: usize,
    k: usize,
    kind: WeightFormat,
    team: &Team,
) -> Result<PackedRows, ModelError> {
    let rows_p = rows.div_ceil(ROW_STEP) * ROW_STEP;
    let lda = kind.steps(k);
    // Rows past `rows` keep stale values: only the AMX kernel reads them,
    // into accumulator rows that are never used.
    let mut data = scratch(&ROWS_SCRATCH, rows_p * lda);
    let mut scales = vec![0.0f32; if kind.is_int8() { rows } else { 0 }];
    let ptr = SendPtr(data.as_mut_ptr().cast());
    let scales_ptr = SendPtr(scales.as_mut_ptr());
    team.run(|share| {
        for r in part(rows, share, team.threads()) {
            // SAFETY: row r of `data` (rows_p × lda lanes) and of `scales`
            // (int8: rows) belong to this share alone, and both outlive the pass.
            let dst = unsafe {
                std::slice::from_raw_parts_mut(ptr.get().cast::<u32>().add(r * lda), lda)
            };
            let src = &x[r * k..(r + 1) * k];
            if kind.is_int8() {
                let scale = int8_scale(src);
                // SAFETY: as above.
                unsafe { *scales_ptr.get().add(r) = scale };
                if kind == WeightFormat::Int8Quads {
                    pack_row_int8_quads(src, dst, 1.0 / scale);
                } else {
                    pack_row_int8(src, dst, 1.0 / scale);
                }
            } else {
                pack_row_bf16(src, dst);
            }
        }
    })?;
    Ok(PackedRows {
        data,
        scales,
        lda,
        step: 1,
        rows_p,
    })
}

thread_local! {
    /// Converted activations of the current call (on the calling thread).
    static ROWS_SCRATCH: Cell<Lanes> = const { Cell::new(Lanes::new()) };
    /// A team thread's block accumulators.
    static ACC_SCRATCH: Cell<Lanes> = const { Cell::new(Lanes::new()) };
}

/// A buffer of at least `len` lanes that lived on in this thread since its
/// last use (contents stale), instead of a fresh allocation per call: at
/// these sizes every fresh one is a new mapping, and its page faults cost
/// ~3 % of a forward. The team's threads live as long as the model. A
/// nested use gets a new buffer.
fn scratch(cell: &'static std::thread::LocalKey<Cell<Lanes>>, len: usize) -> Lanes {
    let mut v = cell.with(Cell::take);
    if v.len() < len {
        v.resize(len);
    }
    v
}

/// Returns a [`scratch`] buffer for the thread's next call.
fn keep(cell: &'static std::thread::LocalKey<Cell<Lanes>>, v: Lanes) {
    cell.with(|c| c.set(v));
}

/// f32 activations as tiles of `mr` rows, `[tiles][k][mr]` (rows past
/// the last are stale: the kernels read only a tile's `mr` real rows).
fn pack_tiles_f32(
    x: &[f32],
    rows: usize,
    k: usize,
    mr: usize,
    team: &Team,
) -> Result<PackedRows, ModelError> {
    let tiles = rows.div_ceil(mr);
    let mut data = scratch(&ROWS_SCRATCH, tiles * mr * k);
    let ptr = SendPtr(data.as_mut_ptr().cast());
    team.run(|share| {
        for t in part(tiles, share, team.threads()) {
            // SAFETY: tile t (mr · k lanes) of `data` belongs to this share
            // alone, and `data` outlives the pass.
            let dst = unsafe {
                std::slice::from_raw_parts_mut(ptr.get().cast::<u32>().add(t * mr * k), mr * k)
            };
            for r in 0..mr.min(rows - t * mr) {
                let src = &x[(t * mr + r) * k..(t * mr + r + 1) * k];
                for (j, v) in src.iter().enumerate() {
                    dst[j * mr + r] = v.to_bits();
                }
            }
        }
    })?;
    Ok(PackedRows {
        data,
        scales: Vec::new(),
        lda: k,
        step: mr,
        rows_p: rows,
    })
}

/// Converts one row into lanes of two values each, zero-padding the rest
/// of `dst` (the padding of `k` meets zero weights, but stale NaN bits would
/// not multiply to zero).
#[inline(always)]
fn pack_pairs(src: &[f32], dst: &mut [u32], conv: impl Fn(f32) -> u32) {
    let mut pairs = src.chunks_exact(2);
    for (d, p) in dst.iter_mut().zip(&mut pairs) {
        *d = conv(p[0]) | (conv(p[1]) << 16);
    }
    let mut filled = src.len() / 2;
    if let [last] = pairs.remainder() {
        dst[filled] = conv(*last);
        filled += 1;
    }
    dst[filled..].fill(0);
}

#[multiversion::multiversion(targets("x86_64+avx512f+avx512vl+avx2+fma", "x86_64+avx2+fma"))]
fn pack_row_bf16(src: &[f32], dst: &mut [u32]) {
    pack_pairs(src, dst, bf16_bits);
}

#[multiversion::multiversion(targets("x86_64+avx512f+avx512vl+avx2+fma", "x86_64+avx2+fma"))]
fn pack_row_int8(src: &[f32], dst: &mut [u32], inv_scale: f32) {
    pack_pairs(src, dst, |v| int8_bits(v, inv_scale));
}

/// [`pack_pairs`] with four byte values per lane (value `k` in the lowest
/// byte). The padding is zero bytes: it meets zero weights, and the offset
/// subtracted afterwards counts only the real weights.
#[inline(always)]
fn pack_quads(src: &[f32], dst: &mut [u32], conv: impl Fn(f32) -> u32) {
    let mut quads = src.chunks_exact(4);
    for (d, q) in dst.iter_mut().zip(&mut quads) {
        *d = conv(q[0]) | (conv(q[1]) << 8) | (conv(q[2]) << 16) | (conv(q[3]) << 24);
    }
    let mut filled = src.len() / 4;
    let rest = quads.remainder();
    if !rest.is_empty() {
        dst[filled] = rest
            .iter()
            .enumerate()
            .fold(0, |lane, (i, &v)| lane | (conv(v) << (8 * i)));
        filled += 1;
    }
    dst[filled..].fill(0);
}

#[multiversion::multiversion(targets("x86_64+avx512f+avx512vl+avx2+fma", "x86_64+avx2+fma"))]
fn pack_row_int8_quads(src: &[f32], dst: &mut [u32], inv_scale: f32) {
    pack_quads(src, dst, |v| int8_offset_byte(v, inv_scale));
}

/// One micro-kernel call: `c[0..mr][0..NB] (+)= a[0..mr] · b` over `steps`
/// lanes of `k`. `a` holds the rows `lda` lanes apart (f32: one tile of the
/// kernel's height, step-major, `lda` unused), `b` one block's lanes (`NB`
/// per step), `c` rows `NB` apart; `load_c` adds to `c` instead of
/// overwriting it. The f32 and bf16 kernels write f32, the int8 kernels i32.
///
/// A kernel may only be called with `a` holding `mr` rows (for the AMX
/// kernel `mr` rounded up to 16) of `steps` lanes, `b` `steps × NB` lanes,
/// `c` as many rows of `NB`; for the 16-bit formats `steps` a multiple of 16; on a CPU with
/// the kernel's features.
#[derive(Clone, Copy)]
struct Call {
    a: *const u32,
    lda: usize,
    b: *const u32,
    steps: usize,
    c: *mut u32,
    load_c: bool,
    mr: usize,
}

impl Call {
    /// The same call on the block's columns from `j` on (for kernels that
    /// cover the block in narrower parts).
    ///
    /// # Safety
    /// `j < NB`.
    unsafe fn columns(self, j: usize) -> Self {
        Self {
            b: self.b.add(j),
            c: self.c.add(j),
            ..self
        }
    }
}

/// A micro-kernel (see [`Call`] for what it may be called with).
type MicroKernel = unsafe fn(Call);

/// One micro-kernel and what it needs.
pub(crate) struct Kernel {
    /// Name in logs and test output (`avx512-bf16`, `avx2-int8`, …).
    pub name: &'static str,
    /// The precision it computes.
    pub kind: WeightFormat,
    /// The CPU features it needs, as `/proc/cpuinfo` spells them.
    pub needs: &'static str,
    /// Rows per call.
    mr: usize,
    available: fn(&CpuFeatures) -> bool,
    run: MicroKernel,
}

impl Kernel {
    /// Whether this CPU has what the kernel needs.
    pub fn available(&self) -> bool {
        (self.available)(&CpuFeatures::get())
    }
}

/// Every kernel, fastest first within each precision; the portable ones
/// last, so selection always ends on something.
pub(crate) static KERNELS: &[Kernel] = &[
    #[cfg(target_arch = "x86_64")]
    Kernel {
        name: "avx2-f32",
        kind: WeightFormat::F32,
        needs: "avx2 fma",
        mr: 6,
        available: |f| f.avx2_fma,
        run: x86::avx2_f32,
    },
    Kernel {
        name: "portable-f32",
        kind: WeightFormat::F32,
        needs: "",
        mr: PORTABLE_F32_TILE,
        available: |_| true,
        run: portable_f32,
    },
    #[cfg(target_arch = "x86_64")]
    Kernel {
        name: "amx-bf16",
        kind: WeightFormat::Bf16,
        needs: "amx_tile amx_bf16",
        mr: 32,
        available: |f| f.amx_bf16,
        run: x86::amx_bf16,
    },
    #[cfg(target_arch = "x86_64")]
    Kernel {
        name: "avx512-bf16",
        kind: WeightFormat::Bf16,
        needs: "avx512f avx512bw avx512vl avx512_bf16",
        mr: 8,
        available: |f| f.avx512_bf16,
        run: x86::avx512_bf16,
    },
    #[cfg(target_arch = "x86_64")]
    Kernel {
        name: "avx2-bf16",
        kind: WeightFormat::Bf16,
        needs: "avx2 fma",
        mr: 4,
        available: |f| f.avx2_fma,
        run: x86::avx2_bf16,
    },
    Kernel {
        name: "portable-bf16",
        kind: WeightFormat::Bf16,
        needs: "",
        mr: 4,
        available: |_| true,
        run: portable_bf16,
    },
    #[cfg(target_arch = "x86_64")]
    Kernel {
        name: "avx512-vnni-int8",
        kind: WeightFormat::Int8,
        needs: "avx512f avx512bw avx512vl avx512_vnni",
        mr: 8,
        available: |f| f.avx512_vnni,
        run: x86::avx512_vnni_int8,
    },
    #[cfg(target_arch = "x86_64")]
    Kernel {
        name: "avx-vnni-int8",
        kind: WeightFormat::Int8,
        needs: "avx2 avx_vnni",
        mr: 4,
        available: |f| f.avx_vnni,
        run: x86::avx_vnni_int8,
    },
    #[cfg(target_arch = "x86_64")]
    Kernel {
        name: "avx2-int8",
        kind: WeightFormat::Int8,
        needs: "avx2 fma",
        mr: 4,
        available: |f| f.avx2_fma,
        run: x86::avx2_int8,
    },
    Kernel {
        name: "portable-int8",
        kind: WeightFormat::Int8,
        needs: "",
        mr: 4,
        available: |_| true,
        run: portable_int8,
    },
    #[cfg(target_arch = "x86_64")]
    Kernel {
        name: "avx512-vnni-int8-quads",
        kind: WeightFormat::Int8Quads,
        needs: "avx512f avx512bw avx512vl avx512_vnni",
        mr: 8,
        available: |f| f.avx512_vnni,
        run: x86::avx512_vnni_int8_quads,
    },
    #[cfg(target_arch = "x86_64")]
    Kernel {
        name: "avx-vnni-int8-quads",
        kind: WeightFormat::Int8Quads,
        needs: "avx2 avx_vnni",
        mr: 4,
        available: |f| f.avx_vnni,
        run: x86::avx_vnni_int8_quads,
    },
    Kernel {
        name: "portable-int8-quads",
        kind: WeightFormat::Int8Quads,
        needs: "",
        mr: 4,
        available: |_| true,
        run: portable_int8_quads,
    },
];

/// The kernel a precision runs on this CPU, and the faster ones passed over.
#[derive(Debug, Clone)]
pub struct KernelChoice {
    /// The kernel in use.
    pub name: &'static str,
    /// Kernels this CPU has but that failed their check, with the reason.
    pub rejected: Vec<(&'static str, String)>,
}

static CHOICES: [OnceLock<(usize, KernelChoice)>; 4] = [
    OnceLock::new(),
    OnceLock::new(),
    OnceLock::new(),
    OnceLock::new(),
];

/// The kernel `kind` runs on this CPU (chosen and checked on first use).
pub fn kernel_choice(kind: WeightFormat) -> KernelChoice {
    chosen(kind).1.clone()
}

fn chosen(kind: WeightFormat) -> &'static (usize, KernelChoice) {
    let slot = &CHOICES[kind as usize];
    slot.get_or_init(|| {
        let mut rejected = Vec::new();
        for (i, k) in KERNELS.iter().enumerate() {
            if k.kind != kind || !k.available() {
                continue;
            }
            match self_check(k) {
                Ok(()) => {
                    return (
                        i,
                        KernelChoice {
                            name: k.name,
                            rejected,
                        },
                    )
                }
                Err(why) => rejected.push((k.name, why)),
            }
        }
        // The portable kernels are always available; reaching here means
        // even they failed, which the unit tests rule out. Use the last one.
        let last = KERNELS.iter().rposition(|k| k.kind == kind).unwrap_or(0);
        (
            last,
            KernelChoice {
                name: KERNELS[last].name,
                rejected,
            },
        )
    })
}

/// Runs `k` on a small problem with a ragged last block, a second `k` pass
/// and a partial row tile, against the naive product of the same converted
/// operands.
fn self_check(k: &Kernel) -> Result<(), String> {
    let (rows, depth, out) = (19, 2 * KC_STEPS + 69, 2 * NB + 7);
    let x = test_values(rows * depth, 11);
    let w = test_values(out * depth, 12);
    let packed = PackedWeight::pack(&w, out, depth, k.kind);
    let team = Team::new(1).map_err(|e| e.to_string())?;
    let mut got = vec![0.0f32; rows * out];
    linear_with(k, &x, rows, &packed, &mut got, Epilogue::default(), &team)
        .map_err(|e| e.to_string())?;
    let want = reference(&x, rows, depth, &w, out, k.kind);
    let worst = got
        .iter()
        .zip(&want)
        .map(|(g, w)| ((*g as f64) - w).abs() / (1.0 + w.abs()))
        .fold(0.0f64, f64::max);
    if worst.is_finite() && worst < 1e-4 {
        Ok(())
    } else {
        Err(format!("differs from the naive product by {worst:e}"))
    }
}

/// Deterministic values in [-1, 1) with a few larger ones, for checks.
pub(crate) fn test_values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let h = (i as u32 ^ seed.wrapping_mul(0x9e37_79b9))
                .wrapping_mul(2_654_435_761)
                .rotate_left(13);
            let v = (h % 2000) as f32 / 1000.0 - 1.0;
            if h.is_multiple_of(97) {
                v * 6.0
            } else {
                v
            }
        })
        .collect()
}

/// The product a kernel must reproduce: operands converted exactly as
/// [`linear`] converts them, multiplied and summed in f64.
pub(crate) fn reference(
    x: &[f32],
    rows: usize,
    k: usize,
    w: &[f32],
    out: usize,
    kind: WeightFormat,
) -> Vec<f64> {
    let conv = |v: &[f32]| -> (Vec<f64>, f64) {
        match kind {
            WeightFormat::F32 => (v.iter().map(|&x| x as f64).collect(), 1.0),
            WeightFormat::Bf16 => (
                v.iter()
                    .map(|&x| f32::from_bits(bf16_bits(x) << 16) as f64)
                    .collect(),
                1.0,
            ),
            WeightFormat::Int8 | WeightFormat::Int8Quads => {
                let s = int8_scale(v);
                (
                    v.iter()
                        .map(|&x| int8_bits(x, 1.0 / s) as u16 as i16 as f64)
                        .collect(),
                    s as f64,
                )
            }
        }
    };
    let xs: Vec<_> = x.chunks_exact(k).map(conv).collect();
    let ws: Vec<_> = w.chunks_exact(k).map(conv).collect();
    let mut y = vec![0.0f64; rows * out];
    for (r, (xr, sx)) in xs.iter().enumerate() {
        for (o, (wo, sw)) in ws.iter().enumerate() {
            let dot: f64 = xr.iter().zip(wo).map(|(a, b)| a * b).sum();
            y[r * out + o] = dot * sx * sw;
        }
    }
    y
}

/// `dst[rows, out] = act(x[rows, k] · Wᵀ + bias)` or `dst += x · Wᵀ + bias`
/// with `W` packed into blocks, on the kernel this CPU runs best.
pub(crate) fn linear(
    x: &[f32],
    rows: usize,
    w: &PackedWeight,
    dst: &mut [f32],
    epi: Epilogue<'_>,
    team: &Team,
) -> Result<(), ModelError> {
    let (i, _) = chosen(w.kind);
    linear_with(&KERNELS[*i], x, rows, w, dst, epi, team)
}

/// [`linear`] on a given kernel.
pub(crate) fn linear_with(
    kernel: &Kernel,
    x: &[f32],
    rows: usize,
    w: &PackedWeight,
    dst: &mut [f32],
    epi: Epilogue<'_>,
    team: &Team,
) -> Result<(), ModelError> {
    let (k, out) = (w.k, w.out);
    if kernel.kind != w.kind
        || x.len() != rows * k
        || dst.len() != rows * out
        || epi.bias.is_some_and(|b| b.len() != out)
        || (epi.accumulate && epi.act.is_some())
    {
        return Err(ModelError::Internal(
            "packed linear operands do not match".into(),
        ));
    }
    if rows == 0 || out == 0 {
        return Ok(());
    }
    if !kernel.available() {
        return Err(ModelError::Internal(format!(
            "kernel {} needs {}, which this CPU lacks",
            kernel.name, kernel.needs
        )));
    }
    let converted = if w.kind == WeightFormat::F32 {
        pack_tiles_f32(x, rows, k, kernel.mr, team)?
    } else {
        pack_rows(x, rows, k, w.kind, team)?
    };
    let (a, lda, step, a_scales, rows_p) = (
        &converted.data[..],
        converted.lda,
        converted.step,
        &converted.scales[..],
        converted.rows_p,
    );
    let steps = w.kind.steps(k);
    let blocks = out.div_ceil(NB);
    let dst_ptr = SendPtr(dst.as_mut_ptr());
    let done = team.run(|share| {
        // Accumulators of one block for every row: `rows_p × NB` f32 or i32
        // (each pass over `k` starts by overwriting them).
        let mut acc = scratch(&ACC_SCRATCH, rows_p * NB);
        let chunk_rows = row_chunk(lda, kernel.mr);
        let mut m0 = 0;
        while m0 < rows {
            let m1 = rows.min(m0 + chunk_rows);
            for blk in part(blocks, share, team.threads()) {
                let b = &w.data[blk * steps * NB..(blk + 1) * steps * NB];
                let first = blk * NB;
                let width = NB.min(out - first);
                let bias = epi.bias.map(|b| &b[first..first + width]);
                let mut s0 = 0;
                while s0 < steps {
                    let sc = KC_STEPS.min(steps - s0);
                    let last = s0 + sc == steps;
                    let mut r0 = m0;
                    while r0 < m1 {
                        let mr = kernel.mr.min(m1 - r0);
                        // SAFETY: `a` holds rows_p rows of lda ≥ steps lanes (the
                        // 16-bit formats pad rows to 16, and only the AMX kernel,
                        // whole 16-row tiles per call, reads past `mr`; f32 tiles start at
                        // r0 · k, a multiple of the tile height); the call reads
                        // steps s0..s0 + sc of rows r0..r0 + mr. `b` is this
                        // block's steps × NB lanes, read from step s0; `acc` holds
                        // rows_p × NB. For the 16-bit formats steps and KC_STEPS
                        // are multiples of 16, so sc is. `kernel.available()` was
                        // checked above.
                        unsafe {
                            (kernel.run)(Call {
                                a: a.as_ptr().add(r0 * lda + s0 * step),
                                lda,
                                b: b.as_ptr().add(s0 * NB),
                                steps: sc,
                                c: acc.as_mut_ptr().add(r0 * NB),
                                load_c: s0 > 0,
                                mr,
                            });
                        }
                        // The rows just finished go out while their
                        // accumulators are still in L1.
                        if last {
                            let block = Block {
                                acc: &acc[r0 * NB..(r0 + mr) * NB],
                                width,
                                out,
                                bias,
                                int8: w.kind.is_int8().then(|| Int8Scales {
                                    rows: &a_scales[r0..r0 + mr],
                                    features: &w.scales[first..],
                                    offsets: w.offsets.get(first..).unwrap_or(&[]),
                                }),
                            };
                            // SAFETY: rows r0..r0 + mr, columns first..first +
                            // width of `dst` lie inside the rows × out buffer
                            // checked above and belong to this block's share alone.
                            unsafe {
                                finish_block(
                                    dst_ptr.get().add(r0 * out + first),
                                    block,
                                    epi.accumulate,
                                    epi.act,
                                )
                            };
                        }
                        r0 += kernel.mr;
                    }
                    s0 += sc;
                }
            }
            m0 = m1;
        }
        keep(&ACC_SCRATCH, acc);
    });
    keep(&ROWS_SCRATCH, converted.data);
    done
}

/// Rows of activations per sweep over the weight blocks: as many as keep
/// about [`ROW_CHUNK_BYTES`] of them (`lda` lanes a row), in whole kernel
/// tiles of `mr` rows.
fn row_chunk(lda: usize, mr: usize) -> usize {
    (ROW_CHUNK_BYTES / (lda * 4).max(1) / mr).max(1) * mr
}

const ROW_CHUNK_BYTES: usize = 256 * 1024;

/// Finished accumulators of some rows of one block, and what their
/// epilogue needs.
struct Block<'a> {
    /// `rows × NB` accumulators (f32 bits, or i32 for int8).
    acc: &'a [u32],
    /// How many of the block's columns are real.
    width: usize,
    /// Output row length.
    out: usize,
    bias: Option<&'a [f32]>,
    int8: Option<Int8Scales<'a>>,
}

/// What turns a block's int8 sums into products.
#[derive(Clone, Copy)]
struct Int8Scales<'a> {
    /// Each row's activation scale.
    rows: &'a [f32],
    /// Each feature's weight scale, from the block's first.
    features: &'a [f32],
    /// Quads: each feature's offset sum, from the block's first (else empty).
    offsets: &'a [i32],
}

/// Writes a block's products into `dst` (its first row and column;
/// `out` floats per row): scaled (int8), plus the bias, then activated or
/// added to `dst`. The element loops are vectorised once per block, and
/// the activation is applied while the values are in registers.
///
/// # Safety
/// `dst` must hold `acc.len() / NB` rows of `width` floats `out` apart,
/// written by no one else meanwhile.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512vl+avx2+fma", "x86_64+avx2+fma"))]
unsafe fn finish_block<'a>(
    dst: *mut f32,
    block: Block<'a>,
    accumulate: bool,
    act: Option<Activation>,
) {
    let Block {
        acc,
        width,
        out,
        bias,
        int8,
    } = block;
    for (r, tile) in acc.chunks_exact(NB).enumerate() {
        let scales = int8.map(|s| (s.rows[r], s.features, s.offsets));
        // SAFETY: the caller's contract: row r's block columns are ours.
        let row = unsafe { std::slice::from_raw_parts_mut(dst.add(r * out), width) };
        // Full blocks (all but a layer's last, if any) get fixed-length
        // loops, unrolled into a few vector instructions.
        match <&mut [f32; NB]>::try_from(&mut *row) {
            Ok(row) => finish_row::<NB>(tile, row, bias, scales, accumulate, act),
            Err(_) => finish_row::<0>(tile, row, bias, scales, accumulate, act),
        }
    }
}

/// One row of [`finish_block`]: the accumulators scaled (int8: less the
/// feature's offset sum, if any, and by the row's and each feature's
/// scale), plus the bias, then activated into `row` or
/// added to it. `N` is the row's length when known (0: `row.len()`). The
/// values are gathered in a local array first: `row` and `tile` cannot be
/// told apart from aliases once inlined, and the loops would stay scalar.
#[inline(always)]
fn finish_row<const N: usize>(
    tile: &[u32],
    row: &mut [f32],
    bias: Option<&[f32]>,
    int8: Option<(f32, &[f32], &[i32])>,
    accumulate: bool,
    act: Option<Activation>,
) {
    let width = if N == 0 { row.len() } else { N };
    let mut v = [0.0f32; NB];
    let (v, tile) = (&mut v[..width], &tile[..width]);
    match int8 {
        Some((rs, feature_scales, [])) => {
            for ((v, t), s) in v.iter_mut().zip(tile).zip(feature_scales) {
                *v = *t as i32 as f32 * rs * s;
            }
        }
        Some((rs, feature_scales, offsets)) => {
            for (((v, t), s), o) in v.iter_mut().zip(tile).zip(feature_scales).zip(offsets) {
                *v = (*t as i32).wrapping_sub(*o) as f32 * rs * s;
            }
        }
        None => {
            for (v, t) in v.iter_mut().zip(tile) {
                *v = f32::from_bits(*t);
            }
        }
    }
    if let Some(b) = bias {
        for (v, b) in v.iter_mut().zip(b) {
            *v += b;
        }
    }
    if accumulate {
        for (v, d) in v.iter_mut().zip(row.iter()) {
            *v += d;
        }
    } else {
        kernels::activate(v, act);
    }
    row[..width].copy_from_slice(v);
}

/// Whether f32 products should run on this module's blocked kernels rather
/// than `gemm`'s: on CPUs with AVX2 but not AVX-512. There gemm's AVX2
/// kernels over panel-packed weights reached ~60 % of the FMA peak and
/// ONNX Runtime ran 1.2–1.5× faster; on AVX-512 CPUs gemm's kernels are kept
/// (measured ≥ 1.0× ONNX Runtime on Zen 4).
pub(crate) fn f32_blocked_preferred() -> bool {
    let f = CpuFeatures::get();
    f.avx2_fma && !f.avx512
}

const PORTABLE_F32_TILE: usize = 4;

/// The portable kernels' loop: `acc[r][j] = mac(acc[r][j], lane(r, p),
/// b[p][j])` with accumulators of type `T` kept in `c` as their 32 bits.
///
/// # Safety
/// As [`Call`]; `lane` must read inside `a`.
#[inline(always)]
unsafe fn portable<T: Copy>(
    call: Call,
    lane: impl Fn(usize, usize) -> u32,
    (zero, from_bits, to_bits): Bits<T>,
    mac: impl Fn(T, u32, u32) -> T,
) {
    let Call {
        b,
        steps,
        c,
        load_c,
        mr,
        ..
    } = call;
    for r in 0..mr {
        let mut acc = [zero; NB];
        if load_c {
            for (j, v) in acc.iter_mut().enumerate() {
                *v = from_bits(*c.add(r * NB + j));
            }
        }
        for p in 0..steps {
            let x = lane(r, p);
            for (j, v) in acc.iter_mut().enumerate() {
                *v = mac(*v, x, *b.add(p * NB + j));
            }
        }
        for (j, v) in acc.iter().enumerate() {
            *c.add(r * NB + j) = to_bits(*v);
        }
    }
}

/// An accumulator type's zero and its conversions from and to 32 bits.
type Bits<T> = (T, fn(u32) -> T, fn(T) -> u32);

const F32_BITS: Bits<f32> = (0.0, f32::from_bits, f32::to_bits);

/// The low and high 16-bit halves of a lane, as bf16 widened to f32.
fn bf16_halves(v: u32) -> (f32, f32) {
    (f32::from_bits(v << 16), f32::from_bits(v & 0xffff_0000))
}

/// The low and high 16-bit halves of a lane, as i16 widened to i32.
fn i16_halves(v: u32) -> (i32, i32) {
    (v as u16 as i16 as i32, (v >> 16) as u16 as i16 as i32)
}

/// Portable f32 (`a` a tile of 4 rows, step-major).
unsafe fn portable_f32(call: Call) {
    let lane = |r: usize, p: usize| unsafe { *call.a.add(p * PORTABLE_F32_TILE + r) };
    portable(call, lane, F32_BITS, |acc, x, w| {
        acc + f32::from_bits(x) * f32::from_bits(w)
    });
}

/// Lane `p` of row `r` of a call's rows.
fn row_lane(call: Call) -> impl Fn(usize, usize) -> u32 {
    // SAFETY: the portable kernels read only rows < mr, lanes < steps.
    move |r, p| unsafe { *call.a.add(r * call.lda + p) }
}

/// Portable bf16: widens both halves to f32 and multiplies in f32.
unsafe fn portable_bf16(call: Call) {
    portable(call, row_lane(call), F32_BITS, |acc, x, w| {
        let ((xl, xh), (wl, wh)) = (bf16_halves(x), bf16_halves(w));
        acc + xl * wl + xh * wh
    });
}

const I32_BITS: Bits<i32> = (0, |v| v as i32, |v| v as u32);

/// Portable int8: i16 pair products summed in i32.
unsafe fn portable_int8(call: Call) {
    portable(call, row_lane(call), I32_BITS, |acc, x, w| {
        let ((xl, xh), (wl, wh)) = (i16_halves(x), i16_halves(w));
        acc + xl * wl + xh * wh
    });
}

/// Portable int8 quads: unsigned activation bytes times signed weight
/// bytes, summed in i32 (what `vpdpbusd` computes).
unsafe fn portable_int8_quads(call: Call) {
    portable(call, row_lane(call), I32_BITS, |acc, x, w| {
        let (x, w) = (x.to_le_bytes(), w.to_le_bytes());
        acc + x
            .iter()
            .zip(w)
            .map(|(&a, b)| a as i32 * b as i8 as i32)
            .sum::<i32>()
    });
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The x86 micro-kernels. Each keeps `MR × NB` accumulators in registers
    //! and broadcasts one activation lane (a pair) per row and step.

    use std::arch::asm;
    use std::arch::x86_64::*;

    use super::{Call, NB};

    /// Calls `$f::<MR>(call)` for the call's row count, over the
    /// const-generic row counts given.
    macro_rules! by_rows {
        ($f:ident, $call:expr; $($n:literal)*) => {
            match $call.mr {
                $($n => $f::<$n>($call),)*
                _ => {}
            }
        };
    }

    /// AVX2 f32: 6 rows × 16 columns of accumulators (12 of the 16 vector
    /// registers), two weight vectors and one broadcast per row and step:
    /// 12 FMAs to 8 loads, so the FMA units, not the loads, bound it. `a` is
    /// a tile of 6 rows, step-major.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn avx2_f32(call: Call) {
        for half in 0..2 {
            by_rows!(avx2_f32_rows, call.columns(half * 16); 1 2 3 4 5 6);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn avx2_f32_rows<const MR: usize>(call: Call) {
        const TILE: usize = 6;
        let Call {
            a,
            b,
            steps,
            c,
            load_c,
            ..
        } = call;
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        if load_c {
            for (r, acc) in acc.iter_mut().enumerate() {
                acc[0] = _mm256_loadu_ps(c.add(r * NB).cast());
                acc[1] = _mm256_loadu_ps(c.add(r * NB + 8).cast());
            }
        }
        let mut b = b.cast::<f32>();
        let mut a = a.cast::<f32>();
        // Two steps per iteration: the loop's own instructions otherwise
        // take a fifth of the issue slots the 12 FMAs need.
        let step = |acc: &mut [[__m256; 2]; MR], a: *const f32, b: *const f32| {
            let w0 = _mm256_loadu_ps(b);
            let w1 = _mm256_loadu_ps(b.add(8));
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm256_broadcast_ss(&*a.add(r));
                acc[0] = _mm256_fmadd_ps(x, w0, acc[0]);
                acc[1] = _mm256_fmadd_ps(x, w1, acc[1]);
            }
        };
        for _ in 0..steps / 2 {
            step(&mut acc, a, b);
            step(&mut acc, a.add(TILE), b.add(NB));
            a = a.add(2 * TILE);
            b = b.add(2 * NB);
        }
        if steps % 2 == 1 {
            step(&mut acc, a, b);
        }
        for (r, acc) in acc.iter().enumerate() {
            _mm256_storeu_ps(c.add(r * NB).cast(), acc[0]);
            _mm256_storeu_ps(c.add(r * NB + 8).cast(), acc[1]);
        }
    }

    /// AVX2 bf16: both halves of each lane widened to f32 (a shift and a
    /// mask), two FMAs per lane. No faster than f32 in arithmetic, but half
    /// the weight bytes; for CPUs without native bf16 that are asked for it.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn avx2_bf16(call: Call) {
        for half in 0..2 {
            by_rows!(avx2_bf16_rows, call.columns(half * 16); 1 2 3 4);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn avx2_bf16_rows<const MR: usize>(call: Call) {
        let Call {
            a,
            lda,
            b,
            steps: pairs,
            c,
            load_c,
            ..
        } = call;
        let mask = _mm256_set1_epi32(0xffff_0000u32 as i32);
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        if load_c {
            for (r, acc) in acc.iter_mut().enumerate() {
                acc[0] = _mm256_loadu_ps(c.add(r * NB).cast());
                acc[1] = _mm256_loadu_ps(c.add(r * NB + 8).cast());
            }
        }
        for p in 0..pairs {
            let w0 = _mm256_loadu_si256(b.add(p * NB).cast());
            let w1 = _mm256_loadu_si256(b.add(p * NB + 8).cast());
            let w0l = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(w0));
            let w0h = _mm256_castsi256_ps(_mm256_and_si256(w0, mask));
            let w1l = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(w1));
            let w1h = _mm256_castsi256_ps(_mm256_and_si256(w1, mask));
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = *a.add(r * lda + p);
                let xl = _mm256_set1_ps(f32::from_bits(x << 16));
                let xh = _mm256_set1_ps(f32::from_bits(x & 0xffff_0000));
                acc[0] = _mm256_fmadd_ps(xl, w0l, acc[0]);
                acc[1] = _mm256_fmadd_ps(xl, w1l, acc[1]);
                acc[0] = _mm256_fmadd_ps(xh, w0h, acc[0]);
                acc[1] = _mm256_fmadd_ps(xh, w1h, acc[1]);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            _mm256_storeu_ps(c.add(r * NB).cast(), acc[0]);
            _mm256_storeu_ps(c.add(r * NB + 8).cast(), acc[1]);
        }
    }

    /// A lane-product kernel (pairs or quads per lane) over vectors of
    /// `$lanes` 32-bit lanes: two
    /// accumulators per row cover `2 × $lanes` columns (one call per such
    /// part of the block); each step loads two weight vectors and, per row,
    /// broadcasts one activation lane and applies `$step` to
    /// (accumulator, broadcast, weights).
    macro_rules! pair_kernel {
        (
            $(#[$doc:meta])*
            $name:ident, $rows:ident, $features:literal, rows $($mr:literal)*;
            lanes $lanes:literal, zero $zero:expr, load $load:path, store $store:path,
            weights $wload:path, broadcast $bcast:path,
            step |$acc:ident, $x:ident, $w:ident| $step:expr
        ) => {
            $(#[$doc])*
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $name(call: Call) {
                for part in 0..NB / (2 * $lanes) {
                    by_rows!($rows, call.columns(part * 2 * $lanes); $($mr)*);
                }
            }

            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn $rows<const MR: usize>(call: Call) {
                let Call { a, lda, b, steps: pairs, c, load_c, .. } = call;
                let mut acc = [[$zero; 2]; MR];
                if load_c {
                    for (r, acc) in acc.iter_mut().enumerate() {
                        acc[0] = $load(c.add(r * NB).cast());
                        acc[1] = $load(c.add(r * NB + $lanes).cast());
                    }
                }
                for p in 0..pairs {
                    let w = [$wload(b.add(p * NB).cast()), $wload(b.add(p * NB + $lanes).cast())];
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let $x = $bcast(*a.add(r * lda + p) as i32);
                        for (acc, &$w) in acc.iter_mut().zip(&w) {
                            let $acc = *acc;
                            *acc = $step;
                        }
                    }
                }
                for (r, acc) in acc.iter().enumerate() {
                    $store(c.add(r * NB).cast(), acc[0]);
                    $store(c.add(r * NB + $lanes).cast(), acc[1]);
                }
            }
        };
    }

    pair_kernel! {
        /// AVX2 int8: `vpmaddwd` multiplies the i16 pairs and sums each pair
        /// into i32 (16 products per instruction, twice an f32 FMA's 8).
        avx2_int8, avx2_int8_rows, "avx2,fma", rows 1 2 3 4;
        lanes 8, zero _mm256_setzero_si256(), load _mm256_loadu_si256, store _mm256_storeu_si256,
        weights _mm256_loadu_si256, broadcast _mm256_set1_epi32,
        step |acc, x, w| _mm256_add_epi32(acc, _mm256_madd_epi16(x, w))
    }

    pair_kernel! {
        /// AVX-VNNI int8: `vpdpwssd` fuses the pair product and the add.
        avx_vnni_int8, avx_vnni_int8_rows, "avx2,fma,avxvnni", rows 1 2 3 4;
        lanes 8, zero _mm256_setzero_si256(), load _mm256_loadu_si256, store _mm256_storeu_si256,
        weights _mm256_loadu_si256, broadcast _mm256_set1_epi32,
        step |acc, x, w| _mm256_dpwssd_avx_epi32(acc, x, w)
    }

    pair_kernel! {
        /// AVX512-BF16: `vdpbf16ps`, 32 products per instruction.
        avx512_bf16, avx512_bf16_rows, "avx512f,avx512bw,avx512vl,avx512bf16", rows 1 2 3 4 5 6 7 8;
        lanes 16, zero _mm512_setzero_ps(), load _mm512_loadu_ps, store _mm512_storeu_ps,
        weights _mm512_loadu_si512, broadcast _mm512_set1_epi32,
        step |acc, x, w| _mm512_dpbf16_ps(
            acc,
            std::mem::transmute::<__m512i, __m512bh>(x),
            std::mem::transmute::<__m512i, __m512bh>(w)
        )
    }

    pair_kernel! {
        /// AVX512-VNNI int8: `vpdpwssd` on 512-bit vectors.
        avx512_vnni_int8, avx512_vnni_int8_rows, "avx512f,avx512bw,avx512vl,avx512vnni", rows 1 2 3 4 5 6 7 8;
        lanes 16, zero _mm512_setzero_si512(), load _mm512_loadu_si512, store _mm512_storeu_si512,
        weights _mm512_loadu_si512, broadcast _mm512_set1_epi32,
        step |acc, x, w| _mm512_dpwssd_epi32(acc, x, w)
    }

    pair_kernel! {
        /// AVX512-VNNI int8 quads: `vpdpbusd`, 64 byte products per
        /// instruction (unsigned activations first, signed weights second).
        avx512_vnni_int8_quads, avx512_vnni_int8_quads_rows, "avx512f,avx512bw,avx512vl,avx512vnni", rows 1 2 3 4 5 6 7 8;
        lanes 16, zero _mm512_setzero_si512(), load _mm512_loadu_si512, store _mm512_storeu_si512,
        weights _mm512_loadu_si512, broadcast _mm512_set1_epi32,
        step |acc, x, w| _mm512_dpbusd_epi32(acc, x, w)
    }

    pair_kernel! {
        /// AVX-VNNI int8 quads: `vpdpbusd` on 256-bit vectors.
        avx_vnni_int8_quads, avx_vnni_int8_quads_rows, "avx2,fma,avxvnni", rows 1 2 3 4;
        lanes 8, zero _mm256_setzero_si256(), load _mm256_loadu_si256, store _mm256_storeu_si256,
        weights _mm256_loadu_si256, broadcast _mm256_set1_epi32,
        step |acc, x, w| _mm256_dpbusd_avx_epi32(acc, x, w)
    }

    /// The tile shapes of [`amx_bf16`]: tmm0–tmm3 the 16 × 16 f32
    /// accumulators (two row tiles × the block's two column halves), tmm4 and
    /// tmm5 16 activation rows of 32 bf16 each, tmm6 and tmm7 16 weight
    /// lane-rows of 16 columns. Every tile is 16 rows of 64 bytes.
    #[repr(C, align(64))]
    struct TileConfig([u8; 64]);

    const fn tile_config() -> TileConfig {
        let mut c = [0u8; 64];
        c[0] = 1; // palette 1
        let mut t = 0;
        while t < 8 {
            c[16 + 2 * t] = 64; // bytes per row (u16, little endian)
            c[48 + t] = 16; // rows
            t += 1;
        }
        TileConfig(c)
    }

    static TILES: TileConfig = tile_config();

    std::thread_local! {
        /// Whether this thread's tile registers are configured as [`TILES`].
        static TILES_LOADED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// AMX bf16: `tdpbf16ps` multiplies a 16 × 32 activation tile by a
    /// 32 × 16 weight tile (512 products per row, 8192 per instruction).
    /// Computes 32 rows when `mr > 16` (two row tiles share each weight
    /// tile load: four products per four loads), else 16 (the caller pads
    /// rows to 16, so a call never reads past its last tile).
    /// Tile registers are not known to the compiler, so they keep their
    /// contents between the `asm!` blocks below; nothing else in the
    /// process uses them. Loading the tile configuration costs more than a
    /// call's products, so each thread loads it once and keeps it.
    pub(super) unsafe fn amx_bf16(call: Call) {
        let Call {
            a,
            lda,
            b,
            steps: pairs,
            c,
            load_c,
            mr,
        } = call;
        let stride_a = lda * 4;
        let stride_bc = NB * 4;
        if !TILES_LOADED.get() {
            asm!("ldtilecfg [{cfg}]", cfg = in(reg) TILES.0.as_ptr(), options(nostack, readonly));
            TILES_LOADED.set(true);
        }
        if mr <= 16 {
            amx_bf16_one_row_tile(a, stride_a, b, pairs, c, load_c);
            return;
        }
        // Row tile 1 starts 16 rows down, in `a` and in `c`.
        let (a1, c1) = (a.add(16 * lda), c.add(16 * NB));
        if load_c {
            asm!(
                "tileloadd tmm0, [{c0} + {s}*1]",
                "tileloadd tmm1, [{c0} + {s}*1 + 64]",
                "tileloadd tmm2, [{c1} + {s}*1]",
                "tileloadd tmm3, [{c1} + {s}*1 + 64]",
                c0 = in(reg) c, c1 = in(reg) c1, s = in(reg) stride_bc,
                options(nostack, readonly)
            );
        } else {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem)
            );
        }
        let mut p = 0;
        while p < pairs {
            asm!(
                "tileloadd tmm4, [{a0} + {sa}*1]",
                "tileloadd tmm6, [{b} + {sb}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tileloadd tmm5, [{a1} + {sa}*1]",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tileloadd tmm7, [{b} + {sb}*1 + 64]",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm3, tmm5, tmm7",
                a0 = in(reg) a.add(p),
                a1 = in(reg) a1.add(p),
                sa = in(reg) stride_a,
                b = in(reg) b.add(p * NB),
                sb = in(reg) stride_bc,
                options(nostack, readonly)
            );
            p += 16;
        }
        asm!(
            "tilestored [{c0} + {s}*1], tmm0",
            "tilestored [{c0} + {s}*1 + 64], tmm1",
            "tilestored [{c1} + {s}*1], tmm2",
            "tilestored [{c1} + {s}*1 + 64], tmm3",
            c0 = in(reg) c, c1 = in(reg) c1, s = in(reg) stride_bc,
            options(nostack)
        );
    }

    /// [`amx_bf16`] on one row tile (16 rows).
    #[inline(always)]
    unsafe fn amx_bf16_one_row_tile(
        a: *const u32,
        stride_a: usize,
        b: *const u32,
        pairs: usize,
        c: *mut u32,
        load_c: bool,
    ) {
        let stride_bc = NB * 4;
        if load_c {
            asm!(
                "tileloadd tmm0, [{c} + {s}*1]",
                "tileloadd tmm1, [{c} + {s}*1 + 64]",
                c = in(reg) c, s = in(reg) stride_bc,
                options(nostack, readonly)
            );
        } else {
            asm!("tilezero tmm0", "tilezero tmm1", options(nostack, nomem));
        }
        let mut p = 0;
        while p < pairs {
            asm!(
                "tileloadd tmm4, [{a} + {sa}*1]",
                "tileloadd tmm6, [{b} + {sb}*1]",
                "tileloadd tmm7, [{b} + {sb}*1 + 64]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                a = in(reg) a.add(p),
                sa = in(reg) stride_a,
                b = in(reg) b.add(p * NB),
                sb = in(reg) stride_bc,
                options(nostack, readonly)
            );
            p += 16;
        }
        asm!(
            "tilestored [{c} + {s}*1], tmm0",
            "tilestored [{c} + {s}*1 + 64], tmm1",
            c = in(reg) c, s = in(reg) stride_bc,
            options(nostack)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel against the naive product of the same converted operands,
    /// on every shape class the driver produces (ragged last block, several
    /// `k` passes, partial row tiles, padding of `k`), threads 1 to 3, with
    /// bias + activation and accumulation. A kernel this CPU lacks is named
    /// as skipped; the portable ones always run.
    #[test]
    fn every_kernel_matches_the_naive_product() {
        let mut ran = 0;
        for kernel in KERNELS {
            if !kernel.available() {
                println!("SKIPPED {}: this CPU lacks {}", kernel.name, kernel.needs);
                continue;
            }
            for (rows, k, out) in [
                (1, 32, 32),
                (19, 600, 71),
                (50, 37, 33),
                (33, 4 * KC_STEPS, 64),
            ] {
                let x = test_values(rows * k, rows as u32);
                let w = test_values(out * k, k as u32);
                let bias = test_values(out, 3);
                let packed = PackedWeight::pack(&w, out, k, kernel.kind);
                let want = reference(&x, rows, k, &w, out, kernel.kind);
                for threads in [1, 2, 3] {
                    let team = Team::new(threads).unwrap();
                    let mut y = vec![0.0f32; rows * out];
                    linear_with(
                        kernel,
                        &x,
                        rows,
                        &packed,
                        &mut y,
                        Epilogue::default(),
                        &team,
                    )
                    .unwrap();
                    for (i, (g, w)) in y.iter().zip(&want).enumerate() {
                        let err = (*g as f64 - w).abs() / (1.0 + w.abs());
                        assert!(
                            err < 1e-4,
                            "{} {rows}x{k}x{out} {threads}t [{i}]: {g} vs {w}",
                            kernel.name
                        );
                    }
                    // dst = QuickGELU(x·Wᵀ + bias)
                    let epi = Epilogue {
                        bias: Some(&bias),
                        accumulate: false,
                        act: Some(crate::config::Activation::QuickGelu),
                    };
                    linear_with(kernel, &x, rows, &packed, &mut y, epi, &team).unwrap();
                    for (i, (g, w)) in y.iter().zip(&want).enumerate() {
                        let z = w + bias[i % out] as f64;
                        let want = z / (1.0 + (-1.702 * z).exp());
                        assert!(
                            (*g as f64 - want).abs() < 1e-3 * (1.0 + want.abs()),
                            "{}",
                            kernel.name
                        );
                    }
                    // dst += x·Wᵀ + bias
                    let mut acc = vec![1.0f32; rows * out];
                    let epi = Epilogue {
                        bias: Some(&bias),
                        accumulate: true,
                        act: None,
                    };
                    linear_with(kernel, &x, rows, &packed, &mut acc, epi, &team).unwrap();
                    for (i, (g, w)) in acc.iter().zip(&want).enumerate() {
                        let w = w + 1.0 + bias[i % out] as f64;
                        assert!(
                            (*g as f64 - w).abs() < 1e-3 * (1.0 + w.abs()),
                            "{}",
                            kernel.name
                        );
                    }
                }
            }
            println!("ran {}", kernel.name);
            ran += 1;
        }
        assert!(ran >= 2, "at least the two portable kernels run everywhere");
    }

    /// The conversion itself is close to f32: bf16 keeps ~3 significant
    /// digits, int8 with per-row and per-feature scales ~2.
    #[test]
    fn low_precision_products_stay_close_to_f32() {
        let (rows, k, out) = (24, 768, 96);
        let x = test_values(rows * k, 5);
        let w = test_values(out * k, 6);
        let exact: Vec<f64> = (0..rows * out)
            .map(|i| {
                let (r, o) = (i / out, i % out);
                (0..k)
                    .map(|j| x[r * k + j] as f64 * w[o * k + j] as f64)
                    .sum()
            })
            .collect();
        let norm = (exact.iter().map(|v| v * v).sum::<f64>() / exact.len() as f64).sqrt();
        for (kind, bar) in [
            (WeightFormat::F32, 1e-6),
            (WeightFormat::Bf16, 0.01),
            (WeightFormat::Int8, 0.05),
            (WeightFormat::Int8Quads, 0.05),
        ] {
            let packed = PackedWeight::pack(&w, out, k, kind);
            let mut y = vec![0.0f32; rows * out];
            linear(
                &x,
                rows,
                &packed,
                &mut y,
                Epilogue::default(),
                &Team::new(2).unwrap(),
            )
            .unwrap();
            let rms = (y
                .iter()
                .zip(&exact)
                .map(|(g, e)| (*g as f64 - e).powi(2))
                .sum::<f64>()
                / exact.len() as f64)
                .sqrt();
            println!("{}: rms error {:.5} of rms {norm:.3}", kind.name(), rms);
            assert!(rms < bar * norm, "{}: {rms} vs {norm}", kind.name());
        }
    }

    #[test]
    fn selection_picks_an_available_kernel_and_reports_it() {
        for kind in [
            WeightFormat::F32,
            WeightFormat::Bf16,
            WeightFormat::Int8,
            WeightFormat::Int8Quads,
        ] {
            let choice = kernel_choice(kind);
            let k = KERNELS.iter().find(|k| k.name == choice.name).unwrap();
            assert!(k.available() && k.kind == kind);
            assert!(choice.rejected.is_empty(), "{:?}", choice.rejected);
            // Nothing faster that this CPU has was passed over.
            let first = KERNELS
                .iter()
                .find(|k| k.kind == kind && k.available())
                .unwrap();
            assert_eq!(first.name, choice.name);
            println!("{}: {}", kind.name(), choice.name);
        }
    }

    #[test]
    fn a_kernel_the_cpu_lacks_is_refused_not_run() {
        let missing = KERNELS
            .iter()
            .filter(|k| !k.available())
            .collect::<Vec<_>>();
        if missing.is_empty() {
            println!("SKIPPED: this CPU has every kernel's features; nothing to refuse");
            return;
        }
        for kernel in missing {
            let packed = PackedWeight::pack(&[0.5; 64], 2, 32, kernel.kind);
            let mut y = vec![0.0; 2];
            let err = linear_with(
                kernel,
                &[1.0; 32],
                1,
                &packed,
                &mut y,
                Epilogue::default(),
                &Team::new(1).unwrap(),
            )
            .unwrap_err();
            assert!(err.to_string().contains(kernel.needs), "{err}");
            println!("refused {}: {err}", kernel.name);
        }
    }

    #[test]
    fn packing_rounds_and_scales_as_documented() {
        // bf16: round to nearest even.
        assert_eq!(bf16_bits(1.0), 0x3f80);
        assert_eq!(bf16_bits(f32::from_bits(0x3f80_8000)), 0x3f80); // tie → even
        assert_eq!(bf16_bits(f32::from_bits(0x3f81_8000)), 0x3f82); // tie → even
        assert_eq!(bf16_bits(f32::from_bits(0x3f80_8001)), 0x3f81);
        // int8: symmetric per row, the largest magnitude maps to ±127.
        let w = [0.5, -1.0, 0.25, 0.0, 2.0, 1.0];
        let p = PackedWeight::pack(&w, 2, 3, WeightFormat::Int8);
        assert_eq!(p.scales, vec![1.0 / 127.0, 2.0 / 127.0]);
        let lane = |v: u32| (v as u16 as i16, (v >> 16) as u16 as i16);
        assert_eq!(lane(p.data[0]), (64, -127)); // 63.5 rounds to even
        assert_eq!(lane(p.data[NB]), (32, 0));
        assert_eq!(lane(p.data[1]), (0, 127));
        assert_eq!(lane(p.data[NB + 1]), (64, 0));
        assert_eq!(p.data.len(), (32 / 2) * NB);
        // Quads: the same integers as signed bytes, value k lowest; the
        // offset sum is 128 · Σ w; k padded to 64 (16 lanes).
        let q = PackedWeight::pack(&w, 2, 3, WeightFormat::Int8Quads);
        assert_eq!(q.scales, p.scales);
        assert_eq!(q.data[0].to_le_bytes().map(|b| b as i8), [64, -127, 32, 0]);
        assert_eq!(q.data[1].to_le_bytes().map(|b| b as i8), [0, 127, 64, 0]);
        assert_eq!(q.offsets, vec![128 * (64 - 127 + 32), 128 * (127 + 64)]);
        assert_eq!(q.data.len(), (64 / 4) * NB);
        // Activations: offset by 128 into unsigned bytes.
        assert_eq!(int8_offset_byte(-1.0, 127.0), 1);
        assert_eq!(int8_offset_byte(0.0, 127.0), 128);
        assert_eq!(int8_offset_byte(1.0, 127.0), 255);
    }

    /// The two int8 layouts compute the same integers, so every CPU gives
    /// the same int8 answers whichever layout it packs: the products agree
    /// bit for bit on every shape class, with bias, activation and
    /// accumulation, on the kernels each format picks here.
    #[test]
    fn int8_quads_and_pairs_agree_bit_for_bit() {
        let team = Team::new(2).unwrap();
        let mut compared = 0;
        for (rows, k, out) in [
            (1, 32, 32),
            (19, 600, 71),
            (50, 37, 33),
            (33, 4 * KC_STEPS + 5, 64),
        ] {
            let x = test_values(rows * k, 3 + rows as u32);
            let w = test_values(out * k, 7 + k as u32);
            let bias = test_values(out, 9);
            let epi = Epilogue {
                bias: Some(&bias),
                act: Some(Activation::QuickGelu),
                ..Epilogue::default()
            };
            let run = |kind| {
                let packed = PackedWeight::pack(&w, out, k, kind);
                let mut y = vec![0.0f32; rows * out];
                linear(&x, rows, &packed, &mut y, epi, &team).unwrap();
                y
            };
            let (pairs, quads) = (run(WeightFormat::Int8), run(WeightFormat::Int8Quads));
            for (i, (p, q)) in pairs.iter().zip(&quads).enumerate() {
                assert_eq!(
                    p.to_bits(),
                    q.to_bits(),
                    "rows {rows} k {k} out {out} at {i}"
                );
                compared += 1;
            }
        }
        assert_eq!(compared, 32 + 19 * 71 + 50 * 33 + 33 * 64);
        println!(
            "int8 pairs on {}, quads on {}",
            kernel_choice(WeightFormat::Int8).name,
            kernel_choice(WeightFormat::Int8Quads).name
        );
    }
}
