//! Element types the kernels are instantiated for.

use super::launch::DevElem;

/// A storage type with a kernel instantiation; the suffix names its entry points.
pub trait GpuElem: DevElem {
    const SUFFIX: &'static str;
    fn from_f32(x: f32) -> Self;
    fn to_f32(self) -> f32;
    /// A NaN, to poison outputs before a test run so unwritten elements show.
    fn nan() -> Self {
        Self::from_f32(f32::NAN)
    }
}

impl GpuElem for f32 {
    const SUFFIX: &'static str = "f32";
    fn from_f32(x: f32) -> Self {
        x
    }
    fn to_f32(self) -> f32 {
        self
    }
}

impl GpuElem for half::bf16 {
    const SUFFIX: &'static str = "bf16";
    fn from_f32(x: f32) -> Self {
        half::bf16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
}

impl GpuElem for half::f16 {
    const SUFFIX: &'static str = "f16";
    fn from_f32(x: f32) -> Self {
        half::f16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
}
