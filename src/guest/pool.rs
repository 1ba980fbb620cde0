//! SSH session pool per VM: connections are reused, each carries a bounded number of
//! channels (dropbear/OpenSSH refuse more than ~10), a further connection is dialled when
//! all are busy, dead ones are dropped and re-dialled. The guest host key is pinned at
//! first contact and the VM id is checked on every new connection.
use super::channel::{self, Lease, Opener};
use super::cmd;
use super::reader::{self, Caps};
use super::GuestError;
use russh::client::{self, Handle};
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Channels per connection: below dropbear's and OpenSSH's MaxSessions of 10.
pub const CHANNELS_PER_CONN: usize = 8;
pub const MAX_CONNS: usize = 4;

#[derive(Clone)]
pub struct Target {
    pub vm_id: String,
    pub port: u16,
    pub user: String,
    pub key: Arc<PrivateKey>,
    /// OpenSSH text of the guest host key; None until first contact.
    pub host_key: Arc<Mutex<Option<String>>>,
}

struct Client {
    pinned: Arc<Mutex<Option<String>>>,
    /// The pre-auth banner: the tiny guest's dropbear sends /etc/vm-id (`-b`), which spares
    /// the identity check an exec (a shell start, ~90 ms under TCG).
    banner: Arc<Mutex<Option<String>>>,
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn auth_banner(&mut self, banner: &str, _session: &mut client::Session) -> Result<(), Self::Error> {
        *self.banner.lock().unwrap_or_else(|p| p.into_inner()) = Some(banner.trim().to_string());
        Ok(())
    }

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = key else { return Ok(false) };
        let Ok(text) = key.to_openssh() else { return Ok(false) };
        let mut pinned = self.pinned.lock().unwrap_or_else(|p| p.into_inner());
        match pinned.as_deref() {
            Some(k) => Ok(k == text),
            None => {
                *pinned = Some(text);
                Ok(true)
            }
        }
    }
}

struct Conn {
    handle: Handle<Client>,
    permits: Arc<Semaphore>,
}

pub struct Pool {
    /// Who new connections must reach (changed once by `retarget`).
    target: Mutex<Target>,
    conns: tokio::sync::Mutex<Vec<Arc<Conn>>>,
}

fn config() -> Arc<client::Config> {
    Arc::new(client::Config {
        nodelay: true,
        keepalive_interval: Some(Duration::from_secs(15)),
        keepalive_max: 3,
        inactivity_timeout: None,
        ..Default::default()
    })
}

/// Dials the guest, authenticates with the service key, and checks the guest's VM id.
async fn dial(target: &Target, timeout: Duration) -> Result<Conn, GuestError> {
    dial_over(target, None, timeout).await
}

