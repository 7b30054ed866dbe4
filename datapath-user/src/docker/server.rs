//! HTTP/1.1 on the plugin's unix socket, as much of it as dockerd's plugin
//! client uses: `POST /Method` with a JSON body (Content-Length or
//! chunked), keep-alive, one response per request. Bounded like the
//! agent's own socket: header and body sizes, the time a request may take,
//! connections at once.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

use super::driver::Driver;
use super::wire::ErrResponse;

pub const MAX_HEADER_BYTES: usize = 64 << 10;
pub const MAX_BODY_BYTES: usize = 1 << 20;
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
pub const MAX_CONNECTIONS: usize = 64;
/// An idle keep-alive connection is closed after this long.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
pub const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1+json";

/// One request read off a connection.
#[derive(Debug, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
    /// The client asked to close after the response (or spoke HTTP/1.0).
    pub close: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HttpError {
    #[error("malformed HTTP request: {0}")]
    Malformed(String),
    #[error("request too large")]
    TooLarge,
}

async fn read_line<R: AsyncBufReadExt + Unpin>(r: &mut R, used: &mut usize) -> Result<Option<String>, HttpError> {
    let mut line = Vec::new();
    let mut limited = (&mut *r).take((MAX_HEADER_BYTES - *used) as u64 + 1);
    let n = limited.read_until(b'\n', &mut line).await.map_err(|e| HttpError::Malformed(e.to_string()))?;
    if n == 0 {
        return Ok(None);
    }
    *used += n;
    if *used > MAX_HEADER_BYTES {
        return Err(HttpError::TooLarge);
    }
    if line.last() != Some(&b'\n') {
        return Err(HttpError::Malformed("connection closed in the headers".into()));
    }
    let s = String::from_utf8(line).map_err(|_| HttpError::Malformed("headers are not UTF-8".into()))?;
    Ok(Some(s.trim_end_matches(['\r', '\n']).to_string()))
}

/// Reads one request; `Ok(None)`: the client closed between requests.
pub async fn read_request<R: AsyncBufReadExt + Unpin>(r: &mut R) -> Result<Option<HttpRequest>, HttpError> {
    let mut used = 0;
    let start = match read_line(r, &mut used).await? {
        None => return Ok(None),
        Some(l) => l,
    };
    let mut parts = start.split(' ');
    let (method, path, version) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(p), Some(v), None) if v.starts_with("HTTP/1.") => (m.to_string(), p.to_string(), v.to_string()),
        _ => return Err(HttpError::Malformed(format!("request line {start:?}"))),
    };
    let mut close = version == "HTTP/1.0";
    let mut length: Option<usize> = None;
    let mut chunked = false;
    loop {
        let line = read_line(r, &mut used).await?.ok_or_else(|| HttpError::Malformed("no end of headers".into()))?;
        if line.is_empty() {
            break;
        }
        let (name, value) =
            line.split_once(':').ok_or_else(|| HttpError::Malformed(format!("header line {line:?}")))?;
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                let n = value.parse().map_err(|_| HttpError::Malformed(format!("Content-Length {value:?}")))?;
                if length.is_some_and(|l| l != n) {
                    return Err(HttpError::Malformed("two different Content-Length headers".into()));
                }
                length = Some(n);
            }
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            "connection" if value.eq_ignore_ascii_case("close") => close = true,
            "connection" if value.eq_ignore_ascii_case("keep-alive") => close = false,
            _ => {}
        }
    }
    let body = if chunked {
        read_chunked(r).await?
    } else {
        let n = length.unwrap_or(0);
        if n > MAX_BODY_BYTES {
            return Err(HttpError::TooLarge);
        }
        let mut body = vec![0; n];
        r.read_exact(&mut body).await.map_err(|_| HttpError::Malformed("body shorter than Content-Length".into()))?;
        body
    };
    Ok(Some(HttpRequest { method, path, body, close }))
}

async fn read_chunked<R: AsyncBufReadExt + Unpin>(r: &mut R) -> Result<Vec<u8>, HttpError> {
    let mut body = Vec::new();
    loop {
        let mut used = 0;
        let line = read_line(r, &mut used).await?.ok_or_else(|| HttpError::Malformed("no chunk size".into()))?;
        let size = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| HttpError::Malformed(format!("chunk size {size:?}")))?;
        if body.len() + size > MAX_BODY_BYTES {
            return Err(HttpError::TooLarge);
        }
        let at = body.len();
        body.resize(at + size, 0);
        r.read_exact(&mut body[at..]).await.map_err(|_| HttpError::Malformed("chunk cut short".into()))?;
        if size == 0 {
            // Trailers, then the empty line.
            loop {
                let mut used = 0;
                match read_line(r, &mut used).await? {
                    Some(l) if !l.is_empty() => continue,
                    _ => return Ok(body),
                }
            }
        }
        let mut used = 0;
        match read_line(r, &mut used).await? {
            Some(l) if l.is_empty() => {}
            _ => return Err(HttpError::Malformed("no line end after a chunk".into())),
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        _ => "Internal Server Error",
    }
}

