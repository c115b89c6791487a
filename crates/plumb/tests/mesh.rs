//! The service mesh with real packets: replicas' TCP goes through their sidecars without the
//! application knowing (it connects to the plain name and port), and `down` leaves nothing.

mod common;

use std::time::Duration;

use common::*;

/// Answers each connection with `NAME from PEER` (PEER: the address the connection came from).
const ECHO_PEER: &str = r#"
import socket
name = socket.gethostname()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 7000)); s.listen(64)
while True:
    c, a = s.accept()
    c.sendall((name + " from " + a[0] + "\n").encode())
    c.close()
"#;

fn stack(dir: &str, mesh: bool) -> String {
    format!(
        "name = \"mt\"\nmesh = {mesh}\n[networks.n]\nsubnet = \"10.62.0.0/24\"\n\
         [services.api]\nexpose = [7000]\ncommand = [\"python3\", \"{dir}/echo.py\"]\n\
         [services.client]\ncommand = [\"sleep\", \"infinity\"]\n"
    )
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn tcp_goes_through_both_sidecars_transparently_and_down_leaves_nothing() {
    let Some(sb) = Sandbox::start() else { return };
    sb.write("echo.py", ECHO_PEER);
    let dir = sb.dir.display().to_string();
    let file = sb.write("mt.toml", &stack(&dir, true));
    sb.plumb_ok(&["up", "-f", path_str(&file)]);
    let api_ip = sb.address("api-1", "eth0");
    let client_ip = sb.address("client-1", "eth0");
    let gateway = "10.62.0.1";

    // The client connects to the plain name and port, as it would without a mesh.
    let mut got = None;
    assert!(
        eventually(Duration::from_secs(20), || {
            got = sb.connect(Some("mt-client-1"), "api", 7000);
            got.is_some()
        }),
        "no answer through the mesh"
    );
    // The server's sidecar made the last hop from inside the server's own container: the
    // server sees its own address, not the client's.
    assert_eq!(got.as_deref(), Some(format!("api-1 from {api_ip}").as_str()));

    // The client's connection (to the service's VIP, the name's address) left its container
    // from its sidecar, and each container holds the interception table.
    let vip = sb.vip("mt", "api");
    let held = sb.ok(&format!(
        "ip netns exec mt-client-1 python3 -c \"import socket,time; c=socket.create_connection(('api',7000)); time.sleep(3)\" & sleep 1; ip netns exec mt-client-1 ss -Htnp dst {vip}; wait"
    ));
    assert!(
        held.contains(&format!("{vip}:7000")) && held.contains("\"plumb-proxy\""),
        "{held}"
    );
    for ns in ["mt-client-1", "mt-api-1"] {
        let table = sb.ok(&format!("ip netns exec {ns} nft list table inet plumb_mesh"));
        assert!(
            table.contains("redirect to :15001") && table.contains("redirect to :15006"),
            "{table}"
        );
    }

    // The mesh off again (the containers are remade without it): the server sees the client
    // (through the VIP's NAT: the network's gateway), or directly the client's address.
    let file = sb.write("mt.toml", &stack(&dir, false));
    sb.plumb_ok(&["up", "-f", path_str(&file)]);
    let expected = format!("api-1 from {gateway}");
    assert!(
        eventually(Duration::from_secs(20), || sb
            .connect(Some("mt-client-1"), "api", 7000)
            .as_deref()
            == Some(expected.as_str())),
        "still proxied after the mesh was turned off: {:?}",
        sb.connect(Some("mt-client-1"), "api", 7000)
    );
    assert!(!sb
        .sh("ip netns exec mt-api-1 nft list table inet plumb_mesh")
        .status
        .success());
    let direct = sb.connect(Some("mt-client-1"), &api_ip, 7000);
    assert_eq!(direct, Some(format!("api-1 from {client_ip}")));

    // On again, then down: nothing left (namespaces, links, tables, sidecars).
    let file = sb.write("mt.toml", &stack(&dir, true));
    sb.plumb_ok(&["up", "-f", path_str(&file)]);
    assert!(eventually(Duration::from_secs(20), || sb
        .connect(Some("mt-client-1"), "api", 7000)
        .is_some()));
    sb.plumb_ok(&["down", "mt"]);
    sb.assert_clean();
}
