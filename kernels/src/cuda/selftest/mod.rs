//! `pagedrt doctor --selftest`: every CUDA kernel against its CPU twin or a float64
//! reference, on random inputs of many shapes.
//!
//! Each case poisons its outputs with NaN before the run (an element the kernel forgot to
//! write shows up), runs twice and requires bit-identical results (a race moves the error),
//! and compares with the reference by relative error ‖out − ref‖ / ‖ref‖ in f64 against the
//! dtype's tolerance: 1e-2 for bf16, 2e-3 for f16, 1e-4 for f32. NaN never passes.

mod attention_cases;
mod op_cases;

use super::elem::GpuElem;
use super::launch::{DevElem, Device};
use super::CudaError;

/// The outcome of one case.
#[derive(Debug, Clone)]
pub struct Check {
    pub kernel: String,
    pub dtype: &'static str,
    pub case: String,
    pub rel_err: f64,
    pub tol: f64,
    pub deterministic: bool,
    /// Why the case failed before it could be compared (a launch error), if it did.
    pub error: Option<String>,
}

impl Check {
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.deterministic && self.rel_err <= self.tol
    }
}

/// The self-test in parts that can run on their own (the emulator's tests run them in
/// parallel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// The cache, layer and sampling kernels, every dtype.
    Ops,
    AttentionBf16,
    AttentionF16,
    AttentionF32,
}

impl Group {
    pub const ALL: [Group; 4] = [
        Group::Ops,
        Group::AttentionBf16,
        Group::AttentionF16,
        Group::AttentionF32,
    ];
}

/// The kernels the self-test has cases for, as [`Check::kernel`] names them (what
/// `pagedrt doctor --selftest --kernel NAME` selects by). `paged_attention` is the step-level
/// entry that routes a batch to the decode and prefill kernels.
pub const KERNELS: [&str; 14] = [
    "write_kv",
    "copy_blocks",
    "qkv_rope_write_kv",
    "rms_norm",
    "fused_add_rms_norm",
    "rope",
    "silu_and_mul",
    "embedding",
    "add_inplace",
    "add_bias",
    "argmax",
    "paged_attention",
    "paged_attention_decode",
    "paged_attention_prefill",
];

/// Runs every case; `quick` keeps to a few shapes per kernel.
pub fn run_all<D: Device>(dev: &D, quick: bool, on_check: impl FnMut(&Check)) -> Vec<Check> {
    run_selected(dev, quick, &|_, _, _| true, on_check)
}

/// Runs the cases whose kernel (an entry family such as "rms_norm" or
/// "paged_attention_decode"), dtype ("bf16") and case description `want` accepts.
pub fn run_selected<D: Device>(
    dev: &D,
    quick: bool,
    want: &dyn Fn(&str, &str, &str) -> bool,
    mut on_check: impl FnMut(&Check),
) -> Vec<Check> {
    Group::ALL
        .iter()
        .flat_map(|&g| run_group_selected(dev, g, quick, want, &mut on_check))
        .collect()
}

/// Runs the cases of `group`.
pub fn run_group<D: Device>(
    dev: &D,
    group: Group,
    quick: bool,
    on_check: impl FnMut(&Check),
) -> Vec<Check> {
    run_group_selected(dev, group, quick, &|_, _, _| true, on_check)
}

fn run_group_selected<D: Device>(
    dev: &D,
    group: Group,
    quick: bool,
    want: &dyn Fn(&str, &str, &str) -> bool,
    mut on_check: impl FnMut(&Check),
) -> Vec<Check> {
    let mut out = Vec::new();
    let mut push = |c: Check| {
        // The cache and layer cases are cheap: they all run, and only the wanted are kept.
        if want(&c.kernel, c.dtype, &c.case) {
            on_check(&c);
            out.push(c);
        }
    };
    match group {
        Group::Ops => {
            op_cases::run::<D, f32>(dev, &mut push);
            op_cases::run::<D, half::bf16>(dev, &mut push);
            op_cases::run::<D, half::f16>(dev, &mut push);
        }
        Group::AttentionBf16 => attention_cases::run::<D, half::bf16>(dev, quick, want, &mut push),
        Group::AttentionF16 => attention_cases::run::<D, half::f16>(dev, quick, want, &mut push),
        Group::AttentionF32 => attention_cases::run::<D, f32>(dev, true, want, &mut push),
    }
    out
}

/// The tolerance on relative error for outputs stored as `E`.
pub fn tolerance<E: GpuElem>() -> f64 {
    match E::SUFFIX {
        "bf16" => 1e-2,
        "f16" => 2e-3,
        _ => 1e-4,
    }
}

/// ‖out − ref‖ / ‖ref‖ in f64; infinite when `out` has a NaN or infinity or the lengths differ.
pub fn rel_err(out: &[f32], reference: &[f64]) -> f64 {
    if out.len() != reference.len() || out.iter().any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let (mut num, mut den) = (0.0, 0.0);
    for (&o, &r) in out.iter().zip(reference) {
        num += (o as f64 - r).powi(2);
        den += r * r;
    }
    if den == 0.0 {
        return num.sqrt();
    }
    (num / den).sqrt()
}

/// A small, seedable generator: the cases must be reproducible from run to run.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn vec<E: GpuElem>(&mut self, n: usize, scale: f32) -> Vec<E> {
        (0..n)
            .map(|_| E::from_f32(self.uniform() * scale))
            .collect()
    }
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

pub fn to_f32<E: GpuElem>(v: &[E]) -> Vec<f32> {
    v.iter().map(|x| x.to_f32()).collect()
}

pub fn up<D: Device, T: DevElem>(dev: &D, v: &[T]) -> Result<D::Buf<T>, CudaError> {
    dev.upload(v)
}

pub fn down<D: Device, T: DevElem>(dev: &D, s: &D::Buf<T>) -> Result<Vec<T>, CudaError> {
    dev.download(s)
}

/// A device buffer of `n` NaNs.
pub fn poisoned<D: Device, E: GpuElem>(dev: &D, n: usize) -> Result<D::Buf<E>, CudaError> {
    up(dev, &vec![E::nan(); n])
}

/// Runs `launch` twice (it poisons and fills its own outputs and returns them as f32), the
/// second time on the device's other schedule (see `Device::vary_schedule`), and builds the
/// check from the first result against `reference`.
#[allow(clippy::too_many_arguments)]
pub fn twice<D: Device>(
    dev: &D,
    kernel: &str,
    dtype: &'static str,
    case: String,
    tol: f64,
    reference: &[f64],
    mut launch: impl FnMut() -> Result<Vec<f32>, CudaError>,
) -> Check {
    let mut check = Check {
        kernel: kernel.to_string(),
        dtype,
        case,
        rel_err: f64::INFINITY,
        tol,
        deterministic: false,
        error: None,
    };
    let first = launch();
    dev.vary_schedule();
    match first.and_then(|a| Ok((launch()?, a))) {
        Ok((b, a)) => {
            check.deterministic = a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits());
            check.rel_err = rel_err(&a, reference);
        }
        Err(e) => check.error = Some(e.to_string()),
    }
    check
}
