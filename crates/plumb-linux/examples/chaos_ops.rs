//! Times a chaos fault's kernel work: a tap on a bridge plus a clsact qdisc and u32 redirects
//! (`Op::TapAdd` + `Op::TcRedirect`), and its removal (`Op::TcClear` + `Op::LinkDel`), made
//! by plumb's execution (netlink and tun ioctls) and by running the `ip`, `bridge` and `tc`
//! commands `--dry-run` prints (as plumb did before). Root, in a sandbox only:
//!
//! ```sh
//! cargo build --release -p plumb-linux --example chaos_ops
//! ../shared/scripts/sandbox target/release/examples/chaos_ops 50
//! ```

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use plumb_core::kernel::Kernel;
use plumb_core::ops::Op;
use plumb_linux::kernel::LinuxKernel;

fn sh(script: &str) {
    let status = Command::new("sh").args(["-c", script]).status().expect("sh");
    assert!(status.success(), "{script}");
}

fn run(argv: &[String]) {
    let status = Command::new(&argv[0]).args(&argv[1..]).status().expect("spawn");
    assert!(status.success(), "{argv:?}");
}

fn median(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1000.0
}

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .map_or(20, |n| n.parse().expect("a number of runs"));
    let mut nl = plumb_linux::Netlink::open().expect("netlink");
    assert!(
        !plumb_linux::link::list(&mut nl)
            .expect("links")
            .iter()
            .any(|l| l.name == "eth0"),
        "run me in a sandbox (../shared/scripts/sandbox), not in the machine's own namespace"
    );
    sh(
        "ip link add plbbench type bridge && ip link add plvbench type veth peer name plpbench \
        && ip link set plvbench master plbbench up && ip link set plpbench up && ip link set plbbench up",
    );
    let tap = "plcbench".to_string();
    let to: Vec<Ipv4Addr> = (2..5).map(|i| Ipv4Addr::new(10, 89, 99, i)).collect();
    let make = [
        Op::TapAdd {
            name: tap.clone(),
            bridge: "plbbench".into(),
            alias: "plumb:bench/chaos-1/a-1/eth0".into(),
        },
        Op::TcRedirect {
            dev: "plvbench".into(),
            tap: tap.clone(),
            to,
        },
    ];
    let clear = Op::TcClear { dev: "plvbench".into() };
    let delete = Op::LinkDel { name: tap.clone() };
    let mut kernel = LinuxKernel::new().expect("netlink");
    let (mut nl_make, mut nl_clear, mut tool_make, mut tool_clear) = (vec![], vec![], vec![], vec![]);
    for _ in 0..runs {
        let t = Instant::now();
        for op in &make {
            kernel.apply(op).expect("apply");
        }
        nl_make.push(t.elapsed());
        let t = Instant::now();
        kernel.apply(&clear).expect("clear");
        nl_clear.push(t.elapsed());
        kernel.apply(&delete).expect("delete");

        let t = Instant::now();
        for op in &make {
            for argv in op.tool_commands() {
                run(&argv);
            }
        }
        tool_make.push(t.elapsed());
        let t = Instant::now();
        run(&["tc", "qdisc", "del", "dev", "plvbench", "clsact"].map(String::from));
        tool_clear.push(t.elapsed());
        kernel.apply(&delete).expect("delete");
    }
    sh("ip link del plvbench && ip link del plbbench");
    println!(
        "{runs} runs, median ms: tap+tc make: netlink {:.2}, commands {:.2}; tc clear: netlink {:.2}, command {:.2}",
        median(nl_make),
        median(tool_make),
        median(nl_clear),
        median(tool_clear)
    );
}