/// As `dial`, retried for a few seconds while the guest refuses or drops the connection: a
/// restored guest restarts its SSH listener with its new host key right after it runs.
async fn dial_retrying(target: &Target) -> Result<Conn, GuestError> {
    let t0 = std::time::Instant::now();
    loop {
        match dial(target, Duration::from_secs(15)).await {
            Err(GuestError::Connect(e)) if t0.elapsed() < Duration::from_secs(3) => {
                tracing::debug!(error = %e, "ssh dial failed; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

/// As `dial`, over `stream` when given: a TCP connection to the guest's SSH port whose
/// first bytes (`consumed`, part of the server's identification line) were already read.
async fn dial_over(target: &Target, stream: Option<(tokio::net::TcpStream, Vec<u8>)>, timeout: Duration) -> Result<Conn, GuestError> {
    let fut = async {
        let t0 = std::time::Instant::now();
        let banner = Arc::new(Mutex::new(None));
        let handler = Client { pinned: target.host_key.clone(), banner: banner.clone() };
        let connected = match stream {
            Some((tcp, consumed)) => client::connect_stream(config(), super::prefixed::Prefixed::new(consumed, tcp), handler).await,
            None => client::connect(config(), ("127.0.0.1", target.port), handler).await,
        };
        let mut handle = connected.map_err(|e| GuestError::Connect(format!("ssh to 127.0.0.1:{}: {e}", target.port)))?;
        let auth = handle
            .authenticate_publickey(target.user.clone(), PrivateKeyWithHashAlg::new(target.key.clone(), None))
            .await
            .map_err(|e| GuestError::Connect(format!("ssh auth: {e}")))?;
        if !auth.success() {
            return Err(GuestError::Connect(format!("ssh key auth as {} was refused", target.user)));
        }
        tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1000.0, "ssh session authenticated");
        let conn = Conn { handle, permits: Arc::new(Semaphore::new(CHANNELS_PER_CONN)) };
        let announced = banner.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if announced.as_deref() == Some(target.vm_id.as_str()) {
            return Ok(conn);
        }
        let mut ch = conn.handle.channel_open_session().await.map_err(|e| GuestError::Connect(e.to_string()))?;
        channel::exec(&ch, &cmd::read_vm_id()).await.map_err(|e| GuestError::Connect(e.to_string()))?;
        ch.eof().await.map_err(|e| GuestError::Connect(e.to_string()))?;
        let read = reader::collect(&mut ch, Caps::both(4096), None).await;
        tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1000.0, "guest identity read");
        let seen = String::from_utf8_lossy(&read.output.stdout).trim().to_string();
        if seen != target.vm_id {
            return Err(GuestError::Identity { expected: target.vm_id.clone(), seen });
        }
        Ok(conn)
    };
    tokio::time::timeout(timeout, fut).await.map_err(|_| GuestError::Connect(format!("ssh to 127.0.0.1:{} timed out", target.port)))?
}

impl Pool {
    /// Connects once (readiness check) and returns a pool holding that connection.
    pub async fn connect(target: Target, timeout: Duration) -> Result<Pool, GuestError> {
        Self::connect_over(target, None, timeout).await
    }

    /// As `connect`, reusing a probe connection that has already seen the server's banner
    /// (spares the guest a second connection set-up, ~70 ms under TCG).
    pub async fn connect_over(target: Target, stream: Option<(tokio::net::TcpStream, Vec<u8>)>, timeout: Duration) -> Result<Pool, GuestError> {
        let conn = dial_over(&target, stream, timeout).await?;
        Ok(Pool { target: Mutex::new(target), conns: tokio::sync::Mutex::new(vec![Arc::new(conn)]) })
    }

    /// A pool with no connection yet: the first use dials.
    pub fn lazy(target: Target) -> Pool {
        Pool { target: Mutex::new(target), conns: tokio::sync::Mutex::new(Vec::new()) }
    }

    fn target(&self) -> Target {
        self.target.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// From now on new connections must reach VM `vm_id` with `host_key` (a restored guest
    /// that took its own identity); connections already open stay.
    pub fn retarget(&self, vm_id: &str, host_key: &str) {
        let mut t = self.target.lock().unwrap_or_else(|p| p.into_inner());
        t.vm_id = vm_id.to_string();
        // A fresh cell: the open connections keep checking against the old key.
        t.host_key = Arc::new(Mutex::new(Some(host_key.to_string())));
    }

    pub fn host_key(&self) -> Option<String> {
        self.target().host_key.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub async fn connection_count(&self) -> usize {
        self.conns.lock().await.len()
    }

    /// Opens a session channel on a connection with a free slot, dialling when needed.
    async fn lease_inner(&self) -> Result<Lease, GuestError> {
        for attempt in 0..3 {
            let (conn, permit) = self.slot().await?;
            match conn.handle.channel_open_session().await {
                Ok(channel) => return Ok(Lease { channel, permit }),
                Err(e) => {
                    tracing::debug!(vm_id = %self.target().vm_id, attempt, error = %e, "channel open failed; dropping connection");
                    self.conns.lock().await.retain(|c| !Arc::ptr_eq(c, &conn));
                }
            }
        }
        Err(GuestError::Connect("could not open an SSH channel to the guest".into()))
    }

    async fn slot(&self) -> Result<(Arc<Conn>, OwnedSemaphorePermit), GuestError> {
        let waiting_on = {
            let mut conns = self.conns.lock().await;
            conns.retain(|c| !c.handle.is_closed());
            for c in conns.iter() {
                if let Ok(p) = c.permits.clone().try_acquire_owned() {
                    return Ok((c.clone(), p));
                }
            }
            if conns.len() < MAX_CONNS {
                let c = Arc::new(dial_retrying(&self.target()).await?);
                conns.push(c.clone());
                let p = c.permits.clone().try_acquire_owned().map_err(|e| GuestError::Connect(e.to_string()))?;
                return Ok((c, p));
            }
            conns[0].clone()
        };
        let p = waiting_on.permits.clone().acquire_owned().await.map_err(|e| GuestError::Connect(e.to_string()))?;
        Ok((waiting_on, p))
    }

    /// A TCP connection to 127.0.0.1:`port` inside the guest (an SSH direct-tcpip channel),
    /// with its pool slot.
    pub async fn tunnel(&self, port: u16) -> Result<Lease, GuestError> {
        for attempt in 0..3 {
            let (conn, permit) = self.slot().await?;
            match conn.handle.channel_open_direct_tcpip("127.0.0.1", u32::from(port), "127.0.0.1", 0).await {
                Ok(channel) => return Ok(Lease { channel, permit }),
                Err(russh::Error::ChannelOpenFailure(reason)) => {
                    return Err(GuestError::PortClosed(format!("nothing accepts connections on port {port} in the guest ({reason:?})")))
                }
                Err(e) => {
                    tracing::debug!(attempt, error = %e, "tunnel open failed; dropping connection");
                    self.conns.lock().await.retain(|c| !Arc::ptr_eq(c, &conn));
                }
            }
        }
        Err(GuestError::Connect(format!("could not open a tunnel to port {port} in the guest")))
    }

    pub async fn open_channels(&self) -> usize {
        self.conns.lock().await.iter().map(|c| CHANNELS_PER_CONN - c.permits.available_permits()).sum()
    }

    pub async fn close(&self) {
        let conns = std::mem::take(&mut *self.conns.lock().await);
        for c in conns {
            let _ = c.handle.disconnect(russh::Disconnect::ByApplication, "", "en").await;
        }
    }
}

impl Opener for Pool {
    async fn lease(&self) -> Result<Lease, GuestError> {
        self.lease_inner().await
    }
}
