//! `pagedrt simulate --replicas N --router POLICY`: the fleet simulator, with a report per
//! replica and for the fleet, and the load of each replica over time.

use std::io::Write;
use std::path::Path;

use scheduler::sim::router::{CacheAwareConfig, RouterPolicy};
use scheduler::sim::{simulate_fleet, FleetConfig, FleetResult, Slo, Summary};
use tools::plot::{line_chart, Line};

use super::simulate::{config, SimulateArgs};

/// Runs the fleet at `rate` with `router`; prints and writes its reports.
pub fn run(a: &SimulateArgs, replicas: usize, router: RouterPolicy) -> anyhow::Result<()> {
    if replicas == 0 {
        return Err(anyhow::anyhow!("--replicas must be at least 1"));
    }
    let policy = a.policy.first().map_or("fcfs", |p| p.name());
    let models: Vec<&str> = a.cost_model.split(',').collect();
    if models.len() != 1 && models.len() != replicas {
        return Err(anyhow::anyhow!(
            "--cost-model: give one (for every replica) or {replicas} (one per replica), not {}",
            models.len()
        ));
    }
    let rate = a.workload.request_rate;
    let (reqs, prefix_len, count) = a.workload.stream(rate)?;
    let cfgs = (0..replicas)
        .map(|i| Ok(config(a, models[i % models.len()], policy, prefix_len)?.replica()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let cfg = FleetConfig {
        replicas: cfgs,
        router,
        cache_aware: CacheAwareConfig {
            cache_threshold: a.cache_threshold,
            balance_abs_threshold: a.balance_abs_threshold,
            balance_rel_threshold: a.balance_rel_threshold,
            ..CacheAwareConfig::default()
        },
        shared_prefix_len: prefix_len,
        slo: Slo::parse(&a.goodput)?,
        seed: a.workload.seed,
        max_series_points: 2000,
    };
    let bar = super::progress_bar(
        count,
        a.quiet,
        "{msg} [{bar:40}] {pos}/{len} requests ({elapsed}, {per_sec})",
    )?;
    bar.set_message(format!(
        "{replicas} x {policy}, {} @ {rate} req/s",
        router.name()
    ));
    let r = simulate_fleet(&cfg, reqs, &mut |done| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    print_report(&r, rate);
    if let Some(path) = &a.json {
        let json = serde_json::to_string_pretty(&r)?;
        std::fs::write(path, json + "\n")
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    }
    if let Some(path) = &a.series_csv {
        write_series_csv(path, &r)?;
    }
    if let Some(dir) = &a.svg_dir {
        write_plots(dir, &r)?;
    }
    Ok(())
}

fn ms(s: &Summary) -> String {
    format!("{:>9.2} {:>9.2}", 1e3 * s.median, 1e3 * s.p99)
}

fn print_report(r: &FleetResult, rate: f64) {
    println!(
        "== fleet of {} behind {} @ {rate} req/s: {} requests ({} completed, {} rejected) in \
         {:.2} s simulated",
        r.replicas,
        r.router.name(),
        r.requests,
        r.completed,
        r.rejected,
        r.duration_s
    );
    println!(
        "   throughput {:.2} req/s, {:.1} output tok/s, {:.1} total tok/s; prefix hit rate \
         {:.1} %{}",
        r.request_throughput,
        r.output_token_throughput,
        r.total_token_throughput,
        100.0 * r.prefix_hit_rate,
        r.goodput
            .map_or(String::new(), |g| format!("; goodput {g:.2} req/s"))
    );
    println!(
        "   {:<8} {:>7} {:>7} {:>9} {:>7} {:>19} {:>19} {:>19} (ms: median p99)",
        "replica", "share", "req/s", "out tok/s", "hits", "TTFT", "TPOT", "E2E"
    );
    let row = |name: String,
               share: f64,
               thr: f64,
               out: f64,
               hits: f64,
               t: &Summary,
               p: &Summary,
               e: &Summary| {
        println!(
            "   {name:<8} {:>6.1}% {thr:>7.2} {out:>9.1} {:>6.1}% {} {} {}",
            100.0 * share,
            100.0 * hits,
            ms(t),
            ms(p),
            ms(e)
        );
    };
    for q in &r.per_replica {
        row(
            q.replica.to_string(),
            q.request_share,
            q.request_throughput,
            q.output_token_throughput,
            q.prefix_hit_rate,
            &q.ttft_s,
            &q.tpot_s,
            &q.e2e_s,
        );
    }
    row(
        "fleet".into(),
        1.0,
        r.request_throughput,
        r.output_token_throughput,
        r.prefix_hit_rate,
        &r.ttft_s,
        &r.tpot_s,
        &r.e2e_s,
    );
}

fn write_series_csv(path: &Path, r: &FleetResult) -> anyhow::Result<()> {
    let io = |e: std::io::Error| anyhow::anyhow!("{}: {e}", path.display());
    let mut f = std::fs::File::create(path)
        .map(std::io::BufWriter::new)
        .map_err(io)?;
    writeln!(f, "t_s,replica,in_flight,running,waiting,kv_usage").map_err(io)?;
    for p in &r.series {
        for (i, q) in p.replicas.iter().enumerate() {
            writeln!(
                f,
                "{:.6},{i},{},{},{},{:.6}",
                p.t_s, q.in_flight, q.running, q.waiting, q.kv_usage
            )
            .map_err(io)?;
        }
    }
    f.flush().map_err(io)
}

fn write_plots(dir: &Path, r: &FleetResult) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    let per_replica = |f: &dyn Fn(&scheduler::sim::ReplicaLoad) -> f64| -> Vec<Line> {
        (0..r.replicas)
            .map(|i| Line {
                name: format!("replica {i}"),
                points: r
                    .series
                    .iter()
                    .map(|p| (p.t_s, f(&p.replicas[i])))
                    .collect(),
            })
            .collect()
    };
    let title = format!("Load per replica, {} router", r.router.name());
    line_chart(
        &dir.join("load_per_replica.svg"),
        &title,
        "time (s)",
        "requests in flight",
        &per_replica(&|q| q.in_flight as f64),
    )?;
    line_chart(
        &dir.join("kv_usage_per_replica.svg"),
        "KV cache usage per replica",
        "time (s)",
        "used pages (%)",
        &per_replica(&|q| 100.0 * q.kv_usage),
    )?;
    Ok(())
}
