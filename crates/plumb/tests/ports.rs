//! Published ports on one host address (Compose's `ADDRESS:HOST:CONTAINER`), and a host
//! process already listening on a port plumb is asked to publish: named and refused before
//! anything is made, instead of silently shadowed.

mod common;

use common::*;

fn stack(ports: &str) -> String {
    format!("name = \"pp\"\n[networks.n]\nsubnet = \"10.96.1.0/24\"\n[services.web]\nports = [{ports}]\n")
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn a_port_published_on_one_address_answers_only_there() {
    let sb = Sandbox::start().unwrap();
    sb.write("plumb.toml", &stack("\"127.0.0.1:8080:80\", \"203.0.113.1:8081:80\""));
    sb.plumb_ok(&["up"]);
    sb.serve("pp-web-1", 80, "web");
    assert!(
        sb.connect(None, "127.0.0.1", 8080).is_some(),
        "127.0.0.1:8080 must answer"
    );
    assert_eq!(
        sb.connect(Some("outside"), HOST_IP, 8080),
        None,
        "8080 is published on 127.0.0.1 only"
    );
    assert!(
        sb.connect(Some("outside"), HOST_IP, 8081).is_some(),
        "203.0.113.1:8081 must answer"
    );
    assert_eq!(
        sb.connect(None, "127.0.0.1", 8081),
        None,
        "8081 is published on 203.0.113.1 only"
    );
    let ps = sb.plumb_ok(&["ps"]);
    assert!(ps.contains("127.0.0.1:8080->80/tcp"), "{ps}");

    // Moving a port to another address is an in-place update of the maps.
    sb.write("plumb.toml", &stack("\"203.0.113.1:8080:80\", \"203.0.113.1:8081:80\""));
    let plan = sb.plumb_ok(&["up", "--dry-run"]);
    assert!(
        plan.contains("add element inet plumb_pp published_at { 203.0.113.1 . tcp . 8080"),
        "{plan}"
    );
    sb.plumb_ok(&["up"]);
    assert!(sb.connect(Some("outside"), HOST_IP, 8080).is_some());
    assert_eq!(sb.connect(None, "127.0.0.1", 8080), None);
    sb.plumb_ok(&["down"]);
    sb.assert_clean();
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn an_address_the_host_does_not_have_is_refused() {
    let sb = Sandbox::start().unwrap();
    sb.write("plumb.toml", &stack("\"192.0.2.9:8080:80\""));
    let out = sb.plumb(&["up"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("192.0.2.9 is not an address of this host") && err.contains("ports[0]"),
        "{err}"
    );
    assert!(sb.namespaces().is_empty() && sb.nft_tables().is_empty());
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn a_port_a_host_process_listens_on_is_refused_naming_the_process() {
    let sb = Sandbox::start().unwrap();
    let pid = sb.serve_on_host("0.0.0.0", 8080, "host");
    sb.write("plumb.toml", &stack("\"8080:80\""));
    let out = sb.plumb(&["up"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "host port 8080/tcp is in use: python3 (pid {pid}) listens on 0.0.0.0:8080"
        )),
        "{err}"
    );
    assert!(
        sb.namespaces().is_empty() && sb.nft_tables().is_empty(),
        "nothing may be made"
    );
    assert!(
        sb.connect(None, "127.0.0.1", 8080).is_some(),
        "the host service still answers"
    );

    // On another address than the one the process uses, the port is free.
    sb.ok(&format!("kill {pid}"));
    let pid = sb.serve_on_host("127.0.0.1", 8080, "host");
    sb.write("plumb.toml", &stack("\"203.0.113.1:8080:80\""));
    sb.plumb_ok(&["up"]);
    sb.serve("pp-web-1", 80, "web");
    assert!(sb.connect(Some("outside"), HOST_IP, 8080).is_some());
    assert!(sb
        .connect(None, "127.0.0.1", 8080)
        .is_some_and(|r| r.starts_with("host from")));
    sb.ok(&format!("kill {pid}"));
    sb.plumb_ok(&["down"]);
    sb.assert_clean();
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn a_host_process_that_binds_a_published_port_later_is_reported() {
    let sb = Sandbox::start().unwrap();
    sb.write("plumb.toml", &stack("\"8080:80\""));
    sb.plumb_ok(&["up"]);
    sb.serve("pp-web-1", 80, "web");
    // A host service starts on the published port after `up`: its clients get the container.
    let pid = sb.serve_on_host("0.0.0.0", 8080, "host");
    // (serve_on_host's own check connects to the container: wait for the socket itself.)
    assert!(eventually(std::time::Duration::from_secs(5), || !sb
        .ok("ss -Hltn 'sport = :8080'")
        .is_empty()));
    assert!(sb
        .connect(Some("outside"), HOST_IP, 8080)
        .is_some_and(|r| r.starts_with("web from")));
    let said = format!(
        "host port 8080/tcp is published by the stack, but python3 (pid {pid}) listens on 0.0.0.0:8080: its clients reach the container instead"
    );
    let ps = sb.plumb(&["ps"]);
    assert!(ps.status.success());
    assert!(text(&ps.stderr).contains(&said), "{}", text(&ps.stderr));
    let up = sb.plumb(&["up"]);
    assert!(up.status.success(), "{}", text(&up.stderr));
    assert!(text(&up.stderr).contains(&said), "{}", text(&up.stderr));
    // Gone again: nothing to say.
    sb.ok(&format!("kill {pid}"));
    assert!(eventually(std::time::Duration::from_secs(5), || !text(
        &sb.plumb(&["ps"]).stderr
    )
    .contains("published by the stack")));
    sb.plumb_ok(&["down"]);
    sb.assert_clean();
}
