//! The output: latency histograms, one JSON object per line and workload, and the ratio lines.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use serde::ser::SerializeMap;
use serde_json::Value;

/// Highest latency a histogram tracks exactly; larger samples are clamped to it (10 minutes).
const MAX_US: u64 = 600_000_000;

/// Latencies in microseconds, in an HDR histogram with 3 significant digits.
#[derive(Clone)]
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Self(Histogram::new_with_bounds(1, MAX_US, 3).expect("static histogram bounds are valid"))
    }
}

impl Latency {
    /// Records one sample.
    pub fn record(&mut self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(MAX_US);
        self.0.saturating_record(us.clamp(1, MAX_US));
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Self) {
        self.0
            .add(&other.0)
            .expect("histograms with the same bounds always merge");
    }

    /// The value at quantile `q` (0 when empty).
    pub fn quantile_us(&self, q: f64) -> u64 {
        if self.0.is_empty() {
            0
        } else {
            self.0.value_at_quantile(q)
        }
    }
}

/// One workload's result, printed as one JSON object: the common fields in BENCH.md's order, then
/// the workload's extra fields in the order they were added.
#[derive(Debug, Clone)]
pub struct Line {
    pub workload: String,
    pub system: String,
    pub transport: String,
    pub clients: usize,
    pub sessions: usize,
    pub ops: u64,
    pub duration_s: f64,
    pub ops_per_s: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub safety: String,
    pub extra: Vec<(String, Value)>,
}

impl Serialize for Line {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(12 + self.extra.len()))?;
        map.serialize_entry("workload", &self.workload)?;
        map.serialize_entry("system", &self.system)?;
        map.serialize_entry("transport", &self.transport)?;
        map.serialize_entry("clients", &self.clients)?;
        map.serialize_entry("sessions", &self.sessions)?;
        map.serialize_entry("ops", &self.ops)?;
        map.serialize_entry("duration_s", &self.duration_s)?;
        map.serialize_entry("ops_per_s", &self.ops_per_s)?;
        map.serialize_entry("p50_us", &self.p50_us)?;
        map.serialize_entry("p99_us", &self.p99_us)?;
        map.serialize_entry("p999_us", &self.p999_us)?;
        map.serialize_entry("safety", &self.safety)?;
        for (key, value) in &self.extra {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

impl Line {
    /// A line for `ops` units measured over `elapsed`, with percentiles from `latency`.
    pub fn new(
        workload: &str,
        system: &str,
        transport: &str,
        (clients, sessions): (usize, usize),
        ops: u64,
        elapsed: Duration,
        latency: &Latency,
    ) -> Self {
        let secs = elapsed.as_secs_f64();
        let ops_per_s = if secs > 0.0 { ops as f64 / secs } else { 0.0 };
        Self {
            workload: workload.to_owned(),
            system: system.to_owned(),
            transport: transport.to_owned(),
            clients,
            sessions,
            ops,
            duration_s: round1(secs),
            ops_per_s: round1(ops_per_s),
            p50_us: latency.quantile_us(0.5),
            p99_us: latency.quantile_us(0.99),
            p999_us: latency.quantile_us(0.999),
            safety: "ok".to_owned(),
            extra: Vec::new(),
        }
    }

    /// Adds (or replaces) an extra field.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        let value = value.into();
        match self.extra.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => self.extra.push((key.to_owned(), value)),
        }
        self
    }

    /// An extra field's value.
    pub fn extra(&self, key: &str) -> Option<&Value> {
        self.extra.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The line as compact JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a Line always serializes")
    }
}

/// Rounds to one decimal, as the report shows rates and durations.
pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Rounds to three significant digits (ratios span 0.001 to 1000).
fn round_sig3(x: f64) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let scale = 10f64.powi(2 - x.abs().log10().floor() as i32);
    (x * scale).round() / scale
}

/// Ratios fencepost/peer of one workload (and client count).
#[derive(Debug, Clone, Serialize)]
pub struct RatioLine {
    pub workload: String,
    pub clients: usize,
    /// fencepost's cycle variant, when its line names one (`append-once`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cycle: Option<String>,
    pub ratio: BTreeMap<String, PeerRatio>,
}

/// fencepost's value divided by the peer's.
#[derive(Debug, Clone, Serialize)]
pub struct PeerRatio {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ops_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_us: Option<f64>,
}

