//! A minimal HTTP/1.1 client for the load generator (hyper, one connection per request, as a
//! fresh client would open): POST a JSON body and see the response body frame by frame, each
//! with the instant it arrived.

use std::time::Instant;

use crate::error::ToolError;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// `http://host:port` (the load generator only speaks plain HTTP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    /// Parses `http://host[:port][/]` (port 80 by default).
    pub fn parse(base_url: &str) -> Result<Self, ToolError> {
        let rest = base_url.strip_prefix("http://").ok_or_else(|| {
            ToolError::Input(format!(
                "--base-url {base_url}: only http:// URLs are supported (no TLS)"
            ))
        })?;
        let hostport = rest.trim_end_matches('/');
        if hostport.contains('/') {
            return Err(ToolError::Http(format!(
                "--base-url {base_url}: give the server root (http://host:port); the path comes from --endpoint"
            )));
        }
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse().map_err(|_| {
                    ToolError::Http(format!("--base-url {base_url}: bad port '{p}'"))
                })?,
            ),
            None => (hostport.to_string(), 80),
        };
        if host.is_empty() {
            return Err(ToolError::Http(format!("--base-url {base_url}: no host")));
        }
        Ok(Endpoint { host, port })
    }
}

/// What came back.
#[derive(Debug, Clone)]
pub struct StreamedResponse {
    pub status: u16,
    /// Each body frame with its arrival time.
    pub frames: Vec<(Instant, Bytes)>,
}

impl StreamedResponse {
    pub fn body_text(&self) -> String {
        let bytes: Vec<u8> = self
            .frames
            .iter()
            .flat_map(|f| f.1.iter().copied())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// `method path` with a JSON `body` (if any) and an optional bearer key; reads the whole
/// response, stamping each frame as it arrives.
pub async fn request(
    ep: &Endpoint,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
    api_key: Option<&str>,
) -> Result<StreamedResponse, ToolError> {
    let addr = format!("{}:{}", ep.host, ep.port);
    let tcp = tokio::net::TcpStream::connect(&addr)
        .await
        .map_err(|e| ToolError::Http(format!("connect {addr}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| ToolError::Http(format!("handshake {addr}: {e}")))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", &ep.host)
        .header("content-type", "application/json")
        .header("accept", "text/event-stream, application/json");
    if let Some(k) = api_key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| ToolError::Http(e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| ToolError::Http(format!("{method} {path}: {e}")))?;
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut frames = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ToolError::Http(format!("reading the response: {e}")))?;
        if let Ok(data) = frame.into_data() {
            frames.push((Instant::now(), data));
        }
    }
    Ok(StreamedResponse { status, frames })
}

#[cfg(test)]
mod tests {
    use super::Endpoint;

    #[test]
    fn base_urls_parse() {
        let e = Endpoint::parse("http://127.0.0.1:8000/").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("127.0.0.1", 8000));
        assert_eq!(Endpoint::parse("http://localhost").unwrap().port, 80);
        assert!(Endpoint::parse("https://x:1").is_err());
        assert!(Endpoint::parse("http://x:1/v1").is_err());
        assert!(Endpoint::parse("http://:1").is_err());
    }
}
