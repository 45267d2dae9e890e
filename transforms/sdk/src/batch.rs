//! The flat batch the host sends, one record's view of it, and the output being built.

use crate::fields;
use crate::json::Json;
use crate::snowplow::{self, SelfDescribing};

/// A borrowed column (see `column` in the WIT): item `i` is `data[offsets[i]..offsets[i + 1]]`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ColumnRef<'a> {
    pub data: &'a [u8],
    pub offsets: &'a [u32],
    pub absent: &'a [u32],
}

impl<'a> ColumnRef<'a> {
    pub fn is_omitted(&self) -> bool {
        self.offsets.is_empty()
    }

    #[inline]
    pub fn item(&self, i: usize) -> &'a [u8] {
        &self.data[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }

    /// Item `i`, or `None` if the column is omitted or the item absent.
    pub fn get(&self, i: usize) -> Option<&'a [u8]> {
        if self.is_omitted() || self.absent.binary_search(&(i as u32)).is_ok() {
            None
        } else {
            Some(self.item(i))
        }
    }
}

/// An owned column being built.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ColumnBuf {
    pub data: Vec<u8>,
    pub offsets: Vec<u32>,
    pub absent: Vec<u32>,
}

impl ColumnBuf {
    /// Appends item `len()`, making the column non-omitted (earlier items become absent).
    fn push_at(&mut self, index: usize, value: Option<&[u8]>) {
        self.fill_absent(index);
        match value {
            Some(v) => crate::mem::extend(&mut self.data, v),
            None => self.absent.push(index as u32),
        }
        self.offsets.push(self.data.len() as u32);
    }

    /// Appends an item.
    pub(crate) fn push(&mut self, value: Option<&[u8]>) {
        self.push_at(self.offsets.len().saturating_sub(1), value);
    }

    /// Makes sure items `0..index` exist, adding absent ones.
    fn fill_absent(&mut self, index: usize) {
        if self.offsets.is_empty() {
            self.offsets.push(0);
        }
        while self.offsets.len() <= index {
            self.absent.push(self.offsets.len() as u32 - 1);
            self.offsets.push(self.data.len() as u32);
        }
    }

    pub fn as_ref(&self) -> ColumnRef<'_> {
        ColumnRef {
            data: &self.data,
            offsets: &self.offsets,
            absent: &self.absent,
        }
    }

    /// A column of the given items.
    pub fn from_items<'x>(items: impl IntoIterator<Item = Option<&'x [u8]>>) -> ColumnBuf {
        let mut c = ColumnBuf {
            offsets: vec![0],
            ..Default::default()
        };
        for (i, item) in items.into_iter().enumerate() {
            match item {
                Some(v) => c.data.extend_from_slice(v),
                None => c.absent.push(i as u32),
            }
            c.offsets.push(c.data.len() as u32);
        }
        c
    }
}

/// The enriched fields a transform declared, in order, and where each sits among a record's
/// projected fields (looked up on every [`Record::field`] call, instead of searched).
#[derive(Debug, Clone)]
pub struct FieldIds {
    ids: Vec<usize>,
    /// Position + 1 of each field in `ids` (its first), 0 when not declared.
    slot: [u8; fields::COUNT],
}

impl FieldIds {
    /// # Panics
    /// If a field index is `fields::COUNT` or more.
    pub fn new(ids: &[usize]) -> FieldIds {
        let mut slot = [0u8; fields::COUNT];
        for (j, &f) in ids.iter().enumerate().rev() {
            // At most COUNT distinct fields, but a list may repeat one: keep the first.
            slot[f] = u8::try_from(j + 1).unwrap_or(u8::MAX);
        }
        FieldIds {
            ids: ids.to_vec(),
            slot,
        }
    }

