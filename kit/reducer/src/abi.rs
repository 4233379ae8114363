//! Raw C-ABI exports of [`Reduced`] and [`check_batch`] for Node's
//! `WebAssembly` (the glue is `kit/src/reducer.ts`).
//!
//! Inputs: the caller takes a buffer with [`rs_alloc`], writes UTF-8 into it
//! and passes `(ptr, len)`; the callee consumes (frees) it. Outputs: a
//! function that produces text leaves it in one output buffer, read with
//! [`rs_out_ptr`]/[`rs_out_len`] before the next call. Reducers live in a
//! handle table; the caller frees each with [`reducer_drop`].
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::collections::BTreeMap;

use crate::{check_batch as check, prune_point, BatchError, Reduced};

thread_local! {
    static OUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    static TABLE: RefCell<(u32, BTreeMap<u32, Reduced>)> = const { RefCell::new((0, BTreeMap::new())) };
}

fn set_out(text: String) {
    OUT.with(|o| *o.borrow_mut() = text.into_bytes());
}

/// Takes back a buffer of [`rs_alloc`] as text.
///
/// # Safety
/// `(ptr, len)` must come from one `rs_alloc(len)` call, consumed once.
unsafe fn take(ptr: *mut u8, len: usize) -> String {
    if ptr.is_null() || len == 0 {
        return String::new();
    }
    // SAFETY: the caller passes a buffer rs_alloc made with exactly this length.
    let b: Box<[u8]> = unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, len)) };
    String::from_utf8(b.into_vec())
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn insert(r: Reduced) -> u32 {
    TABLE.with(|t| {
        let mut t = t.borrow_mut();
        t.0 = t.0.wrapping_add(1).max(1);
        let h = t.0;
        t.1.insert(h, r);
        h
    })
}

fn with<T>(h: u32, f: impl FnOnce(&mut Reduced) -> T) -> Option<T> {
    TABLE.with(|t| t.borrow_mut().1.get_mut(&h).map(f))
}

/// A buffer of `len` bytes for an input (consumed by the call it is passed to).
#[no_mangle]
pub extern "C" fn rs_alloc(len: usize) -> *mut u8 {
    Box::into_raw(vec![0u8; len].into_boxed_slice()).cast::<u8>()
}

/// Where the last output text starts.
#[no_mangle]
pub extern "C" fn rs_out_ptr() -> *const u8 {
    OUT.with(|o| o.borrow().as_ptr())
}

/// The last output text's length in bytes.
#[no_mangle]
pub extern "C" fn rs_out_len() -> usize {
    OUT.with(|o| o.borrow().len())
}

/// A fresh reducer for run `(run_ptr, run_len)`; its handle.
///
/// # Safety
/// See [`take`].
#[no_mangle]
pub unsafe extern "C" fn reducer_new(run_ptr: *mut u8, run_len: usize) -> u32 {
    // SAFETY: forwarded contract.
    let run = unsafe { take(run_ptr, run_len) };
    insert(Reduced::new(&run))
}

/// A reducer restored from a stored base; 0 when the text is not one (why: output).
///
/// # Safety
/// See [`take`].
#[no_mangle]
pub unsafe extern "C" fn reducer_from_stored(
    run_ptr: *mut u8,
    run_len: usize,
    ptr: *mut u8,
    len: usize,
) -> u32 {
    // SAFETY: forwarded contract.
    let (run, text) = unsafe { (take(run_ptr, run_len), take(ptr, len)) };
    match Reduced::from_stored(&run, &text) {
        Ok(r) => insert(r),
        Err(e) => {
            set_out(e.to_string());
            0
        }
    }
}

/// Applies logged envelope `(ptr, len)` with id `id`; 0 for an unknown handle.
///
/// # Safety
/// See [`take`].
#[no_mangle]
pub unsafe extern "C" fn reducer_apply(h: u32, id: f64, ptr: *mut u8, len: usize) -> u32 {
    // SAFETY: forwarded contract.
    let text = unsafe { take(ptr, len) };
    u32::from(with(h, |r| r.apply(id as u64, &text)).is_some())
}

/// The reducer's cursor (last applied id); -1 for an unknown handle.
#[no_mangle]
pub extern "C" fn reducer_cursor(h: u32) -> f64 {
    with(h, |r| r.cursor() as f64).unwrap_or(-1.0)
}

/// Sets the cursor (a pruned base covers everything up to `id`).
#[no_mangle]
pub extern "C" fn reducer_set_cursor(h: u32, id: f64) -> u32 {
    u32::from(with(h, |r| r.set_cursor(id as u64)).is_some())
}

/// Puts the §6 state JSON in the output; 0 for an unknown handle.
#[no_mangle]
pub extern "C" fn reducer_state(h: u32) -> u32 {
    match with(h, |r| r.state_json()) {
        Some(s) => {
            set_out(s);
            1
        }
        None => 0,
    }
}

/// Puts the stored form `{event_id, parked, state}` in the output; 0 for an unknown handle.
#[no_mangle]
pub extern "C" fn reducer_stored(h: u32) -> u32 {
    match with(h, |r| r.to_stored()) {
        Some(s) => {
            set_out(s);
            1
        }
        None => 0,
    }
}

/// A copy of reducer `h` (a new handle; 0 for an unknown one).
#[no_mangle]
pub extern "C" fn reducer_clone(h: u32) -> u32 {
    match with(h, |r| r.clone()) {
        Some(r) => insert(r),
        None => 0,
    }
}

/// The window rule ([`prune_point`]): where a run holding events
/// `first_id..=last_id` is pruned to with `window` events kept, or 0 while it
/// is not over the window by more than 10 %.
#[no_mangle]
pub extern "C" fn window_prune_point(first_id: f64, last_id: f64, window: f64) -> f64 {
    prune_point(first_id as u64, last_id as u64, window as u64).map_or(0.0, |n| n as f64)
}

/// Frees reducer `h`.
#[no_mangle]
pub extern "C" fn reducer_drop(h: u32) {
    TABLE.with(|t| t.borrow_mut().1.remove(&h));
}

/// Checks a publish body for run `run`: 1 and its canonical JSON in the
/// output; 0 and the 400 `{"error"}` message of an invalid batch; 2 and the
/// plain-text 400 of a body that is not JSON.
///
/// # Safety
/// See [`take`].
#[no_mangle]
pub unsafe extern "C" fn check_batch(
    run_ptr: *mut u8,
    run_len: usize,
    ptr: *mut u8,
    len: usize,
    cancel_allowed: u32,
) -> u32 {
    // SAFETY: forwarded contract.
    let (run, body) = unsafe { (take(run_ptr, run_len), take(ptr, len)) };
    match check(&run, &body, cancel_allowed != 0) {
        Ok(c) => {
            set_out(c);
            1
        }
        Err(BatchError::Invalid(e)) => {
            set_out(e);
            0
        }
        Err(BatchError::Syntax(e)) => {
            set_out(e);
            2
        }
    }
}
