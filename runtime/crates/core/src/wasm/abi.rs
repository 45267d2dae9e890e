//! The input of `process`, lowered without a staging copy.
//!
//! The generated bindings take a `batch` whose payloads are one `Vec<u8>`: the host would first
//! gather every record's payload into that vector, then wasmtime would copy the vector into the
//! guest. [`Payloads`] lowers the records' payloads straight into the guest's memory instead,
//! one copy in all. The other columns (offsets, keys, fields) are small and use plain slices.
//!
//! This implements wasmtime's `Lower` by hand, which relies on its doc-hidden lowering API
//! (`LowerContext`); the types are checked against the component's at instantiation, so a
//! mismatch is an error there, never undefined behaviour.

use std::mem::MaybeUninit;

use wasmtime::component::__internal::{
    CanonicalAbiInfo, InstanceType, InterfaceType, LowerContext,
};
use wasmtime::component::{ComponentType, Lower};
use wasmtime::ValRaw;

use super::bindings::weir::transform::types as wit;
use crate::record::Record;

/// The concatenated payloads of some records, as a WIT `list<u8>`.
#[derive(Clone, Copy)]
pub struct Payloads<'a> {
    pub records: &'a [Record],
    /// Total payload bytes.
    pub len: usize,
}

impl<'a> Payloads<'a> {
    pub fn new(records: &'a [Record]) -> Payloads<'a> {
        Payloads {
            records,
            len: records.iter().map(|r| r.value.len()).sum(),
        }
    }

    /// No payloads at all (the column is omitted).
    pub fn none() -> Payloads<'a> {
        Payloads {
            records: &[],
            len: 0,
        }
    }

    /// Copies the payloads into guest memory; returns (pointer, length).
    fn store<T>(&self, cx: &mut LowerContext<'_, T>) -> wasmtime::Result<(usize, usize)> {
        let ptr = cx.realloc(0, 0, 1, self.len)?;
        let mem = cx
            .as_slice_mut()
            .get_mut(ptr..)
            .and_then(|m| m.get_mut(..self.len))
            .ok_or_else(|| {
                wasmtime::format_err!("guest realloc returned an out-of-bounds pointer")
            })?;
        let mut at = 0;
        for r in self.records {
            mem[at..at + r.value.len()].copy_from_slice(&r.value);
            at += r.value.len();
        }
        Ok((ptr, self.len))
    }
}

// SAFETY: laid out and type-checked exactly as `[u8]` (a `list<u8>`: pointer and length).
unsafe impl ComponentType for Payloads<'_> {
    type Lower = [ValRaw; 2];
    const ABI: CanonicalAbiInfo = CanonicalAbiInfo::POINTER_PAIR;

    fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> wasmtime::Result<()> {
        <[u8] as ComponentType>::typecheck(ty, types)
    }
}

// SAFETY: writes a (pointer, length) pair like `[u8]` does, for memory it allocated through the
// guest's realloc and filled completely.
unsafe impl Lower for Payloads<'_> {
    fn linear_lower_to_flat<T>(
        &self,
        cx: &mut LowerContext<'_, T>,
        _ty: InterfaceType,
        dst: &mut MaybeUninit<[ValRaw; 2]>,
    ) -> wasmtime::Result<()> {
        let (ptr, len) = self.store(cx)?;
        dst.write([ValRaw::i64(ptr as i64), ValRaw::i64(len as i64)]);
        Ok(())
    }

    fn linear_lower_to_memory<T>(
        &self,
        cx: &mut LowerContext<'_, T>,
        _ty: InterfaceType,
        offset: usize,
    ) -> wasmtime::Result<()> {
        let (ptr, len) = self.store(cx)?;
        *cx.get::<4>(offset) = (ptr as u32).to_le_bytes();
        *cx.get::<4>(offset + 4) = (len as u32).to_le_bytes();
        Ok(())
    }
}

/// `column` whose data are record payloads.
#[derive(ComponentType, Lower, Clone, Copy)]
#[component(record)]
pub struct PayloadColumn<'a> {
    pub data: Payloads<'a>,
    pub offsets: &'a [u32],
    pub absent: &'a [u32],
}

/// `column` from host buffers.
#[derive(ComponentType, Lower, Clone, Copy)]
#[component(record)]
pub struct BytesColumn<'a> {
    pub data: &'a [u8],
    pub offsets: &'a [u32],
    pub absent: &'a [u32],
}

impl<'a> BytesColumn<'a> {
    pub fn of(c: &'a wit::Column) -> BytesColumn<'a> {
        BytesColumn {
            data: &c.data,
            offsets: &c.offsets,
            absent: &c.absent,
        }
    }
}

/// The WIT `batch`, borrowed.
#[derive(ComponentType, Lower, Clone, Copy)]
#[component(record)]
pub struct BatchIn<'a> {
    pub values: PayloadColumn<'a>,
    pub fields: BytesColumn<'a>,
    pub keys: BytesColumn<'a>,
    pub headers: &'a [wit::Header],
    pub timestamps: &'a [i64],
}
