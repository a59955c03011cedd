//! Which instruction set the CPU kernels use, chosen once at start-up.
//!
//! Why a run-time choice: the binary targets baseline x86-64 so it runs on any machine, and
//! the machines this project runs on change from day to day (Zen 3 with AVX2 only, Zen 4 and
//! Zen 5 with AVX-512, Sapphire Rapids Xeons with AMX). Four paths, best first:
//! - `Amx`: the `Avx512` path with AMX-BF16 tiles for bf16 GEMMs with enough rows to fill
//!   them (`packed_amx`): about eight times `vdpbf16ps`'s rate. Linux must grant the
//!   process the tile state (`arch_prctl(ARCH_REQ_XCOMP_PERM)`, asked once at detection);
//!   every other kernel runs its AVX-512 code on this path.
//! - `Avx512`: AVX-512 F/BW/VL/DQ with AVX512-BF16 (`vdpbf16ps`, bf16 dot products
//!   accumulated in f32): 512-bit FMAs for f32 and two bf16 products per lane per instruction
//!   for bf16 weights. A CPU with AVX-512 but without BF16 (Skylake-X, Ice Lake) takes the
//!   AVX2 path. AVX512-VNNI is reported but not used (no integer GEMM yet).
//! - `Avx2`: AVX2, FMA and F16C (every x86-64 CPU since about 2013).
//! - `Portable`: plain Rust, any CPU: the reference the vector paths are tested against.
//!
//! Kernels take the ISA as a value (`…_on(isa, …)`), so a test runs every path the machine
//! supports in one process; the plain entry points use [`selected`]: the best path, or a
//! lower one forced with `PAGEDRT_CPU_ISA=amx|avx512|avx2|portable`. A test can also run a
//! whole engine on a lower path with [`with_isa`]; the thread team carries that choice to
//! its workers for the job.

use std::cell::Cell;
use std::sync::OnceLock;

/// The environment variable that forces a lower path.
pub const ENV: &str = "PAGEDRT_CPU_ISA";

/// A kernel path, ordered from the most portable to the fastest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    Portable,
    Avx2,
    Avx512,
    Amx,
}

impl Isa {
    /// Every path, most portable first.
    pub const ALL: [Isa; 4] = [Isa::Portable, Isa::Avx2, Isa::Avx512, Isa::Amx];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Amx => "amx",
        }
    }

    /// Whether this CPU can run the path.
    pub fn supported(self) -> bool {
        match self {
            Isa::Portable => true,
            Isa::Avx2 => features().avx2,
            Isa::Avx512 => features().avx512,
            Isa::Amx => features().amx,
        }
    }

    /// The best path this CPU supports.
    pub fn best() -> Isa {
        *Isa::ALL
            .iter()
            .rev()
            .find(|i| i.supported())
            .unwrap_or(&Isa::Portable)
    }

    /// Every path this CPU supports, most portable first (what tests iterate over).
    pub fn available() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.supported()).collect()
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Isa {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "portable" | "scalar" | "none" => Ok(Isa::Portable),
            "avx2" => Ok(Isa::Avx2),
            "avx512" | "avx-512" => Ok(Isa::Avx512),
            "amx" => Ok(Isa::Amx),
            other => Err(format!(
                "{ENV}='{other}': one of amx, avx512, avx2, portable"
            )),
        }
    }
}

/// What the CPU reported, once.
#[derive(Debug, Clone, Copy, Default)]
struct Features {
    /// AVX2 + FMA + F16C.
    avx2: bool,
    /// `avx2` plus AVX-512 F/BW/VL/DQ and AVX512-BF16.
    avx512: bool,
    /// AVX512-VNNI (reported only).
    vnni: bool,
    /// `avx512` plus AMX-TILE and AMX-BF16, with the tile state granted by the OS.
    amx: bool,
}

