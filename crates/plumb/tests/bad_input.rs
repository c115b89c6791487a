//! Bad input is rejected before anything is touched, with the file, line and field at fault
//! and what to do; the machine (here: the sandbox) is left exactly as it was.

mod common;

use common::*;

const NET: &str = "name = \"bad\"\n[networks.n]\nsubnet = \"10.0.0.0/24\"\n";

/// Runs `plumb up` on `stack`; asserts exit code 2, every `needles` in stderr, nothing made.
/// Returns stderr.
fn rejected(sb: &Sandbox, stack: &str, needles: &[&str]) -> String {
    sb.write("plumb.toml", stack);
    let out = sb.plumb(&["up"]);
    let err = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "expected an input error for:\n{stack}\nstderr: {err}"
    );
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}:\n{err}");
    }
    assert!(err.contains("hint:"), "no hint in:\n{err}");
    sb.assert_clean();
    assert!(
        !sb.state_dir.join("stacks/bad").exists(),
        "no state may be written for a rejected file"
    );
    err
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn each_kind_of_bad_input_is_named_and_nothing_is_created() {
    let Some(sb) = Sandbox::start() else { return };
    rejected(
        &sb,
        "name = \"bad\"\n[networks.n]\nsubnet = \"10.0.0.0/33\"\n",
        &["plumb.toml:3:10", "networks.n.subnet", "not a valid IPv4 CIDR"],
    );
    rejected(
        &sb,
        &format!("{NET}[networks.m]\nsubnet = \"10.0.0.0/16\"\n"),
        &["plumb.toml:5:", "networks.m.subnet", "overlaps network \"n\""],
    );
    rejected(
        &sb,
        &format!("{NET}[services.a.networks.n]\nip = \"192.168.1.1\"\n"),
        &["services.a.networks.n.ip", "not a host address of network \"n\""],
    );
    rejected(
        &sb,
        &format!("{NET}[services.a.networks.n]\nip = \"10.0.0.9\"\n[services.b.networks.n]\nip = \"10.0.0.9\"\n"),
        &["10.0.0.9 is already used by service \"a\""],
    );
    rejected(
        &sb,
        &format!("{NET}[services.a]\nnetworks = [\"nope\"]\n"),
        &["plumb.toml:5:", "unknown network \"nope\"", "use one of: n"],
    );
    rejected(
        &sb,
        &format!("{NET}[services.a]\n[services.a]\n"),
        &["plumb.toml:5:", "duplicate"],
    );
    rejected(
        &sb,
        "name = \"a-name-too-long\"\n",
        &["plumb.toml:1:8", "name:", "1 to 12"],
    );
    rejected(
        &sb,
        &format!("{NET}[services.{}]\n", "x".repeat(60)),
        &["service name", "is not valid"],
    );
    rejected(
        &sb,
        &format!("{NET}[services.a]\nports = [\"80:80\"]\n[services.b]\nports = [\"80:81\"]\n"),
        &["services.b.ports[0]", "host port 80/tcp is already published"],
    );
    rejected(
        &sb,
        &format!("{NET}[services.a]\nvolumes = [\"/data\"]\n"),
        &["plumb.toml:5:1", "unknown field `volumes`"],
    );
    rejected(
        &sb,
        &format!("{NET}[services.a]\nimage = \"Nginx\"\n"),
        &["plumb.toml:5:9", "services.a.image", "image names are lower case"],
    );
    rejected(
        &sb,
        &format!("{NET}[services.a]\nbuild = \"no-such-folder\"\n"),
        &["services.a.build", "no-such-folder is not a folder"],
    );
    // The sandbox host routes 203.0.113.0/24 through its uplink.
    rejected(
        &sb,
        "name = \"bad\"\n[networks.n]\nsubnet = \"203.0.113.128/25\"\n",
        &[
            "networks.n.subnet",
            "overlaps the host's route to 203.0.113.0/24 via up0",
        ],
    );
    rejected(
        &sb,
        "name = \"bad\"\n[networks.n]\nsubnet = \"10.0.0.0/30\"\n[services.a]\nreplicas = 3\n",
        &["networks.n.subnet", "no free address left"],
    );
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn errors_are_drawn_with_the_offending_text_underlined() {
    let Some(sb) = Sandbox::start() else { return };
    // "env" also occurs in "printenv": the error must point at env's bad value all the same.
    let err = rejected(
        &sb,
        &format!("{NET}[services.a]\ncommand = \"printenv\"\nenv = {{ A = [1] }}\n"),
        &["plumb.toml:6:13", "services.a.env.A", "environment values must be"],
    );
    assert!(
        err.contains("6 | env = { A = [1] }\n  |             ^^^\n"),
        "no underlined line in:\n{err}"
    );
    // stderr is a pipe here: no colours.
    assert!(!err.contains('\u{1b}'), "colour codes in:\n{err}");
    // Host bits set: the fix, and no second error for the service that joins the network.
    let err = rejected(
        &sb,
        "name = \"bad\"\n[networks.n]\nsubnet = \"10.0.0.5/24\"\n[services.a]\nnetworks = [\"n\"]\n",
        &[
            "plumb.toml:3:10",
            "networks.n.subnet",
            "host bits set",
            "use \"10.0.0.0/24\"",
        ],
    );
    assert!(!err.contains("unknown network"), "{err}");
    assert_eq!(err.matches("error:").count(), 1, "{err}");
    // A table written as a header, the bad field below it.
    rejected(
        &sb,
        &format!("{NET}[services.a]\ncommand = \"x\"\n[services.a.health]\ntcp = 80\ninterval = \"soon\"\n"),
        &["plumb.toml:8:12", "services.a.health.interval", "is not a duration"],
    );
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn a_missing_file_is_named() {
    let Some(sb) = Sandbox::start() else { return };
    let out = sb.plumb(&["up", "-f", "nowhere.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot read stack file nowhere.toml"));
    sb.assert_clean();
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn plumb_refuses_without_root_or_nft_and_says_what_to_do() {
    let Some(sb) = Sandbox::start() else { return };
    sb.write("plumb.toml", &format!("{NET}[services.a]\n"));
    let out = sb.plumb_as_nobody("up");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("needs root") && err.contains("sudo"), "{err}");
    // What plumb would do can still be seen without root: the plan from scratch.
    sb.plumb_ok(&["up"]);
    let out = sb.plumb_as_nobody("up --dry-run");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("ip netns add"), "{}", text(&out.stdout));
    assert!(text(&out.stderr).contains("not running as root"));
    sb.plumb_ok(&["down"]);

    // A stack name is never a path: `down ../x` touches nothing outside the state directory.
    sb.ok("mkdir -p victim/stacks && echo '{}' > victim/state.json");
    for name in ["../victim", "../../victim/..", "a/b", ""] {
        let out = sb.plumb(&["down", name]);
        assert_eq!(out.status.code(), Some(2), "down {name:?}: {}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("is not a stack name"),
            "{}",
            text(&out.stderr)
        );
    }
    assert!(sb.dir.join("victim/state.json").exists());
    sb.ok("rm -r victim");

    let out = sb.sh(&format!("PATH=/nonexistent {PLUMB} up"));
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("`nft` program is not installed") && err.contains("apt-get install nftables"),
        "{err}"
    );
    sb.assert_clean();
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn probes_faster_than_100ms_or_longer_than_their_interval_are_refused() {
    let Some(sb) = Sandbox::start() else { return };
    for interval in ["0s", "1ms"] {
        rejected(
            &sb,
            &format!(
                "{NET}[services.a]\ncommand = \"/bin/sleep 60\"\nhealth = {{ tcp = 80, interval = \"{interval}\" }}\n"
            ),
            &[
                "plumb.toml:6:33",
                "services.a.health.interval",
                "is too short",
                "at least \"100ms\"",
            ],
        );
    }
    rejected(
        &sb,
        &format!("{NET}[services.a]\ncommand = \"/bin/sleep 60\"\n[services.a.health]\ntcp = 80\ninterval = \"1s\"\ntimeout = \"5s\"\n"),
        &[
            "plumb.toml:9:11",
            "services.a.health.timeout",
            "timeout \"5s\" is longer than the interval (1s)",
        ],
    );
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn a_stack_of_more_than_4096_containers_is_refused() {
    let Some(sb) = Sandbox::start() else { return };
    // Over the limit together, each under it alone (a real `up` would make 4,200 namespaces).
    rejected(
        &sb,
        &format!("{NET}[services.a]\nnetworks = []\nreplicas = 2100\n[services.b]\nnetworks = []\nreplicas = 2100\n"),
        &[
            "plumb.toml:9:12",
            "services.b.replicas",
            "the stack has 4200 containers, more than the 4096 plumb runs in one stack",
        ],
    );
    rejected(
        &sb,
        &format!("{NET}[services.a]\nnetworks = []\nreplicas = 65000\n"),
        &[
            "plumb.toml:6:12",
            "services.a.replicas",
            "replicas = 65000 is out of range",
            "at most 4096 containers",
        ],
    );
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn reserved_address_ranges_are_refused_before_anything_is_made() {
    let Some(sb) = Sandbox::start() else { return };
    for (subnet, range) in [
        ("224.0.0.0/24", "224.0.0.0/4 (multicast)"),
        ("127.0.0.0/24", "127.0.0.0/8 (loopback)"),
        ("169.254.10.0/24", "169.254.0.0/16 (link-local)"),
        ("0.0.0.0/24", "0.0.0.0/8"),
        ("240.0.0.0/24", "240.0.0.0/4"),
    ] {
        rejected(
            &sb,
            &format!("name = \"bad\"\n[networks.n]\nsubnet = \"{subnet}\"\n[services.a]\n"),
            &[
                "plumb.toml:3:10",
                "networks.n.subnet",
                &format!("{subnet} is inside {range}"),
                "use a private range",
            ],
        );
    }
    rejected(
        &sb,
        &format!("{NET}gateway = \"169.254.0.1\"\n"),
        &[
            "plumb.toml:4:11",
            "networks.n.gateway",
            "169.254.0.1 is in 169.254.0.0/16",
        ],
    );
    rejected(
        &sb,
        &format!("{NET}[services.a.networks.n]\nip = \"127.0.0.5\"\n"),
        &[
            "plumb.toml:5:6",
            "services.a.networks.n.ip",
            "127.0.0.5 is in 127.0.0.0/8",
        ],
    );
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn nul_bytes_bad_variable_names_and_plumbs_own_variables_are_refused() {
    let Some(sb) = Sandbox::start() else { return };
    let service = "[services.a]\ncommand = \"/usr/bin/env\"\n";
    rejected(
        &sb,
        &format!("{NET}[services.a]\ncommand = [\"/bin/echo\", \"a\\u0000b\"]\n"),
        &[
            "plumb.toml:5:25",
            "services.a.command",
            "argument 1 of command contains a NUL byte",
        ],
    );
    rejected(
        &sb,
        &format!("{NET}{service}env = {{ A = \"x\\u0000y\" }}\n"),
        &[
            "plumb.toml:6:13",
            "services.a.env.A",
            "the value of A contains a NUL byte",
        ],
    );
    for (key, problem) in [
        ("\"\"", "an environment variable needs a name"),
        ("\"A=B\"", "environment variable name \"A=B\" contains '='"),
        ("\"A\\nB\"", "contains a control character"),
        ("PLUMB_SERVICE", "PLUMB_SERVICE is set by plumb"),
        ("PLUMB_ADDRS_A", "PLUMB_ADDRS_A is set by plumb"),
    ] {
        rejected(
            &sb,
            &format!("{NET}{service}env = {{ {key} = \"1\" }}\n"),
            &["plumb.toml:6:9", "services.a.env", problem],
        );
    }
    for key in ["workdir", "user"] {
        rejected(
            &sb,
            &format!("{NET}{service}{key} = \"a\\u0000b\"\n"),
            &[
                "plumb.toml:6:",
                &format!("services.a.{key}"),
                &format!("{key} contains a NUL byte"),
            ],
        );
    }
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn unknown_capabilities_are_refused_with_the_name_meant() {
    let Some(sb) = Sandbox::start() else { return };
    rejected(
        &sb,
        &format!("{NET}[services.a]\ncommand = \"/bin/sleep 60\"\ncap_add = [\"NET_ADMINN\"]\n"),
        &[
            "plumb.toml:6:12",
            "services.a.cap_add[0]",
            "unknown capability \"NET_ADMINN\"",
            "did you mean \"NET_ADMIN\"?",
        ],
    );
    rejected(
        &sb,
        &format!("{NET}[services.a]\ncommand = \"/bin/sleep 60\"\ncap_drop = \"ALL\"\n"),
        &["plumb.toml:6:12", "services.a.cap_drop", "must be a list"],
    );
}

/// Checked by `up` on the machine, not by the core: the errors point at the field itself.
#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn a_missing_user_or_workdir_is_shown_at_its_field() {
    let Some(sb) = Sandbox::start() else { return };
    let err = rejected(
        &sb,
        &format!("{NET}[services.a]\ncommand = \"/bin/sleep 60\"\nuser = \"no-such-user\"\n"),
        &[
            "plumb.toml:6:8",
            "services.a.user",
            "user \"no-such-user\" does not exist",
        ],
    );
    assert!(
        err.contains("6 | user = \"no-such-user\"\n  |        ^^^^^^^^^^^^^^\n"),
        "no underlined value in:\n{err}"
    );
    rejected(
        &sb,
        &format!("{NET}[services.a]\ncommand = \"/bin/sleep 60\"\nworkdir = \"no-such-dir\"\n"),
        &["plumb.toml:6:11", "services.a.workdir", "does not exist"],
    );
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn bad_policies_are_named_and_nothing_is_created() {
    let sb = Sandbox::start().unwrap();
    let head = "name = \"bp\"\n[networks.n]\nsubnet = \"10.96.9.0/24\"\n[services.web]\n[services.api]\n[[policies]]\n";
    for (policy, needles) in [
        (
            "from = \"web\"\nto = \"apii\"\n",
            &[
                "plumb.toml:8",
                "policies[0].to",
                "unknown selector \"apii\"",
                "api, web",
            ][..],
        ),
        (
            "from = \"web\"\nto = \"api\"\nports = [\"90-80\"]\n",
            &["plumb.toml:9", "policies[0].ports[0]", "runs backwards"][..],
        ),
        (
            "from = \"web\"\nto = \"api\"\nprotocol = \"sctp\"\n",
            &["plumb.toml:9", "policies[0].protocol", "\"tcp\""][..],
        ),
        (
            "from = \"10.0.0.0/99\"\nto = \"api\"\n",
            &["plumb.toml:7", "policies[0].from", "not a valid IPv4 CIDR"][..],
        ),
    ] {
        rejected(&sb, &format!("{head}{policy}"), needles);
    }
}
