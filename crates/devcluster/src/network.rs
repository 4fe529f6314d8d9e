//! The host side of the dev cluster's network: one bridge whose address is
//! the node's IP, the kernel switches Kubernetes needs (remembered and put
//! back on teardown), and a guard rule that keeps pod traffic on this
//! machine. Ranges are fixed and checked against the host's own addresses
//! and routes before anything is changed.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Addresses and names of the dev cluster's network.
#[derive(Clone, Debug)]
pub struct Network {
    /// The bridge pods are attached to; it carries the node's IP.
    pub bridge: &'static str,
    /// The node's IP: the bridge's address, the API server's advertise address.
    pub node_ip: Ipv4Addr,
    /// Pod range (host-local IPAM hands out addresses from it).
    pub pod_cidr: &'static str,
    /// Service range.
    pub service_cidr: &'static str,
    /// ClusterIP of the `kubernetes` Service (first of the service range).
    pub kubernetes_service_ip: Ipv4Addr,
    /// ClusterIP of the cluster DNS Service.
    pub dns_service_ip: Ipv4Addr,
}

impl Default for Network {
    fn default() -> Self {
        Network {
            bridge: "bosun0",
            node_ip: Ipv4Addr::new(10, 88, 0, 1),
            pod_cidr: "10.88.0.0/16",
            service_cidr: "10.96.0.0/16",
            kubernetes_service_ip: Ipv4Addr::new(10, 96, 0, 1),
            dns_service_ip: Ipv4Addr::new(10, 96, 0, 10),
        }
    }
}

/// Why the host network could not be prepared or restored.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// A range of ours overlaps an address or route of the host.
    #[error(
        "the dev cluster's {what} {cidr} overlaps the host's {host_item}: traffic could leave this machine; free that range or change the cluster's ranges"
    )]
    Overlap {
        /// Which range.
        what: &'static str,
        /// The range.
        cidr: String,
        /// The host address or route it overlaps.
        host_item: String,
    },
    /// A host command failed.
    #[error("`{command}` failed: {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// What it printed.
        stderr: String,
    },
    /// A file (sysctl, state) could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Kernel switches the cluster turns on, with their files under /proc/sys.
const SYSCTLS: &[&str] = &[
    "/proc/sys/net/ipv4/ip_forward",
    "/proc/sys/net/bridge/bridge-nf-call-iptables",
];

/// The iptables chain holding the guard rule.
const GUARD_CHAIN: &str = "BOSUN-DEV-GUARD";

/// Parses `a.b.c.d/n` into (network, prefix length).
pub fn parse_cidr(cidr: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, len) = cidr.split_once('/')?;
    let addr: Ipv4Addr = addr.parse().ok()?;
    let len: u8 = len.parse().ok().filter(|l| *l <= 32)?;
    Some((addr, len))
}

/// Whether two IPv4 ranges share any address.
pub fn cidrs_overlap(a: (Ipv4Addr, u8), b: (Ipv4Addr, u8)) -> bool {
    let len = a.1.min(b.1);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    (u32::from(a.0) & mask) == (u32::from(b.0) & mask)
}

/// Finds a host address or route (as `ip -4 -o addr` / `ip -4 route` print
/// them) that overlaps one of our ranges. Our own bridge is ignored, and so
/// is the default route (it covers everything by definition).
pub fn find_overlap(net: &Network, host_addrs_and_routes: &[String]) -> Option<NetworkError> {
    let ours = [
        ("pod range", net.pod_cidr),
        ("service range", net.service_cidr),
    ];
    for item in host_addrs_and_routes {
        if item.contains(net.bridge) {
            continue;
        }
        let Some(host_cidr) = item.split_whitespace().find_map(|word| {
            parse_cidr(word).or_else(|| word.parse::<Ipv4Addr>().ok().map(|a| (a, 32)))
        }) else {
            continue;
        };
        if host_cidr.1 == 0 {
            continue;
        }
        for (what, cidr) in ours {
            if let Some(range) = parse_cidr(cidr)
                && cidrs_overlap(range, host_cidr)
            {
                return Some(NetworkError::Overlap {
                    what,
                    cidr: cidr.to_string(),
                    host_item: item.trim().to_string(),
                });
            }
        }
    }
    None
}

