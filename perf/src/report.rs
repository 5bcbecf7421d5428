//! The end-of-run report: one row per namespace and core, and a total row
//! (sums of rates, latencies merged), as a table for people and JSON for
//! scripts.

use std::fmt::Write;

use crate::json::{Json, obj};
use crate::latency::{LatencyStats, LatencySummary, PERCENTILES};

/// What one worker (one queue pair: a namespace on a core) measured.
#[derive(Clone, Debug)]
pub struct WorkerResult {
    /// The controller (PCI address, or the model's name).
    pub device: String,
    /// The namespace.
    pub nsid: u32,
    /// The core that drove it.
    pub core: usize,
    /// Bytes per I/O.
    pub io_size: usize,
    /// I/Os completed successfully inside the measured window.
    pub ios: u64,
    /// Of which reads.
    pub reads: u64,
    /// Of which writes.
    pub writes: u64,
    /// I/Os that failed, over the whole run (warm-up and drain included).
    pub errors: u64,
    /// Reads whose data was checked (verify mode), whole run.
    pub verified: u64,
    /// Reads whose data differed from what was written, whole run.
    pub mismatches: u64,
    /// Length of the measured window.
    pub elapsed_ns: u64,
    /// Time spent handling completions and submitting (from the first
    /// completion a poll found to the doorbell after resubmitting), in
    /// the measured window.
    pub busy_ns: u64,
    /// Polls that found completions, in the measured window.
    pub batches: u64,
    /// Latencies of the I/Os completed inside the window.
    pub latency: LatencyStats,
    /// The queue pair's own counters over the whole run (nvme-perf; none
    /// for bdevperf).
    pub queue: Option<QueueCounts>,
}

/// What an NVMe queue pair did over a whole run (warm-up and drain
/// included): what an I/O costs in doorbell writes (MMIO, each a trap
/// under virtualization or emulation) and in polls.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct QueueCounts {
    /// Commands completed.
    pub completions: u64,
    /// Submission doorbell writes.
    pub sq_doorbells: u64,
    /// Completion doorbell writes.
    pub cq_doorbells: u64,
    /// Completion polls (with or without completions).
    pub polls: u64,
}

impl QueueCounts {
    fn add(&mut self, o: &QueueCounts) {
        self.completions += o.completions;
        self.sq_doorbells += o.sq_doorbells;
        self.cq_doorbells += o.cq_doorbells;
        self.polls += o.polls;
    }

    /// (SQ doorbells, CQ doorbells, polls) per completed command.
    pub fn per_io(&self) -> (f64, f64, f64) {
        let n = self.completions.max(1) as f64;
        (
            self.sq_doorbells as f64 / n,
            self.cq_doorbells as f64 / n,
            self.polls as f64 / n,
        )
    }
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// The controller, or `None` for the total.
    pub device: Option<String>,
    /// The namespace, or `None` for the total.
    pub nsid: Option<u32>,
    /// The core, or `None` for the total.
    pub core: Option<usize>,
    /// I/Os completed in the window.
    pub ios: u64,
    /// Reads among them.
    pub reads: u64,
    /// Writes among them.
    pub writes: u64,
    /// Failed I/Os.
    pub errors: u64,
    /// Reads checked (verify mode).
    pub verified: u64,
    /// Verify mismatches.
    pub mismatches: u64,
    /// Window length in seconds.
    pub elapsed_s: f64,
    /// I/Os per second.
    pub iops: f64,
    /// MiB (2^20 bytes) per second.
    pub mib_s: f64,
    /// Latency figures.
    pub latency: LatencySummary,
    /// Busy time per I/O in nanoseconds: the CPU cost of an I/O in poll
    /// mode, without the empty polls.
    pub busy_ns_per_io: f64,
    /// Completions per poll that found any (how well the doorbells batch).
    pub completions_per_batch: f64,
    /// The queue pairs' counters, when every worker had them.
    pub queue: Option<QueueCounts>,
}

