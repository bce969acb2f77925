//! The codec's allocation bound, measured: a decode never allocates more
//! than a small multiple of the bytes it was given, whatever lengths those
//! bytes claim (`codec::decode_bounded`).
//!
//! Regression of `fuzz/regressions/records/snapshot-path-allocates-a-claimed-string-length`:
//! a 38-byte input whose string claimed about 2.3 GB made the snapshot path
//! (`decode_snapshot`, and so `State::restore`) allocate that much before it
//! noticed the input was short, because bincode checks a claim only against
//! the configured limit (16 GiB for snapshots, 64 MiB for records).

// The recording allocator below is the only unsafe code: it forwards to the
// system allocator unchanged.
#![allow(unsafe_code, clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use lockstep_core::{codec, Command, JobBlob, State};

/// Records the largest single allocation made on the current thread.
struct Recording;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: the slot may be gone while the thread shuts down.
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

unsafe impl GlobalAlloc for Recording {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOC: Recording = Recording;

/// The largest single allocation `f` makes on this thread.
fn largest_allocation<R>(f: impl FnOnce() -> R) -> (R, usize) {
    LARGEST.with(|l| l.set(0));
    let result = f();
    (result, LARGEST.with(Cell::get))
}

/// A varint (bincode's encoding of a length) claiming `n`.
fn varint(n: u64) -> Vec<u8> {
    let mut out = vec![253];
    out.extend_from_slice(&n.to_le_bytes());
    out
}

/// The smallest bound the codec documents: 64 KiB for short input.
const SHORT_INPUT_ALLOCATION_MAX: usize = 64 * 1024;

#[test]
fn a_snapshot_claiming_a_huge_string_is_refused_without_allocating_it() {
    let input = include_bytes!(
        "../../../fuzz/regressions/records/snapshot-path-allocates-a-claimed-string-length"
    );
    let (decoded, largest) = largest_allocation(|| codec::decode_snapshot::<Command>(input));
    assert!(decoded.is_err());
    assert!(
        largest <= SHORT_INPUT_ALLOCATION_MAX,
        "{} input bytes allocated {largest} bytes",
        input.len()
    );

    // A state whose first queue name claims 8 GiB: version, clock, last
    // index, next queue id, one queue, then the name's length.
    let mut state = vec![codec::FORMAT_VERSION, 0, 0, 0, 1];
    state.extend(varint(8 << 30));
    state.extend_from_slice(b"q");
    let (restored, largest) = largest_allocation(|| State::restore(&state));
    assert!(restored.is_err());
    assert!(
        largest <= SHORT_INPUT_ALLOCATION_MAX,
        "{largest} bytes allocated"
    );
}

#[test]
fn a_record_claiming_a_huge_payload_is_refused_without_allocating_it() {
    // A job blob whose id claims 60 MiB, under the record limit of 64 MiB.
    let mut blob = vec![codec::FORMAT_VERSION];
    blob.extend(varint(60 << 20));
    blob.extend_from_slice(b"id");
    let (decoded, largest) = largest_allocation(|| codec::decode::<JobBlob>(&blob));
    assert!(decoded.is_err());
    assert!(
        largest <= SHORT_INPUT_ALLOCATION_MAX,
        "{largest} bytes allocated"
    );
}

#[test]
fn valid_records_and_snapshots_still_decode_at_every_size() {
    // Dense in claims per byte (small u128s and u64s) and long strings, at
    // sizes on both sides of the first rungs.
    for len in [0usize, 1, 100, 4_000, 5_000, 70_000, 2 << 20] {
        let blob = JobBlob {
            id: "i".repeat(len.min(256)),
            headers: (0..len / 64)
                .map(|i| (i.to_string(), String::new()))
                .collect(),
            payload: vec![7; len],
        };
        let bytes = codec::encode(&blob).unwrap();
        assert_eq!(codec::decode::<JobBlob>(&bytes).unwrap(), blob);
        assert_eq!(codec::decode_snapshot::<JobBlob>(&bytes).unwrap(), blob);
        let dense: Vec<(u128, u64)> = (0..len as u128).map(|i| (i % 7, 1)).collect();
        let bytes = codec::encode(&dense).unwrap();
        assert_eq!(codec::decode::<Vec<(u128, u64)>>(&bytes).unwrap(), dense);
    }
}