/// The host's IPv4 addresses and routes, plus its DNS servers, one per line.
fn host_addrs_and_routes() -> Result<Vec<String>, NetworkError> {
    let mut lines = vec![];
    for args in [
        &["-4", "-o", "addr", "show"][..],
        &["-4", "route", "show", "table", "all"][..],
    ] {
        let out = run("ip", args)?;
        lines.extend(out.lines().map(|l| {
            // `ip -o addr` puts the CIDR in the fourth field; keep the line readable.
            l.to_string()
        }));
    }
    if let Ok(resolv) = std::fs::read_to_string("/etc/resolv.conf") {
        lines.extend(
            resolv
                .lines()
                .filter(|l| l.starts_with("nameserver"))
                .map(String::from),
        );
    }
    Ok(lines)
}

/// Prepares the host: checks ranges, creates the bridge with the node IP,
/// turns on forwarding and bridge netfilter (saving their old values in
/// `saved_dir`), and installs the guard rule.
pub fn set_up(net: &Network, saved_dir: &Path) -> Result<(), NetworkError> {
    if let Some(overlap) = find_overlap(net, &host_addrs_and_routes()?) {
        return Err(overlap);
    }
    std::fs::create_dir_all(saved_dir).map_err(io_error(saved_dir))?;
    for sysctl in SYSCTLS {
        let saved = saved_dir.join(sysctl_name(sysctl));
        // Save only once: after a crash the current value is ours, not the host's.
        if !saved.exists() {
            let old = std::fs::read_to_string(sysctl).map_err(io_error(Path::new(sysctl)))?;
            std::fs::write(&saved, old.trim()).map_err(io_error(&saved))?;
        }
        std::fs::write(sysctl, "1").map_err(io_error(Path::new(sysctl)))?;
    }
    if run("ip", &["link", "show", net.bridge]).is_err() {
        run("ip", &["link", "add", net.bridge, "type", "bridge"])?;
    }
    let prefix = parse_cidr(net.pod_cidr).map_or(16, |(_, len)| len);
    let addr = format!("{}/{}", net.node_ip, prefix);
    let shown = run("ip", &["-4", "-o", "addr", "show", "dev", net.bridge])?;
    if !shown.contains(&addr) {
        run("ip", &["addr", "add", &addr, "dev", net.bridge])?;
    }
    run("ip", &["link", "set", net.bridge, "up"])?;
    install_guard(net)
}

/// Pods may talk to each other, to services and to this host; anything they
/// send towards another interface (the way out of the machine) is dropped.
fn install_guard(net: &Network) -> Result<(), NetworkError> {
    if run("iptables", &["-w", "-L", GUARD_CHAIN, "-n"]).is_err() {
        run("iptables", &["-w", "-N", GUARD_CHAIN])?;
    }
    run("iptables", &["-w", "-F", GUARD_CHAIN])?;
    run(
        "iptables",
        &[
            "-w",
            "-A",
            GUARD_CHAIN,
            "-i",
            net.bridge,
            "!",
            "-o",
            net.bridge,
            "-j",
            "DROP",
        ],
    )?;
    if run("iptables", &["-w", "-C", "FORWARD", "-j", GUARD_CHAIN]).is_err() {
        run("iptables", &["-w", "-I", "FORWARD", "1", "-j", GUARD_CHAIN])?;
    }
    Ok(())
}

