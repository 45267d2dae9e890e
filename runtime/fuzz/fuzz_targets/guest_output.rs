//! The host's checks of what a WebAssembly guest returns (`check_output` behind
//! `weir_core::wasm::guest::check_and_assemble`, and `emitted_records` for `flush`): a guest is
//! untrusted, so any `output` — sources out of range, offsets past the data or descending,
//! `absent` lists out of order, errors for records that do not exist — must be refused or
//! used, never panic.
//!
//! Input: a byte stream read as the batch size, the split of the batch into calls (as the
//! bisection after a trap makes), and each call's `output`; then one `emitted`.
//! Checks: no panic; every input ends up exactly once as output source, filtered or failed.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use weir_core::record::Record;
use weir_core::wasm::bindings::weir::transform::types::{Column, Emitted, Output, RecordError};
use weir_core::wasm::guest::{check_and_assemble, emitted_records};

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        b
    }
    /// Mostly small numbers (near the batch size), sometimes huge ones.
    fn num(&mut self) -> u32 {
        match self.byte() {
            b @ 0..=239 => u32::from(b % 20),
            240..=251 => u32::MAX - u32::from(self.byte() % 4),
            _ => u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()]),
        }
    }
    fn nums(&mut self) -> Vec<u32> {
        let n = self.byte() % 12;
        (0..n).map(|_| self.num()).collect()
    }
    fn column(&mut self) -> Column {
        let len = usize::from(self.byte() % 32);
        Column {
            data: (0..len).map(|_| self.byte()).collect(),
            offsets: self.nums(),
            absent: self.nums(),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let n = usize::from(input.byte() % 10);
    let mut inputs: Vec<Record> = (0..n)
        .map(|i| Record {
            value: Bytes::from(format!("input {i}")),
            key: i.is_multiple_of(2).then(|| Bytes::from(format!("key {i}"))),
            meta: None,
        })
        .collect();
    let mut calls = Vec::new();
    let mut lo = 0;
    while lo < n {
        let hi = (lo + 1 + usize::from(input.byte()) % (n - lo)).min(n);
        let out = Output {
            sources: input.nums(),
            values: input.column(),
            keys: input.column(),
            errors: (0..input.byte() % 4)
                .map(|_| RecordError {
                    index: input.num(),
                    message: "guest error".into(),
                })
                .collect(),
        };
        calls.push((lo, hi, out));
        lo = hi;
    }
    let max_bytes = if input.byte() % 4 == 0 { 16 } else { 1 << 20 };
    let outcome = check_and_assemble(&mut inputs, calls, max_bytes);
    assert_eq!(outcome.records.len(), outcome.sources.len());
    let mut seen = vec![0u8; n];
    let mut sourced = vec![false; n];
    for &s in &outcome.sources {
        assert!(s < n, "output source {s} out of range");
        sourced[s] = true;
    }
    for i in sourced
        .iter()
        .enumerate()
        .filter(|(_, &s)| s)
        .map(|(i, _)| i)
    {
        seen[i] += 1;
    }
    for &(i, _) in &outcome.filtered {
        seen[i] += 1;
    }
    for (i, _, _) in &outcome.failed {
        seen[*i] += 1;
    }
    assert!(
        seen.iter().all(|&c| c == 1),
        "every input must be output, filtered or failed exactly once: {seen:?}"
    );

    let emitted = Emitted {
        values: input.column(),
        keys: input.column(),
    };
    let _ = emitted_records(emitted);
});