    pub fn ids(&self) -> &[usize] {
        &self.ids
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

static NO_FIELDS: FieldIds = FieldIds {
    ids: Vec::new(),
    slot: [0; fields::COUNT],
};

impl Default for &FieldIds {
    fn default() -> Self {
        &NO_FIELDS
    }
}

/// A whole input batch, borrowed.
#[derive(Debug, Clone, Copy, Default)]
pub struct BatchView<'a> {
    pub len: usize,
    pub values: ColumnRef<'a>,
    pub fields: ColumnRef<'a>,
    /// The field indexes `fields` holds, per record.
    pub field_ids: &'a FieldIds,
    pub keys: ColumnRef<'a>,
    pub timestamps: &'a [i64],
}

impl<'a> BatchView<'a> {
    /// Calls `f` with each record in order.
    #[inline]
    pub fn for_each(&self, mut f: impl FnMut(&Record<'a>)) {
        let k = self.field_ids.len();
        let mut key_absent = self.keys.absent.iter().peekable();
        for i in 0..self.len {
            let key = if self.keys.is_omitted() {
                None
            } else if key_absent.peek().is_some_and(|&&a| a as usize == i) {
                key_absent.next();
                None
            } else {
                Some(self.keys.item(i))
            };
            let rec = Record {
                index: i as u32,
                value: (!self.values.is_omitted()).then(|| self.values.item(i)),
                key,
                timestamp_ms: match self.timestamps {
                    [one] => Some(*one),
                    all => all.get(i).copied(),
                },
                projected: (k > 0).then(|| Projected {
                    slot: &self.field_ids.slot,
                    data: self.fields.data,
                    offsets: &self.fields.offsets[i * k..=(i + 1) * k],
                }),
            };
            f(&rec);
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Projected<'a> {
    slot: &'a [u8; fields::COUNT],
    data: &'a [u8],
    offsets: &'a [u32],
}

/// One input record.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    index: u32,
    value: Option<&'a [u8]>,
    key: Option<&'a [u8]>,
    timestamp_ms: Option<i64>,
    projected: Option<Projected<'a>>,
}

impl<'a> Record<'a> {
    /// A record with this payload (for native use: tests, benchmarks).
    pub fn new(value: &'a [u8]) -> Record<'a> {
        Record {
            index: 0,
            value: Some(value),
            key: None,
            timestamp_ms: None,
            projected: None,
        }
    }

    /// The same record with a partition key.
    pub fn with_key(mut self, key: Option<&'a [u8]>) -> Record<'a> {
        self.key = key;
        self
    }

    /// The record's index in its batch.
    pub fn index(&self) -> usize {
        self.index as usize
    }

    /// The payload, e.g. one enriched TSV line.
    ///
    /// # Panics
    /// If the transform declared `fields()`: then weir sends those fields, not payloads.
    pub fn value(&self) -> &'a [u8] {
        match self.value {
            Some(v) => v,
            None => panic!(
                "Record::value: this transform declared fields(), so weir sends only those \
                 fields; remove fields() to get whole payloads"
            ),
        }
    }

    /// The partition key, if the record has one.
    pub fn key(&self) -> Option<&'a [u8]> {
        self.key
    }

    /// When the record was read (ms since the Unix epoch), if the host said.
    pub fn timestamp_ms(&self) -> Option<i64> {
        self.timestamp_ms
    }

    /// Snowplow enriched field `idx` (see [`fields`]); `None` if empty (Snowplow's "absent").
    ///
    /// # Panics
    /// If the transform declared `fields()` without `idx`.
    #[inline]
    pub fn field(&self, idx: usize) -> Option<&'a [u8]> {
        let raw = match (self.value, &self.projected) {
            (_, Some(p)) => match p.slot.get(idx).map_or(0, |&s| usize::from(s)) {
                j @ 1.. => &p.data[p.offsets[j - 1] as usize..p.offsets[j] as usize],
                0 => panic!(
                    "Record::field: field `{}` is not among the transform's fields()",
                    fields::NAMES.get(idx).copied().unwrap_or("?")
                ),
            },
            (Some(v), None) => snowplow::field(v, idx),
            (None, None) => return None,
        };
        (!raw.is_empty()).then_some(raw)
    }

    /// Field `idx` as text (`None` if empty or not UTF-8).
    pub fn field_str(&self, idx: usize) -> Option<&'a str> {
        crate::utf8(self.field(idx)?)
    }