/// Undoes [`set_up`]: removes the guard rule and the bridge, and puts the
/// kernel switches back as they were. Safe to call when nothing is set up.
pub fn tear_down(net: &Network, saved_dir: &Path) -> Result<(), NetworkError> {
    while run("iptables", &["-w", "-D", "FORWARD", "-j", GUARD_CHAIN]).is_ok() {}
    let _ = run("iptables", &["-w", "-F", GUARD_CHAIN]);
    let _ = run("iptables", &["-w", "-X", GUARD_CHAIN]);
    if run("ip", &["link", "show", net.bridge]).is_ok() {
        // Pods' host-side veths: deleting one end deletes both. Left to the
        // kernel, they go only when their network namespace is freed, which
        // happens asynchronously, some time after the last unmount.
        let attached = run("ip", &["-o", "link", "show", "master", net.bridge])?;
        for veth in attached_links(&attached) {
            let _ = run("ip", &["link", "delete", &veth]);
        }
        run("ip", &["link", "delete", net.bridge])?;
    }
    for sysctl in SYSCTLS {
        let saved = saved_dir.join(sysctl_name(sysctl));
        if let Ok(old) = std::fs::read_to_string(&saved) {
            std::fs::write(sysctl, old.trim()).map_err(io_error(Path::new(sysctl)))?;
            std::fs::remove_file(&saved).map_err(io_error(&saved))?;
        }
    }
    Ok(())
}

/// Removes the `KUBE-*` chains the kubelet and kube-proxy leave in iptables
/// and ip6tables (kube-proxy's own `--cleanup` does not know the kubelet's
/// KUBE-FIREWALL and canary chains): first the rules that jump to them from
/// other chains, then the chains themselves.
pub fn remove_kube_chains() {
    for (save, tool) in [
        ("iptables-save", "iptables"),
        ("ip6tables-save", "ip6tables"),
    ] {
        let Ok(dump) = run(save, &[]) else { continue };
        for (table, rule) in kube_jump_rules(&dump) {
            let mut args = vec!["-w", "-t", table.as_str(), "-D"];
            args.extend(rule.iter().map(String::as_str));
            let _ = run(tool, &args);
        }
        for (table, chain) in kube_chains(&dump) {
            let _ = run(tool, &["-w", "-t", &table, "-F", &chain]);
        }
        for (table, chain) in kube_chains(&dump) {
            let _ = run(tool, &["-w", "-t", &table, "-X", &chain]);
        }
    }
}

/// `(table, chain)` of every KUBE-* chain in an iptables-save dump.
fn kube_chains(dump: &str) -> Vec<(String, String)> {
    let mut table = String::new();
    let mut found = vec![];
    for line in dump.lines() {
        if let Some(name) = line.strip_prefix('*') {
            table = name.to_string();
        } else if let Some(decl) = line.strip_prefix(':')
            && let Some(chain) = decl.split_whitespace().next()
            && chain.starts_with("KUBE-")
        {
            found.push((table.clone(), chain.to_string()));
        }
    }
    found
}

/// `(table, rule arguments)` of every rule in a non-KUBE chain that jumps to
/// a KUBE-* chain, as `iptables -D` takes them (chain first).
fn kube_jump_rules(dump: &str) -> Vec<(String, Vec<String>)> {
    let mut table = String::new();
    let mut found = vec![];
    for line in dump.lines() {
        if let Some(name) = line.strip_prefix('*') {
            table = name.to_string();
        } else if let Some(rule) = line.strip_prefix("-A ")
            && !rule.starts_with("KUBE-")
            && rule.contains("-j KUBE-")
        {
            found.push((table.clone(), split_rule(rule)));
        }
    }
    found
}

/// Splits an iptables-save rule into arguments, keeping quoted comments whole.
fn split_rule(rule: &str) -> Vec<String> {
    let mut args = vec![];
    let mut current = String::new();
    let mut quoted = false;
    for c in rule.chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !current.is_empty() {
                    args.push(std::mem::take(&mut current));
                }
            }
            _ => current.push(c),
        }
    }
    if !current.is_empty() {
        args.push(current);
    }
    args
}

