//! `cargo xtask setup`: checks the prerequisites and installs only what is missing.

use std::{env, path::Path, path::PathBuf, process::Command};

use anyhow::{bail, Result};

use crate::{describe, find_on_path, is_root, outer_cargo, path_with_cargo_bin, run_ok};

/// Debian packages the project needs, with why.
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("rustc-web", "Rust compiler that can build `core` for bpfel-unknown-none (with RUSTC_BOOTSTRAP)"),
    ("cargo-web", "cargo matching rustc-web, for the eBPF build"),
    ("rust-web-clippy", "clippy matching rustc-web, for `cargo xtask lint` of the eBPF crate"),
    ("rust-web-src", "Rust library sources, needed by `-Z build-std=core`"),
    ("llvm-22-dev", "LLVM 22, needed to build and run bpf-linker"),
    ("libpolly-22-dev", "needed to link bpf-linker against LLVM 22"),
    ("bpftool", "inspecting loaded eBPF programs and maps"),
    ("iperf3", "throughput tests and benchmarks"),
    ("tcpdump", "packet captures in tests and debugging"),
    ("iproute2", "`ip` and `tc`, used by tests and the walkthrough"),
    ("nftables", "`nft`: the kernel datapath's MASQUERADE/isolation rules, and the tests' ruleset checks"),
    ("iputils-ping", "`ping`, used by tests and the walkthrough"),
];

/// Debian packages only the tests need (`cargo xtask test`, never `run`):
/// real container runtimes for the CNI plugin's and the Docker driver's
/// tests, which start them themselves (dockerd inside a node namespace of
/// its own). Installed with service starts denied ([`POLICY_RC_D`]), so no
/// Docker daemon ever runs in the host's namespace.
const TEST_PACKAGES: &[(&str, &str)] = &[
    ("podman", "a real container runtime for the CNI plugin's tests (its CNI network backend)"),
    ("runc", "the OCI runtime podman uses in the CNI tests (crun fails on some cgroup layouts)"),
    (
        "containernetworking-plugins",
        "the reference CNI plugins: `portmap` chained after `datapath-cni` (its opt-in), `bridge` to compare with",
    ),
    ("busybox-static", "the offline image of the CNI and Docker tests (a rootfs imported with `podman/docker import`)"),
    ("iptables", "what the reference `portmap` and `bridge` plugins program"),
    ("docker.io", "a real dockerd for the Docker driver's tests (started by those tests only, in a node namespace)"),
];

/// Debian's hook that `invoke-rc.d` asks before starting a service; exit
/// 101 means "denied".
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";
const DENY_ALL: &str =
    "#!/bin/sh\n# cargo xtask test: no service may start while test packages are installed\nexit 101\n";

/// Installs what only the tests need, when missing (root and Debian only;
/// elsewhere the tests that need them say so and skip), with every service
/// start denied while apt runs (a `policy-rc.d` that exits 101; one already
/// there is put back afterwards).
pub fn setup_test_tools() -> Result<()> {
    let missing: Vec<&str> = TEST_PACKAGES.iter().filter(|(p, _)| !deb_installed(p)).map(|(p, _)| *p).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let apt = Path::new("/usr/bin/apt-get").is_file() && Path::new("/etc/debian_version").is_file();
    if !is_root() || !apt {
        eprintln!(
            "setup: test tools missing ({}); the tests that need them skip. Install them with service starts denied: \
             printf '#!/bin/sh\\nexit 101\\n' > {POLICY_RC_D}; chmod +x {POLICY_RC_D}; apt-get install -y {}",
            if apt { "not root" } else { "not Debian" },
            missing.join(" ")
        );
        return Ok(());
    }
    println!("setup: installing test tools (service starts denied by {POLICY_RC_D}): {}", missing.join(" "));
    for &(p, why) in TEST_PACKAGES.iter().filter(|(p, _)| missing.contains(p)) {
        println!("  - {p}: {why}");
    }
    use std::os::unix::fs::PermissionsExt;
    let previous = std::fs::read(POLICY_RC_D).ok();
    let previous_mode = std::fs::metadata(POLICY_RC_D).ok().map(|m| m.permissions());
    std::fs::write(POLICY_RC_D, DENY_ALL)?;
    std::fs::set_permissions(POLICY_RC_D, std::fs::Permissions::from_mode(0o755))?;
    let installed =
        run_ok(Command::new("apt-get").arg("update").env("DEBIAN_FRONTEND", "noninteractive")).and_then(|()| {
            run_ok(
                Command::new("apt-get")
                    .args(["install", "-y", "--no-install-recommends"])
                    .args(&missing)
                    .env("DEBIAN_FRONTEND", "noninteractive"),
            )
        });
    let restored = match (previous, previous_mode) {
        (Some(bytes), Some(mode)) => {
            std::fs::write(POLICY_RC_D, bytes).and_then(|()| std::fs::set_permissions(POLICY_RC_D, mode))
        }
        _ => std::fs::remove_file(POLICY_RC_D),
    };
    installed?;
    restored?;
    Ok(())
}