/// `--system all`: for each fencepost line, the ratio fencepost/peer of `ops_per_s` and `p99_us`
/// against every peer line of the same workload and client count, one object per workload (W3:
/// per client count), e.g. `{"workload":"W1","clients":16,"ratio":{"etcd":{...}}}`.
pub fn ratio_lines(lines: &[Line]) -> Vec<RatioLine> {
    let mut out = Vec::new();
    for ours in lines.iter().filter(|l| l.system == "fencepost") {
        let ratio: BTreeMap<String, PeerRatio> = lines
            .iter()
            .filter(|l| {
                l.system != "fencepost"
                    && l.workload == ours.workload
                    && l.clients == ours.clients
                    && l.ops > 0
            })
            .map(|peer| {
                let p99 =
                    (peer.p99_us > 0).then(|| round_sig3(ours.p99_us as f64 / peer.p99_us as f64));
                let rate =
                    (peer.ops_per_s > 0.0).then(|| round_sig3(ours.ops_per_s / peer.ops_per_s));
                (
                    peer.system.clone(),
                    PeerRatio {
                        ops_per_s: rate,
                        p99_us: p99,
                    },
                )
            })
            .collect();
        if !ratio.is_empty() {
            out.push(RatioLine {
                workload: ours.workload.clone(),
                clients: ours.clients,
                cycle: ours
                    .extra("cycle")
                    .and_then(|v| v.as_str())
                    .map(str::to_owned),
                ratio,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn latency(samples_us: &[u64]) -> Latency {
        let mut l = Latency::default();
        for &us in samples_us {
            l.record(Duration::from_micros(us));
        }
        l
    }

    #[test]
    fn a_line_prints_bench_md_fields_in_order() {
        let mut line = Line::new(
            "W1",
            "fencepost",
            "tcp",
            (16, 64),
            41230,
            Duration::from_secs(10),
            &Latency::default(),
        );
        (line.p50_us, line.p99_us, line.p999_us) = (3500, 9100, 15000);
        assert_eq!(
            line.to_json(),
            r#"{"workload":"W1","system":"fencepost","transport":"tcp","clients":16,"sessions":64,"ops":41230,"duration_s":10.0,"ops_per_s":4123.0,"p50_us":3500,"p99_us":9100,"p999_us":15000,"safety":"ok"}"#
        );
    }

    #[test]
    fn extra_fields_follow_the_common_ones() {
        let line = Line::new(
            "W2",
            "lockfile",
            "fs",
            (16, 1),
            3,
            Duration::from_millis(1500),
            &latency(&[100, 200, 300]),
        )
        .with("fairness", 1.5)
        .with("client_ops_min", 2)
        .with("fairness", 2.5);
        let json = line.to_json();
        assert!(
            json.ends_with(r#""safety":"ok","fairness":2.5,"client_ops_min":2}"#),
            "{json}"
        );
        assert!(
            json.contains(r#""duration_s":1.5,"ops_per_s":2.0,"p50_us":200"#),
            "{json}"
        );
    }

    #[test]
    fn percentiles_come_from_the_histogram() {
        let samples: Vec<u64> = (1..=1000).collect();
        let l = latency(&samples);
        assert_eq!(l.quantile_us(0.5), 500);
        assert_eq!(l.quantile_us(0.99), 990);
        assert_eq!(Latency::default().quantile_us(0.99), 0);
    }

    #[test]
    fn ratios_keep_three_significant_digits() {
        assert_eq!(round_sig3(5.3812), 5.38);
        assert_eq!(round_sig3(65.024), 65.0);
        assert_eq!(round_sig3(2091.0 / 491_007.0), 0.00426);
        assert_eq!(round_sig3(0.0), 0.0);
    }

    #[test]
    fn ratios_compare_fencepost_with_each_peer_of_the_same_workload() {
        let mk = |system: &str, clients, ops_per_s, p99_us| {
            let mut l = Line::new(
                "W3",
                system,
                "tcp",
                (clients, clients),
                10,
                Duration::from_secs(1),
                &Latency::default(),
            );
            (l.ops_per_s, l.p99_us) = (ops_per_s, p99_us);
            l
        };
        let lines = [
            mk("fencepost", 1, 1000.0, 500),
            mk("fencepost", 16, 4000.0, 2000),
            mk("fencepost", 16, 8000.0, 500).with("cycle", "append-once"),
            mk("etcd", 1, 500.0, 1000),
            mk("lockfile", 16, 8000.0, 1000),
        ];
        let ratios: Vec<String> = ratio_lines(&lines)
            .iter()
            .map(|r| serde_json::to_string(r).unwrap())
            .collect();
        assert_eq!(
            ratios,
            [
                r#"{"workload":"W3","clients":1,"ratio":{"etcd":{"ops_per_s":2.0,"p99_us":0.5}}}"#,
                r#"{"workload":"W3","clients":16,"ratio":{"lockfile":{"ops_per_s":0.5,"p99_us":2.0}}}"#,
                r#"{"workload":"W3","clients":16,"cycle":"append-once","ratio":{"lockfile":{"ops_per_s":1.0,"p99_us":0.5}}}"#,
            ]
        );
    }
}
