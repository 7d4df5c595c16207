//! A client of one binlog server's admin HTTP API (`phxbinlogsvr`'s
//! `server/admin.rs`): plain HTTP/1.1 over a kept-alive connection, every
//! call bounded by a timeout, the admin token sent only with mutating calls.
//!
//! Used by `phxsqlproxy` (polling `/route`, `POST /proxy/heartbeat`) and by
//! `phxctl` (status, switchover).

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
pub use hyper::{Method, StatusCode};
use hyper::{Request, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{addr}: cannot connect: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("{addr}: no answer within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    #[error("{addr}: HTTP: {reason}")]
    Http { addr: String, reason: String },
    #[error("{addr}{path}: refused ({status}): {message}")]
    Refused {
        addr: String,
        path: String,
        status: u16,
        message: String,
    },
    #[error("{addr}{path}: unexpected answer: {reason}")]
    BadAnswer {
        addr: String,
        path: String,
        reason: String,
    },
    /// The download's `progress` callback stopped it.
    #[error("{0}")]
    Aborted(String),
}

/// The client of one node's admin API.
pub struct AdminClient {
    addr: String,
    token: Option<String>,
    timeout: Duration,
    conn: Option<SendRequest<Full<Bytes>>>,
}

impl AdminClient {
    /// A client of `addr` (`host:port`); `token` authenticates mutating
    /// calls; every call gives up after `timeout`.
    pub fn new(addr: impl Into<String>, token: Option<String>, timeout: Duration) -> Self {
        AdminClient {
            addr: addr.into(),
            token,
            timeout,
            conn: None,
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `GET path`, the answer parsed as JSON; a non-2xx status is an error.
    pub async fn get_json(&mut self, path: &str) -> Result<serde_json::Value, AdminError> {
        let (status, body) = self.request(Method::GET, path, None).await?;
        self.json(path, status, &body)
    }

    /// `POST path` with a JSON body (or none), the answer parsed as JSON
    /// (`null` when empty); a non-2xx status is an error.
    pub async fn post_json(
        &mut self,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, AdminError> {
        let (status, answer) = self.request(Method::POST, path, body).await?;
        self.json(path, status, &answer)
    }

    fn json(
        &self,
        path: &str,
        status: StatusCode,
        body: &[u8],
    ) -> Result<serde_json::Value, AdminError> {
        let value = if body.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(body).map_err(|e| AdminError::BadAnswer {
                addr: self.addr.clone(),
                path: path.to_string(),
                reason: e.to_string(),
            })?
        };
        if status.is_success() {
            return Ok(value);
        }
        let message = value["error"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
        Err(AdminError::Refused {
            addr: self.addr.clone(),
            path: path.to_string(),
            status: status.as_u16(),
            message,
        })
    }

    /// `GET path` (with the token) saved to `dest`, for large answers:
    /// each piece must arrive within `stall` (no overall deadline), and the
    /// length must match the answer's Content-Length. `progress(done,
    /// total)` is called once the headers are in (with `done` 0, before
    /// anything is written) and as pieces arrive; an `Err` from it stops the
    /// download (`AdminError::Aborted`). Returns the bytes written.
    pub async fn download(
        &mut self,
        path: &str,
        dest: &std::path::Path,
        stall: Duration,
        mut progress: impl FnMut(u64, Option<u64>) -> Result<(), String>,
    ) -> Result<u64, AdminError> {
        use tokio::io::AsyncWriteExt;
        let addr = self.addr.clone();
        let http = |reason: String| AdminError::Http {
            addr: addr.clone(),
            reason,
        };
        let mut sender = self.connect().await?;
        let req = self
            .builder(Method::GET, path, true)
            .body(Full::new(Bytes::new()))
            .map_err(|e| http(e.to_string()))?;
        // The server may take a while before the first byte (it makes the
        // whole backup first): no stall limit on the headers.
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| http(e.to_string()))?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| http(e.to_string()))?
                .to_bytes();
            return self.json(path, status, &body).map(|_| 0);
        }
        let total = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        progress(0, total).map_err(AdminError::Aborted)?;
        let mut file = tokio::fs::File::create(dest)
            .await
            .map_err(|e| http(format!("creating {}: {e}", dest.display())))?;
        let mut body = resp.into_body();
        let mut done = 0u64;
        loop {
            let frame = match tokio::time::timeout(stall, body.frame()).await {
                Err(_) => {
                    return Err(AdminError::Timeout {
                        addr: self.addr.clone(),
                        timeout: stall,
                    });
                }
                Ok(None) => break,
                Ok(Some(f)) => f.map_err(|e| http(e.to_string()))?,
            };
            if let Ok(data) = frame.into_data() {
                file.write_all(&data)
                    .await
                    .map_err(|e| http(format!("writing {}: {e}", dest.display())))?;
                done += data.len() as u64;
                progress(done, total).map_err(AdminError::Aborted)?;
            }
        }
        file.sync_all()
            .await
            .map_err(|e| http(format!("syncing {}: {e}", dest.display())))?;
        if let Some(t) = total
            && t != done
        {
            return Err(http(format!("cut short: {done} of {t} bytes")));
        }
        Ok(done)
    }

    /// A new HTTP/1.1 connection (its driver runs in a task of its own).
    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, AdminError> {
        let stream =
            TcpStream::connect(&self.addr)
                .await
                .map_err(|source| AdminError::Connect {
                    addr: self.addr.clone(),
                    source,
                })?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| AdminError::Http {
                addr: self.addr.clone(),
                reason: e.to_string(),
            })?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// A request to `path` with the Host header, and the token if `auth`.
    fn builder(&self, method: Method, path: &str, auth: bool) -> hyper::http::request::Builder {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.addr);
        if auth && let Some(token) = &self.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        req
    }

    /// One request; the connection is dropped (and made again next time)
    /// after any failure.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(StatusCode, Bytes), AdminError> {
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.request_inner(method, path, body)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                self.conn = None;
                Err(e)
            }
            Err(_) => {
                self.conn = None;
                Err(AdminError::Timeout {
                    addr: self.addr.clone(),
                    timeout,
                })
            }
        }
    }

    async fn request_inner(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(StatusCode, Bytes), AdminError> {
        let addr = self.addr.clone();
        let http = |reason: String| AdminError::Http {
            addr: addr.clone(),
            reason,
        };
        // The token goes only with the calls that need it.
        let mut req = self.builder(method.clone(), path, method != Method::GET);
        let payload = match body {
            Some(b) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(b.to_string())
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(payload))
            .map_err(|e| http(e.to_string()))?;
        // Reuse the kept-alive connection; it is put back only after a
        // successful exchange.
        let mut conn = match self.conn.take() {
            Some(c) if !c.is_closed() => c,
            _ => self.connect().await?,
        };
        conn.ready().await.map_err(|e| http(e.to_string()))?;
        let resp = conn
            .send_request(req)
            .await
            .map_err(|e| http(e.to_string()))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| http(e.to_string()))?
            .to_bytes();
        self.conn = Some(conn);
        Ok((status, body))
    }
}
