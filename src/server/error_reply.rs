//! hyper answers a request it cannot parse itself (400, 414 or 431) before any of our code runs,
//! with an empty body and none of our headers. This socket wrapper recognises that answer as it
//! is written and writes the API's JSON error in its place: the stable `code`, `Cache-Control:
//! no-store`, `Connection: close` (hyper closes the connection after a parse error anyway).
//!
//! hyper offers no hook for these answers, so recognising the bytes is the only place to do it.
//! The pattern is narrow: a response head with one of those three statuses, `content-length: 0`
//! and no `content-type`, at the start of a write. Every answer of our own router carries a
//! JSON body and a content type, so none of them can match.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::api::ApiError;

/// A socket whose hyper-generated parse-error answers are replaced with JSON errors.
pub struct ErrorReplies<S> {
    inner: S,
    replacing: Option<Replacement>,
}

/// A replacement answer being written: its bytes, how many are written, and how many bytes of
/// hyper's answer it stands for (reported to hyper once all of it is written).
struct Replacement {
    bytes: Vec<u8>,
    written: usize,
    stands_for: usize,
}

impl<S> ErrorReplies<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            replacing: None,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ErrorReplies<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ErrorReplies<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.replacing.is_none() {
            let first = bufs.iter().find(|b| !b.is_empty());
            match first.and_then(|head| json_reply(head).map(|bytes| (bytes, head.len()))) {
                Some((bytes, stands_for)) => {
                    this.replacing = Some(Replacement {
                        bytes,
                        written: 0,
                        stands_for,
                    });
                }
                None => return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs),
            }
        }
        let Some(reply) = this.replacing.as_mut() else {
            return Poll::Ready(Ok(0)); // unreachable: set just above
        };
        while reply.written < reply.bytes.len() {
            let n =
                ready!(Pin::new(&mut this.inner).poll_write(cx, &reply.bytes[reply.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            reply.written += n;
        }
        let stands_for = reply.stands_for;
        this.replacing = None;
        Poll::Ready(Ok(stands_for))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The JSON answer standing in for `head` when it is hyper's own answer to an unparsable
/// request; `None` for anything else.
fn json_reply(head: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(head).ok()?;
    let text = text.strip_suffix("\r\n\r\n")?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next()?;
    let (version, rest) = status_line.split_once(' ')?;
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return None;
    }
    let error = match rest.get(..3)? {
        "400" => ApiError::MalformedRequest,
        "414" => ApiError::UriTooLong,
        "431" => ApiError::HeadersTooLarge,
        _ => return None,
    };
    let mut empty = false;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => empty = value.trim() == "0",
            "content-type" | "transfer-encoding" => return None,
            _ => {}
        }
    }
    if !empty {
        return None;
    }
    Some(render(version, error.status(), &error))
}

/// A complete HTTP/1 response carrying `error` as the API's JSON error body.
fn render(version: &str, status: StatusCode, error: &ApiError) -> Vec<u8> {
    let body =
        serde_json::json!({ "code": error.code(), "message": error.to_string() }).to_string();
    format!(
        "{version} {} {}\r\ncontent-type: application/json\r\ncache-control: no-store\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        status.as_str(),
        status.canonical_reason().unwrap_or(""),
        body.len(),
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypers_own_error_answers_become_json() {
        let cases = [
            ("HTTP/1.1 400 Bad Request", "400", "malformed_request"),
            (
                "HTTP/1.1 431 Request Header Fields Too Large",
                "431",
                "headers_too_large",
            ),
            ("HTTP/1.0 414 URI Too Long", "414", "uri_too_long"),
        ];
        for (status_line, status, code) in cases {
            let head = format!(
                "{status_line}\r\ncontent-length: 0\r\ndate: Tue, 01 Dec 2026 14:00:00 GMT\r\n\r\n"
            );
            let reply = String::from_utf8(json_reply(head.as_bytes()).unwrap()).unwrap();
            let (reply_head, body) = reply.split_once("\r\n\r\n").unwrap();
            assert!(reply_head.starts_with(&status_line[..12]), "{reply_head}");
            assert!(reply_head.contains(status), "{reply_head}");
            assert!(reply_head.contains("cache-control: no-store"));
            assert!(reply_head.contains(&format!("content-length: {}", body.len())));
            let json: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(json["code"], code);
        }
    }

    #[test]
    fn answers_of_our_own_pass_untouched() {
        for head in [
            // Our JSON errors carry a content type and a body.
            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 42\r\n\r\n",
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ncontent-type: text/plain\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\nextra",
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n",
            "HTTP/2 400 Bad Request\r\ncontent-length: 0\r\n\r\n",
            "{\"code\":\"x\"}",
            "",
        ] {
            assert!(json_reply(head.as_bytes()).is_none(), "{head:?}");
        }
    }
}