    /// Field `name` (e.g. `"event_name"`); see [`Record::field`].
    ///
    /// # Panics
    /// If there is no enriched field called `name`.
    pub fn field_by_name(&self, name: &str) -> Option<&'a [u8]> {
        match fields::index(name) {
            Some(i) => self.field(i),
            None => panic!("there is no enriched field called `{name}`"),
        }
    }

    /// The self-describing event of an unstructured (`ue`) event: its schema and data.
    pub fn unstruct(&self) -> Option<SelfDescribing<'a>> {
        snowplow::unstruct(self.field(fields::UNSTRUCT_EVENT)?)
    }

    /// All entities of the event: `contexts`, then `derived_contexts`.
    pub fn entities(&self) -> impl Iterator<Item = SelfDescribing<'a>> {
        let c = self.field(fields::CONTEXTS).unwrap_or(b"");
        let d = self.field(fields::DERIVED_CONTEXTS).unwrap_or(b"");
        snowplow::entities(c).chain(snowplow::entities(d))
    }

    /// The data of the first entity whose schema URI starts with `schema_prefix`, e.g.
    /// `"iglu:com.snowplowanalytics.snowplow/media_player/jsonschema/2-"`.
    pub fn entity(&self, schema_prefix: &str) -> Option<Json<'a>> {
        self.entities()
            .find(|e| e.is(schema_prefix))
            .map(|e| e.data)
    }
}

/// Everything a batch produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutputBuf {
    pub sources: Vec<u32>,
    pub values: ColumnBuf,
    pub keys: ColumnBuf,
    pub errors: Vec<(u32, String)>,
}

#[derive(Clone, Copy)]
pub(crate) struct Mark {
    sources: usize,
    values: (usize, usize, usize),
    keys: (usize, usize, usize),
}

impl OutputBuf {
    pub fn with_capacity(n: usize) -> OutputBuf {
        OutputBuf {
            sources: Vec::with_capacity(n),
            ..Default::default()
        }
    }

    pub(crate) fn mark(&self) -> Mark {
        let c = |c: &ColumnBuf| (c.data.len(), c.offsets.len(), c.absent.len());
        Mark {
            sources: self.sources.len(),
            values: c(&self.values),
            keys: c(&self.keys),
        }
    }

    /// Undoes everything pushed since `m` (a record that failed half-way).
    pub(crate) fn rollback(&mut self, m: Mark) {
        self.sources.truncate(m.sources);
        let r = |c: &mut ColumnBuf, (d, o, a): (usize, usize, usize)| {
            c.data.truncate(d);
            c.offsets.truncate(o);
            c.absent.truncate(a);
        };
        r(&mut self.values, m.values);
        r(&mut self.keys, m.keys);
    }

    /// Adds an output record from input `source`: `value`/`key` `None` keep the source's.
    #[inline]
    pub(crate) fn push(&mut self, source: u32, value: Option<&[u8]>, key: Option<&[u8]>) {
        let m = self.sources.len();
        self.sources.push(source);
        if value.is_some() || !self.values.offsets.is_empty() {
            self.values.push_at(m, value);
        }
        if key.is_some() || !self.keys.offsets.is_empty() {
            self.keys.push_at(m, key);
        }
    }

    /// Pads the columns that are in use so that they have one item per output record.
    pub fn finish(&mut self) {
        let m = self.sources.len();
        for c in [&mut self.values, &mut self.keys] {
            if !c.offsets.is_empty() {
                c.fill_absent(m);
            }
        }
    }
}

/// Where a record's outputs go: [`Emit::keep`] it, or emit new records.
pub struct Emit<'o> {
    pub(crate) out: &'o mut OutputBuf,
    pub(crate) source: u32,
}

