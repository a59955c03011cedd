//! `pagedrt doctor`: what a user needs to know before serving on a GPU, and the GPU checks.
//!
//! - no flags: the CUDA libraries (found where, or not) and the devices; exit 0 when a GPU
//!   is ready to serve (driver, NVRTC, cuBLAS and at least one device).
//! - `--compile-kernels [--arch sm_90]`: compile every kernel with NVRTC (no GPU needed) and
//!   print each kernel's status with its `ptxas` resource usage; exit 0 when all compile.
//! - `--selftest [--full]`: run every CUDA kernel against its CPU twin or a float64
//!   reference on device 0; exit 0 when every case passes. With `--emulated`, on the
//!   CUDA-on-CPU emulator instead (no GPU needed); `--kernel NAME` keeps to one kernel's
//!   cases, and `--emulated-kernel FILE.cu` runs a kernel file of the user's (a deliberately
//!   broken copy, an edit under test) in place of the built-in one of the same name.
//! - `--engine-check [--model M]`: the CUDA engine's greedy tokens against the CPU engine's on
//!   the same weights; with `--emulated`, the CUDA engine on the emulated device.

use std::path::PathBuf;

use clap::Args;
use kernels::cuda::libs::{locate, CudaLib};
use kernels::cuda::{self, nvrtc, selftest, source, Arch, Device, Emu, Gpu};
use serde_json::{json, Value};

#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// Compile every CUDA kernel with NVRTC and print each one's status (no GPU needed).
    #[arg(long)]
    pub compile_kernels: bool,
    /// Target of --compile-kernels: sm_XY or compute_XY (default: device 0's, else sm_90).
    #[arg(long)]
    pub arch: Option<String>,
    /// Run every CUDA kernel against its CPU twin / float64 reference on device 0.
    #[arg(long)]
    pub selftest: bool,
    /// With --selftest: more and larger shapes (contexts up to 32k).
    #[arg(long)]
    pub full: bool,
    /// With --selftest or --engine-check: run on the CUDA-on-CPU emulator instead of a GPU.
    #[arg(long)]
    pub emulated: bool,
    /// With --selftest: only the cases of this kernel (e.g. argmax, paged_attention_decode);
    /// repeat for more.
    #[arg(long = "kernel", value_name = "NAME", requires = "selftest")]
    pub kernels: Vec<String>,
    /// With --emulated: compile this .cu file with the host C++ compiler and run it in place
    /// of the built-in kernel file of the same name (e.g. a copy of sampling.cu); repeatable.
    #[arg(long = "emulated-kernel", value_name = "FILE", requires = "emulated")]
    pub emulated_kernels: Vec<PathBuf>,
    /// Greedy parity of the CUDA engine with the CPU engine on --model's weights (default
    /// dummy:smollm2-135m): same tokens except at near-ties, matching log-probabilities.
    #[arg(long)]
    pub engine_check: bool,
    /// The model of --engine-check (a directory, a pulled name, or dummy:<preset>).
    #[arg(long, default_value = "dummy:smollm2-135m")]
    pub model: String,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn run(args: DoctorArgs) -> anyhow::Result<()> {
    let mut report = json!({});
    let mut ok = true;
    let cpu = kernels::cpu::isa::describe();
    println!("CPU kernels: {cpu}");
    report["cpu_kernels"] = json!(cpu);
    println!("CUDA libraries:");
    let mut libs = serde_json::Map::new();
    for lib in CudaLib::ALL {
        let found = locate(lib);
        match &found {
            Ok(f) => println!("  {:<28} found {f}", lib.name()),
            Err(e) => println!("  {:<28} NOT FOUND\n    {e}", lib.name()),
        }
        libs.insert(
            lib.name().into(),
            json!(found.as_ref().map(|f| f.to_string()).ok()),
        );
    }
    report["libraries"] = Value::Object(libs);
    if let Ok((a, b)) = nvrtc::version() {
        println!("  NVRTC version {a}.{b}");
        report["nvrtc_version"] = json!(format!("{a}.{b}"));
    }
    let devices = list_devices(&mut report);
    let gpu_ready = devices > 0 && CudaLib::ALL.iter().all(|l| locate(*l).is_ok());
    if args.emulated && !args.selftest && !args.engine_check {
        anyhow::bail!("--emulated goes with --selftest or --engine-check");
    }
    if !args.compile_kernels && !args.selftest && !args.engine_check {
        ok = gpu_ready;
        if !gpu_ready {
            println!("not ready to serve on a GPU (use --device cpu, or install what is missing)");
        }
    }
    if args.compile_kernels {
        ok &= compile_all(&args, &mut report)?;
    }
    if args.selftest {
        check_kernel_names(&args.kernels)?;
        ok &= if args.emulated {
            let emu = emulated_device(&args.emulated_kernels)?;
            println!("Self-test on the {}:", emu.describe());
            report_selftest(&emu, &args, std::time::Instant::now(), &mut report)
        } else {
            run_selftest(&args, &mut report)
        };
    }
    if args.engine_check {
        ok &= if args.emulated {
            let emu = emulated_device(&args.emulated_kernels)?;
            let backend = engine::backend::cuda::CudaBackend::on(emu);
            engine_check_on(backend, &args.model, &mut report)
        } else {
            engine_check(&args.model, &mut report)
        };
    }
    report["ok"] = json!(ok);
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    }
    if ok {
        Ok(())
    } else {
        Err(anyhow::anyhow!(
            "doctor: something asked for did not succeed (see above)"
        ))
    }
}

