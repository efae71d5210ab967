//! The floor of a recovery: one variable-base scalar multiplication, median of many, on
//! each curve, by RustCrypto (what nbde-unlock uses) and by AWS-LC (what the server uses).
//!
//! `cargo bench -p nbde-server --bench mul [-- --json]`: `--json` prints one object per
//! line for bench/storm.py.

use std::time::Instant;

use nbde_proto::{Curve, exchange};

/// Median µs of `f` over `rounds` calls, after a warm-up.
fn median_us(rounds: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..rounds / 10 {
        f();
    }
    let mut times: Vec<f64> = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() {
    let json = std::env::args().any(|a| a == "--json");
    let rounds = std::env::args()
        .skip_while(|a| a != "--rounds")
        .nth(1)
        .and_then(|r| r.parse().ok())
        .unwrap_or(400);
    for curve in Curve::ALL {
        let secret = curve.random_scalar().unwrap();
        let point = curve.random_scalar().unwrap().public_point();
        let rustcrypto = median_us(rounds, || {
            std::hint::black_box(exchange::server_exchange(&secret, &point).unwrap());
        });
        let awslc = median_us(rounds, || {
            std::hint::black_box(nbde_server::curve::server_exchange(&secret, &point).unwrap());
        });
        if json {
            println!(
                r#"{{"curve":"{}","rustcrypto_us":{rustcrypto:.1},"awslc_us":{awslc:.1}}}"#,
                curve.name()
            );
        } else {
            println!(
                "{}: RustCrypto {rustcrypto:.1} µs, AWS-LC {awslc:.1} µs",
                curve.name()
            );
        }
    }
}
