//! The batch loop the export macros generate: one host call per batch, one author call per
//! record. Not part of the author-facing API.

use crate::batch::{BatchView, ColumnRef, Emit, Emitted, OutputBuf, Record};
use crate::config::Config;
use crate::error::Error;
use crate::state::{State, StateCache, StateHost};
use crate::{Filter, FlatMap, Map, Stateful};

/// The state a batch runs with.
pub struct StateCtx<'s> {
    pub cache: &'s mut StateCache,
    pub host: &'s mut dyn StateHost,
}

/// A transform as the host sees it: a whole batch at a time.
pub trait Guest: Sized + 'static {
    fn init(config: &Config) -> Result<Self, Error>;
    fn fields(&self) -> &[usize];
    fn process(&mut self, batch: &BatchView<'_>, out: &mut OutputBuf, state: StateCtx<'_>);
    fn flush(&mut self, out: &mut Emitted, state: StateCtx<'_>);
    /// State entries that expired: `keys[i]` held `values[i]`.
    fn expired(
        &mut self,
        keys: ColumnRef<'_>,
        values: ColumnRef<'_>,
        out: &mut Emitted,
        state: StateCtx<'_>,
    ) {
        let _ = (keys, values, out, state);
    }
}

/// A [`Filter`] as a [`Guest`].
pub struct AsFilter<T>(pub T);
/// A [`Map`] as a [`Guest`].
pub struct AsMap<T>(pub T, Vec<u8>);
/// A [`FlatMap`] as a [`Guest`].
pub struct AsFlatMap<T>(pub T);
/// A [`Stateful`] transform as a [`Guest`].
pub struct AsStateful<T>(pub T);

impl<T: Filter> Guest for AsFilter<T> {
    fn init(config: &Config) -> Result<Self, Error> {
        T::new(config).map(AsFilter)
    }
    fn fields(&self) -> &[usize] {
        self.0.fields()
    }
    fn process(&mut self, batch: &BatchView<'_>, out: &mut OutputBuf, _: StateCtx<'_>) {
        batch.for_each(|r| match self.0.keep(r) {
            Ok(true) => out.push(r.index() as u32, None, None),
            Ok(false) => {}
            Err(e) => out.errors.push((r.index() as u32, e.message())),
        });
    }
    fn flush(&mut self, _: &mut Emitted, _: StateCtx<'_>) {}
}

impl<T: Map> Guest for AsMap<T> {
    fn init(config: &Config) -> Result<Self, Error> {
        T::new(config).map(|t| AsMap(t, Vec::new()))
    }
    fn fields(&self) -> &[usize] {
        self.0.fields()
    }
    fn process(&mut self, batch: &BatchView<'_>, out: &mut OutputBuf, _: StateCtx<'_>) {
        let (t, scratch) = (&mut self.0, &mut self.1);
        batch.for_each(|r| {
            scratch.clear();
            match t.map(r, scratch) {
                Ok(()) => out.push(r.index() as u32, Some(scratch), None),
                Err(e) => out.errors.push((r.index() as u32, e.message())),
            }
        });
    }
    fn flush(&mut self, _: &mut Emitted, _: StateCtx<'_>) {}
}

impl<T: FlatMap> Guest for AsFlatMap<T> {
    fn init(config: &Config) -> Result<Self, Error> {
        T::new(config).map(AsFlatMap)
    }
    fn fields(&self) -> &[usize] {
        self.0.fields()
    }
    fn process(&mut self, batch: &BatchView<'_>, out: &mut OutputBuf, _: StateCtx<'_>) {
        batch.for_each(|r| {
            let mark = out.mark();
            let source = r.index() as u32;
            if let Err(e) = self.0.flat_map(r, &mut Emit { out, source }) {
                out.rollback(mark);
                out.errors.push((source, e.message()));
            }
        });
    }
    fn flush(&mut self, out: &mut Emitted, _: StateCtx<'_>) {
        self.0.flush(out);
    }
}

impl<T: Stateful> Guest for AsStateful<T> {
    fn init(config: &Config) -> Result<Self, Error> {
        T::new(config).map(AsStateful)
    }
    fn fields(&self) -> &[usize] {
        self.0.fields()
    }
    fn process(&mut self, batch: &BatchView<'_>, out: &mut OutputBuf, ctx: StateCtx<'_>) {
        let t = &mut self.0;
        let mut keys: Vec<&[u8]> = Vec::new();
        batch.for_each(|r: &Record<'_>| {
            if let Some(k) = t.state_key(r) {
                keys.push(k);
            }
        });
        ctx.cache.prefetch(ctx.host, &keys);
        drop(keys);
        let mut state = State {
            cache: ctx.cache,
            host: ctx.host,
        };
        batch.for_each(|r| {
            let mark = out.mark();
            let source = r.index() as u32;
            if let Err(e) = t.process(r, &mut state, &mut Emit { out, source }) {
                out.rollback(mark);
                out.errors.push((source, e.message()));
            }
        });
        state.cache.write_back(state.host);
    }
    fn flush(&mut self, out: &mut Emitted, ctx: StateCtx<'_>) {
        let mut state = State {
            cache: ctx.cache,
            host: ctx.host,
        };
        self.0.flush(&mut state, out);
        state.cache.write_back(state.host);
    }
    fn expired(
        &mut self,
        keys: ColumnRef<'_>,
        values: ColumnRef<'_>,
        out: &mut Emitted,
        ctx: StateCtx<'_>,
    ) {
        let mut state = State {
            cache: ctx.cache,
            host: ctx.host,
        };
        for i in 0..keys.offsets.len().saturating_sub(1) {
            let value = values.get(i).unwrap_or_default();
            self.0.expired(keys.item(i), value, &mut state, out);
        }
        state.cache.write_back(state.host);
    }
}

/// Checks declared fields and turns them into the WIT's `settings.fields`.
pub fn settings_fields(fields: &[usize]) -> Result<Option<Vec<u32>>, String> {
    if let Some(f) = fields.iter().find(|&&f| f >= crate::fields::COUNT) {
        return Err(format!(
            "fields(): {f} is not an enriched field index (0..{})",
            crate::fields::COUNT
        ));
    }
    Ok((!fields.is_empty()).then(|| fields.iter().map(|&f| f as u32).collect()))
}

/// How many records a batch holds (from the payload offsets or the field offsets; a batch
/// with neither is empty).
pub fn batch_len(values: &[u32], fields: &[u32], k: usize) -> usize {
    if !values.is_empty() {
        values.len() - 1
    } else if k > 0 && !fields.is_empty() {
        (fields.len() - 1) / k
    } else {
        0
    }
}

#[cfg(target_arch = "wasm32")]
pub mod wasm {
    use std::any::Any;
    use std::cell::UnsafeCell;

