//! Deterministic synthetic inventories for benchmarks and load tests.
//!
//! The same (rows, projects, seed) always gives the same bytes, so runs are
//! comparable. Names mix ASCII and Chinese, devices have numbers in their
//! names (to exercise natural order), and the rows come shuffled (to
//! exercise sorting).

use crate::CSV_HEADER;
use std::io::Write;

/// A small, fast, deterministic generator (xorshift64*); not for secrets.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Writes a CSV inventory of `rows` rows spread over `projects` projects.
pub fn write_csv(mut out: impl Write, rows: u64, projects: u64, seed: u64) -> std::io::Result<()> {
    const PROVIDERS: [&str; 5] = ["AWS", "Azure", "GCP", "On-prem", "Alibaba Cloud"];
    const PROTOCOLS: [(&str, &str); 5] = [
        ("SSH", "22"),
        ("RDP", "3389"),
        ("VNC", "5900"),
        ("PostgreSQL", "5432"),
        ("HTTPS", "443"),
    ];
    const ROLES: [&str; 6] = ["web", "db", "app", "jump", "win", "cache"];
    let mut rng = XorShift(seed.max(1));
    writeln!(out, "{}", CSV_HEADER.join(","))?;
    let projects = projects.max(1);
    for _ in 0..rows {
        let project = rng.below(projects);
        let project_name = if project.is_multiple_of(3) {
            format!("專案-{project:05}")
        } else {
            format!("project-{project:05}")
        };
        let (protocol, port) = PROTOCOLS[rng.below(5) as usize];
        let device = format!("{}-{}", ROLES[rng.below(6) as usize], rng.below(100_000));
        let password: String = (0..16)
            .map(|_| char::from(b'!' + rng.below(94) as u8))
            .filter(|c| !matches!(c, ',' | '"'))
            .collect();
        writeln!(
            out,
            "{project_name},{},{device},{protocol},203.0.{}.{},10.{}.{}.{},,{port},password,admin{},{password},,",
            PROVIDERS[rng.below(5) as usize],
            rng.below(256),
            rng.below(256),
            rng.below(256),
            rng.below(256),
            rng.below(256),
            rng.below(4),
        )?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RowCounter;
    use crate::csv_file::read_csv;

    #[test]
    fn generated_inventories_are_deterministic_and_readable() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        write_csv(&mut a, 500, 7, 42).unwrap();
        write_csv(&mut b, 500, 7, 42).unwrap();
        assert_eq!(a, b);
        let inventory = read_csv(a.as_slice(), "gen", &RowCounter::new()).unwrap();
        assert_eq!(inventory.row_count(), 500);
        assert!(inventory.into_sorted().unwrap().projects.len() <= 7);
    }
}
