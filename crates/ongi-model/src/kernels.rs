//! f32 CPU kernels for the fused vision forward (`vision_cpu.rs`).
//!
//! Matrix products go to the `gemm` crate (the kernels candle itself uses),
//! called directly so the operands keep the layout its micro-kernels want and
//! bias/residual adds fold into its accumulate mode. Everything else here is
//! what no maintained crate offers as a fused, allocation-free pass over
//! row-major activations: layer norm, bias + activation, softmax attention over
//! one head. Their inner loops are plain Rust compiled once per CPU level by
//! `multiversion` (AVX-512, AVX2+FMA, baseline; picked at run time), which is
//! what lets LLVM vectorise them; `exp` is a polynomial so it vectorises too.

use gemm::Parallelism;
use multiversion::multiversion;

use crate::config::Activation;
use crate::error::ModelError;
use crate::team::{part, Team};

fn kernel_err(what: &str) -> ModelError {
    ModelError::Internal(format!("fused CPU kernel: {what}"))
}

/// Output features per weight panel (see [`pack_panels`]): a multiple of
/// gemm's 16-lane tiles that splits every CLIP width (768, 1024, 1280, their
/// ×3 and ×4, and the 512/768/1024 projections) into an even number of panels,
/// so two threads get equal shares.
pub(crate) const PANEL: usize = 128;

/// Repacks a row-major `[out, k]` weight into panels of [`PANEL`] output
/// features, each stored `[k, width]` (the last panel may be narrower).
///
/// A panel is then a column-major `[width, k]` matrix read front to back:
/// gemm takes it as its left operand in place, streaming contiguous memory,
/// where the PyTorch layout (or a plain transpose) made it gather 64-float
/// pieces 3–12 KB apart, which cost a quarter of the run time at one image.
pub(crate) fn pack_panels(w: &[f32], out: usize, k: usize) -> Vec<f32> {
    let mut packed = vec![0.0f32; out * k];
    for (p, panel) in packed.chunks_mut(PANEL * k).enumerate() {
        let width = panel.len() / k.max(1);
        for (j, dst) in panel.chunks_exact_mut(width).enumerate() {
            for (o, d) in dst.iter_mut().enumerate() {
                *d = w[(p * PANEL + o) * k + j];
            }
        }
    }
    packed
}

/// gemm copies its left operand into a packed buffer once a call has more
/// than `threshold × 6` columns (default 8: 48 tokens, so one 50-token image
/// already triggered it). Our panels are that packed layout already, and the
/// copy serialised the weights' trip from memory with the arithmetic instead
/// of letting the prefetcher overlap them. Raised to gemm's maximum once, for
/// the single-threaded calls `linear` makes (candle's multi-threaded calls use
/// a separate threshold).
static PANELS_ARE_PACKED: std::sync::Once = std::sync::Once::new();

/// A pointer that may cross into team shares writing disjoint parts.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY: only used by the passes below, whose shares write disjoint parts
// of one output buffer that outlives the pass.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// Through a method, so closures capture the wrapper, not the raw field.
    pub(crate) fn get(&self) -> *mut f32 {
        self.0
    }
}

/// `dst (+)= lhs · rhs` in gemm's column-major terms (`m×k` times `k×n`),
/// single-threaded, `dst` with unit row stride (each call here writes
/// row-major outputs as column-major transposes).
///
/// # Safety
/// Every element the strides address, `dst(i, j) = dst[j·dst_cs + i]`,
/// `lhs(i, p) = lhs[p·lhs_cs + i·lhs_rs]`, `rhs(p, j) = rhs[j·rhs_cs +
/// p·rhs_rs]` for `i < m, j < n, p < k`, must be in bounds, and `dst` must not
/// overlap the inputs or be written by anyone else meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn product(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_cs: isize,
    accumulate: bool,
    lhs: *const f32,
    lhs_cs: isize,
    lhs_rs: isize,
    rhs: *const f32,
    rhs_cs: isize,
    rhs_rs: isize,
) {
    // SAFETY: the caller's contract is gemm's.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_cs,
            1,
            accumulate,
            lhs,
            lhs_cs,
            lhs_rs,
            rhs,
            rhs_cs,
            rhs_rs,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

/// What a [`linear`] call does with its product besides computing it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Epilogue<'a> {
    /// Added to every row (`[out]`).
    pub bias: Option<&'a [f32]>,
    /// Add into `dst` (a residual stream) instead of overwriting it.
    pub accumulate: bool,
    /// Applied after the bias; not with `accumulate`.
    pub act: Option<Activation>,
}

