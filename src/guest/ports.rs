//! TCP ports listening in the guest, read from /proc (no `ss` needed): the LISTEN sockets
//! of /proc/net/tcp{,6}, mapped to their process through the socket inodes of /proc/*/fd.
use super::cmd;
use super::vm::GuestVm;
use super::GuestError;
use std::collections::HashMap;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListeningPort {
    pub port: u16,
    pub address: String,
    pub process: Option<String>,
    pub pid: Option<u32>,
}

/// Ports and processes the original hid: SSH, DNS and system daemons.
const HIDDEN_PORTS: [u16; 4] = [22, 53, 5353, 5355];
const HIDDEN_PROCESSES: [&str; 9] = ["systemd-resolve", "systemd-resolved", "sshd", "dropbear", "chronyd", "avahi-daemon", "cupsd", "rpcbind", "udhcpc"];

pub async fn listening(vm: &GuestVm) -> Result<Vec<ListeningPort>, GuestError> {
    let out = vm.run(&cmd::listening(), Duration::from_secs(30), 8 * 1024 * 1024).await?;
    Ok(parse(&String::from_utf8_lossy(&out.stdout)))
}

/// `0100007F:1F90` → ("127.0.0.1", 8080); IPv6 in /proc's four little-endian words.
fn decode(addr: &str) -> Option<(String, u16)> {
    let (ip, port) = addr.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let bytes: Vec<u8> = (0..ip.len() / 2).map(|i| u8::from_str_radix(&ip[2 * i..2 * i + 2], 16)).collect::<Result<_, _>>().ok()?;
    let ip = match bytes.len() {
        4 => std::net::Ipv4Addr::new(bytes[3], bytes[2], bytes[1], bytes[0]).to_string(),
        16 => {
            let mut b = [0u8; 16];
            for w in 0..4 {
                for i in 0..4 {
                    b[w * 4 + i] = bytes[w * 4 + 3 - i];
                }
            }
            let v6 = std::net::Ipv6Addr::from(b);
            v6.to_ipv4_mapped().map(|v4| v4.to_string()).unwrap_or_else(|| v6.to_string())
        }
        _ => return None,
    };
    Some((ip, port))
}

fn wildcard(a: &str) -> bool {
    matches!(a, "0.0.0.0" | "::" | "*")
}

fn loopback(a: &str) -> bool {
    matches!(a, "127.0.0.1" | "::1")
}

/// Parses `cmd::listening`'s output: one entry per port, sorted by port; the first socket
/// of a port wins, a later one fills a missing process, a wildcard address replaces a
/// loopback one.
pub fn parse(out: &str) -> Vec<ListeningPort> {
    let mut sockets: Vec<(String, u16, String)> = Vec::new();
    let mut inode_pid: HashMap<String, u32> = HashMap::new();
    let mut comm: HashMap<u32, String> = HashMap::new();
    let mut section = "tcp";
    let mut cur_pid: Option<u32> = None;
    for line in out.lines() {
        match line {
            "---FD---" => section = "fd",
            "---COMM---" => section = "comm",
            _ => match section {
                "tcp" => {
                    let mut w = line.split_whitespace();
                    if let (Some(_), Some(addr), Some(inode)) = (w.next(), w.next(), w.next()) {
                        if let Some((ip, port)) = decode(addr) {
                            sockets.push((ip, port, inode.to_string()));
                        }
                    }
                }
                "fd" => {
                    if let Some(rest) = line.strip_prefix("/proc/") {
                        cur_pid = rest.split('/').next().and_then(|p| p.parse().ok());
                    } else if let (Some(pid), Some(i)) = (cur_pid, line.find("socket:[")) {
                        let inode = line[i + 8..].trim_end_matches(']').to_string();
                        inode_pid.entry(inode).or_insert(pid);
                    }
                }
                _ => {
                    if let Some(rest) = line.strip_prefix("C /proc/") {
                        if let Some((pid, name)) = rest.split_once("/comm:") {
                            if let Ok(pid) = pid.parse() {
                                comm.insert(pid, name.to_string());
                            }
                        }
                    }
                }
            },
        }
    }
    let mut by_port: Vec<ListeningPort> = Vec::new();
    for (address, port, inode) in sockets {
        let pid = inode_pid.get(&inode).copied();
        let process = pid.and_then(|p| comm.get(&p).cloned());
        if HIDDEN_PORTS.contains(&port) || process.as_deref().is_some_and(|p| HIDDEN_PROCESSES.contains(&p)) {
            continue;
        }
        match by_port.iter_mut().find(|e| e.port == port) {
            Some(e) => {
                if e.process.is_none() && process.is_some() {
                    e.process = process;
                    e.pid = pid;
                }
                if wildcard(&address) && loopback(&e.address) {
                    e.address = address;
                }
            }
            None => by_port.push(ListeningPort { port, address, process, pid }),
        }
    }
    by_port.sort_by_key(|e| e.port);
    by_port
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tcp_maps_to_processes_and_hides_system_ports() {
        let out = "T4 0100007F:1F90 111\nT4 00000000:0016 222\nT6 00000000000000000000000000000000:1F90 333\n\
                   T6 00000000000000000000000001000000:1538 444\nT4 00000000:C350 555\n\
                   ---FD---\n/proc/10/fd:\nlrwx------ 1 root root 64 Dec  2 10:00 3 -> socket:[111]\n\
                   /proc/20/fd:\nlrwx------ 1 root root 64 Dec  2 10:00 4 -> socket:[444]\n\
                   ---COMM---\nC /proc/10/comm:python3\nC /proc/20/comm:node\n";
        let p = parse(out);
        assert_eq!(
            p,
            vec![
                ListeningPort { port: 5432, address: "::1".into(), process: Some("node".into()), pid: Some(20) },
                ListeningPort { port: 8080, address: "::".into(), process: Some("python3".into()), pid: Some(10) },
                ListeningPort { port: 50000, address: "0.0.0.0".into(), process: None, pid: None },
            ]
        );
    }
}
