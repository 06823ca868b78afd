//! The binary's global allocator: every heap block is wiped (set to zero) before it is freed,
//! and before the old block of a reallocation is given back.
//!
//! Why: hyper reads each request into its connection's read buffer and hands the body out as
//! chunks that share that buffer, so the service never owns those bytes and cannot wipe them
//! itself (`api/body.rs` wipes only chunks it owns). Without this, a request's fingerprints stay
//! in freed heap memory after the connection closes until the allocator happens to reuse it
//! (`tests/memory_residue.rs` measured 4 of 4 copies of a binary request's fingerprint, and the
//! JSON request's base64url text and decoded fingerprints, in a closed connection's freed
//! memory). Wiping on free covers every buffer of every library at once.
//!
//! The wipe itself is `zeroizing-alloc` (1Password's zero-on-free wrapper around a
//! `GlobalAlloc`): a `memset` reached through a function pointer read volatilely, so the compiler
//! cannot drop it as a dead store, and much faster than a byte-wise volatile loop. Its `realloc`
//! is the trait's default (allocate, copy, free the old block through the wiping `dealloc`), so
//! a growing `Vec` or `BytesMut` never leaves its old contents behind either.
//!
//! What this does not cover: bytes still in use (a live connection's read buffer, in-flight
//! requests), the kernel's socket buffers, and stack frames (see PRIVACY.md).
//!
//! Cost: docs/BENCHMARKS.md, "Wiping freed memory".
//!
//! Test builds only (`--features test-hooks`): `CONTACT_DISCOVERY_NO_WIPE_ON_FREE=1` turns the
//! wipe off, for the positive control of `tests/memory_residue.rs` and for measuring the cost in
//! one build. A build without the feature has no way to turn it off.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, Ordering};

use zeroizing_alloc::ZeroAlloc;

/// The wiping allocator: `System` (glibc malloc) with every freed block zeroed first.
pub struct WipeOnFree;

static WIPING: ZeroAlloc<System> = ZeroAlloc(System);

/// Whether freed blocks are wiped; only test builds can clear it.
static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns wiping off if the test-only switch is set in the environment; returns whether it did.
#[cfg(feature = "test-hooks")]
pub fn apply_test_switch() -> bool {
    let off = std::env::var_os("CONTACT_DISCOVERY_NO_WIPE_ON_FREE").is_some_and(|v| v == "1");
    if off {
        ENABLED.store(false, Ordering::SeqCst);
    }
    off
}

// SAFETY: every call is forwarded to `System`, directly or through `ZeroAlloc`, which only
// writes zeroes into the block being freed (`layout.size()` bytes the caller owns) before
// forwarding. A block allocated with wiping on and freed with it off (or the reverse) is still a
// `System` block freed by `System`.
unsafe impl GlobalAlloc for WipeOnFree {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above; `ZeroAlloc` wipes `layout.size()` bytes at `ptr`, which the caller
        // owns until this call returns.
        unsafe {
            if ENABLED.load(Ordering::Relaxed) {
                WIPING.dealloc(ptr, layout)
            } else {
                System.dealloc(ptr, layout)
            }
        }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as above. `ZeroAlloc::realloc` is the trait's default: a new block, a copy of
        // the smaller of the two sizes, and the old block freed through the wiping `dealloc`.
        unsafe {
            if ENABLED.load(Ordering::Relaxed) {
                WIPING.realloc(ptr, layout, new_size)
            } else {
                System.realloc(ptr, layout, new_size)
            }
        }
    }
}
