//! Values as JavaScript `Buffer`s: a shared value becomes an external `Buffer` over its mapping
//! (no copy), a small one a copy.
//!
//! V8 does not allow two `ArrayBuffer`s over the same external memory at once (nodejs/node
//! #32463). A shared value handed out twice (the package's memo dropped its `Buffer` while the
//! program still holds it, then asks again) must give the same `Buffer`. So every external
//! `Buffer` is registered, per JavaScript thread, by its data pointer with a weak reference: a
//! second request for the same mapping returns the live `Buffer`; the finalizer, run after
//! collection, drops the mapping's owner and the registration. In the short window where the
//! `Buffer` was collected but not yet finalized, a copy is made instead.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_void;
use std::ptr;

use bytes::Bytes;
use napi::{check_status, sys, Result};

thread_local! {
    /// Live external `Buffer`s of this JavaScript thread: data pointer -> weak reference.
    static LIVE: RefCell<HashMap<usize, sys::napi_ref>> = RefCell::new(HashMap::new());
}

/// `bytes` as a `Buffer`: over the same memory when `shared` (a mapping), else a copy.
///
/// # Safety
/// `env` must be the current JavaScript thread's valid environment.
pub(crate) unsafe fn to_buffer(
    env: sys::napi_env,
    bytes: Bytes,
    shared: bool,
) -> Result<sys::napi_value> {
    if !shared || bytes.is_empty() {
        return copy(env, &bytes);
    }
    let key = bytes.as_ptr() as usize;
    if let Some(r) = LIVE.with(|l| l.borrow().get(&key).copied()) {
        let mut value = ptr::null_mut();
        // SAFETY: `r` is a reference this thread created on `env` and has not deleted (the
        // finalizer deletes it and removes it from LIVE together).
        check_status!(unsafe { sys::napi_get_reference_value(env, r, &mut value) })?;
        if !value.is_null() {
            return Ok(value);
        }
        // Collected, not yet finalized: the memory is still registered with V8.
        return copy(env, &bytes);
    }
    let len = bytes.len();
    let data = bytes.as_ptr() as *mut c_void;
    let hint = Box::into_raw(Box::new(bytes));
    let mut value = ptr::null_mut();
    // SAFETY: `data` points at `len` bytes owned by the `Bytes` behind `hint`, which stays alive
    // until `finalize` drops it, after V8 is done with the buffer. The memory is a private
    // copy-on-write mapping (`herd::cache::channel`): JavaScript may write to it, and only this
    // process sees the write.
    let status = unsafe {
        sys::napi_create_external_buffer(env, len, data, Some(finalize), hint.cast(), &mut value)
    };
    if status != sys::Status::napi_ok {
        // SAFETY: not handed to V8: this is the only owner.
        let bytes = unsafe { Box::from_raw(hint) };
        // A runtime without external buffers (napi_no_external_buffers_allowed): a copy.
        return copy(env, &bytes);
    }
    let mut weak = ptr::null_mut();
    // SAFETY: `value` is the live buffer just created on `env`; a reference count of 0 makes
    // the reference weak.
    check_status!(unsafe { sys::napi_create_reference(env, value, 0, &mut weak) })?;
    LIVE.with(|l| l.borrow_mut().insert(key, weak));
    Ok(value)
}

/// Called by V8 (on the JavaScript thread) once an external `Buffer` is collected.
unsafe extern "C" fn finalize(env: sys::napi_env, data: *mut c_void, hint: *mut c_void) {
    // SAFETY: `hint` is the `Box<Bytes>` leaked in `to_buffer` for this buffer, finalized once.
    let bytes = unsafe { Box::from_raw(hint.cast::<Bytes>()) };
    let key = data as usize;
    if let Some(r) = LIVE.with(|l| l.borrow_mut().remove(&key)) {
        // SAFETY: the reference was created on this thread's `env` and is deleted once, here.
        unsafe { sys::napi_delete_reference(env, r) };
    }
    drop(bytes);
}

/// A fresh `Buffer` holding a copy of `bytes`.
unsafe fn copy(env: sys::napi_env, bytes: &[u8]) -> Result<sys::napi_value> {
    let mut value = ptr::null_mut();
    let mut data = ptr::null_mut();
    // SAFETY: `bytes` is valid for its length; Node copies it into a buffer it owns.
    check_status!(unsafe {
        sys::napi_create_buffer_copy(
            env,
            bytes.len(),
            bytes.as_ptr().cast(),
            &mut data,
            &mut value,
        )
    })?;
    Ok(value)
}

/// JavaScript's `null`.
pub(crate) unsafe fn null(env: sys::napi_env) -> Result<sys::napi_value> {
    let mut value = ptr::null_mut();
    // SAFETY: `env` is valid (the caller's contract).
    check_status!(unsafe { sys::napi_get_null(env, &mut value) })?;
    Ok(value)
}

/// `[version, value, ttl]` as a JavaScript array.
pub(crate) unsafe fn triple(
    env: sys::napi_env,
    version: f64,
    value: sys::napi_value,
    ttl: f64,
) -> Result<sys::napi_value> {
    let mut array = ptr::null_mut();
    let mut number = ptr::null_mut();
    let mut ttl_value = ptr::null_mut();
    // SAFETY: `env` is valid and `value` a live value of it (the caller's contract).
    unsafe {
        check_status!(sys::napi_create_array_with_length(env, 3, &mut array))?;
        check_status!(sys::napi_create_double(env, version, &mut number))?;
        check_status!(sys::napi_create_double(env, ttl, &mut ttl_value))?;
        check_status!(sys::napi_set_element(env, array, 0, number))?;
        check_status!(sys::napi_set_element(env, array, 1, value))?;
        check_status!(sys::napi_set_element(env, array, 2, ttl_value))?;
    }
    Ok(array)
}

/// A `Buffer` over `len` bytes at `data` that live for the rest of the process (no finalizer).
///
/// # Safety
/// `env` must be valid, and `data..data + len` valid memory that is never freed.
pub(crate) unsafe fn over_static(
    env: sys::napi_env,
    data: *mut c_void,
    len: usize,
) -> Result<sys::napi_value> {
    let mut value = ptr::null_mut();
    // SAFETY: the caller's contract: the memory outlives every Buffer over it.
    check_status!(unsafe {
        sys::napi_create_external_buffer(env, len, data, None, ptr::null_mut(), &mut value)
    })?;
    Ok(value)
}
