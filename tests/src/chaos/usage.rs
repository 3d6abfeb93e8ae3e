//! What a process holds, from /proc: resident memory, open descriptors,
//! threads. And the least-squares slope of a series of samples (the soak's
//! "flat" check).

use std::time::Instant;

/// One reading of a process's resources.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// Resident set, KiB (`VmRSS`).
    pub rss_kib: u64,
    /// Open file descriptors.
    pub fds: u64,
    /// Threads.
    pub threads: u64,
}

/// A `Key:` line of /proc/PID/status, first number.
fn status_field(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The resources of `pid` now (zeros when it is gone).
pub fn usage(pid: u32) -> Usage {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    Usage {
        rss_kib: status_field(&status, "VmRSS"),
        fds,
        threads: status_field(&status, "Threads"),
    }
}

/// Samples over time: (seconds since the first, value).
#[derive(Debug, Default, Clone)]
pub struct Series {
    start: Option<Instant>,
    /// The samples.
    pub points: Vec<(f64, f64)>,
}

impl Series {
    /// Adds a sample taken now.
    pub fn push(&mut self, value: f64) {
        let start = *self.start.get_or_insert_with(Instant::now);
        self.points.push((start.elapsed().as_secs_f64(), value));
    }

    /// Least-squares slope, units per minute (0 with fewer than 2 samples).
    pub fn slope_per_minute(&self) -> f64 {
        let n = self.points.len() as f64;
        if self.points.len() < 2 {
            return 0.0;
        }
        let mx = self.points.iter().map(|p| p.0).sum::<f64>() / n;
        let my = self.points.iter().map(|p| p.1).sum::<f64>() / n;
        let sxy: f64 = self.points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
        let sxx: f64 = self.points.iter().map(|p| (p.0 - mx).powi(2)).sum();
        if sxx == 0.0 {
            0.0
        } else {
            60.0 * sxy / sxx
        }
    }

    /// Largest sample.
    pub fn max(&self) -> f64 {
        self.points.iter().map(|p| p.1).fold(f64::MIN, f64::max)
    }

    /// First sample.
    pub fn first(&self) -> f64 {
        self.points.first().map_or(0.0, |p| p.1)
    }

    /// Last sample.
    pub fn last(&self) -> f64 {
        self.points.last().map_or(0.0, |p| p.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_of_a_line() {
        let series = Series {
            start: None,
            points: vec![(0.0, 1.0), (30.0, 2.0), (60.0, 3.0)],
        };
        assert!((series.slope_per_minute() - 2.0).abs() < 1e-9);
    }
}
