//! Request and response buffers are wiped before their memory is freed.
//!
//! This test binary installs a global allocator that, whenever a block is freed, looks in it for
//! marker bytes (a random fingerprint and its base64url text). It then pushes a request carrying
//! the marker through the service's own buffer types (the limited body reader, both decoders,
//! the response encoder and the response body) and drops them. No freed block may still hold
//! the marker. A positive control shows that an ordinary `Vec` dropped with the marker is caught.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use axum::body::Body;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use contact_discovery::protocol::{self, Format};
use contact_discovery::server::api::body::read_limited;
use http_body_util::BodyExt;
use zeroize::Zeroizing;

struct Watching;

static ARMED: AtomicBool = AtomicBool::new(false);
static FOUND: AtomicUsize = AtomicUsize::new(0);
/// Up to two markers (raw bytes, base64url text); fixed-size so checking never allocates.
static MARKERS: Mutex<[([u8; 16], usize); 2]> = Mutex::new([([0; 16], 0); 2]);

unsafe impl GlobalAlloc for Watching {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if ARMED.load(Ordering::SeqCst) {
            // SAFETY: the block is still allocated and `layout.size()` bytes long.
            let block = unsafe { std::slice::from_raw_parts(ptr, layout.size()) };
            if let Ok(markers) = MARKERS.try_lock() {
                for (bytes, len) in markers.iter().filter(|(_, len)| *len > 0) {
                    if block.windows(*len).any(|w| w == &bytes[..*len]) {
                        FOUND.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Watching = Watching;

fn set_markers(raw: &[u8; 8], text: &str) {
    let mut markers = MARKERS.lock().unwrap();
    markers[0].0[..8].copy_from_slice(raw);
    markers[0].1 = 8;
    markers[1].0[..text.len()].copy_from_slice(text.as_bytes());
    markers[1].1 = text.len();
}

/// Runs `work` with the allocator watching and returns how many freed blocks held a marker.
async fn freed_with_marker<F: std::future::Future<Output = ()>>(work: F) -> usize {
    FOUND.store(0, Ordering::SeqCst);
    ARMED.store(true, Ordering::SeqCst);
    work.await;
    ARMED.store(false, Ordering::SeqCst);
    FOUND.load(Ordering::SeqCst)
}

/// A body whose only copy of `bytes` is the one the body owns.
fn body_of(bytes: &mut Zeroizing<Vec<u8>>) -> Body {
    Body::from(std::mem::take(&mut **bytes))
}

#[tokio::test(flavor = "current_thread")]
async fn request_and_response_buffers_are_wiped_before_they_are_freed() {
    let mut raw = [0u8; 8];
    rand::Rng::fill(&mut rand::rng(), &mut raw);
    // Avoid a marker that would match the zeroes a wiped buffer holds.
    raw[0] |= 1;
    let text = Zeroizing::new(URL_SAFE_NO_PAD.encode(raw));
    set_markers(&raw, &text);

    // Positive control: an ordinary Vec holding the marker is caught when freed.
    let caught = freed_with_marker(async {
        let plain = raw.to_vec();
        drop(std::hint::black_box(plain));
    })
    .await;
    assert!(caught >= 1, "the watching allocator must see a plain Vec");

    // Requests, binary then JSON: body → limited reader → decoder, each buffer dropped.
    let mut binary = 7u64.to_be_bytes().to_vec();
    for _ in 0..4 {
        binary.extend_from_slice(&raw);
    }
    // JSON with more fingerprints than the decoder's first allocation (64), so the list grows
    // while decoding: that growth must wipe the block it leaves (a plain `Vec::push` would not).
    let quoted = format!("\"{}\"", text.as_str());
    let list = vec![quoted.as_str(); 100].join(",");
    let json = format!(r#"{{"epoch":7,"fingerprints":[{list}]}}"#).into_bytes();
    for (format, request, count) in [(Format::Binary, binary, 4), (Format::Json, json, 100)] {
        let found = freed_with_marker(async {
            // The test's own copy is wiped too, so only the code under test can leak.
            let mut bytes = Zeroizing::new(request);
            let body = read_limited(
                None, // no Content-Length
                body_of(&mut bytes),
                1 << 20,
                contact_discovery::server::api::body::BodyPace {
                    timeout: std::time::Duration::from_secs(5),
                    min_bytes_per_sec: 0,
                },
            )
            .await
            .unwrap();
            let decoded = protocol::decode_request(format, &body, 100).unwrap();
            assert_eq!(decoded.fingerprints.len(), count);
            drop(body);
            drop(decoded);
        })
        .await;
        assert_eq!(found, 0, "{format:?} request buffers freed without wiping");
    }

    // Response: a bitmap equal to the marker, encoded, handed to a response body and consumed.
    let found = freed_with_marker(async {
        for format in [Format::Binary, Format::Json] {
            let bitmap = Zeroizing::new(raw.to_vec());
            let encoded = protocol::encode_answer(format, 7, 64, &bitmap);
            drop(bitmap);
            let body = Body::from(bytes::Bytes::from_owner(encoded));
            let collected = body.collect().await.unwrap().to_bytes();
            // What the network layer would do: write it out and let go of it.
            drop(std::hint::black_box(collected));
        }
    })
    .await;
    assert_eq!(found, 0, "response buffers freed without wiping");
}