/// The one tool checked on PATH rather than as a Debian package (it may come
/// from pyenv or elsewhere); installed as Debian's `python3` when missing.
const PYTHON: &str = "python3";

/// bpf-linker: pinned so a fresh machine gets the version this project is
/// built and tested with.
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

enum Missing {
    Deb(&'static str, &'static str),
    BpfLinker,
}

fn deb_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Abbrev}", pkg])
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout.starts_with(b"ii"))
}

fn missing_prerequisites() -> Vec<Missing> {
    let mut missing: Vec<Missing> = DEBIAN_PACKAGES
        .iter()
        .filter(|(pkg, _)| !deb_installed(pkg))
        .map(|&(pkg, why)| Missing::Deb(pkg, why))
        .collect();
    if find_on_path(PYTHON, &env::var_os("PATH").unwrap_or_default()).is_none() {
        missing.push(Missing::Deb(PYTHON, "scripts used by tests and benchmarks"));
    }
    if find_on_path("bpf-linker", &path_with_cargo_bin()).is_none() {
        missing.push(Missing::BpfLinker);
    }
    missing
}

fn bpf_linker_install_cmd() -> Command {
    let mut cmd = Command::new(outer_cargo());
    cmd.args(["install", "bpf-linker", "--locked", "--version", BPF_LINKER_VERSION])
        .args(["--no-default-features", "--features", "llvm-22"])
        .env("PATH", {
            let mut dirs = vec![PathBuf::from(LLVM_PREFIX).join("bin")];
            dirs.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()));
            env::join_paths(dirs).unwrap_or_default()
        })
        .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX);
    cmd
}

/// Installs whatever is missing. With `verbose` false it prints nothing when
/// everything is already there.
pub fn setup(verbose: bool) -> Result<()> {
    let missing = missing_prerequisites();
    if missing.is_empty() {
        if verbose {
            println!("setup: every prerequisite is installed");
        }
        return Ok(());
    }
    let debs: Vec<&str> = missing
        .iter()
        .filter_map(|m| match m {
            Missing::Deb(p, _) => Some(*p),
            Missing::BpfLinker => None,
        })
        .collect();
    let linker = missing.iter().any(|m| matches!(m, Missing::BpfLinker));

    println!("setup: missing prerequisites:");
    for m in &missing {
        match m {
            Missing::Deb(p, why) => println!("  - Debian package {p}: {why}"),
            Missing::BpfLinker => {
                println!("  - bpf-linker {BPF_LINKER_VERSION}: links the eBPF object")
            }
        }
    }

    let apt = Path::new("/usr/bin/apt-get").is_file() && Path::new("/etc/debian_version").is_file();
    // apt needs root; `cargo install bpf-linker` does not.
    if !debs.is_empty() && (!is_root() || !apt) {
        eprintln!(
            "setup: cannot install them here ({}). Install them by hand:",
            if apt { "not root" } else { "not a Debian system with apt-get" }
        );
        eprintln!("  apt-get update && apt-get install -y {}", debs.join(" "));
        if linker {
            eprintln!("  then: {}", shell_line(&bpf_linker_install_cmd()));
        }
        bail!("prerequisites missing; see above");
    }

    if !debs.is_empty() {
        println!("setup: installing Debian packages: {}", debs.join(" "));
        run_ok(Command::new("apt-get").arg("update").env("DEBIAN_FRONTEND", "noninteractive"))?;
        run_ok(
            Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends"])
                .args(&debs)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    if linker {
        let mut cmd = bpf_linker_install_cmd();
        println!("setup: installing bpf-linker: {}", shell_line(&cmd));
        run_ok(&mut cmd)?;
    }
    println!("setup: done");
    Ok(())
}

fn shell_line(cmd: &Command) -> String {
    let envs: Vec<String> = cmd
        .get_envs()
        .filter(|(k, _)| *k != "PATH")
        .filter_map(|(k, v)| Some(format!("{}={}", k.to_string_lossy(), v?.to_string_lossy())))
        .collect();
    format!("PATH={LLVM_PREFIX}/bin:$PATH {} {}", envs.join(" "), describe(cmd))
}
