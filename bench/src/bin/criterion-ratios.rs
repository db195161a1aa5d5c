//! Prints each criterion benchmark's throughput next to its group's raw baseline, as the
//! markdown rows recorded in BENCHMARKS.md. Reads `target/criterion/<group>/<bench>/new/`.
//!
//! Usage: `cargo run -p cairn-bench --bin criterion-ratios [CRITERION_DIR]`

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use cairn_bench::{Measured, baseline_of};

fn main() -> ExitCode {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/criterion"));
    let measured = match Measured::load_all(&dir) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if measured.is_empty() {
        eprintln!(
            "error: no criterion results in bytes under {}; run `cargo bench -p cairn-bench --bench chunk` (or `--bench transport`) first",
            dir.display()
        );
        return ExitCode::FAILURE;
    }
    println!("| group | benchmark | GB/s | baseline | baseline GB/s | ratio |");
    println!("|---|---|---|---|---|---|");
    for m in &measured {
        let base = baseline_of(&measured, &m.group);
        match base {
            Some(b) if b.bench != m.bench => println!(
                "| {} | {} | {:.3} | {} | {:.3} | {:.0}% |",
                m.group,
                m.bench,
                m.gb_per_s(),
                b.bench,
                b.gb_per_s(),
                100.0 * m.gb_per_s() / b.gb_per_s()
            ),
            _ => println!(
                "| {} | {} | {:.3} | (baseline) | | |",
                m.group,
                m.bench,
                m.gb_per_s()
            ),
        }
    }
    ExitCode::SUCCESS
}
