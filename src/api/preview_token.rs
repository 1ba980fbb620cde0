//! Preview tokens: what lets a browser (which cannot send the API token) open one port of
//! one VM until a deadline. `<vm_id>.<port>.<expires>.<mac>`, the MAC an HMAC-SHA256 of the
//! first three parts under a key derived from the API token (so rotating the token revokes
//! every preview).
use base64::Engine;
use ring::hmac;

/// Why a presented token does not open a preview.
#[derive(Debug, PartialEq, Eq)]
pub enum Denied {
    /// Malformed or not signed by this service.
    Invalid,
    /// Signed for another VM or port.
    OtherTarget,
    Expired,
}

pub struct Signer {
    key: hmac::Key,
}

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

impl Signer {
    pub fn new(api_token: &str) -> Signer {
        let root = hmac::Key::new(hmac::HMAC_SHA256, api_token.as_bytes());
        let derived = hmac::sign(&root, b"vm-service preview token v1");
        Signer { key: hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()) }
    }

    /// A token for `vm_id`:`port` valid until `expires` (unix seconds).
    pub fn sign(&self, vm_id: &str, port: u16, expires: u64) -> String {
        let body = format!("{vm_id}.{port}.{expires}");
        let mac = hmac::sign(&self.key, body.as_bytes());
        format!("{body}.{}", B64.encode(mac.as_ref()))
    }

    /// Whether `token` opens `vm_id`:`port` at `now`.
    pub fn check(&self, token: &str, vm_id: &str, port: u16, now: u64) -> Result<(), Denied> {
        let (body, mac) = token.rsplit_once('.').ok_or(Denied::Invalid)?;
        let mac = B64.decode(mac).map_err(|_| Denied::Invalid)?;
        hmac::verify(&self.key, body.as_bytes(), &mac).map_err(|_| Denied::Invalid)?;
        let mut parts = body.rsplitn(3, '.');
        let expires: u64 = parts.next().and_then(|e| e.parse().ok()).ok_or(Denied::Invalid)?;
        let signed_port: u16 = parts.next().and_then(|p| p.parse().ok()).ok_or(Denied::Invalid)?;
        let signed_vm = parts.next().ok_or(Denied::Invalid)?;
        if signed_vm != vm_id || signed_port != port {
            return Err(Denied::OtherTarget);
        }
        if now >= expires {
            return Err(Denied::Expired);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_opens_its_vm_and_port_until_it_expires() {
        let s = Signer::new("api-token");
        let t = s.sign("vm1", 8080, 1000);
        assert_eq!(s.check(&t, "vm1", 8080, 999), Ok(()));
        assert_eq!(s.check(&t, "vm1", 8081, 999), Err(Denied::OtherTarget));
        assert_eq!(s.check(&t, "vm2", 8080, 999), Err(Denied::OtherTarget));
        assert_eq!(s.check(&t, "vm1", 8080, 1000), Err(Denied::Expired));
    }

    #[test]
    fn a_forged_or_foreign_token_is_invalid() {
        let s = Signer::new("api-token");
        let t = s.sign("vm1", 8080, 1000);
        let forged = t.replace(".1000.", ".9999.");
        assert_eq!(s.check(&forged, "vm1", 8080, 999), Err(Denied::Invalid));
        assert_eq!(Signer::new("other").check(&t, "vm1", 8080, 999), Err(Denied::Invalid));
        assert_eq!(s.check("garbage", "vm1", 8080, 0), Err(Denied::Invalid));
        assert_eq!(s.check("", "vm1", 8080, 0), Err(Denied::Invalid));
    }
}