/// `dst[rows, out] = act(x[rows, k] · Wᵀ + bias)`, or `dst += x · Wᵀ + bias`
/// (see [`Epilogue`]), with `W` (`[out, k]`) packed by [`pack_panels`]; `x`
/// and `dst` row-major.
///
/// One gemm call per panel computes `dstᵀ[panel] = panel · xᵀ` in gemm's
/// column-major terms: output features are gemm's `m` (whole 16-lane tiles),
/// tokens its `n`. Panels are shared out between the team's threads, each
/// running gemm single-threaded on its own columns of `dst`: a split that
/// also halves the weight bytes each thread streams at small batches, where
/// gemm's own threading would not start. Each task applies the epilogue to
/// its own columns right after (bias before, when accumulating) its product,
/// while they are still in cache, instead of in separate parallel passes.
#[allow(clippy::too_many_arguments)]
pub(crate) fn linear(
    x: &[f32],
    rows: usize,
    k: usize,
    w_packed: &[f32],
    out: usize,
    dst: &mut [f32],
    epi: Epilogue<'_>,
    team: &Team,
) -> Result<(), ModelError> {
    if x.len() != rows * k
        || w_packed.len() != out * k
        || dst.len() != rows * out
        || epi.bias.is_some_and(|b| b.len() != out)
        || (epi.accumulate && epi.act.is_some())
    {
        return Err(kernel_err("linear operands do not match"));
    }
    if rows == 0 || out == 0 {
        return Ok(());
    }
    if k == 0 && !epi.accumulate {
        dst.fill(0.0);
    }
    PANELS_ARE_PACKED.call_once(|| gemm::set_lhs_packing_threshold_single_thread(256));
    let panels = out.div_ceil(PANEL);
    let dst_ptr = SendPtr(dst.as_mut_ptr());
    let run = |p: usize| {
        let first = p * PANEL;
        let width = PANEL.min(out - first);
        let panel = &w_packed[first * k..(first + width) * k];
        let bias = epi.bias.map(|b| &b[first..first + width]);
        // SAFETY: row t's columns first..first + width of `dst` lie inside the
        // rows×out buffer checked above and belong to this panel's task alone.
        let row = |t: usize| unsafe {
            std::slice::from_raw_parts_mut(dst_ptr.0.add(t * out + first), width)
        };
        if let (true, Some(b)) = (epi.accumulate, bias) {
            (0..rows).for_each(|t| add_row(row(t), b));
        }
        if k == 0 {
            return;
        }
        // SAFETY: `panel` holds width×k elements, read as lhs(o, j) =
        // panel[j·width + o]; `x` holds rows×k, read as rhs(j, t) = x[t·k + j];
        // dst(o, t) = dst[t·out + first + o] stays inside the rows×out buffer
        // checked above (first + o < out). Panels cover disjoint column ranges
        // of `dst`, so concurrent tasks never write the same element, and
        // `dst` (borrowed mutably for this whole call) aliases neither input.
        unsafe {
            let d = dst_ptr;
            product(
                width,
                rows,
                k,
                d.0.add(first),
                out as isize,
                epi.accumulate,
                panel.as_ptr(),
                width as isize,
                1,
                x.as_ptr(),
                k as isize,
                1,
            );
        }
        if !epi.accumulate && (bias.is_some() || epi.act.is_some()) {
            (0..rows).for_each(|t| bias_activation_row(row(t), bias, epi.act));
        }
    };
    team.run(|share| part(panels, share, team.threads()).for_each(run))
}

