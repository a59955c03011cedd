// TEMPORARY probe, never commit.
use kernels::cpu::packed::PackedMatrix;
use std::time::Instant;
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let m: usize = a[1].parse().unwrap();
    let (k, n) = (
        a[2].parse::<usize>().unwrap(),
        a[3].parse::<usize>().unwrap(),
    );
    let w: Vec<f32> = (0..n * k).map(|i| (i % 97) as f32 * 1e-3).collect();
    let p = PackedMatrix::<f32>::pack(&w, n, k);
    let x: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 1e-2).collect();
    let mut out = vec![0f32; m * n];
    let mut t = vec![];
    for _ in 0..30 {
        let s = Instant::now();
        p.linear(&mut out, &x, m);
        t.push(s.elapsed().as_secs_f64());
    }
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let fl = 2.0 * (m * n * k) as f64;
    println!(
        "{m}x{k}x{n}: median {:.1} best {:.1} GFLOP/s",
        fl / t[15] / 1e9,
        fl / t[0] / 1e9
    );
}
