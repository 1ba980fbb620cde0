//! The CLI's side of HTTP: one client holding the service's URL and token, errors that
//! print as one line with the service's own detail, and a reader of event streams.
use futures::StreamExt;
use reqwest::{Method, RequestBuilder, Response};
use serde_json::Value;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot reach the service at {url}: {cause} (set --url or VM_SERVICE_URL)")]
    Unreachable { url: String, cause: String },
    #[error("the service at {url} refused the token ({status}): {detail} (set --token or VM_SERVICE_TOKEN)")]
    Auth { url: String, status: u16, detail: String },
    #[error("{detail} ({status})")]
    Api { status: u16, detail: String },
    #[error("{0}")]
    Usage(String),
    #[error("{what}: {cause}")]
    Local { what: String, cause: std::io::Error },
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    /// 2 when the CLI could not talk to the service at all (address, token, usage);
    /// 1 when the service answered no.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Unreachable { .. } | CliError::Auth { .. } | CliError::Usage(_) => 2,
            _ => 1,
        }
    }

    pub fn local(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> CliError {
        let what = what.into();
        move |cause| CliError::Local { what, cause }
    }
}

pub type Result<T> = std::result::Result<T, CliError>;

/// The service's `detail`: a string, or FastAPI-style validation items (`loc` + `msg`).
pub fn detail_of(body: &str) -> String {
    let Ok(v) = serde_json::from_str::<Value>(body) else { return body.trim().chars().take(500).collect() };
    match &v["detail"] {
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .map(|i| {
                let loc: Vec<String> =
                    i["loc"].as_array().into_iter().flatten().map(|p| p.as_str().map(str::to_string).unwrap_or_else(|| p.to_string())).collect();
                format!("{}: {}", loc.join("."), i["msg"].as_str().unwrap_or_default())
            })
            .collect::<Vec<_>>()
            .join("; "),
        Value::Null => v["reason"].as_str().map(str::to_string).unwrap_or_else(|| v.to_string()),
        other => other.to_string(),
    }
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    pub base: String,
    token: String,
}

impl Client {
    pub fn new(base: &str, token: &str) -> Result<Client> {
        let base = base.trim_end_matches('/').to_string();
        if !base.starts_with("http://") {
            return Err(CliError::Usage(format!("the URL {base} must start with http:// (put a TLS proxy in front of the service for https)")));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| CliError::Failed(format!("HTTP client: {e}")))?;
        Ok(Client { http, base, token: token.to_string() })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, self.url(path)).bearer_auth(&self.token)
    }

    /// Sends; a transport failure, a refused token and any non-2xx answer become errors.
    pub async fn send(&self, rb: RequestBuilder) -> Result<Response> {
        let resp = rb.send().await.map_err(|e| {
            if e.is_connect() {
                CliError::Unreachable { url: self.base.clone(), cause: root_cause(&e) }
            } else {
                // Connected, then broken (e.g. a body refused part-way): not a wrong address.
                CliError::Failed(format!("the request to {} broke: {}", self.base, root_cause(&e)))
            }
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.text().await.unwrap_or_default();
        let detail = detail_of(&body);
        Err(match status.as_u16() {
            401 | 403 => CliError::Auth { url: self.base.clone(), status: status.as_u16(), detail },
            s => CliError::Api { status: s, detail },
        })
    }

    /// A JSON call; the answer's JSON.
    pub async fn json(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
        let mut rb = self.request(method, path).timeout(Duration::from_secs(600));
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let resp = self.send(rb).await?;
        let text = resp.text().await.map_err(|e| CliError::Failed(format!("reading the answer of {}: {}", self.base, root_cause(&e))))?;
        serde_json::from_str(&text)
            .map_err(|e| CliError::Failed(format!("the service answered something that is not JSON ({e}): {}", text.chars().take(200).collect::<String>())))
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        self.json(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Result<Value> {
        self.json(Method::POST, path, Some(body)).await
    }

    /// An event stream (GET, or POST with a JSON body).
    pub async fn events(&self, method: Method, path: &str, body: Option<Value>) -> Result<Sse> {
        let mut rb = self.request(method, path).header("accept", "text/event-stream");
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        Ok(Sse::new(self.send(rb).await?))
    }
}

/// The innermost cause of a request error ("Connection refused", not reqwest's wrapper).
fn root_cause(e: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Server-Sent Events read off a response: (event name, data).
pub struct Sse {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buf: Vec<u8>,
}

impl Sse {
    pub fn new(resp: Response) -> Sse {
        Sse { body: resp.bytes_stream().boxed(), buf: Vec::new() }
    }

    /// The next event; None when the stream ended.
    pub async fn next(&mut self) -> Result<Option<(String, String)>> {
        loop {
            if let Some(end) = find_blank_line(&self.buf) {
                let block: Vec<u8> = self.buf.drain(..end.1).collect();
                let text = String::from_utf8_lossy(&block[..end.0]).into_owned();
                let (mut name, mut data) = (String::from("message"), Vec::<&str>::new());
                for line in text.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim_start().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
                if data.is_empty() && name == "message" {
                    continue; // a keep-alive comment
                }
                return Ok(Some((name, data.join("\n"))));
            }
            match self.body.next().await {
                Some(Ok(b)) => self.buf.extend_from_slice(&b),
                Some(Err(e)) => return Err(CliError::Failed(format!("the event stream broke: {}", root_cause(&e)))),
                None => return Ok(None),
            }
        }
    }
}

/// (end of the block, end of its separator) of the first event block in `buf`.
fn find_blank_line(buf: &[u8]) -> Option<(usize, usize)> {
    (0..buf.len()).find_map(|i| {
        if buf[i..].starts_with(b"\n\n") {
            Some((i, i + 2))
        } else if buf[i..].starts_with(b"\r\n\r\n") {
            Some((i, i + 4))
        } else {
            None
        }
    })
}

/// `{text}` or `{b64}` event data as bytes.
pub fn data_bytes(data: &str) -> Vec<u8> {
    use base64::Engine;
    let v: Value = serde_json::from_str(data).unwrap_or(Value::Null);
    if let Some(t) = v["text"].as_str() {
        return t.as_bytes().to_vec();
    }
    v["b64"].as_str().and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_read_as_one_line() {
        assert_eq!(detail_of(r#"{"detail":"VM is not running"}"#), "VM is not running");
        assert_eq!(detail_of(r#"{"detail":[{"loc":["body","vcpus"],"msg":"too many"}]}"#), "body.vcpus: too many");
        assert_eq!(detail_of("plain text\n"), "plain text");
    }

    #[test]
    fn event_blocks_end_at_a_blank_line() {
        assert_eq!(find_blank_line(b"event: a\ndata: 1\n\nrest"), Some((16, 18)));
        assert_eq!(find_blank_line(b"event: a\r\n\r\n"), Some((8, 12)));
        assert_eq!(find_blank_line(b"event: a\n"), None);
    }

    #[test]
    fn stream_data_decodes_text_and_base64() {
        assert_eq!(data_bytes(r#"{"text":"hi\n"}"#), b"hi\n");
        assert_eq!(data_bytes(r#"{"b64":"/w=="}"#), vec![0xff]);
    }
}
