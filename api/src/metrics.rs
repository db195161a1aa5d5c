//! Request metrics in the Prometheus text format: requests by operation and status, latency
//! histograms by operation, bytes in and out.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use parking_lot::Mutex;

/// Latency bucket bounds, seconds.
const BOUNDS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    buckets: [u64; BOUNDS.len()],
    count: u64,
    sum: f64,
}

#[derive(Debug, Default)]
struct Inner {
    requests: BTreeMap<(String, u16), u64>,
    latency: BTreeMap<String, Histogram>,
    bytes_in: u64,
    bytes_out: u64,
    /// (encryption type, "sealed" | "opened") → count.
    sse: BTreeMap<(&'static str, &'static str), u64>,
    /// Queue messages by operation ("send", "receive", "ack").
    queue_ops: BTreeMap<&'static str, u64>,
}

#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    pub fn record(&self, op: &str, status: u16, took: Duration) {
        let secs = took.as_secs_f64();
        let mut m = self.inner.lock();
        *m.requests.entry((op.to_owned(), status)).or_default() += 1;
        let h = m.latency.entry(op.to_owned()).or_default();
        h.count += 1;
        h.sum += secs;
        for (i, b) in BOUNDS.iter().enumerate() {
            if secs <= *b {
                h.buckets[i] += 1;
            }
        }
    }

    pub fn bytes(&self, inbound: u64, outbound: u64) {
        let mut m = self.inner.lock();
        m.bytes_in += inbound;
        m.bytes_out += outbound;
    }

    /// An object or part sealed (written encrypted), or an encrypted object's key opened for a
    /// read, by type (`SSE-S3`, `SSE-KMS`, `SSE-C`).
    pub fn sse(&self, kind: &'static str, event: &'static str) {
        *self.inner.lock().sse.entry((kind, event)).or_default() += 1;
    }

    /// `n` queue messages sent, received or acked through this gateway.
    pub fn queue_op(&self, op: &'static str, n: u64) {
        *self.inner.lock().queue_ops.entry(op).or_default() += n;
    }

    /// The text exposition, with `extra` gauges appended (name, help, value).
    pub fn render(&self, extra: &[(&str, &str, f64)]) -> String {
        let m = self.inner.lock();
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# HELP cairn_requests_total HTTP requests by operation and status."
        );
        let _ = writeln!(s, "# TYPE cairn_requests_total counter");
        for ((op, status), n) in &m.requests {
            let _ = writeln!(
                s,
                "cairn_requests_total{{op=\"{op}\",status=\"{status}\"}} {n}"
            );
        }
        let _ = writeln!(
            s,
            "# HELP cairn_request_seconds Time to the response head, by operation."
        );
        let _ = writeln!(s, "# TYPE cairn_request_seconds histogram");
        for (op, h) in &m.latency {
            for (i, b) in BOUNDS.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "cairn_request_seconds_bucket{{op=\"{op}\",le=\"{b}\"}} {}",
                    h.buckets[i]
                );
            }
            let _ = writeln!(
                s,
                "cairn_request_seconds_bucket{{op=\"{op}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(s, "cairn_request_seconds_sum{{op=\"{op}\"}} {}", h.sum);
            let _ = writeln!(s, "cairn_request_seconds_count{{op=\"{op}\"}} {}", h.count);
        }
        let _ = writeln!(
            s,
            "# HELP cairn_bytes_in_total Request body bytes received."
        );
        let _ = writeln!(s, "# TYPE cairn_bytes_in_total counter");
        let _ = writeln!(s, "cairn_bytes_in_total {}", m.bytes_in);
        let _ = writeln!(s, "# HELP cairn_bytes_out_total Response body bytes sent.");
        let _ = writeln!(s, "# TYPE cairn_bytes_out_total counter");
        let _ = writeln!(s, "cairn_bytes_out_total {}", m.bytes_out);
        let _ = writeln!(
            s,
            "# HELP cairn_sse_total Objects and parts written encrypted (sealed) and encrypted objects read (opened), by type."
        );
        let _ = writeln!(s, "# TYPE cairn_sse_total counter");
        for ((kind, event), n) in &m.sse {
            let _ = writeln!(
                s,
                "cairn_sse_total{{type=\"{kind}\",event=\"{event}\"}} {n}"
            );
        }
        let _ = writeln!(
            s,
            "# HELP cairn_queue_operations_total Queue messages sent, received and acked through this gateway."
        );
        let _ = writeln!(s, "# TYPE cairn_queue_operations_total counter");
        for (op, n) in &m.queue_ops {
            let _ = writeln!(s, "cairn_queue_operations_total{{op=\"{op}\"}} {n}");
        }
        for (name, help, v) in extra {
            let _ = writeln!(s, "# HELP {name} {help}");
            let _ = writeln!(s, "# TYPE {name} gauge");
            let _ = writeln!(s, "{name} {v}");
        }
        s
    }
}
