//! Server-wide CPU and memory figures: Triton's `nv_cpu_*` families (machine-wide, refreshed
//! every `--metrics-interval-ms` by a task the server owns) and the standard `process_*`
//! families of this process (read at scrape time by the prometheus crate's process collector).

use parking_lot::Mutex;

use prometheus::core::Collector;
use prometheus::proto::MetricFamily;

// Triton's server-wide CPU families (re-exported by `metrics` with the other names).
pub(crate) const CPU_UTILIZATION: &str = "nv_cpu_utilization";
pub(crate) const CPU_MEMORY_TOTAL_BYTES: &str = "nv_cpu_memory_total_bytes";
pub(crate) const CPU_MEMORY_USED_BYTES: &str = "nv_cpu_memory_used_bytes";

#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct CpuTimes {
    busy: u64,
    total: u64,
}

#[derive(Debug, Default)]
struct Sample {
    last: Option<CpuTimes>,
    utilization: f64,
    mem_total: u64,
    mem_used: u64,
}

pub struct SystemMetrics {
    sample: Mutex<Sample>,
    #[cfg(target_os = "linux")]
    process: prometheus::process_collector::ProcessCollector,
}

impl Default for SystemMetrics {
    fn default() -> Self {
        SystemMetrics {
            sample: Mutex::new(Sample::default()),
            #[cfg(target_os = "linux")]
            process: prometheus::process_collector::ProcessCollector::for_self(),
        }
    }
}

impl SystemMetrics {
    /// Reads /proc once: CPU utilization since the previous refresh, and memory in use.
    /// Blocking file reads of a few hundred bytes; cheap enough for an async worker.
    pub fn refresh(&self) {
        let cpu = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| parse_cpu(&s));
        let mem = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| parse_meminfo(&s));
        let mut s = self.sample.lock();
        if let Some(now) = cpu {
            if let Some(prev) = s.last {
                let total = now.total.saturating_sub(prev.total);
                let busy = now.busy.saturating_sub(prev.busy);
                if total > 0 {
                    s.utilization = busy as f64 / total as f64;
                }
            }
            s.last = Some(now);
        }
        if let Some((total, used)) = mem {
            s.mem_total = total;
            s.mem_used = used;
        }
    }

    pub fn families(&self, cpu_metrics: bool) -> Vec<MetricFamily> {
        let mut out = Vec::new();
        if cpu_metrics {
            let s = self.sample.lock();
            let gauge = |name: &str, help: &str, v: f64| {
                let g = prometheus::Gauge::new(name, help).expect("valid gauge");
                g.set(v);
                g.collect()
            };
            out.extend(gauge(
                CPU_UTILIZATION,
                "CPU utilization rate [0.0 - 1.0]",
                s.utilization,
            ));
            out.extend(gauge(
                CPU_MEMORY_TOTAL_BYTES,
                "CPU total memory (RAM), in bytes",
                s.mem_total as f64,
            ));
            out.extend(gauge(
                CPU_MEMORY_USED_BYTES,
                "CPU used memory (RAM), in bytes",
                s.mem_used as f64,
            ));
        }
        #[cfg(target_os = "linux")]
        out.extend(self.process.collect());
        out
    }
}

/// The aggregate `cpu` line of /proc/stat: user nice system idle iowait irq softirq steal ...
fn parse_cpu(stat: &str) -> Option<CpuTimes> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 4 {
        return None;
    }
    // guest and guest_nice (9th, 10th) are already counted in user and nice.
    let total: u64 = v.iter().take(8).sum();
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    Some(CpuTimes {
        busy: total - idle,
        total,
    })
}

/// (total, used) bytes; used = MemTotal - MemAvailable.
fn parse_meminfo(info: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        info.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    let total = field("MemTotal:")?;
    let available = field("MemAvailable:").or_else(|| field("MemFree:"))?;
    Some((total, total.saturating_sub(available)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let stat = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n";
        assert_eq!(
            parse_cpu(stat),
            Some(CpuTimes {
                busy: 150,
                total: 1000
            })
        );
        let mem = "MemTotal:       1000 kB\nMemFree:         100 kB\nMemAvailable:    400 kB\n";
        assert_eq!(parse_meminfo(mem), Some((1_024_000, 614_400)));
    }

    #[test]
    fn refresh_reports_machine_figures() {
        let s = SystemMetrics::default();
        s.refresh();
        s.refresh();
        let names: Vec<String> = s
            .families(true)
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        assert!(names.contains(&CPU_UTILIZATION.to_string()));
        #[cfg(target_os = "linux")]
        assert!(names.iter().any(|n| n == "process_resident_memory_bytes"));
    }
}
