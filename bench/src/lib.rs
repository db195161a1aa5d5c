//! Cairn's benchmarks. The criterion benches are in `benches/`; this library reads their
//! results so every figure can be reported as a ratio against the raw baseline measured in the
//! same run (a benchmark whose name starts with `raw_` is its group's baseline). The
//! `cairn-bench` S3 load generator joins this crate with the S3 gateway.

use std::path::{Path, PathBuf};

/// A fresh folder for a benchmark's files under `$CAIRN_BENCH_DIR` (default: the system temp
/// folder), removed when dropped.
pub fn bench_dir() -> std::io::Result<tempfile::TempDir> {
    let base = std::env::var_os("CAIRN_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    tempfile::tempdir_in(base)
}

/// One benchmark's result: mean time per iteration and bytes per iteration.
#[derive(Clone, Debug, PartialEq)]
pub struct Measured {
    pub group: String,
    pub bench: String,
    pub mean_ns: f64,
    pub bytes: f64,
}

impl Measured {
    pub fn gb_per_s(&self) -> f64 {
        self.bytes / self.mean_ns
    }

    /// Every `<group>/<bench>/new/{estimates,benchmark}.json` under a criterion folder that
    /// measured bytes, ordered by group then benchmark. Benchmarks counted in other units
    /// (the apply benchmark's commands) have no raw baseline to compare with and are left out.
    pub fn load_all(dir: &Path) -> Result<Vec<Measured>, String> {
        let mut out = Vec::new();
        let groups = std::fs::read_dir(dir).map_err(|e| format!("read {}: {e}", dir.display()))?;
        for group in groups.flatten() {
            let Ok(benches) = std::fs::read_dir(group.path()) else {
                continue;
            };
            for bench in benches.flatten() {
                let new = bench.path().join("new");
                if new.join("estimates.json").exists()
                    && let Some(m) = Measured::load(&new)?
                {
                    out.push(m);
                }
            }
        }
        out.sort_by(|a, b| (&a.group, &a.bench).cmp(&(&b.group, &b.bench)));
        Ok(out)
    }

    fn load(new: &Path) -> Result<Option<Measured>, String> {
        let read = |name: &str| -> Result<serde_json::Value, String> {
            let p = new.join(name);
            let text =
                std::fs::read_to_string(&p).map_err(|e| format!("read {}: {e}", p.display()))?;
            serde_json::from_str(&text).map_err(|e| format!("parse {}: {e}", p.display()))
        };
        let est = read("estimates.json")?;
        let meta = read("benchmark.json")?;
        let mean_ns = est["mean"]["point_estimate"]
            .as_f64()
            .ok_or_else(|| format!("{}: no mean estimate", new.display()))?;
        let Some(bytes) = meta["throughput"]["Bytes"].as_f64() else {
            return Ok(None);
        };
        let group = meta["group_id"].as_str().unwrap_or_default().to_owned();
        let bench = meta["function_id"].as_str().unwrap_or_default().to_owned();
        Ok(Some(Measured {
            group,
            bench,
            mean_ns,
            bytes,
        }))
    }
}

/// The raw baseline of a group: its benchmark whose name starts with `raw_`.
pub fn baseline_of<'a>(all: &'a [Measured], group: &str) -> Option<&'a Measured> {
    all.iter()
        .find(|m| m.group == group && m.bench.starts_with("raw_"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_criterion_layout_and_finds_baselines() {
        let dir = tempfile::tempdir().unwrap();
        for (bench, ns) in [("raw_x", 100.0), ("ours", 125.0)] {
            let new = dir.path().join("g").join(bench).join("new");
            std::fs::create_dir_all(&new).unwrap();
            std::fs::write(
                new.join("estimates.json"),
                format!("{{\"mean\":{{\"point_estimate\":{ns}}}}}"),
            )
            .unwrap();
            std::fs::write(
                new.join("benchmark.json"),
                format!("{{\"group_id\":\"g\",\"function_id\":\"{bench}\",\"throughput\":{{\"Bytes\":1000}}}}"),
            )
            .unwrap();
        }
        // A benchmark counted in elements (no byte throughput) is left out, not an error.
        let other = dir.path().join("h").join("apply").join("new");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(
            other.join("estimates.json"),
            "{\"mean\":{\"point_estimate\":800000}}",
        )
        .unwrap();
        std::fs::write(
            other.join("benchmark.json"),
            "{\"group_id\":\"h\",\"function_id\":\"apply\",\"throughput\":{\"Elements\":14}}",
        )
        .unwrap();
        let all = Measured::load_all(dir.path()).unwrap();
        assert_eq!(all.len(), 2);
        let base = baseline_of(&all, "g").unwrap();
        assert_eq!(base.bench, "raw_x");
        assert!((base.gb_per_s() - 10.0).abs() < 1e-9);
        let ours = all.iter().find(|m| m.bench == "ours").unwrap();
        assert!((ours.gb_per_s() / base.gb_per_s() - 0.8).abs() < 1e-9);
    }
}
