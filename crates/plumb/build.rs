//! Kernel tests need root: without it they are marked ignored (with the reason) instead of
//! passing silently. `plumb_root` is set when the build runs as root, as CI's does.

fn main() {
    println!("cargo:rustc-check-cfg=cfg(plumb_root)");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=USER");
    println!("cargo:rerun-if-env-changed=SUDO_USER");
    let uid = std::process::Command::new("id").arg("-u").output();
    if uid.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0") {
        println!("cargo:rustc-cfg=plumb_root");
    }
}