fn features() -> Features {
    static F: OnceLock<Features> = OnceLock::new();
    *F.get_or_init(detect)
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Features {
    use std::arch::is_x86_feature_detected as has;
    let avx2 = has!("avx2") && has!("fma") && has!("f16c");
    let avx512 = avx2
        && has!("avx512f")
        && has!("avx512bw")
        && has!("avx512vl")
        && has!("avx512dq")
        && has!("avx512bf16");
    Features {
        avx2,
        avx512,
        vnni: has!("avx512vnni"),
        amx: avx512 && amx_bf16_cpuid() && request_tile_state(),
    }
}

/// CPUID leaf 7: AMX-BF16 (EDX bit 22) and AMX-TILE (bit 24).
#[cfg(target_arch = "x86_64")]
fn amx_bf16_cpuid() -> bool {
    // CPUID leaf 7 exists on every CPU with AVX2 (checked by the caller's `avx512`).
    let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
    edx & (1 << 22) != 0 && edx & (1 << 24) != 0
}

/// Asks Linux for the AMX tile data state (`ARCH_REQ_XCOMP_PERM`, `XFEATURE_XTILEDATA`),
/// without which the first tile instruction faults. Granted for the whole process.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tile_state() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain system call with integer arguments.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(all(target_arch = "x86_64", not(target_os = "linux")))]
fn request_tile_state() -> bool {
    false
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Features {
    Features::default()
}

/// The process's choice and how it was made.
#[derive(Debug, Clone)]
struct Choice {
    isa: Isa,
    /// Why it is not the best path, if it is not (a forced lower path, or a bad request).
    note: Option<String>,
}

fn choice() -> &'static Choice {
    static C: OnceLock<Choice> = OnceLock::new();
    C.get_or_init(|| choose(std::env::var(ENV).ok().as_deref()))
}

/// The path for a request (the variable's value, if set) on this CPU: a lower path is
/// honoured, a higher or unknown one falls back to the best with a note saying why.
fn choose(request: Option<&str>) -> Choice {
    let best = Isa::best();
    match request.map(str::parse::<Isa>) {
        None => Choice {
            isa: best,
            note: None,
        },
        Some(Ok(isa)) if isa <= best => Choice {
            isa,
            note: (isa < best).then(|| format!("forced by {ENV}={isa}")),
        },
        Some(Ok(isa)) => Choice {
            isa: best,
            note: Some(format!("{ENV}={isa} asks for more than this CPU has")),
        },
        Some(Err(e)) => Choice {
            isa: best,
            note: Some(format!("{e}; ignored")),
        },
    }
}

thread_local! {
    /// A path chosen for this thread's kernels by `with_isa` (tests), if any.
    static OVERRIDE: Cell<Option<Isa>> = const { Cell::new(None) };
}

/// The path the kernels called from this thread use: `with_isa`'s, if one is in force
/// here, else the process's (chosen once, at the first call).
pub fn selected() -> Isa {
    OVERRIDE.get().unwrap_or_else(|| choice().isa)
}

/// This thread's `with_isa` override, for the thread team to carry to its workers.
pub(crate) fn thread_override() -> Option<Isa> {
    OVERRIDE.get()
}

/// Runs `f` with `selected()` = `isa` on this thread (and on the team's workers for the
/// jobs it posts), for tests that run a whole engine on one path.
///
/// # Panics
/// If this CPU does not support `isa`.
pub fn with_isa<R>(isa: Isa, f: impl FnOnce() -> R) -> R {
    assert!(isa.supported(), "this CPU has no {isa} path");
    set_override(Some(isa), f)
}

/// Runs `f` with this thread's override set to `o`, restoring the old one afterwards (also
/// when `f` panics).
pub(crate) fn set_override<R>(o: Option<Isa>, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Isa>);
    impl Drop for Restore {
        fn drop(&mut self) {
            OVERRIDE.set(self.0);
        }
    }
    let _restore = Restore(OVERRIDE.replace(o));
    f()
}

/// One line for the log and `pagedrt doctor`: the path in use, what the CPU has, and why
/// the path is not the best one when it is not, e.g. `avx512 (CPU: AVX-512 F/BW/VL/DQ,
/// AVX512-BF16, AVX512-VNNI)`.
pub fn describe() -> String {
    let c = choice();
    let f = features();
    let mut has = vec![];
    if f.avx2 {
        has.push("AVX2/FMA/F16C");
    }
    if f.avx512 {
        has.push("AVX-512 F/BW/VL/DQ");
        has.push("AVX512-BF16");
    }
    if f.vnni {
        has.push("AVX512-VNNI");
    }
    if f.amx {
        has.push("AMX-BF16");
    }
    let has = if has.is_empty() {
        "no vector extension used".to_string()
    } else {
        has.join(", ")
    };
    match &c.note {
        Some(n) => format!("{} (CPU: {has}; {n})", c.isa),
        None => format!("{} (CPU: {has})", c.isa),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_honoured_downwards_only() {
        let best = Isa::best();
        assert_eq!(choose(None).isa, best);
        assert!(choose(None).note.is_none());
        assert_eq!(choose(Some("portable")).isa, Isa::Portable);
        assert_eq!(choose(Some(" AVX2 ")).isa, Isa::Avx2.min(best));
        // Unknown names fall back to the best path, saying so.
        let bad = choose(Some("sse9"));
        assert_eq!(bad.isa, best);
        assert!(bad.note.unwrap().contains("sse9"));
        for (name, isa) in [("avx512", Isa::Avx512), ("amx", Isa::Amx)] {
            let c = choose(Some(name));
            assert_eq!(c.isa, isa.min(best), "{name}");
            assert_eq!(c.note.is_some(), isa != best, "{name}: {:?}", c.note);
            if best < isa {
                assert!(c.note.unwrap().contains("more than"));
            }
        }
    }

    #[test]
    fn available_paths_are_supported_and_ordered() {
        let a = Isa::available();
        assert_eq!(a[0], Isa::Portable);
        assert_eq!(*a.last().unwrap(), Isa::best());
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        assert!(a.iter().all(|i| i.supported()));
    }

    #[test]
    fn with_isa_overrides_this_thread_and_restores() {
        let before = selected();
        with_isa(Isa::Portable, || {
            assert_eq!(selected(), Isa::Portable);
            // Another thread still sees the process's choice.
            std::thread::spawn(move || assert_eq!(selected(), before))
                .join()
                .unwrap();
        });
        assert_eq!(selected(), before);
        let r = std::panic::catch_unwind(|| with_isa(Isa::Portable, || panic!("inside")));
        assert!(r.is_err());
        assert_eq!(selected(), before);
    }
}