#[multiversion(targets("x86_64+avx512f+avx512vl+avx2+fma", "x86_64+avx2+fma"))]
pub(crate) fn add_row(row: &mut [f32], bias: &[f32]) {
    for (d, s) in row.iter_mut().zip(bias) {
        *d += s;
    }
}

/// `out[r] = LayerNorm(x[r]) · weight + bias` for every row of width `weight.len()`.
pub(crate) fn layer_norm_rows(
    x: &[f32],
    out: &mut [f32],
    weight: &[f32],
    bias: &[f32],
    eps: f32,
    team: &Team,
) -> Result<(), ModelError> {
    let width = weight.len();
    if x.len() != out.len() || bias.len() != width || (width > 0 && !x.len().is_multiple_of(width))
    {
        return Err(kernel_err("layer norm operands do not match"));
    }
    if width == 0 {
        return Ok(());
    }
    let rows = x.len() / width;
    let out_ptr = SendPtr(out.as_mut_ptr());
    team.run(|share| {
        let r = part(rows, share, team.threads());
        // SAFETY: rows r of `out` (same length as `x`, checked above) belong
        // to this share alone.
        let o = unsafe {
            std::slice::from_raw_parts_mut(out_ptr.get().add(r.start * width), r.len() * width)
        };
        layer_norm_chunk(&x[r.start * width..r.end * width], o, weight, bias, eps);
    })
}

#[multiversion(targets("x86_64+avx512f+avx512vl+avx2+fma", "x86_64+avx2+fma"))]
fn layer_norm_chunk(x: &[f32], out: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
    let width = weight.len();
    for (o, x) in out.chunks_exact_mut(width).zip(x.chunks_exact(width)) {
        layer_norm_row(x, o, weight, bias, eps);
    }
}

/// Two passes (mean, then centred variance) as PyTorch does, in f32 with
/// 16 partial sums so the reductions vectorise.
#[inline(always)]
fn layer_norm_row(x: &[f32], out: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
    let n = x.len() as f32;
    let mean = sum16(x, |v| v) / n;
    let var = sum16(x, |v| (v - mean) * (v - mean)) / n;
    let inv = 1.0 / (var + eps).sqrt();
    for (((o, &v), &w), &b) in out.iter_mut().zip(x).zip(weight).zip(bias) {
        *o = (v - mean) * inv * w + b;
    }
}

/// `Σ f(x)` with 16 independent accumulators (vectorisable, and more
/// accurate than one running sum).
#[inline(always)]
fn sum16(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0.0f32; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v);
        }
    }
    let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    acc.iter().sum::<f32>() + tail
}

/// `row = act(row + bias)`, either part optional.
#[multiversion(targets("x86_64+avx512f+avx512vl+avx2+fma", "x86_64+avx2+fma"))]
pub(crate) fn bias_activation_row(row: &mut [f32], bias: Option<&[f32]>, act: Option<Activation>) {
    if let Some(b) = bias {
        for (v, b) in row.iter_mut().zip(b) {
            *v += b;
        }
    }
    activate(row, act);
}

/// `row = act(row)`; inlined into its caller's CPU level.
#[inline(always)]
pub(crate) fn activate(row: &mut [f32], act: Option<Activation>) {
    match act {
        None => {}
        Some(Activation::QuickGelu) => row.iter_mut().for_each(|v| *v = quick_gelu(*v)),
        Some(Activation::Gelu) => row.iter_mut().for_each(|v| *v = gelu_erf(*v)),
        Some(Activation::GeluTanh) => row.iter_mut().for_each(|v| *v = gelu_tanh(*v)),
    }
}

/// `x · σ(1.702 x)`, OpenAI CLIP's activation.
#[inline(always)]
fn quick_gelu(x: f32) -> f32 {
    x / (1.0 + exp(-1.702 * x))
}