    use super::{batch_len, settings_fields, Guest, StateCtx};
    use crate::batch::{BatchView, ColumnBuf, ColumnRef, Emitted, FieldIds, OutputBuf};
    use crate::bindings::weir::transform::types as wit;
    use crate::config::Config;
    use crate::state::{StateCache, WasmState};

    struct Instance {
        guest: Box<dyn Any>,
        fields: FieldIds,
        cache: StateCache,
    }

    struct Slot(UnsafeCell<Option<Instance>>);
    // SAFETY: a wasm32 guest instance runs on one thread (no threads proposal, no shared
    // memory), so the static is never reached from two threads at once.
    unsafe impl Sync for Slot {}
    static INSTANCE: Slot = Slot(UnsafeCell::new(None));

    fn instance() -> &'static mut Instance {
        // SAFETY: one thread (see `Slot`); the host never calls an export while another runs, and
        // each export takes this reference once and drops it before returning, so no other
        // reference to the instance is alive while it is used.
        unsafe { (*INSTANCE.0.get()).as_mut() }.expect("weir called the transform before init")
    }

    pub fn column(c: ColumnRef<'_>) -> wit::Column {
        wit::Column {
            data: c.data.to_vec(),
            offsets: c.offsets.to_vec(),
            absent: c.absent.to_vec(),
        }
    }

    pub(crate) fn into_wit(c: ColumnBuf) -> wit::Column {
        wit::Column {
            data: c.data,
            offsets: c.offsets,
            absent: c.absent,
        }
    }

    fn view(c: &wit::Column) -> ColumnRef<'_> {
        ColumnRef {
            data: &c.data,
            offsets: &c.offsets,
            absent: &c.absent,
        }
    }

    pub fn init<G: Guest>(config: Vec<(String, String)>) -> Result<wit::Settings, String> {
        crate::host::install_panic_hook();
        let guest = G::init(&Config::new(config)).map_err(|e| e.message())?;
        let fields = settings_fields(guest.fields())?;
        let inst = Instance {
            fields: FieldIds::new(guest.fields()),
            guest: Box::new(guest),
            cache: StateCache::default(),
        };
        // SAFETY: one thread (see `Slot`), and `init` is an export of its own: no reference from
        // `instance()` is alive while the slot is written.
        unsafe { *INSTANCE.0.get() = Some(inst) };
        Ok(wit::Settings { fields })
    }

    pub fn process<G: Guest>(batch: wit::Batch) -> wit::Output {
        let inst = instance();
        let k = inst.fields.len();
        let view = BatchView {
            len: batch_len(&batch.values.offsets, &batch.fields.offsets, k),
            values: view(&batch.values),
            fields: view(&batch.fields),
            field_ids: &inst.fields,
            keys: view(&batch.keys),
            timestamps: &batch.timestamps,
        };
        let guest = inst.guest.downcast_mut::<G>().expect("transform type");
        let mut out = OutputBuf::with_capacity(view.len);
        let ctx = StateCtx {
            cache: &mut inst.cache,
            host: &mut WasmState,
        };
        guest.process(&view, &mut out, ctx);
        out.finish();
        wit::Output {
            sources: out.sources,
            values: into_wit(out.values),
            keys: into_wit(out.keys),
            errors: out
                .errors
                .into_iter()
                .map(|(index, message)| wit::RecordError { index, message })
                .collect(),
        }
    }

    pub fn expired<G: Guest>(keys: wit::Column, values: wit::Column) -> wit::Emitted {
        let inst = instance();
        let guest = inst.guest.downcast_mut::<G>().expect("transform type");
        let mut out = Emitted::default();
        let ctx = StateCtx {
            cache: &mut inst.cache,
            host: &mut WasmState,
        };
        guest.expired(view(&keys), view(&values), &mut out, ctx);
        wit::Emitted {
            values: into_wit(out.values),
            keys: into_wit(out.keys),
        }
    }

    pub fn flush<G: Guest>() -> wit::Emitted {
        let inst = instance();
        let guest = inst.guest.downcast_mut::<G>().expect("transform type");
        let mut out = Emitted::default();
        let ctx = StateCtx {
            cache: &mut inst.cache,
            host: &mut WasmState,
        };
        guest.flush(&mut out, ctx);
        wit::Emitted {
            values: into_wit(out.values),
            keys: into_wit(out.keys),
        }
    }
}
