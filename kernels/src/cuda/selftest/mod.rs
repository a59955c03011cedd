//! `pagedrt doctor --selftest`: every CUDA kernel against its CPU twin or a float64
//! reference, on random inputs of many shapes.
//!
//! Each case poisons its outputs with NaN before the run (an element the kernel forgot to
//! write shows up), runs twice and requires bit-identical results (a race moves the error),
//! and compares with the reference by relative error ‖out − ref‖ / ‖ref‖ in f64 against the
//! dtype's tolerance: 1e-2 for bf16, 2e-3 for f16, 1e-4 for f32. NaN never passes.

mod attention_cases;
mod op_cases;

use cudarc::driver::CudaSlice;

use super::device::{driver_err, Gpu};
use super::elem::GpuElem;
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

/// Runs every case; `quick` keeps to a few shapes per kernel.
pub fn run_all(gpu: &Gpu, quick: bool, mut on_check: impl FnMut(&Check)) -> Vec<Check> {
    let mut out = Vec::new();
    let mut push = |c: Check| {
        on_check(&c);
        out.push(c);
    };
    op_cases::run::<f32>(gpu, &mut push);
    op_cases::run::<half::bf16>(gpu, &mut push);
    op_cases::run::<half::f16>(gpu, &mut push);
    attention_cases::run::<half::bf16>(gpu, quick, &mut push);
    attention_cases::run::<half::f16>(gpu, quick, &mut push);
    attention_cases::run::<f32>(gpu, true, &mut push);
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

pub fn up<T: cudarc::driver::DeviceRepr>(gpu: &Gpu, v: &[T]) -> Result<CudaSlice<T>, CudaError> {
    gpu.stream().memcpy_stod(v).map_err(driver_err)
}

pub fn down<T: cudarc::driver::DeviceRepr + Default + Clone>(
    gpu: &Gpu,
    s: &CudaSlice<T>,
) -> Result<Vec<T>, CudaError> {
    gpu.stream().memcpy_dtov(s).map_err(driver_err)
}

/// A device buffer of `n` NaNs.
pub fn poisoned<E: GpuElem>(gpu: &Gpu, n: usize) -> Result<CudaSlice<E>, CudaError> {
    up(gpu, &vec![E::nan(); n])
}

/// Runs `launch` twice (it poisons and fills its own outputs and returns them as f32), and
/// builds the check from the first result against `reference`.
pub fn twice(
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
    match launch().and_then(|a| Ok((launch()?, a))) {
        Ok((b, a)) => {
            check.deterministic = a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits());
            check.rel_err = rel_err(&a, reference);
        }
        Err(e) => check.error = Some(e.to_string()),
    }
    check
}
