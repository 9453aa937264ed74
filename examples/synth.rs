//! A synthetic estate for benchmarks: prints a static inventory (YAML) with about `ADDRESSES`
//! member addresses in `GROUPS` groups with `RULES` ingress rules in all, deterministically.
//!
//! `cargo run --example synth -- 100000 5000 20000 > inventory.yaml`

use std::fmt::Write;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let addresses = args.first().copied().unwrap_or(1000);
    let groups = args.get(1).copied().unwrap_or((addresses / 20).max(1));
    let rules = args.get(2).copied().unwrap_or(groups * 4);
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut out = String::new();
    out.push_str("networks:\n  - {id: vpc-synth, cidrs: [10.0.0.0/8, \"fd00::/16\"]}\ngroups:\n");
    for g in 0..groups {
        let _ = writeln!(out, "  - id: sg-{g:05}\n    ingress:");
        let n = rules / groups + u64::from(g < rules % groups);
        for r in 0..n {
            let src = rng.below(groups);
            let line = match (g + r) % 5 {
                0 => format!("{{proto: tcp, ports: {}, from: {{groups: [sg-{src:05}]}}}}", 1 + rng.below(65000)),
                1 => {
                    let a = 1 + rng.below(60000);
                    format!("{{proto: udp, ports: \"{a}-{}\", from: {{groups: [sg-{src:05}]}}}}", a + rng.below(100))
                }
                2 => format!("{{proto: icmp, icmp_type: 8, from: {{groups: [sg-{src:05}], cidrs: [10.{}.0.0/16]}}}}", rng.below(256)),
                3 => format!(
                    "{{proto: tcp, ports: {}, from: {{cidrs: [10.{}.{}.0/24, \"fd00:{:x}::/64\"]}}}}",
                    1 + rng.below(65000),
                    rng.below(256),
                    rng.below(256),
                    rng.below(65536)
                ),
                _ => format!("{{proto: all, from: {{groups: [sg-{src:05}]}}}}"),
            };
            let _ = writeln!(out, "      - {line}");
        }
    }
    out.push_str("hosts:\n");
    let mut made = 0u64;
    let mut h = 0u64;
    while made < addresses {
        let v4 = 0x0a00_0000u32 + (h as u32) * 2 + 1;
        let a = std::net::Ipv4Addr::from(v4);
        let g1 = rng.below(groups);
        let (addrs, n) = if h.is_multiple_of(4) {
            (
                format!("[{a}, \"fd00::{:x}:{:x}\"]", h >> 16, h & 0xffff),
                2,
            )
        } else {
            (format!("[{a}]"), 1)
        };
        let grp = if h.is_multiple_of(7) {
            format!("[sg-{g1:05}, sg-{:05}]", rng.below(groups))
        } else {
            format!("[sg-{g1:05}]")
        };
        let _ = writeln!(
            out,
            "  - {{id: eni-{h:07}, addresses: {addrs}, groups: {grp}}}"
        );
        made += n;
        h += 1;
    }
    print!("{out}");
}
