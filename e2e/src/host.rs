//! What the machine did while a benchmark level ran: CPU time by kind (`/proc/stat`) and the
//! bytes written to the disk that holds the cluster's data (`/proc/diskstats`). A rate that
//! stops rising while the CPU still has idle time waits on something else, usually the disk;
//! bytes written per delivery show what a change costs the disk. Linux only: elsewhere, or
//! when the data lies on a device without disk statistics (an overlay or tmpfs), the figures
//! are absent.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Cumulative CPU ticks of the whole machine, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTicks {
    /// User, nice, system, irq and softirq.
    pub busy: u64,
    pub idle: u64,
    pub iowait: u64,
    /// Taken by the hypervisor for other guests.
    pub steal: u64,
}

/// The machine's counters at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    cpu: Option<CpuTicks>,
    written_sectors: Option<u64>,
}

/// What happened between two samples.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Usage {
    /// Shares of all CPU time (0–1).
    pub busy: f64,
    pub iowait: f64,
    pub steal: f64,
    /// Bytes written to the data's disk.
    pub written_bytes: Option<u64>,
}

/// The counters to sample for a benchmark whose data lies under `dir`.
pub struct Host {
    /// Major and minor number of the device holding the data.
    device: Option<(u64, u64)>,
}

impl Host {
    pub fn for_dir(dir: &Path) -> Self {
        let device = std::fs::metadata(dir).ok().map(|m| split_dev(m.dev()));
        Self { device }
    }

    pub fn sample(&self) -> Sample {
        let cpu = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|text| parse_cpu(&text));
        let written_sectors = self.device.and_then(|device| {
            std::fs::read_to_string("/proc/diskstats")
                .ok()
                .and_then(|text| parse_written_sectors(&text, device))
        });
        Sample {
            cpu,
            written_sectors,
        }
    }
}

impl Sample {
    /// The usage from `self` to `later`; `None` without CPU figures.
    pub fn until(&self, later: &Sample) -> Option<Usage> {
        let (a, b) = (self.cpu?, later.cpu?);
        let busy = b.busy.saturating_sub(a.busy);
        let idle = b.idle.saturating_sub(a.idle);
        let iowait = b.iowait.saturating_sub(a.iowait);
        let steal = b.steal.saturating_sub(a.steal);
        let total = (busy + idle + iowait + steal).max(1) as f64;
        let written_bytes = match (self.written_sectors, later.written_sectors) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a) * 512),
            _ => None,
        };
        Some(Usage {
            busy: busy as f64 / total,
            iowait: iowait as f64 / total,
            steal: steal as f64 / total,
            written_bytes,
        })
    }
}

/// The CPU busy and I/O-wait shares and the disk KiB written per unit of work (`units` of it
/// done in the window), formatted for a benchmark's table; "-" where a figure is absent.
pub fn columns(usage: Option<Usage>, units: f64) -> [String; 3] {
    let percent = |share: f64| format!("{:.0}%", share * 100.0);
    let Some(usage) = usage else {
        return ["-".into(), "-".into(), "-".into()];
    };
    let written = usage
        .written_bytes
        .filter(|_| units > 0.0)
        .map_or("-".into(), |bytes| {
            format!("{:.1}", bytes as f64 / 1024.0 / units)
        });
    [percent(usage.busy), percent(usage.iowait), written]
}

/// The machine's line of `/proc/stat` (`cpu  user nice system idle iowait irq softirq
/// steal …`).
fn parse_cpu(stat: &str) -> Option<CpuTicks> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let at = |i: usize| v.get(i).copied();
    Some(CpuTicks {
        busy: at(0)? + at(1)? + at(2)? + at(5)? + at(6)?,
        idle: at(3)?,
        iowait: at(4)?,
        steal: at(7).unwrap_or(0),
    })
}

