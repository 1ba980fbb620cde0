//! The guest's refresh port: `vm-refresh --serve` (guest/tools/vm-refresh.c) waits on the
//! virtio-serial port `vmsvc.refresh`, reached through the unix socket QEMU listens on. A
//! copy restored from a snapshot (or forked) is given its own identity there without
//! starting a process in the guest: on a freshly restored TCG guest, the fork and exec of
//! the same refresh through the command runner cost ≈ 120 ms before its first answer.
//! One line per request, one line per answer. The service stays connected for the VM's
//! life: a port with no host behind reads EOF in the guest, and the server then polls once a
//! second, which a saved guest would carry into every copy.
use super::GuestError;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

pub struct RefreshPort {
    stream: BufReader<UnixStream>,
}

/// What a restored copy becomes (the words of a `refresh` request).
pub struct Identity<'a> {
    pub vm_id: &'a str,
    /// The host's time, Unix seconds.
    pub epoch: u64,
    /// Host randomness, hex.
    pub seed_hex: &'a str,
    /// The new SSH host key, a dropbear key file in base64.
    pub host_key_b64: &'a str,
    /// The guest stops reporting free pages (its RAM is mapped from a template).
    pub no_page_reports: bool,
}

impl Identity<'_> {
    fn request(&self) -> Result<String, GuestError> {
        for (field, word) in [("vm id", self.vm_id), ("seed", self.seed_hex), ("host key", self.host_key_b64)] {
            if word.is_empty() || word.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
                return Err(GuestError::Connect(format!("the refresh's {field} must be one word")));
            }
        }
        Ok(format!("refresh {} {} {} {} {}\n", self.vm_id, self.epoch, self.seed_hex, self.host_key_b64, u8::from(self.no_page_reports)))
    }
}

impl RefreshPort {
    /// Connects to the port's socket, waiting up to `wait` for QEMU to create it.
    pub async fn connect(path: &Path, wait: Duration) -> Result<RefreshPort, GuestError> {
        Ok(RefreshPort { stream: BufReader::new(super::agent::connect_socket(path, wait, "refresh").await?) })
    }

    /// Whether the guest's server answers (it then waits on the port for the next line).
    pub async fn ping(&mut self, timeout: Duration) -> Result<(), GuestError> {
        match self.exchange("ping\n", timeout).await?.as_str() {
            "pong" => Ok(()),
            other => Err(GuestError::Connect(format!("the refresh port answered {other:?} to a ping"))),
        }
    }

    /// Gives the guest `identity`; an error names what the guest said went wrong.
    pub async fn refresh(&mut self, identity: &Identity<'_>, timeout: Duration) -> Result<(), GuestError> {
        let request = identity.request()?;
        match self.exchange(&request, timeout).await?.as_str() {
            "ok" => Ok(()),
            other => Err(GuestError::Ssh(format!("the guest's identity refresh failed: {}", other.strip_prefix("error ").unwrap_or(other)))),
        }
    }

    /// One request line out, one answer line back (without its newline). A timeout leaves
    /// the stream unusable (a late answer would be read as the next one's): callers drop it.
    async fn exchange(&mut self, request: &str, timeout: Duration) -> Result<String, GuestError> {
        let io = async {
            self.stream.get_mut().write_all(request.as_bytes()).await?;
            let mut line = String::new();
            self.stream.read_line(&mut line).await?;
            Ok::<_, std::io::Error>(line)
        };
        match tokio::time::timeout(timeout, io).await {
            Err(_) => Err(GuestError::Connect(format!("the guest's refresh port did not answer within {} ms", timeout.as_millis()))),
            Ok(Err(e)) => Err(GuestError::Connect(format!("refresh port: {e}"))),
            Ok(Ok(line)) if line.is_empty() => Err(GuestError::Connect("the refresh port closed".into())),
            Ok(Ok(line)) => Ok(line.trim_end().to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity<'a>(vm_id: &'a str, key: &'a str) -> Identity<'a> {
        Identity { vm_id, epoch: 7, seed_hex: "00ff", host_key_b64: key, no_page_reports: true }
    }

    #[test]
    fn a_request_is_one_line_of_words() {
        assert_eq!(identity("a-b", "a2V5").request().unwrap(), "refresh a-b 7 00ff a2V5 1\n");
        assert!(identity("a b", "a2V5").request().is_err());
        assert!(identity("a", "a2V5\nping").request().is_err());
        assert!(identity("", "a2V5").request().is_err());
    }

    /// The exchange against a stand-in for the guest's server on a socket pair.
    #[tokio::test]
    async fn answers_are_read_line_by_line_and_errors_carry_the_guests_reason() {
        let (host, guest) = UnixStream::pair().unwrap();
        let mut port = RefreshPort { stream: BufReader::new(host) };
        let server = tokio::spawn(async move {
            let mut guest = BufReader::new(guest);
            let mut line = String::new();
            for reply in ["pong\n", "ok\n", "error setting the clock: Operation not permitted\n"] {
                line.clear();
                guest.read_line(&mut line).await.unwrap();
                guest.get_mut().write_all(reply.as_bytes()).await.unwrap();
            }
        });
        port.ping(Duration::from_secs(5)).await.unwrap();
        port.refresh(&identity("x", "a2V5"), Duration::from_secs(5)).await.unwrap();
        let e = port.refresh(&identity("x", "a2V5"), Duration::from_secs(5)).await.unwrap_err();
        assert!(e.to_string().contains("setting the clock: Operation not permitted"), "{e}");
        server.await.unwrap();
        // The guest side gone: an error (the write's broken pipe, or EOF), not a hang.
        let e = port.ping(Duration::from_secs(5)).await.unwrap_err();
        assert!(e.to_string().contains("refresh port"), "{e}");
    }
}