impl Row {
    fn new(
        who: (Option<String>, Option<u32>, Option<usize>),
        counts: [u64; 5],
        bytes: u64,
        elapsed_ns: u64,
        busy_ns: u64,
        batches: u64,
        latency: &LatencyStats,
    ) -> Row {
        let [ios, reads, writes, errors, verified] = counts;
        let secs = elapsed_ns as f64 / 1e9;
        let per_sec = |v: f64| if secs > 0.0 { v / secs } else { 0.0 };
        Row {
            device: who.0,
            nsid: who.1,
            core: who.2,
            ios,
            reads,
            writes,
            errors,
            verified,
            mismatches: 0,
            elapsed_s: secs,
            iops: per_sec(ios as f64),
            mib_s: per_sec(bytes as f64 / (1u64 << 20) as f64),
            latency: latency.summary(),
            busy_ns_per_io: if ios > 0 {
                busy_ns as f64 / ios as f64
            } else {
                0.0
            },
            completions_per_batch: if batches > 0 {
                ios as f64 / batches as f64
            } else {
                0.0
            },
            queue: None,
        }
    }

    fn label(&self) -> String {
        match (&self.device, self.nsid, self.core) {
            (Some(d), Some(n), Some(c)) => format!("{d:<14} {n:>4} {c:>4}"),
            _ => format!("{:<24}", "Total"),
        }
    }

    /// The row as JSON.
    pub fn to_json(&self) -> Json {
        let l = &self.latency;
        let mut lat = vec![
            ("avg".to_owned(), Json::from(l.avg_us)),
            ("min".to_owned(), l.min_us.into()),
            ("max".to_owned(), l.max_us.into()),
        ];
        for (p, v) in PERCENTILES.iter().zip(l.percentiles_us) {
            lat.push((percentile_key(*p), v.into()));
        }
        let mut o = Vec::new();
        if let (Some(d), Some(n), Some(c)) = (&self.device, self.nsid, self.core) {
            o.push(("device".to_owned(), Json::from(d.as_str())));
            o.push(("nsid".to_owned(), n.into()));
            o.push(("core".to_owned(), c.into()));
        }
        let Json::Obj(rest) = obj([
            ("ios", self.ios.into()),
            ("reads", self.reads.into()),
            ("writes", self.writes.into()),
            ("errors", self.errors.into()),
            ("verified_reads", self.verified.into()),
            ("verify_mismatches", self.mismatches.into()),
            ("elapsed_s", self.elapsed_s.into()),
            ("iops", self.iops.into()),
            ("mib_s", self.mib_s.into()),
            ("latency_us", Json::Obj(lat)),
            ("busy_ns_per_io", self.busy_ns_per_io.into()),
            ("completions_per_batch", self.completions_per_batch.into()),
        ]) else {
            unreachable!("obj builds an object")
        };
        o.extend(rest);
        if let Some(q) = &self.queue {
            let (sq, cq, polls) = q.per_io();
            o.push((
                "per_io".to_owned(),
                obj([
                    ("completions", q.completions.into()),
                    ("sq_doorbells", sq.into()),
                    ("cq_doorbells", cq.into()),
                    ("polls", polls.into()),
                ]),
            ));
        }
        Json::Obj(o)
    }
}

/// `p50`, `p99_9`, `p99_99`: JSON keys of the percentiles.
pub fn percentile_key(p: f64) -> String {
    format!("p{p}").replace('.', "_")
}

/// Rows per worker and the total.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// One per worker, in the order given.
    pub rows: Vec<Row>,
    /// Sums of rates and counts; latencies of all I/Os together.
    pub total: Row,
}