/// `x · Φ(x)` with erf from Abramowitz & Stegun 7.1.26 (|error| ≤ 1.5e-7).
#[inline(always)]
fn gelu_erf(x: f32) -> f32 {
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let erf_abs = 1.0 - poly * exp(-z * z);
    let erf = if x < 0.0 { -erf_abs } else { erf_abs };
    0.5 * x * (1.0 + erf)
}

/// The tanh approximation of GELU (`gelu_pytorch_tanh`).
#[inline(always)]
fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    let y = SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x);
    // tanh(y) = 1 - 2 / (e^{2y} + 1), saturating correctly at both ends.
    let tanh = 1.0 - 2.0 / (exp(2.0 * y) + 1.0);
    0.5 * x * (1.0 + tanh)
}

/// `eˣ` for f32 within 2 ulp on the normal range: Cody–Waite reduction by
/// ln 2 and a degree-6 polynomial, branch-free so loops over it vectorise
/// (libm's `expf` is a call per element). Flushes below e^-87.3 to ~0 and
/// saturates to +inf above e^88.7.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Rounding to nearest and 2ⁿ both by the 1.5·2²³ / 2²³ magic
    // additions (exact for these magnitudes): no float → int conversion,
    // which Rust's saturating `as` makes several instructions per vector.
    const ROUND: f32 = 12_582_912.0;
    const TWO23: f32 = 8_388_608.0;
    let x = x.clamp(-87.33, 88.72);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (0.166_666_67 + r * (0.041_666_5 + r * (0.008_333_6 + r * 0.001_398_2)))));
    // 2ⁿ from its exponent bits, n + 127 ∈ [1, 255] after the clamp: the
    // low bits of n + 127 + 2²³ are n + 127, shifted into the exponent
    // (255 at the top of the range: infinity, as eˣ overflows there).
    p * f32::from_bits((n + 127.0 + TWO23).to_bits() << 23)
}

/// Shape of one multi-head attention call over a batch of sequences.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttentionShape {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub head_dim: usize,
}

/// Unmasked softmax attention for the first `queries` positions of each
/// sequence (all of them, or just the class token) over all its keys.
///
/// `qkv`: `[batch·seq, 3·width]` rows `[q | k | v]` with the scale already in
/// q; `out`: `[batch·queries, width]` with the heads concatenated, as the
/// output projection takes them. Each (sequence, head) pair runs two small
/// gemm products on strided views of `qkv` (no head-major copies) and writes
/// its head's columns of `out` in place.
pub(crate) fn attention(
    qkv: &[f32],
    out: &mut [f32],
    s: AttentionShape,
    queries: usize,
    team: &Team,
) -> Result<(), ModelError> {
    let width = s.heads * s.head_dim;
    let rows = s.batch * s.seq;
    if queries > s.seq || qkv.len() != rows * 3 * width || out.len() != s.batch * queries * width {
        return Err(kernel_err("attention operand sizes do not match"));
    }
    if rows == 0 || width == 0 {
        return Ok(());
    }
    let out_ptr = SendPtr(out.as_mut_ptr());
    let pairs = s.batch * s.heads;
    team.run(|share| {
        part(pairs, share, team.threads()).for_each(|bh| {
            let (b, h) = (bh / s.heads, bh % s.heads);
            let (seq, hd) = (s.seq, s.head_dim);
            let row0 = b * seq * 3 * width;
            let q = qkv[row0 + h * hd..].as_ptr();
            let k = qkv[row0 + width + h * hd..].as_ptr();
            let v = qkv[row0 + 2 * width + h * hd..].as_ptr();
            let mut scores = vec![0.0f32; queries * seq];
            // SAFETY (both calls): q, k and v point at element (b·seq, part·width
            // + h·hd) of `qkv`; the products read rows 0..seq (q: 0..queries ≤ seq)
            // at stride 3·width and columns 0..hd, the last element being
            // (b·seq + seq − 1)·3·width + part·width + h·hd + hd − 1 < rows·3·width,
            // inside the slice checked above. `scores` is queries×seq, written as
            // scores[i·seq + j]. The output writes out[(b·queries + i)·width + h·hd
            // + d] for i < queries, d < hd: inside `out` (checked above), and
            // disjoint between tasks (each (b, h) owns its columns).
            unsafe {
                // scores[i][j] = q_i · k_j: dst(j, i), lhs(j, d) = k_j[d], rhs(d, i) = q_i[d].
                product(
                    seq,
                    queries,
                    hd,
                    scores.as_mut_ptr(),
                    seq as isize,
                    false,
                    k,
                    1,
                    3 * width as isize,
                    q,
                    3 * width as isize,
                    1,
                );
            }
            softmax_rows(&mut scores, seq);
            let o = out_ptr;
            unsafe {
                // out_i[d] = Σ_j p_ij v_j[d]: dst(d, i), lhs(d, j) = v_j[d], rhs(j, i) = p_ij.
                product(
                    hd,
                    queries,
                    seq,
                    o.0.add(b * queries * width + h * hd),
                    width as isize,
                    false,
                    v,
                    3 * width as isize,
                    1,
                    scores.as_ptr(),
                    seq as isize,
                    1,
                );
            }
        })
    })
}

