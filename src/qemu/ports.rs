//! Host ports for the SSH forward, reserved inside the service so two VMs never get one.
use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::Mutex;

#[derive(Default)]
pub struct PortPool {
    reserved: Mutex<HashSet<u16>>,
}

impl PortPool {
    /// A loopback port that is free now and reserved for the caller until released.
    pub fn reserve(&self) -> Option<u16> {
        let mut set = self.reserved.lock().unwrap_or_else(|p| p.into_inner());
        for _ in 0..64 {
            let port = TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
            if set.insert(port) {
                return Some(port);
            }
        }
        None
    }

    /// Marks a port as taken (a re-adopted VM's forward).
    pub fn claim(&self, port: u16) -> bool {
        self.reserved.lock().unwrap_or_else(|p| p.into_inner()).insert(port)
    }

    pub fn release(&self, port: u16) {
        self.reserved.lock().unwrap_or_else(|p| p.into_inner()).remove(&port);
    }

    pub fn reserved(&self) -> Vec<u16> {
        let mut v: Vec<u16> = self.reserved.lock().unwrap_or_else(|p| p.into_inner()).iter().copied().collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_ports_are_never_handed_out_twice() {
        let pool = PortPool::default();
        let mut seen = HashSet::new();
        for _ in 0..200 {
            let p = pool.reserve().expect("port");
            assert!(seen.insert(p), "port {p} handed out twice");
        }
        let first = *seen.iter().next().unwrap();
        pool.release(first);
        assert!(!pool.reserved().contains(&first));
    }
}