async fn respond(stream: &mut UnixStream, status: u16, body: &[u8], close: bool) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {}\r\n{}\r\n",
        reason(status),
        body.len(),
        if close { "Connection: close\r\n" } else { "" }
    );
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    stream.write_all(&out).await
}

fn err_body(msg: impl Into<String>) -> Vec<u8> {
    serde_json::to_vec(&ErrResponse { err: msg.into() }).unwrap_or_default()
}

async fn serve_conn(driver: Arc<Driver>, stream: UnixStream) {
    let mut stream = BufReader::new(stream);
    loop {
        // The first byte may wait as long as a keep-alive connection idles;
        // the rest of the request must come within REQUEST_TIMEOUT.
        match tokio::time::timeout(IDLE_TIMEOUT, stream.fill_buf()).await {
            Ok(Ok([])) | Ok(Err(_)) | Err(_) => return,
            Ok(Ok(_)) => {}
        }
        let req = match tokio::time::timeout(REQUEST_TIMEOUT, read_request(&mut stream)).await {
            Err(_) => {
                let _ = respond(stream.get_mut(), 400, &err_body("request not received in time"), true).await;
                return;
            }
            Ok(Ok(None)) => return,
            Ok(Ok(Some(req))) => req,
            Ok(Err(e)) => {
                let status = if e == HttpError::TooLarge { 413 } else { 400 };
                let _ = respond(stream.get_mut(), status, &err_body(e.to_string()), true).await;
                return;
            }
        };
        let (status, body) = if req.method != "POST" {
            (405, err_body(format!("method {} not allowed: the plugin protocol is POST", req.method)))
        } else {
            match driver.call(&req.path, &req.body).await {
                Ok(v) => (200, serde_json::to_vec(&v).unwrap_or_default()),
                Err(e) => {
                    tracing::warn!(call = %req.path, "docker: {e}");
                    (e.status(), err_body(e.to_string()))
                }
            }
        };
        if respond(stream.get_mut(), status, &body, req.close).await.is_err() || req.close {
            return;
        }
    }
}

/// Serves the driver on `listener` until the task is dropped.
pub async fn serve(driver: Arc<Driver>, listener: UnixListener) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("docker plugin: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                let driver = driver.clone();
                tokio::spawn(async move {
                    serve_conn(driver, stream).await;
                    drop(slot);
                });
            }
            Err(_) => {
                tokio::spawn(async move {
                    let mut stream = stream;
                    let body = err_body(format!("too many connections (at most {MAX_CONNECTIONS})"));
                    let _ = tokio::time::timeout(Duration::from_secs(1), respond(&mut stream, 500, &body, true)).await;
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(raw: &[u8]) -> Result<Option<HttpRequest>, HttpError> {
        let mut r = BufReader::new(raw);
        read_request(&mut r).await
    }

    #[tokio::test]
    async fn requests_as_go_sends_them() {
        let raw = b"POST /NetworkDriver.Join HTTP/1.1\r\nHost: plugin\r\nContent-Length: 2\r\nAccept: application/vnd.docker.plugins.v1.2+json\r\n\r\n{}";
        let r = parse(raw).await.unwrap().unwrap();
        assert_eq!(
            (r.method.as_str(), r.path.as_str(), r.body.as_slice(), r.close),
            ("POST", "/NetworkDriver.Join", &b"{}"[..], false)
        );
        let chunked = b"POST /Plugin.Activate HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nnul\r\n1\r\nl\r\n0\r\n\r\n";
        let r = parse(chunked).await.unwrap().unwrap();
        assert_eq!((r.body.as_slice(), r.close), (&b"null"[..], true));
        assert_eq!(parse(b"").await, Ok(None));
    }

    #[tokio::test]
    async fn bad_requests_are_refused() {
        for raw in [
            &b"GARBAGE\r\n\r\n"[..],
            b"POST /x HTTP/1.1\r\nContent-Length: x\r\n\r\n",
            b"POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\n{}",
            b"POST /x HTTP/1.1\r\nno colon\r\n\r\n",
            b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ] {
            assert!(matches!(parse(raw).await, Err(HttpError::Malformed(_))), "{}", String::from_utf8_lossy(raw));
        }
        let big = format!("POST /x HTTP/1.1\r\nContent-Length: {}\r\n\r\n", MAX_BODY_BYTES + 1);
        assert_eq!(parse(big.as_bytes()).await, Err(HttpError::TooLarge));
        let long = format!("POST /x HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEADER_BYTES));
        assert_eq!(parse(long.as_bytes()).await, Err(HttpError::TooLarge));
    }
}