/// Link names in `ip -o link show` output (`5: vethab12@if2: <...> ...`).
fn attached_links(output: &str) -> Vec<String> {
    output
        .lines()
        .filter_map(|line| line.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_string())
        .filter(|name| !name.is_empty())
        .collect()
}

fn sysctl_name(path: &str) -> String {
    path.trim_start_matches("/proc/sys/").replace('/', ".")
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> NetworkError + '_ {
    move |source| NetworkError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Runs a host command and returns its standard output.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<String, NetworkError> {
    let command = format!("{program} {}", args.join(" "));
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| NetworkError::Command {
            command: command.clone(),
            stderr: e.to_string(),
        })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(NetworkError::Command {
            command,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_kube_chains_and_the_jumps_into_them() {
        let dump = "*filter\n:INPUT ACCEPT [0:0]\n:KUBE-FIREWALL - [0:0]\n-A INPUT -j KUBE-FIREWALL\n-A KUBE-FIREWALL ! -s 127.0.0.0/8 -m comment --comment \"block incoming localnet\" -j DROP\n-A INPUT -j ACCEPT\nCOMMIT\n*nat\n:KUBE-KUBELET-CANARY - [0:0]\nCOMMIT\n";
        assert_eq!(
            kube_chains(dump),
            [
                ("filter".to_string(), "KUBE-FIREWALL".to_string()),
                ("nat".to_string(), "KUBE-KUBELET-CANARY".to_string())
            ]
        );
        assert_eq!(
            kube_jump_rules(dump),
            [(
                "filter".to_string(),
                vec!["INPUT".to_string(), "-j".into(), "KUBE-FIREWALL".into()]
            )]
        );
        assert_eq!(
            split_rule("X -m comment --comment \"a b\" -j Y"),
            ["X", "-m", "comment", "--comment", "a b", "-j", "Y"]
        );
    }

    #[test]
    fn reads_link_names_from_ip_output() {
        let output = "7: veth1a2b3c4d@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 master bosun0\n8: vethffff0000@if2: <BROADCAST> mtu 1500 master bosun0\n";
        assert_eq!(attached_links(output), ["veth1a2b3c4d", "vethffff0000"]);
        assert!(attached_links("").is_empty());
    }

    #[test]
    fn overlap_arithmetic() {
        let pods = parse_cidr("10.88.0.0/16").expect("cidr");
        assert!(cidrs_overlap(
            pods,
            parse_cidr("10.88.5.0/24").expect("cidr")
        ));
        assert!(cidrs_overlap(pods, parse_cidr("10.0.0.0/8").expect("cidr")));
        assert!(!cidrs_overlap(
            pods,
            parse_cidr("10.89.0.0/16").expect("cidr")
        ));
        assert!(!cidrs_overlap(
            pods,
            parse_cidr("192.0.2.0/24").expect("cidr")
        ));
        assert_eq!(parse_cidr("10.1.2.3/33"), None);
    }

    #[test]
    fn finds_host_items_that_overlap_our_ranges() {
        let net = Network::default();
        let host = vec![
            "2: eth0    inet 192.0.2.2/24 brd 192.0.2.255 scope global eth0".to_string(),
            "default via 192.0.2.1 dev eth0".to_string(),
            "nameserver 10.255.255.53".to_string(),
            "10.88.0.0/16 dev bosun0 proto kernel scope link src 10.88.0.1".to_string(),
        ];
        assert!(find_overlap(&net, &host).is_none());

        let clash = vec!["10.96.0.0/12 via 192.0.2.1 dev eth0".to_string()];
        let err = find_overlap(&net, &clash).expect("overlap found");
        assert!(
            err.to_string().contains("service range 10.96.0.0/16"),
            "{err}"
        );

        let dns = vec!["nameserver 10.88.1.1".to_string()];
        assert!(find_overlap(&net, &dns).is_some());
    }
}