impl Report {
    /// The report of `results`.
    pub fn new(results: &[WorkerResult]) -> Report {
        let mut merged = LatencyStats::new();
        let mut sums = [0u64; 5];
        let (mut busy, mut batches, mut mismatches) = (0u64, 0u64, 0u64);
        let (mut iops, mut mib_s, mut elapsed) = (0.0, 0.0, 0u64);
        let rows: Vec<Row> = results
            .iter()
            .map(|r| {
                let counts = [r.ios, r.reads, r.writes, r.errors, r.verified];
                let mut row = Row::new(
                    (Some(r.device.clone()), Some(r.nsid), Some(r.core)),
                    counts,
                    r.ios * r.io_size as u64,
                    r.elapsed_ns,
                    r.busy_ns,
                    r.batches,
                    &r.latency,
                );
                row.mismatches = r.mismatches;
                row.queue = r.queue;
                merged.merge(&r.latency);
                for (s, c) in sums.iter_mut().zip(counts) {
                    *s += c;
                }
                busy += r.busy_ns;
                batches += r.batches;
                mismatches += r.mismatches;
                iops += row.iops;
                mib_s += row.mib_s;
                elapsed = elapsed.max(r.elapsed_ns);
                row
            })
            .collect();
        let mut total = Row::new((None, None, None), sums, 0, elapsed, busy, batches, &merged);
        // Every worker measured the same window: the total rate is the sum
        // of the rates.
        total.iops = iops;
        total.mib_s = mib_s;
        total.mismatches = mismatches;
        if results.iter().all(|r| r.queue.is_some()) && !results.is_empty() {
            let mut q = QueueCounts::default();
            for r in results.iter().filter_map(|r| r.queue.as_ref()) {
                q.add(r);
            }
            total.queue = Some(q);
        }
        Report { rows, total }
    }

    /// The table for people.
    pub fn table(&self) -> String {
        let mut s = String::new();
        // Device, NSID and core take 24 columns, then 10 figures of 11.
        let lat = 24 + 2 * 11;
        let _ = writeln!(s, "{:lat$}{:^88}", "", "Latency (us)");
        let s0 = s.trim_end().len();
        s.truncate(s0);
        s.push('\n');
        let _ = write!(
            s,
            "{:<14} {:>4} {:>4} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "Device", "NSID", "core", "IOPS", "MiB/s", "average", "min", "max"
        );
        for p in PERCENTILES {
            let _ = write!(s, " {:>10}", format!("p{p}"));
        }
        s.push('\n');
        let line = |s: &mut String, r: &Row| {
            let l = &r.latency;
            let _ = write!(
                s,
                "{} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
                r.label(),
                r.iops,
                r.mib_s,
                l.avg_us,
                l.min_us,
                l.max_us
            );
            for v in l.percentiles_us {
                let _ = write!(s, " {v:>10.2}");
            }
            s.push('\n');
        };
        for r in &self.rows {
            line(&mut s, r);
        }
        let _ = writeln!(s, "{}", "=".repeat(lat + 8 * 11));
        line(&mut s, &self.total);
        let t = &self.total;
        let _ = writeln!(
            s,
            "\nI/Os in {:.2} s: {} ({} reads, {} writes); errors: {}",
            t.elapsed_s, t.ios, t.reads, t.writes, t.errors
        );
        if t.verified > 0 || t.mismatches > 0 {
            let _ = writeln!(
                s,
                "verify: {} reads checked against what was written, {} mismatches",
                t.verified, t.mismatches
            );
        }
        let _ = writeln!(
            s,
            "CPU: {:.2} us busy per I/O (completion handling + submission, without empty polls); {:.1} completions per poll",
            t.busy_ns_per_io / 1000.0,
            t.completions_per_batch
        );
        if let Some(q) = &t.queue {
            let (sq, cq, polls) = q.per_io();
            let _ = writeln!(
                s,
                "Queue (whole run, {} commands): per I/O {sq:.2} submission + {cq:.2} completion doorbell writes, {polls:.1} polls",
                q.completions
            );
        }
        s
    }

