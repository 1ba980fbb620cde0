//! Host ports for the SSH forward. They come from a range outside the kernel's ephemeral
//! range (so no outgoing connection of another process is ever given one), each is held
//! by a bound socket until QEMU is about to bind it, and a lease keeps it reserved inside
//! the service until dropped, so two VMs never get one port.
use std::collections::HashSet;
use std::net::TcpListener;
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};

struct State {
    reserved: HashSet<u16>,
    range: RangeInclusive<u16>,
    next: u16,
}

#[derive(Clone)]
pub struct PortPool(Arc<Mutex<State>>);

/// A reserved port; released when dropped.
pub struct PortLease {
    port: u16,
    pool: PortPool,
    holder: Option<TcpListener>,
}

impl std::fmt::Debug for PortLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PortLease({})", self.port)
    }
}

impl PortLease {
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Closes the socket holding the port, for QEMU to bind it next.
    pub fn unbind(&mut self) {
        self.holder = None;
    }
}

impl Drop for PortLease {
    fn drop(&mut self) {
        self.pool.lock().reserved.remove(&self.port);
    }
}

/// The kernel's ephemeral port range (`ip_local_port_range`).
pub fn ephemeral_range() -> Option<RangeInclusive<u16>> {
    let s = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = s.split_whitespace().filter_map(|p| p.parse::<u16>().ok());
    Some(it.next()?..=it.next()?)
}

/// Whether two port ranges share a port.
pub fn overlap(a: &RangeInclusive<u16>, b: &RangeInclusive<u16>) -> bool {
    a.start() <= b.end() && b.start() <= a.end()
}

/// Parses `LOW-HIGH`.
pub fn parse_range(s: &str) -> Result<RangeInclusive<u16>, String> {
    let (a, b) = s.split_once('-').ok_or_else(|| format!("{s:?} is not LOW-HIGH"))?;
    let (a, b): (u16, u16) = (a.trim().parse().map_err(|_| format!("{a:?} is not a port"))?, b.trim().parse().map_err(|_| format!("{b:?} is not a port"))?);
    if a < 1024 || b < a {
        return Err(format!("{s:?}: need 1024 <= LOW <= HIGH"));
    }
    Ok(a..=b)
}

impl PortPool {
    pub fn new(range: RangeInclusive<u16>) -> PortPool {
        // A random starting point: services sharing a host (or tests) rarely probe the same
        // port at the same moment.
        let span = (*range.end() - *range.start()) as u32 + 1;
        let next = *range.start() + (rand::random::<u32>() % span) as u16;
        PortPool(Arc::new(Mutex::new(State { reserved: HashSet::new(), range, next })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A port of the range that nobody listens on now, held by a bound socket and reserved
    /// for the caller until the lease drops.
    pub fn reserve(&self) -> Option<PortLease> {
        let mut st = self.lock();
        let (lo, hi) = (*st.range.start(), *st.range.end());
        let span = (hi - lo) as u32 + 1;
        for _ in 0..span {
            let port = st.next;
            st.next = if port >= hi { lo } else { port + 1 };
            if st.reserved.contains(&port) {
                continue;
            }
            if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
                st.reserved.insert(port);
                return Some(PortLease { port, pool: self.clone(), holder: Some(l) });
            }
        }
        None
    }

    /// Reserves the port of a VM found running (adoption); None when it is taken already.
    pub fn claim(&self, port: u16) -> Option<PortLease> {
        self.lock().reserved.insert(port).then(|| PortLease { port, pool: self.clone(), holder: None })
    }

    pub fn reserved(&self) -> Vec<u16> {
        let mut v: Vec<u16> = self.lock().reserved.iter().copied().collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_ports_are_never_handed_out_twice_and_a_dropped_lease_frees_its_port() {
        let pool = PortPool::new(41000..=41199);
        let mut leases = Vec::new();
        let mut seen = HashSet::new();
        for _ in 0..150 {
            let l = pool.reserve().expect("port");
            assert!((41000..=41199).contains(&l.port()));
            assert!(seen.insert(l.port()), "port {} handed out twice", l.port());
            // Held by a socket: nobody else can bind it meanwhile.
            assert!(TcpListener::bind(("127.0.0.1", l.port())).is_err());
            leases.push(l);
        }
        let first = leases.remove(0).port();
        assert!(!pool.reserved().contains(&first));
        assert!(pool.claim(first).is_some());
        assert!(pool.claim(leases[0].port()).is_none(), "a reserved port cannot be claimed");
    }

    #[test]
    fn a_port_someone_listens_on_is_skipped() {
        let busy = TcpListener::bind(("127.0.0.1", 41300)).unwrap();
        let pool = PortPool::new(41300..=41301);
        for _ in 0..4 {
            assert_eq!(pool.reserve().unwrap().port(), 41301);
        }
        drop(busy);
    }

    #[test]
    fn ranges_parse() {
        assert_eq!(parse_range("20000-29999").unwrap(), 20000..=29999);
        assert!(parse_range("80-90").is_err());
        assert!(parse_range("3000-2000").is_err());
        assert!(parse_range("x").is_err());
    }
}