/// Prints the devices; returns how many there are.
fn list_devices(report: &mut Value) -> usize {
    println!("Devices:");
    let n = match cuda::device_count() {
        Ok(n) => n,
        Err(e) => {
            println!("  none ({})", short(&e));
            report["devices"] = json!([]);
            return 0;
        }
    };
    if n == 0 {
        println!("  none: the driver reports no CUDA device");
    }
    let mut list = Vec::new();
    for i in 0..n {
        match Gpu::open(i) {
            Ok(g) => {
                let d = g.info();
                println!(
                    "  {i}: {} ({}, {} SMs), {:.1} GiB, {:.1} GiB free",
                    d.name,
                    d.arch,
                    d.multiprocessors,
                    d.total_bytes as f64 / (1u64 << 30) as f64,
                    d.free_bytes as f64 / (1u64 << 30) as f64
                );
                list.push(
                    json!({"ordinal": i, "name": d.name, "arch": d.arch.to_string(),
                    "multiprocessors": d.multiprocessors, "total_bytes": d.total_bytes,
                    "free_bytes": d.free_bytes}),
                );
            }
            Err(e) => println!("  {i}: cannot open: {e}"),
        }
    }
    report["devices"] = json!(list);
    n
}

fn compile_all(args: &DoctorArgs, report: &mut Value) -> anyhow::Result<bool> {
    let arch: Arch = match &args.arch {
        Some(a) => a.parse::<Arch>()?,
        None => Gpu::open(0)
            .map(|g| g.info().arch.clone())
            .unwrap_or_else(|_| "sm_90".parse().expect("a valid arch")),
    };
    println!("Compiling every kernel for {arch}:");
    let mut ok = true;
    let mut rows = Vec::new();
    for src in source::ALL {
        match nvrtc::compile(&src, &arch, true) {
            Ok(out) => {
                for entry in src.entry_points() {
                    let defined = out.defines(&entry);
                    ok &= defined;
                    let usage = out.resource_usage(&entry).unwrap_or_default();
                    let status = if defined { "ok" } else { "MISSING" };
                    println!("  {status:<7} {entry:<40} {usage}");
                    rows.push(json!({"kernel": entry, "file": src.file_name(),
                        "ok": defined, "resources": usage}));
                }
            }
            Err(e) => {
                ok = false;
                println!("  FAILED  {}: {e}", src.file_name());
                rows.push(json!({"file": src.file_name(), "ok": false, "error": e.to_string()}));
            }
        }
    }
    report["compile"] = json!({"arch": arch.to_string(), "kernels": rows});
    Ok(ok)
}

/// Refuses a `--kernel` the self-test has no cases for (it would run nothing and fail).
fn check_kernel_names(names: &[String]) -> anyhow::Result<()> {
    match names
        .iter()
        .find(|n| !selftest::KERNELS.contains(&n.as_str()))
    {
        Some(n) => Err(anyhow::anyhow!(
            "--kernel {n:?}: the self-test has no such kernel (one of {})",
            selftest::KERNELS.join(", ")
        )),
        None => Ok(()),
    }
}

/// The emulator, with each of `files` compiled and run in place of the built-in kernel file
/// of the same name.
fn emulated_device(files: &[PathBuf]) -> anyhow::Result<Emu> {
    let mut emu = Emu::new();
    for file in files {
        let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        let src = source::ALL.iter().find(|s| s.name == stem).ok_or_else(|| {
            let names: Vec<String> = source::ALL.iter().map(|s| s.file_name()).collect();
            anyhow::anyhow!(
                "--emulated-kernel {}: not named like a kernel file ({})",
                file.display(),
                names.join(", ")
            )
        })?;
        let text = std::fs::read_to_string(file)
            .map_err(|e| anyhow::anyhow!("--emulated-kernel {}: {e}", file.display()))?;
        let module = cuda::emu::compile_module(src.name, &text, &src.entry_points())
            .map_err(|e| anyhow::anyhow!("--emulated-kernel {}: {e}", file.display()))?;
        println!(
            "Kernel file {} runs in place of the built-in {}",
            file.display(),
            src.file_name()
        );
        emu = emu.with_module(module);
    }
    Ok(emu)
}