    /// The rows and the total as JSON.
    pub fn to_json(&self) -> (Json, Json) {
        (
            Json::Arr(self.rows.iter().map(Row::to_json).collect()),
            self.total.to_json(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(core: usize, ios: u64, lat_us: u64, elapsed_s: u64) -> WorkerResult {
        let mut latency = LatencyStats::new();
        for _ in 0..ios {
            latency.record(lat_us * 1000);
        }
        WorkerResult {
            device: "0000:00:04.0".into(),
            nsid: 1,
            core,
            io_size: 4096,
            ios,
            reads: ios,
            writes: 0,
            errors: 0,
            verified: 0,
            mismatches: 0,
            elapsed_ns: elapsed_s * 1_000_000_000,
            busy_ns: ios * 2_000,
            batches: ios / 4,
            latency,
            queue: None,
        }
    }

    #[test]
    fn rates_and_totals() {
        let a = result(0, 100_000, 40, 2); // 50 000 IOPS at 40 us
        let mut b = result(1, 20_000, 200, 2); // 10 000 IOPS at 200 us
        b.writes = 5_000;
        b.reads = 15_000;
        b.errors = 3;
        b.mismatches = 1;
        b.verified = 7;
        let r = Report::new(&[a, b]);
        assert_eq!(r.rows.len(), 2);
        assert_eq!(r.rows[0].iops, 50_000.0);
        // 50 000 x 4096 B / 2^20 = 195.3125 MiB/s
        assert_eq!(r.rows[0].mib_s, 195.3125);
        assert_eq!(r.rows[1].iops, 10_000.0);
        let t = &r.total;
        assert_eq!(t.iops, 60_000.0);
        assert_eq!(t.mib_s, 195.3125 + 39.0625);
        assert_eq!((t.ios, t.reads, t.writes), (120_000, 115_000, 5_000));
        assert_eq!((t.errors, t.mismatches, t.verified), (3, 1, 7));
        assert_eq!(t.elapsed_s, 2.0);
        // Mean over all I/Os: (100 000 x 40 + 20 000 x 200) / 120 000.
        assert!((t.latency.avg_us - 66.666_666).abs() < 1e-3);
        assert_eq!(t.latency.min_us, 40.0);
        assert_eq!(t.latency.max_us, 200.0);
        // 5/6 of the I/Os took 40 us: p50 is 40, p90 and up 200.
        assert!((t.latency.percentiles_us[0] - 40.0).abs() < 0.05);
        assert!((t.latency.percentiles_us[1] - 200.0).abs() < 0.2);
        assert_eq!(t.busy_ns_per_io, 2_000.0);
        assert_eq!(t.completions_per_batch, 4.0);
    }

    #[test]
    fn table_and_json_carry_the_figures() {
        let r = Report::new(&[result(0, 100_000, 40, 2)]);
        let table = r.table();
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[1].starts_with("Device"), "{table}");
        assert!(lines[1].contains("p99.99"));
        assert!(lines[2].starts_with("0000:00:04.0      1    0   50000.00     195.31      40.00"));
        assert!(table.contains("\nTotal "));
        assert!(table.contains("2.00 us busy per I/O"));
        let (rows, total) = r.to_json();
        let rows = Json::parse(&rows.to_string()).unwrap();
        let row = &rows.as_array().unwrap()[0];
        assert_eq!(
            row.get("device").and_then(Json::as_str),
            Some("0000:00:04.0")
        );
        assert_eq!(row.get("iops").and_then(Json::as_f64), Some(50_000.0));
        let lat = row.get("latency_us").unwrap();
        assert_eq!(lat.get("p99_99").and_then(Json::as_f64), Some(40.0));
        assert_eq!(lat.get("avg").and_then(Json::as_f64), Some(40.0));
        assert!(total.get("device").is_none());
        assert_eq!(total.get("mib_s").and_then(Json::as_f64), Some(195.3125));
    }

    #[test]
    fn an_empty_window_reports_zeros_not_nan() {
        let r = Report::new(&[result(0, 0, 40, 0)]);
        assert_eq!(r.total.iops, 0.0);
        assert_eq!(r.total.busy_ns_per_io, 0.0);
        assert_eq!(r.total.latency.avg_us, 0.0);
        assert!(!r.table().contains("NaN"));
    }
}
