//! A minimal HTTP/1.1 client of Tally's API: one keep-alive connection, one request at a time.
//! The projector reads the event feed with it; the `tally` binary's load generator and
//! commands use it too.
//!
//! It is hyper's connection API used directly rather than a pooled client, because each user
//! owns exactly one connection and the pool would only add locking and bookkeeping to every
//! request.

use std::net::SocketAddr;

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Where to send requests and how to authenticate; cheap to clone per task.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// The resolved server address.
    pub addr: SocketAddr,
    /// The `Host` header value (`host:port`).
    pub host: HeaderValue,
    /// `Bearer <token>` when a token is configured.
    pub authorization: Option<HeaderValue>,
}

impl Endpoint {
    /// Parses `http://host:port` (a trailing `/` is allowed; paths are not).
    pub async fn parse(url: &str, token: Option<&str>) -> anyhow::Result<Endpoint> {
        let uri: hyper::Uri = url
            .parse()
            .with_context(|| format!("invalid target URL {url:?}"))?;
        if uri.scheme_str() != Some("http") {
            bail!("target URL {url:?} must start with http:// (https is not supported)");
        }
        if !matches!(uri.path(), "" | "/") {
            bail!("target URL {url:?} must not have a path");
        }
        let authority = uri.authority().context("target URL has no host")?;
        let port = authority.port_u16().unwrap_or(80);
        let host_port = format!("{}:{}", authority.host(), port);
        let addr = tokio::net::lookup_host(&host_port)
            .await
            .with_context(|| format!("cannot resolve {host_port}"))?
            .next()
            .with_context(|| format!("{host_port} resolves to no address"))?;
        let authorization = match token {
            Some(token) => Some(
                HeaderValue::from_str(&format!("Bearer {token}"))
                    .context("the token is not a valid header value")?,
            ),
            None => None,
        };
        Ok(Endpoint {
            addr,
            host: HeaderValue::from_str(&host_port)?,
            authorization,
        })
    }
}

/// One keep-alive connection that reconnects lazily after an error.
pub struct Connection {
    endpoint: Endpoint,
    sender: Option<SendRequest<Full<Bytes>>>,
}

/// A complete response: status and the whole body.
pub struct Response {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Connection {
    pub fn new(endpoint: Endpoint) -> Connection {
        Connection {
            endpoint,
            sender: None,
        }
    }

    /// Sends one request and reads the whole response. On a transport error the connection is
    /// dropped so the next call reconnects; the caller decides whether to retry (every Tally
    /// write is idempotent by id). Cancel-safe: a call dropped half-way leaves no connection
    /// behind whose next answer would belong to the request that was abandoned.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> anyhow::Result<Response> {
        let mut sender = match self.sender.take() {
            Some(sender) => sender,
            None => connect(self.endpoint.addr).await?,
        };
        let response = self.exchange(&mut sender, method, path, body).await?;
        self.sender = Some(sender);
        Ok(response)
    }

    async fn exchange(
        &self,
        sender: &mut SendRequest<Full<Bytes>>,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> anyhow::Result<Response> {
        sender.ready().await.context("connection closed")?;
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .body(Full::new(body))
            .context("building request")?;
        let headers = request.headers_mut();
        headers.insert(HOST, self.endpoint.host.clone());
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(authorization) = &self.endpoint.authorization {
            headers.insert(AUTHORIZATION, authorization.clone());
        }
        let response = sender
            .send_request(request)
            .await
            .context("sending request")?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .context("reading response body")?
            .to_bytes();
        Ok(Response { status, body })
    }
}

async fn connect(addr: SocketAddr) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP handshake")?;
    tokio::spawn(async move {
        // The error surfaces again on the next request through `sender`.
        let _ = connection.await;
    });
    Ok(sender)
}