/// Sectors (512 bytes, whatever the device's own size) written to `device`, from its line of
/// `/proc/diskstats` (`major minor name reads merged sectors ms writes merged sectors …`).
fn parse_written_sectors(diskstats: &str, device: (u64, u64)) -> Option<u64> {
    diskstats.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let number = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
        if (number(0)?, number(1)?) == device {
            number(9)
        } else {
            None
        }
    })
}

/// Major and minor number of a `st_dev` (glibc's encoding, as `major(3)` and `minor(3)`).
fn split_dev(dev: u64) -> (u64, u64) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & 0xffff_f000);
    let minor = (dev & 0xff) | ((dev >> 12) & 0xffff_ff00);
    (major, minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  100 5 40 800 30 3 2 20 0 0\ncpu0 50 2 20 400 15 1 1 10 0 0\nintr 1\n";
    const DISKSTATS: &str = "\
 253       0 vda 4000 10 90000 500 7000 300 120000 9000 0 5000 9500 0 0 0 0
 253       1 vda1 3900 10 88000 490 6900 300 118000 8900 0 4900 9400 0 0 0 0
 259       0 nvme0n1 1 0 8 0 2 0 16 0 0 0 0 0 0 0 0
";

    #[test]
    fn reads_the_machines_cpu_line_and_the_datas_device() {
        assert_eq!(
            parse_cpu(STAT),
            Some(CpuTicks {
                busy: 100 + 5 + 40 + 3 + 2,
                idle: 800,
                iowait: 30,
                steal: 20,
            })
        );
        assert_eq!(parse_cpu("intr 1\n"), None);
        assert_eq!(parse_cpu("cpu  1 2 x\n"), None, "a field that is no number");
        assert_eq!(parse_written_sectors(DISKSTATS, (253, 1)), Some(118_000));
        assert_eq!(parse_written_sectors(DISKSTATS, (253, 0)), Some(120_000));
        assert_eq!(parse_written_sectors(DISKSTATS, (8, 0)), None);
    }

    #[test]
    fn usage_is_the_difference_as_shares_of_all_cpu_time() {
        let before = Sample {
            cpu: Some(CpuTicks {
                busy: 1000,
                idle: 500,
                iowait: 10,
                steal: 0,
            }),
            written_sectors: Some(100),
        };
        let after = Sample {
            cpu: Some(CpuTicks {
                busy: 1150,
                idle: 530,
                iowait: 20,
                steal: 10,
            }),
            written_sectors: Some(300),
        };
        let usage = before.until(&after).unwrap();
        assert_eq!(usage.busy, 0.75);
        assert_eq!(usage.iowait, 0.05);
        assert_eq!(usage.steal, 0.05);
        assert_eq!(usage.written_bytes, Some(200 * 512));
        let no_disk = Sample {
            written_sectors: None,
            ..after
        };
        assert_eq!(before.until(&no_disk).unwrap().written_bytes, None);
        assert!(Sample::default().until(&after).is_none());
        assert_eq!(columns(Some(usage), 50.0), ["75%", "5%", "2.0"]);
        assert_eq!(columns(Some(usage), 0.0), ["75%", "5%", "-"]);
        assert_eq!(columns(None, 50.0), ["-", "-", "-"]);
    }

    /// The encoding of `makedev(3)`, both for small numbers and for those past 8/12 bits.
    #[test]
    fn splits_device_numbers_as_glibc_does() {
        assert_eq!(split_dev(0xfd01), (0xfd, 0x01));
        let dev = (0x1234u64 & 0xfff) << 8
            | (0x1234u64 & 0xffff_f000) << 32
            | (0x56789u64 & 0xff)
            | (0x56789u64 & 0xffff_ff00) << 12;
        assert_eq!(split_dev(dev), (0x1234, 0x56789));
    }

    /// On this machine the data directory's device has statistics, or it lies on a device
    /// that has none; either way a sample of the CPU is taken.
    #[test]
    fn samples_this_machine() {
        let host = Host::for_dir(Path::new("."));
        let (a, b) = (host.sample(), host.sample());
        assert!(a.until(&b).is_some(), "/proc/stat is readable on Linux");
    }
}
