//! Which topologies a run measures (`--topologies`): names of [`Topo`],
//! `docker` for the Docker pair; Docker's two are skipped with a note when
//! Docker is not installed.

use anyhow::{bail, Result};

use crate::report::Topo;

/// The topologies of `spec` (comma-separated; none: all) in report order,
/// and a one-line note when the Docker pair was asked for (or left to the
/// default) but Docker is not installed.
pub fn topologies(spec: Option<&str>, docker_installed: bool) -> Result<(Vec<Topo>, Option<String>)> {
    let mut want: Vec<Topo> = Vec::new();
    match spec {
        None => want.extend(Topo::ALL),
        Some(list) => {
            for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let add: Vec<Topo> = match name {
                    "docker" => vec![Topo::DockerBridge, Topo::DockerDatapath],
                    n => match Topo::ALL.into_iter().find(|t| t.name() == n) {
                        Some(t) => vec![t],
                        None => {
                            bail!("unknown topology {n:?} (known: {}, docker)", Topo::ALL.map(Topo::name).join(", "))
                        }
                    },
                };
                want.extend(add);
            }
        }
    }
    let mut note = None;
    if !docker_installed && want.iter().any(|t| t.is_docker()) {
        want.retain(|t| !t.is_docker());
        note = Some(format!(
            "docker topologies skipped: {} is not installed (Debian package docker.io)",
            datapath::testbed::docker::DOCKERD
        ));
    }
    let selected: Vec<Topo> = Topo::ALL.into_iter().filter(|t| want.contains(t)).collect();
    if selected.is_empty() {
        bail!("no topology left to measure{}", note.map(|n| format!(" ({n})")).unwrap_or_default());
    }
    Ok((selected, note))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_by_default_docker_skipped_without_docker() {
        assert_eq!(topologies(None, true).unwrap(), (Topo::ALL.to_vec(), None));
        let (t, note) = topologies(None, false).unwrap();
        assert_eq!(t, [Topo::Ceiling, Topo::Kernel, Topo::KernelBare, Topo::Ebpf]);
        assert!(note.unwrap().contains("docker topologies skipped"));
    }

    #[test]
    fn docker_means_the_pair_in_report_order() {
        let (t, note) = topologies(Some("docker,ceiling"), true).unwrap();
        assert_eq!(t, [Topo::Ceiling, Topo::DockerBridge, Topo::DockerDatapath]);
        assert_eq!(note, None);
        assert_eq!(topologies(Some("docker-datapath"), true).unwrap().0, [Topo::DockerDatapath]);
        assert!(topologies(Some("docker"), false).is_err(), "nothing left to measure");
        assert!(topologies(Some("dockr"), true).is_err());
    }
}