/// Row-wise softmax of a `[rows, width]` matrix, in place.
#[multiversion(targets("x86_64+avx512f+avx512vl+avx2+fma", "x86_64+avx2+fma"))]
fn softmax_rows(x: &mut [f32], width: usize) {
    for row in x.chunks_exact_mut(width) {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        for v in row.iter_mut() {
            *v = exp(*v - max);
        }
        let inv = 1.0 / sum16(row, |v| v);
        for v in row.iter_mut() {
            *v *= inv;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std_to_a_few_ulp() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (exp(x) as f64, (x as f64).exp());
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 5e-7, "max relative error {worst:e}");
        assert_eq!(exp(100.0), f32::INFINITY);
        assert!(exp(-100.0) < 1e-37);
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn activations_match_their_definitions() {
        for i in -800..=800 {
            let x = i as f32 / 100.0;
            let xd = x as f64;
            let quick = xd / (1.0 + (-1.702 * xd).exp());
            assert!(
                (quick_gelu(x) as f64 - quick).abs() < 1e-5,
                "quick_gelu({x})"
            );
            let tanh = 0.5 * xd * (1.0 + (0.797_884_560_8 * (xd + 0.044715 * xd.powi(3))).tanh());
            assert!((gelu_tanh(x) as f64 - tanh).abs() < 1e-5, "gelu_tanh({x})");
            // erf via its series is awkward in std; check against known values instead.
        }
        // Φ(1) = 0.841344746, Φ(-2) = 0.022750132.
        assert!((gelu_erf(1.0) - 0.841_344_7).abs() < 1e-6);
        assert!((gelu_erf(-2.0) - (-2.0 * 0.022_750_13)).abs() < 1e-6);
        assert_eq!(gelu_erf(0.0), 0.0);
    }

    /// Naive reference: `x · wᵀ`, `w` row-major `[out, k]`.
    fn naive_linear(x: &[f32], rows: usize, k: usize, w: &[f32], out: usize) -> Vec<f32> {
        let mut y = vec![0.0; rows * out];
        for r in 0..rows {
            for o in 0..out {
                y[r * out + o] = (0..k).map(|j| x[r * k + j] * w[o * k + j]).sum();
            }
        }
        y
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) % 1000) as f32 / 500.0
                    - 1.0
            })
            .collect()
    }

    #[test]
    fn linear_matches_naive_and_accumulates() {
        // 300 outputs: two whole panels and a narrower last one.
        let (rows, k, out) = (7, 37, 2 * PANEL + 44);
        let (x, w) = (values(rows * k, 1), values(out * k, 2));
        let want = naive_linear(&x, rows, k, &w, out);
        let packed = pack_panels(&w, out, k);
        let bias = values(out, 5);
        let store = Epilogue::default();
        let with_bias = Epilogue {
            bias: Some(&bias),
            ..store
        };
        for threads in [1, 2, 3] {
            let team = Team::new(threads).unwrap();
            let mut y = vec![0.0; rows * out];
            linear(&x, rows, k, &packed, out, &mut y, store, &team).unwrap();
            for (a, b) in y.iter().zip(&want) {
                assert!((a - b).abs() < 1e-4, "{threads} threads: {a} vs {b}");
            }
            // Bias then QuickGELU, per element.
            let act = Epilogue {
                act: Some(Activation::QuickGelu),
                ..with_bias
            };
            linear(&x, rows, k, &packed, out, &mut y, act, &team).unwrap();
            for (i, (a, b)) in y.iter().zip(&want).enumerate() {
                let z = b + bias[i % out];
                assert!((a - quick_gelu(z)).abs() < 1e-4);
            }
            // Accumulate: dst += x·Wᵀ + bias.
            let mut acc = vec![1.0; rows * out];
            let residual = Epilogue {
                accumulate: true,
                ..with_bias
            };
            linear(&x, rows, k, &packed, out, &mut acc, residual, &team).unwrap();
            for (i, (a, b)) in acc.iter().zip(&want).enumerate() {
                assert!((a - (b + bias[i % out] + 1.0)).abs() < 1e-4);
            }
        }
        let team = Team::new(1).unwrap();
        let mut y = vec![0.0; rows * out];
        assert!(linear(&x, rows, k, &packed, out, &mut y[1..], store, &team).is_err());
        let bad = Epilogue {
            act: Some(Activation::Gelu),
            accumulate: true,
            bias: None,
        };
        assert!(linear(&x, rows, k, &packed, out, &mut y, bad, &team).is_err());
    }

    #[test]
    fn layer_norm_normalises_each_row() {
        let x = values(3 * 40, 3);
        let (w, b) = (vec![2.0; 40], vec![0.5; 40]);
        let mut y = vec![0.0; 3 * 40];
        layer_norm_rows(&x, &mut y, &w, &b, 1e-5, &Team::new(2).unwrap()).unwrap();
        for row in y.chunks(40) {
            let z: Vec<f64> = row.iter().map(|v| (*v as f64 - 0.5) / 2.0).collect();
            let mean = z.iter().sum::<f64>() / 40.0;
            let var = z.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 40.0;
            assert!(
                mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-3,
                "{mean} {var}"
            );
        }
    }

    #[test]
    fn attention_matches_naive_softmax() {
        let s = AttentionShape {
            batch: 2,
            seq: 5,
            heads: 3,
            head_dim: 20,
        };
        let width = s.heads * s.head_dim;
        let rows = s.batch * s.seq;
        let qkv = values(rows * 3 * width, 4);
        let team = Team::new(2).unwrap();
        let mut out = vec![0.0; rows * width];
        attention(&qkv, &mut out, s, s.seq, &team).unwrap();
        let mut first = vec![0.0; s.batch * width];
        attention(&qkv, &mut first, s, 1, &team).unwrap();
        for b in 0..s.batch {
            let row = &out[b * s.seq * width..][..width];
            for (a, b) in first[b * width..][..width].iter().zip(row) {
                assert!(
                    (a - b).abs() < 1e-6,
                    "class-token-only attention: {a} vs {b}"
                );
            }
        }
        for b in 0..s.batch {
            for h in 0..s.heads {
                for i in 0..s.seq {
                    let at = |t: usize, part: usize, d: usize| {
                        qkv[(b * s.seq + t) * 3 * width + part * width + h * s.head_dim + d] as f64
                    };
                    let scores: Vec<f64> = (0..s.seq)
                        .map(|j| (0..s.head_dim).map(|d| at(i, 0, d) * at(j, 1, d)).sum())
                        .collect();
                    let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = scores.iter().map(|v| (v - max).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for d in 0..s.head_dim {
                        let want: f64 = (0..s.seq).map(|j| e[j] / z * at(j, 2, d)).sum();
                        let got = out[(b * s.seq + i) * width + h * s.head_dim + d] as f64;
                        assert!(
                            (got - want).abs() < 1e-5,
                            "b{b} h{h} i{i} d{d}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