impl Emit<'_> {
    /// Emits the input record unchanged (no bytes cross back to the host).
    pub fn keep(&mut self) {
        self.out.push(self.source, None, None);
    }

    /// Emits the input record's payload with a new partition key.
    pub fn keep_with_key(&mut self, key: &[u8]) {
        self.out.push(self.source, None, Some(key));
    }

    /// Emits a new payload (keeping the input record's key).
    pub fn emit(&mut self, value: &[u8]) {
        self.out.push(self.source, Some(value), None);
    }

    /// Emits a new payload with a partition key.
    pub fn emit_with_key(&mut self, value: &[u8], key: &[u8]) {
        self.out.push(self.source, Some(value), Some(key));
    }
}

/// Records emitted by `flush`, not tied to an input record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Emitted {
    pub(crate) values: ColumnBuf,
    pub(crate) keys: ColumnBuf,
    pub(crate) len: usize,
}

impl Emitted {
    /// Emits a record without a key.
    pub fn emit(&mut self, value: &[u8]) {
        self.values.push_at(self.len, Some(value));
        if !self.keys.offsets.is_empty() {
            self.keys.push_at(self.len, None);
        }
        self.len += 1;
    }

    /// Emits a record with a partition key.
    pub fn emit_with_key(&mut self, value: &[u8], key: &[u8]) {
        self.values.push_at(self.len, Some(value));
        self.keys.push_at(self.len, Some(key));
        self.len += 1;
    }

    /// How many records were emitted.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Record `i`: payload and key.
    pub fn get(&self, i: usize) -> Option<(&[u8], Option<&[u8]>)> {
        (i < self.len).then(|| (self.values.as_ref().item(i), self.keys.as_ref().get(i)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two records projected to fields 5, 3 and 5 again (a repeated field reads its first copy).
    fn projected(f: impl FnMut(&Record<'_>)) {
        let ids = FieldIds::new(&[5, 3, 5]);
        let data = b"a5a3xb5b3y";
        let offsets = [0, 2, 4, 5, 7, 9, 10];
        let view = BatchView {
            len: 2,
            fields: ColumnRef {
                data,
                offsets: &offsets,
                absent: &[],
            },
            field_ids: &ids,
            ..BatchView::default()
        };
        view.for_each(f);
    }

    #[test]
    fn projected_fields_are_found_by_index() {
        let mut got = Vec::new();
        projected(|r| got.push((r.field(5).unwrap().to_vec(), r.field(3).unwrap().to_vec())));
        assert_eq!(
            got,
            [
                (b"a5".to_vec(), b"a3".to_vec()),
                (b"b5".to_vec(), b"b3".to_vec())
            ]
        );
    }

    #[test]
    #[should_panic(expected = "field `app_id` is not among the transform's fields()")]
    fn a_field_not_declared_is_a_panic_that_names_it() {
        projected(|r| {
            r.field(fields::APP_ID);
        });
    }

    #[test]
    fn pass_through_outputs_send_only_sources() {
        let mut o = OutputBuf::default();
        o.push(0, None, None);
        o.push(2, None, None);
        o.finish();
        assert_eq!(o.sources, vec![0, 2]);
        assert!(o.values.offsets.is_empty() && o.keys.offsets.is_empty());
    }

    #[test]
    fn mixed_outputs_mark_inherited_items_absent() {
        let mut o = OutputBuf::default();
        o.push(0, None, None);
        o.push(1, Some(b"new"), None);
        o.push(1, None, Some(b"k"));
        o.finish();
        assert_eq!(o.values.offsets, vec![0, 0, 3, 3]);
        assert_eq!(o.values.absent, vec![0, 2]);
        assert_eq!(o.keys.offsets, vec![0, 0, 0, 1]);
        assert_eq!(o.keys.absent, vec![0, 1]);
        let m = o.mark();
        o.push(2, Some(b"zzz"), Some(b"q"));
        o.rollback(m);
        o.finish();
        assert_eq!(o.sources.len(), 3);
        assert_eq!(o.values.offsets.len(), 4);
    }
}
