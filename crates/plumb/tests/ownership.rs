//! A stack never touches another stack's objects: names that collide (`a` with service `b-c`
//! and `a-b` with service `c` both want namespace `a-b-c-1`) are refused, naming the owner,
//! and the stack that was first is unharmed; `down` of either removes only its own.

mod common;

use common::*;

const FIRST: &str = "name = \"a-b\"\n[networks.n]\nsubnet = \"10.94.1.0/24\"\n[services.c]\n";
const SECOND: &str = "name = \"a\"\n[networks.m]\nsubnet = \"10.94.2.0/24\"\n[services.b-c]\n";

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn colliding_names_are_refused_and_neither_stack_is_harmed() {
    let sb = Sandbox::start().unwrap();
    sb.write("first.toml", FIRST);
    sb.write("second.toml", SECOND);
    sb.plumb_ok(&["up", "-f", "first.toml"]);
    let inode = || sb.ok("stat -L -c %i /run/netns/a-b-c-1");
    let before = inode();
    let gateway = "10.94.1.1";
    assert!(sb.ping("a-b-c-1", gateway));

    let out = sb.plumb(&["up", "-f", "second.toml"]);
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("namespace a-b-c-1, which stack a-b already uses"), "{err}");
    assert_eq!(inode(), before, "the first stack's container must be untouched");
    assert!(sb.ping("a-b-c-1", gateway));

    // Without the first stack's state file, the kernel's own marks still tell the owner.
    std::fs::remove_dir_all(sb.state_dir.join("stacks/a-b")).unwrap();
    let err = text(&sb.plumb(&["up", "-f", "second.toml"]).stderr);
    assert!(err.contains("which stack a-b already uses"), "{err}");
    assert_eq!(inode(), before);
    // And `down` of the second stack (never up: an input error, exit 2) leaves the first one's
    // container alone.
    let out = sb.plumb(&["down", "a"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("nothing to remove"), "{}", text(&out.stderr));
    assert_eq!(inode(), before);
    assert!(sb.ping("a-b-c-1", gateway));
    sb.plumb_ok(&["down", "a-b"]);
    sb.assert_clean();
}
