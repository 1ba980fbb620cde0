//! A small web app the tests and benchmarks run inside a guest (std only, plus ring/base64
//! for the WebSocket handshake): `guest_app <port>` listens on 127.0.0.1:<port>.
//!   GET  /hello        200 text, two Set-Cookie headers
//!   GET  /headers      the request's headers, one `name: value` per line
//!   GET  /bytes/<n>    n bytes (byte i = i % 251), Content-Length set, written in 64 KiB pieces
//!   POST /count        reads the body (Content-Length or chunked); answers `<bytes> <sum of bytes mod 2^32>`
//!   GET  /redirect     302 to /hello
//!   GET  /sse          text/event-stream: three events 200 ms apart, then the end
//!   GET  /ws           WebSocket echo (text and binary), Upgrade required
use base64::Engine;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

fn main() {
    let port: u16 = std::env::args().nth(1).and_then(|p| p.parse().ok()).unwrap_or(8000);
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind");
    eprintln!("guest_app listening on 127.0.0.1:{port}");
    for conn in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let _ = handle(conn);
        });
    }
}

struct Head {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

fn read_head(r: &mut BufReader<TcpStream>) -> std::io::Result<Option<Head>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("/").to_string());
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    Ok(Some(Head { method, path, headers }))
}

fn respond(w: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes())?;
    w.write_all(body)
}

fn handle(conn: TcpStream) -> std::io::Result<()> {
    let mut w = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    let Some(head) = read_head(&mut r)? else { return Ok(()) };
    let text = |s: &str| vec![("Content-Type", s.to_string())];
    match (head.method.as_str(), head.path.split('?').next().unwrap_or("")) {
        ("GET", "/hello") => respond(
            &mut w,
            "200 OK",
            &[("Content-Type", "text/plain".into()), ("Set-Cookie", "a=1; Path=/".into()), ("Set-Cookie", "b=2; Path=/".into())],
            b"hello from the guest\n",
        ),
        ("GET", "/headers") => {
            let body: String = head.headers.iter().map(|(k, v)| format!("{}: {v}\n", k.to_ascii_lowercase())).collect();
            respond(&mut w, "200 OK", &text("text/plain"), body.as_bytes())
        }
        ("GET", p) if p.starts_with("/bytes/") => {
            let n: usize = p["/bytes/".len()..].parse().unwrap_or(0);
            w.write_all(format!("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n").as_bytes())?;
            let piece: Vec<u8> = (0..65536 + 251).map(|i| (i % 251) as u8).collect();
            let mut sent = 0;
            while sent < n {
                let off = sent % 251;
                let k = (n - sent).min(65536);
                w.write_all(&piece[off..off + k])?;
                sent += k;
            }
            Ok(())
        }
        ("POST", "/count") => {
            let (mut n, mut sum) = (0u64, 0u32);
            let mut add = |b: &[u8]| {
                n += b.len() as u64;
                for x in b {
                    sum = sum.wrapping_add(u32::from(*x));
                }
            };
            let mut buf = vec![0u8; 65536];
            if head.get("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
                loop {
                    let mut size = String::new();
                    r.read_line(&mut size)?;
                    let len = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
                    if len == 0 {
                        let mut end = String::new();
                        r.read_line(&mut end)?;
                        break;
                    }
                    let mut left = len;
                    while left > 0 {
                        let k = r.read(&mut buf[..left.min(65536)])?;
                        if k == 0 {
                            break;
                        }
                        add(&buf[..k]);
                        left -= k;
                    }
                    let mut crlf = String::new();
                    r.read_line(&mut crlf)?;
                }
            } else {
                let mut left: u64 = head.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
                while left > 0 {
                    let k = r.read(&mut buf[..(left.min(65536) as usize)])?;
                    if k == 0 {
                        break;
                    }
                    add(&buf[..k]);
                    left -= k as u64;
                }
            }
            respond(&mut w, "200 OK", &text("text/plain"), format!("{n} {sum}").as_bytes())
        }
        ("GET", "/redirect") => respond(&mut w, "302 Found", &[("Location", "/hello".into())], b""),
        ("GET", "/sse") => {
            w.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n")?;
            for i in 0..3 {
                w.write_all(format!("data: tick {i}\n\n").as_bytes())?;
                w.flush()?;
                std::thread::sleep(Duration::from_millis(200));
            }
            Ok(())
        }
        ("GET", "/ws") => websocket(&head, r, w),
        _ => respond(&mut w, "404 Not Found", &text("text/plain"), b"not found\n"),
    }
}

fn websocket(head: &Head, mut r: BufReader<TcpStream>, mut w: TcpStream) -> std::io::Result<()> {
    let Some(key) = head.get("sec-websocket-key") else { return respond(&mut w, "426 Upgrade Required", &[], b"websocket only\n") };
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes());
    let accept = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
    w.write_all(format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n").as_bytes())?;
    loop {
        let mut h = [0u8; 2];
        r.read_exact(&mut h)?;
        let opcode = h[0] & 0x0f;
        let masked = h[1] & 0x80 != 0;
        let mut len = u64::from(h[1] & 0x7f);
        if len == 126 {
            let mut b = [0u8; 2];
            r.read_exact(&mut b)?;
            len = u64::from(u16::from_be_bytes(b));
        } else if len == 127 {
            let mut b = [0u8; 8];
            r.read_exact(&mut b)?;
            len = u64::from_be_bytes(b);
        }
        let mut mask = [0u8; 4];
        if masked {
            r.read_exact(&mut mask)?;
        }
        let mut payload = vec![0u8; len as usize];
        r.read_exact(&mut payload)?;
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
        let mut frame = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => frame.push(n as u8),
            n if n < 65536 => {
                frame.push(126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&payload);
        match opcode {
            0x8 => {
                let _ = w.write_all(&frame);
                return Ok(());
            }
            0x9 => {
                frame[0] = 0x8A;
                w.write_all(&frame)?;
            }
            _ => w.write_all(&frame)?,
        }
    }
}
