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

use crate::server::api::ApiError;

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
    // Every answer passes here: rule out all but the three statuses before parsing anything.
    if !matches!(head.get(9..13), Some(b"400 " | b"414 " | b"431 ")) {
        return None;
    }
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

    /// Writes `chunks` through `socket`, vectored (as hyper writes to a TCP stream) or plain,
    /// checking that every write reports progress it really made.
    async fn write_each<S: AsyncWrite + Unpin>(socket: &mut S, chunks: &[&[u8]], vectored: bool) {
        use tokio::io::AsyncWriteExt;
        for chunk in chunks {
            let mut left = *chunk;
            while !left.is_empty() {
                let n = if vectored {
                    socket.write_vectored(&[IoSlice::new(left)]).await.unwrap()
                } else {
                    socket.write(left).await.unwrap()
                };
                assert!(n > 0 && n <= left.len(), "wrote {n} of {}", left.len());
                left = &left[n..];
            }
        }
    }

    /// Through a byte stream with a 64-byte buffer (so every answer takes several writes),
    /// behind a buffering writer (so a flush must reach it): hyper's answer comes out as the
    /// JSON error, anything else byte for byte, and flush and shutdown reach the stream.
    /// `future`'s output, or `Elapsed` after five seconds.
    async fn within<F: std::future::Future>(
        future: F,
    ) -> Result<F::Output, tokio::time::error::Elapsed> {
        tokio::time::timeout(std::time::Duration::from_secs(5), future).await
    }

    #[tokio::test]
    async fn the_socket_carries_the_replacement_and_passes_the_rest() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
        let hyper_head = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        let ours: &[u8] =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        let expected = render(
            "HTTP/1.1",
            StatusCode::BAD_REQUEST,
            &ApiError::MalformedRequest,
        );
        for vectored in [false, true] {
            // Room for our answer, not for the replacement: that one takes several writes.
            let (near, mut far) = tokio::io::duplex(96);
            let mut socket = ErrorReplies::new(BufWriter::new(near));
            write_each(&mut socket, &[ours], vectored).await;
            // Flushed, ours reaches the other end before anything else is written.
            within(socket.flush())
                .await
                .expect("flush returns")
                .unwrap();
            let mut first = vec![0u8; ours.len()];
            within(far.read_exact(&mut first))
                .await
                .expect("a flush reaches the stream")
                .unwrap();
            let reader = tokio::spawn(async move {
                let mut rest = Vec::new();
                far.read_to_end(&mut rest).await.unwrap();
                rest
            });
            write_each(&mut socket, &[&hyper_head[..]], vectored).await;
            within(socket.shutdown())
                .await
                .expect("shutdown reaches the stream")
                .unwrap();
            let rest = within(reader)
                .await
                .expect("the other end sees the end of the stream")
                .unwrap();
            assert_eq!(first, ours, "ours passes untouched");
            assert_eq!(rest, expected, "hyper's answer is replaced whole");
        }
    }

    #[test]
    fn vectored_writes_are_offered_as_the_stream_offers_them() {
        /// A writer that takes one slice at a time (the trait's default).
        struct OneSlice;
        impl AsyncWrite for OneSlice {
            fn poll_write(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                Poll::Ready(Ok(buf.len()))
            }
            fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
            fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
        }
        assert!(!ErrorReplies::new(OneSlice).is_write_vectored());
        // A TCP stream takes many slices at once.
        let std_stream = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| std::net::TcpStream::connect(l.local_addr()?))
            .unwrap();
        std_stream.set_nonblocking(true).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let _guard = runtime.enter();
        let tcp = tokio::net::TcpStream::from_std(std_stream).unwrap();
        assert!(ErrorReplies::new(tcp).is_write_vectored());
    }
}
