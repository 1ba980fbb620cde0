//! HTTP/1.1 to a port inside a VM over an SSH tunnel (no guest port is exposed on the host):
//! one request per tunnel, bodies streaming both ways, and an upgrade the guest accepts
//! (WebSocket) spliced to the client's connection.
use super::processes::check_port;
use super::{Manager, ManagerError, Result};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::{Request, Response, StatusCode};
use hyper::body::{Body, Incoming};
use hyper_util::rt::TokioIo;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 8] = ["connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade"];

/// Removes hop-by-hop headers, those the Connection header names included.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()).collect::<Vec<_>>())
        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in HOP_BY_HOP {
        h.remove(n);
    }
}

/// The protocol a request asks to switch to (`Connection: upgrade` + `Upgrade: x`).
pub fn upgrade_of(h: &HeaderMap) -> Option<http::HeaderValue> {
    let asks = h.get_all(header::CONNECTION).iter().filter_map(|v| v.to_str().ok()).any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")));
    if asks {
        h.get(header::UPGRADE).cloned()
    } else {
        None
    }
}

impl Manager {
    /// Sends `req` (headers as the caller wants them; hop-by-hop ones are dropped here) to
    /// 127.0.0.1:`port` in the VM and answers its response with the body streaming. A request
    /// that asks for an upgrade keeps it; when the guest answers 101 the two connections
    /// are spliced until either side closes.
    pub async fn forward<B>(&self, id: &str, port: u32, req: Request<B>) -> Result<Response<Incoming>>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let guest = self.guest(id).await?;
        let port = check_port(port)?;
        let tunnel = guest.tunnel(port).await?;
        exchange(tunnel, req).await.map_err(|e| bad_gateway(port, &e))
    }
}

/// One HTTP/1.1 exchange over `io` (hop-by-hop headers dropped, the body streaming both
/// ways). A request that asks for an upgrade keeps it; when the far side answers 101 the
/// two connections are spliced until either side closes.
pub async fn exchange<IO, B>(io: IO, mut req: Request<B>) -> std::result::Result<Response<Incoming>, hyper::Error>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let upgrade = upgrade_of(req.headers());
    strip_hop_by_hop(req.headers_mut());
    let client_side = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    if let Some(proto) = upgrade {
        req.headers_mut().insert(header::CONNECTION, http::HeaderValue::from_static("upgrade"));
        req.headers_mut().insert(header::UPGRADE, proto);
    }
    let (mut send, conn) = hyper::client::conn::http1::handshake::<_, B>(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "relayed HTTP connection ended");
        }
    });
    let mut resp = send.send_request(req).await?;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_side) = client_side {
            let far_side = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                match tokio::try_join!(client_side, far_side) {
                    Ok((c, g)) => {
                        let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(c), &mut TokioIo::new(g)).await;
                    }
                    Err(e) => tracing::debug!(error = %e, "upgrade not completed"),
                }
            });
        }
    }
    Ok(resp)
}

fn bad_gateway(port: u16, e: &hyper::Error) -> ManagerError {
    let mut msg = format!("the app on port {port} in the guest did not answer HTTP: {e}");
    if let Some(src) = std::error::Error::source(e) {
        msg.push_str(&format!(" ({src})"));
    }
    ManagerError::Guest(crate::guest::GuestError::Ssh(msg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, X-Secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        h.insert(header::ACCEPT, "*/*".parse().unwrap());
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key(header::ACCEPT));
    }

    #[test]
    fn an_upgrade_is_asked_only_with_both_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        assert!(upgrade_of(&h).is_none());
        h.insert(header::CONNECTION, "keep-alive, Upgrade".parse().unwrap());
        assert_eq!(upgrade_of(&h).unwrap(), "websocket");
    }
}