fn run_selftest(args: &DoctorArgs, report: &mut Value) -> bool {
    let gpu = match Gpu::open(0) {
        Ok(g) => g,
        Err(e) => {
            println!("selftest SKIPPED: no usable GPU ({})", short(&e));
            report["selftest"] = json!({"skipped": e.to_string()});
            return false;
        }
    };
    println!("Self-test on {} ({}):", gpu.info().name, gpu.info().arch);
    let started = std::time::Instant::now();
    match gpu.preload(&source::ALL) {
        Ok(()) => println!(
            "  kernels compiled and loaded in {:.1} s",
            started.elapsed().as_secs_f64()
        ),
        Err(e) => println!("  FAILED to compile or load the kernels: {e}"),
    }
    report_selftest(&gpu, args, started, report)
}

/// Runs the self-test on `dev`, printing each case; true when every case passed.
fn report_selftest<D: Device>(
    dev: &D,
    args: &DoctorArgs,
    started: std::time::Instant,
    report: &mut Value,
) -> bool {
    let want = |kernel: &str, _: &str, _: &str| {
        args.kernels.is_empty() || args.kernels.iter().any(|k| k == kernel)
    };
    let checks = selftest::run_selected(dev, !args.full, &want, |c| {
        let status = if c.passed() { "ok" } else { "FAILED" };
        let extra = match (&c.error, c.deterministic) {
            (Some(e), _) => format!(" error: {e}"),
            (None, false) => " NOT DETERMINISTIC".into(),
            _ => String::new(),
        };
        println!(
            "  {status:<6} {:<24} {:<5} rel_err {:>9.2e} (tol {:.0e}) {}{extra}",
            c.kernel, c.dtype, c.rel_err, c.tol, c.case
        );
    });
    let failed = checks.iter().filter(|c| !c.passed()).count();
    println!(
        "{} cases, {failed} failed, {:.1} s",
        checks.len(),
        started.elapsed().as_secs_f64()
    );
    report["selftest"] = json!(checks
        .iter()
        .map(
            |c| json!({"kernel": c.kernel, "dtype": c.dtype, "case": c.case,
            "rel_err": if c.rel_err.is_finite() { json!(c.rel_err) } else { json!("inf") },
            "tol": c.tol, "deterministic": c.deterministic, "error": c.error,
            "passed": c.passed()})
        )
        .collect::<Vec<_>>());
    failed == 0 && !checks.is_empty()
}

/// An error without the list of searched folders (printed once, under the libraries).
fn short(e: &cuda::CudaError) -> String {
    match e {
        cuda::CudaError::LibraryNotFound { lib, .. } => format!("{lib} not found"),
        e => e.to_string(),
    }
}

/// CPU vs CUDA greedy parity on `model` on GPU 0 (see runtime::engine::parity).
fn engine_check(model: &str, report: &mut Value) -> bool {
    use engine::backend::cuda::CudaBackend;
    match CudaBackend::new(0) {
        Ok(b) => engine_check_on(b, model, report),
        Err(e) => {
            println!("engine check SKIPPED: no usable GPU ({})", short(&e));
            report["engine_check"] = json!({"skipped": e.to_string()});
            false
        }
    }
}

/// CPU vs `cuda` greedy parity on `model`.
fn engine_check_on<B: engine::backend::Backend + 'static>(
    cuda: B,
    model: &str,
    report: &mut Value,
) -> bool {
    use engine::backend::cpu::CpuBackend;
    use tools::parity::{compare, parity_engine, test_prompts};
    let device = cuda.name().to_string();
    let source = match models::resolve::resolve_source(Some(model), &mut |l| eprintln!("{l}")) {
        Ok(s) => s,
        Err(e) => {
            println!("engine check: {e}");
            return false;
        }
    };
    let started = std::time::Instant::now();
    let run = || -> Result<_, Box<dyn std::error::Error>> {
        let mut cpu = parity_engine(CpuBackend, &source, 7)?;
        let mut gpu = parity_engine(cuda, &source, 7)?;
        let prompts = test_prompts(cpu.model().config().vocab_size as u32, 3);
        let r = compare(&mut cpu, &mut gpu, &prompts, 24, 1e-3, 1e-2)?;
        let leaked = gpu.scheduler().kv_stats().device.used_blocks;
        Ok((r, leaked))
    };
    match run() {
        Ok((r, leaked)) => {
            let ok = r.ok() && leaked == 0;
            println!(
                "Engine check ({model}, CPU vs {device}, f32): {} requests, {} steps compared, \
                 {} divergences ({} not at a near-tie), max |logprob diff| {:.2e}, \
                 {leaked} pages left in use, {:.1} s: {}",
                r.requests,
                r.steps_compared,
                r.divergences.len(),
                r.bad_divergences,
                r.max_logprob_diff,
                started.elapsed().as_secs_f64(),
                if ok { "ok" } else { "FAILED" }
            );
            report["engine_check"] = json!({"model": model, "device": device,
                "requests": r.requests,
                "steps_compared": r.steps_compared, "divergences": r.divergences,
                "bad_divergences": r.bad_divergences, "max_logprob_diff": r.max_logprob_diff,
                "pages_in_use_after": leaked, "ok": ok});
            ok
        }
        Err(e) => {
            println!("engine check FAILED: {e}");
            report["engine_check"] = json!({"error": e.to_string()});
            false
        }
    }
}
