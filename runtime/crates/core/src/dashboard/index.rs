//! The dashboard's view of a profile store, in memory: every row (its JSON as served, and the
//! few fields the dashboard filters, sorts and counts by), kept in order of last activity, with
//! the aggregates kept as rows change. A browser asks for a page of it — filtered by status,
//! platform, title or viewer, and searched — and for the aggregates; neither ever serialises
//! more than a page of rows, whatever the store holds.
//!
//! Rows are viewer profiles as viewer-state writes them (`status`, `platform`, `media.title`,
//! `last_seen`, `session.ads` …); a row without those fields is still listed, under no status.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The statuses viewer-state gives a viewer; the last one counts as not live.
pub const STATUSES: [&str; 5] = ["watching", "paused", "in_ad", "buffering", "ended"];
/// Live viewer samples kept: one an interval (10 s), an hour of them.
pub const HISTORY: usize = 360;
/// The most rows a page holds.
pub const MAX_PER_PAGE: usize = 200;
/// Titles the aggregates list (the most watched).
pub const TOP_TITLES: usize = 10;

/// One row.
struct Entry {
    /// The row as served: its JSON.
    doc: Arc<str>,
    status: Option<Arc<str>>,
    platform: Option<Arc<str>>,
    title: Option<Arc<str>>,
    last_seen: Arc<str>,
    ads: f64,
    skipped: f64,
    clicked: f64,
    /// The key and then the title, lower-cased once: what `user` (the first `id_len` bytes) and
    /// `q` (all of it) search.
    search: Box<str>,
    id_len: usize,
}

/// A page request: filters (exact status, platform and title; `user` a part of the row's key;
/// `q` a part of its key or title, any case), and which page.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Query {
    pub status: Option<String>,
    pub platform: Option<String>,
    pub title: Option<String>,
    pub user: Option<String>,
    pub q: Option<String>,
    /// 1-based.
    pub page: Option<usize>,
    pub per_page: Option<usize>,
}

impl Query {
    /// Whether any parameter is given (none: the full export).
    pub fn is_empty(&self) -> bool {
        *self == Query::default()
    }

    fn page(&self) -> (usize, usize) {
        let per = self.per_page.unwrap_or(24).clamp(1, MAX_PER_PAGE);
        (self.page.unwrap_or(1).max(1), per)
    }
}

/// What the aggregates say.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub viewers: usize,
    pub live: usize,
    pub by_status: HashMap<String, usize>,
    pub by_platform: HashMap<String, usize>,
    /// The most watched titles, most first: `[title, viewers]`.
    pub top_titles: Vec<(String, usize)>,
    pub ads: AdStats,
    /// Live viewers over the last hour: `[unix ms, live]`, oldest first.
    pub history: Vec<(i64, usize)>,
}

#[derive(Debug, Serialize)]
pub struct AdStats {
    pub started: f64,
    pub skipped: f64,
    pub clicked: f64,
    /// Ads not skipped of the ads started (`null` before any).
    pub completion_rate: Option<f64>,
    pub skip_rate: Option<f64>,
    pub click_rate: Option<f64>,
}

/// Every row, ordered, with the aggregates.
#[derive(Default)]
pub struct Index {
    rows: HashMap<Arc<str>, Entry>,
    /// (last_seen, key), newest last.
    order: BTreeSet<(Arc<str>, Arc<str>)>,
    by_status: HashMap<Arc<str>, usize>,
    by_platform: HashMap<Arc<str>, usize>,
    by_title: HashMap<Arc<str>, usize>,
    ads: (f64, f64, f64),
    /// Changes so far: a client whose page was built at this version has nothing new.
    pub version: u64,
    history: VecDeque<(i64, usize)>,
    /// While the store is read into the index: the changes announced meanwhile (applied again
    /// after the rows read, which may be older).
    loading: Option<HashMap<Arc<str>, Option<serde_json::Value>>>,
}

fn text(v: Option<&serde_json::Value>) -> Option<Arc<str>> {
    v.and_then(|v| v.as_str()).map(Arc::from)
}

fn bump(map: &mut HashMap<Arc<str>, usize>, k: &Option<Arc<str>>, up: bool) {
    let Some(k) = k else { return };
    if up {
        *map.entry(k.clone()).or_default() += 1;
    } else if let Some(n) = map.get_mut(k) {
        *n -= 1;
        if *n == 0 {
            map.remove(k);
        }
    }
}

impl Index {
    /// A row was written: `doc`, serialised as `json` (the caller's, so it is done once).
    pub fn upsert(&mut self, key: &str, doc: &serde_json::Value, json: &str) {
        if let Some(l) = &mut self.loading {
            l.insert(Arc::from(key), Some(doc.clone()));
        }
        self.put(key, doc, Arc::from(json));
    }

    /// A row was removed.
    pub fn remove(&mut self, key: &str) {
        if let Some(l) = &mut self.loading {
            l.insert(Arc::from(key), None);
        }
        self.take(key);
        self.version += 1;
    }

    fn put(&mut self, key: &str, doc: &serde_json::Value, json: Arc<str>) {
        let key: Arc<str> = match self.rows.get_key_value(key) {
            Some((k, _)) => k.clone(),
            None => Arc::from(key),
        };
        self.take(&key);
        let session = doc.get("session");
        let num = |k: &str| session.and_then(|s| s.get(k)).and_then(|v| v.as_f64());
        let title = text(doc.get("media").and_then(|m| m.get("title")));
        let mut search = key.to_lowercase();
        let id_len = search.len();
        search.push('\n');
        search.push_str(&title.as_deref().unwrap_or("").to_lowercase());
        let e = Entry {
            doc: json,
            status: text(doc.get("status")),
            platform: text(doc.get("platform")),
            title,
            search: search.into_boxed_str(),
            id_len,
            last_seen: text(doc.get("last_seen")).unwrap_or_else(|| Arc::from("")),
            ads: num("ads").unwrap_or(0.0),
            skipped: num("ads_skipped").unwrap_or(0.0),
            clicked: num("ads_clicked").unwrap_or(0.0),
        };
        self.count(&e, true);
        self.order.insert((e.last_seen.clone(), key.clone()));
        self.rows.insert(key, e);
        self.version += 1;
    }

    fn take(&mut self, key: &str) {
        if let Some((k, e)) = self.rows.remove_entry(key) {
            self.order.remove(&(e.last_seen.clone(), k));
            self.count(&e, false);
        }
    }

    fn count(&mut self, e: &Entry, up: bool) {
        bump(&mut self.by_status, &e.status, up);
        bump(&mut self.by_platform, &e.platform, up);
        bump(&mut self.by_title, &e.title, up);
        let s = if up { 1.0 } else { -1.0 };
        self.ads.0 += s * e.ads;
        self.ads.1 += s * e.skipped;
        self.ads.2 += s * e.clicked;
    }

    /// Starts reading the store: changes from here on are kept to be applied after its rows.
    pub fn begin_load(&mut self) {
        self.loading = Some(HashMap::new());
    }

    /// Adds a row read from the store to an index being built (see [`Index::finish_load`]).
    pub fn load_row(&mut self, key: &str, doc: &serde_json::Value) {
        self.put(key, doc, Arc::from(doc.to_string()));
    }

    /// `fresh`, built from the store's rows read after [`Index::begin_load`], replaces the
    /// index; the changes announced meanwhile are applied over it.
    pub fn finish_load(&mut self, fresh: Index) {
        let meanwhile = self.loading.take().unwrap_or_default();
        let history = std::mem::take(&mut self.history);
        let version = self.version;
        *self = Index {
            history,
            version: version + fresh.version,
            ..fresh
        };
        for (k, change) in meanwhile {
            match change {
                Some(doc) => self.put(&k, &doc, Arc::from(doc.to_string())),
                None => self.take(&k),
            }
        }
        self.version += 1;
    }

    /// The load failed: stop keeping changes aside (the index keeps what it had).
    pub fn abort_load(&mut self) {
        self.loading = None;
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Viewers not ended (rows without a status count as live).
    pub fn live(&self) -> usize {
        self.rows.len() - self.by_status.get("ended").copied().unwrap_or(0)
    }

    /// Records the live count at `now_ms` (one sample an interval; an hour kept).
    pub fn sample(&mut self, now_ms: i64) {
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back((now_ms, self.live()));
        self.version += 1;
    }

    pub fn summary(&self) -> Summary {
        let own = |m: &HashMap<Arc<str>, usize>| {
            m.iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect::<HashMap<_, _>>()
        };
        // The most watched first: only the top ones are sorted, however many titles there are.
        let mut titles: Vec<(&Arc<str>, &usize)> = self.by_title.iter().collect();
        let most = |a: &(&Arc<str>, &usize), b: &(&Arc<str>, &usize)| {
            b.1.cmp(a.1).then_with(|| a.0.cmp(b.0))
        };
        if titles.len() > TOP_TITLES {
            titles.select_nth_unstable_by(TOP_TITLES, most);
            titles.truncate(TOP_TITLES);
        }
        titles.sort_by(most);
        let (started, skipped, clicked) = self.ads;
        let rate = |n: f64| (started > 0.0).then(|| (n / started * 1000.0).round() / 1000.0);
        Summary {
            viewers: self.rows.len(),
            live: self.live(),
            by_status: own(&self.by_status),
            by_platform: own(&self.by_platform),
            top_titles: titles
                .into_iter()
                .take(TOP_TITLES)
                .map(|(t, n)| (t.to_string(), *n))
                .collect(),
            ads: AdStats {
                started,
                skipped,
                clicked,
                completion_rate: rate(started - skipped),
                skip_rate: rate(skipped),
                click_rate: rate(clicked),
            },
            history: self.history.iter().copied().collect(),
        }
    }

    /// One page of the rows `q` selects, most recently active first, as JSON:
    /// `{"total": …, "page": …, "per_page": …, "pages": …, "viewers": [row, …]}`.
    pub fn page_json(&self, q: &Query) -> String {
        let (page, per) = q.page();
        let skip = (page - 1).saturating_mul(per);
        let needle = |s: &Option<String>| {
            s.as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                // The key and title are joined by a `\n`: a needle never spans them.
                .map(|s| s.replace('\n', " ").to_lowercase())
        };
        let (user, search) = (needle(&q.user), needle(&q.q));
        let unfiltered = user.is_none()
            && search.is_none()
            && [&q.status, &q.platform, &q.title]
                .iter()
                .all(|f| f.as_deref().is_none_or(str::is_empty));
        if unfiltered {
            // The total is known: walk only the page.
            let docs: Vec<&str> = self
                .order
                .iter()
                .rev()
                .skip(skip)
                .take(per)
                .map(|(_, k)| &*self.rows[k].doc)
                .collect();
            let total = self.rows.len();
            return format!(
                r#"{{"total":{total},"page":{page},"per_page":{per},"pages":{},"viewers":[{}]}}"#,
                total.div_ceil(per).max(1),
                docs.join(",")
            );
        }
        let exact = |want: &Option<String>, have: &Option<Arc<str>>| match want.as_deref() {
            None | Some("") => true,
            Some(w) => have.as_deref() == Some(w),
        };
        let mut total = 0usize;
        let mut out = String::with_capacity(per * 1024);
        out.push('[');
        for (_, key) in self.order.iter().rev() {
            let e = &self.rows[key];
            if !exact(&q.status, &e.status)
                || !exact(&q.platform, &e.platform)
                || !exact(&q.title, &e.title)
            {
                continue;
            }
            let id = &e.search[..e.id_len];
            if user.as_deref().is_some_and(|u| !id.contains(u)) {
                continue;
            }
            if search.as_deref().is_some_and(|s| !e.search.contains(s)) {
                continue;
            }
            if total >= skip && total < skip + per {
                if out.len() > 1 {
                    out.push(',');
                }
                out.push_str(&e.doc);
            }
            total += 1;
        }
        out.push(']');
        let pages = total.div_ceil(per).max(1);
        format!(
            r#"{{"total":{total},"page":{page},"per_page":{per},"pages":{pages},"viewers":{out}}}"#
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn viewer(i: usize, status: &str, platform: &str, title: &str, ads: u32) -> Value {
        json!({"viewer_id": format!("viewer-{i:03}"), "status": status, "platform": platform,
               "media": {"title": title}, "last_seen": format!("2026-12-07T10:{:02}:{:02}Z", i / 60, i % 60),
               "session": {"ads": ads, "ads_skipped": ads / 2, "ads_clicked": 0}})
    }

    fn up(ix: &mut Index, key: &str, doc: &Value) {
        ix.upsert(key, doc, &doc.to_string());
    }

    fn page(ix: &Index, q: Query) -> Value {
        serde_json::from_str(&ix.page_json(&q)).unwrap()
    }

    fn keys(v: &Value) -> Vec<String> {
        v["viewers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["viewer_id"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn pages_filter_and_order_by_last_activity() {
        let mut ix = Index::default();
        for i in 0..100 {
            let status = STATUSES[i % 5];
            let platform = if i % 4 == 0 { "mob" } else { "web" };
            up(
                &mut ix,
                &format!("viewer-{i:03}"),
                &viewer(i, status, platform, &format!("T{}", i % 3), 2),
            );
        }
        let p = page(
            &ix,
            Query {
                per_page: Some(10),
                ..Query::default()
            },
        );
        assert_eq!(
            (p["total"].as_u64(), p["pages"].as_u64()),
            (Some(100), Some(10))
        );
        assert_eq!(keys(&p)[0], "viewer-099", "most recent first");
        let p2 = page(
            &ix,
            Query {
                per_page: Some(10),
                page: Some(2),
                ..Query::default()
            },
        );
        assert_eq!(keys(&p2)[0], "viewer-089");
        let q = Query {
            status: Some("in_ad".into()),
            platform: Some("mob".into()),
            ..Query::default()
        };
        let p = page(&ix, q);
        // i % 5 == 2 and i % 4 == 0: 12, 32, 52, 72, 92.
        assert_eq!(
            keys(&p),
            [
                "viewer-092",
                "viewer-072",
                "viewer-052",
                "viewer-032",
                "viewer-012"
            ]
        );
        let p = page(
            &ix,
            Query {
                user: Some("ER-04".into()),
                ..Query::default()
            },
        );
        assert_eq!(p["total"], 10, "a part of the id, any case");
        let p = page(
            &ix,
            Query {
                q: Some("t2".into()),
                per_page: Some(200),
                ..Query::default()
            },
        );
        assert_eq!(p["total"], 33);
        // An update moves a viewer to the top; a removal takes it out of everything.
        let mut v = viewer(5, "ended", "web", "T2", 2);
        v["last_seen"] = json!("2026-12-07T11:00:00Z");
        up(&mut ix, "viewer-005", &v);
        assert_eq!(keys(&page(&ix, Query::default()))[0], "viewer-005");
        ix.remove("viewer-005");
        assert_eq!(page(&ix, Query::default())["total"], 99);
        assert!(!ix.page_json(&Query::default()).contains("viewer-005"));
    }

    #[test]
    fn search_is_per_field_and_titles_are_the_most_watched() {
        let mut ix = Index::default();
        for i in 0..50 {
            // 50 titles, title k watched by k viewers... up to the 50 rows.
            up(
                &mut ix,
                &format!("Ab\nC-{i}"),
                &viewer(i, "watching", "web", &format!("T{}", i % 7), 0),
            );
        }
        let s = ix.summary();
        assert_eq!(s.top_titles.len(), 7);
        assert!(
            s.top_titles.windows(2).all(|w| w[0].1 >= w[1].1),
            "{:?}",
            s.top_titles
        );
        // `user` looks at the id only, `q` at the id and the title; a needle never spans them.
        let p = page(
            &ix,
            Query {
                user: Some("t3".into()),
                ..Query::default()
            },
        );
        assert_eq!(p["total"], 0);
        let p = page(
            &ix,
            Query {
                q: Some("t3".into()),
                ..Query::default()
            },
        );
        assert_eq!(p["total"], 7);
        let p = page(
            &ix,
            Query {
                q: Some("c-1\nt".into()),
                ..Query::default()
            },
        );
        assert_eq!(p["total"], 0, "no match across the id and the title");
        let p = page(
            &ix,
            Query {
                user: Some("AB\nc-4".into()),
                ..Query::default()
            },
        );
        assert_eq!(p["total"], 0, "the newline in a needle is a space");
        let p = page(
            &ix,
            Query {
                user: Some("b\nc-4".into()),
                ..Query::default()
            },
        );
        assert_eq!(p["total"], 0);
    }

    #[test]
    fn aggregates_follow_every_change() {
        let mut ix = Index::default();
        up(&mut ix, "a", &viewer(1, "watching", "web", "Sintel", 4));
        up(&mut ix, "b", &viewer(2, "ended", "mob", "Sintel", 2));
        up(
            &mut ix,
            "c",
            &viewer(3, "in_ad", "mob", "Big Buck Bunny", 0),
        );
        let s = ix.summary();
        assert_eq!((s.viewers, s.live), (3, 2));
        assert_eq!(s.by_platform["mob"], 2);
        assert_eq!(s.top_titles[0], ("Sintel".to_string(), 2));
        assert_eq!((s.ads.started, s.ads.skipped), (6.0, 3.0));
        assert_eq!(s.ads.completion_rate, Some(0.5));
        up(
            &mut ix,
            "a",
            &viewer(1, "ended", "web", "Tears of Steel", 6),
        );
        ix.remove("c");
        let s = ix.summary();
        assert_eq!((s.viewers, s.live), (2, 0));
        assert_eq!(s.by_status.get("watching"), None);
        assert_eq!(s.by_platform.get("mob"), Some(&1));
        assert_eq!(s.ads.started, 8.0);
        ix.sample(1_000);
        assert_eq!(ix.summary().history, [(1_000, 0)]);
    }

    #[test]
    fn changes_during_a_load_win_over_the_rows_read() {
        let mut ix = Index::default();
        ix.begin_load();
        up(&mut ix, "a", &viewer(1, "ended", "web", "New", 0));
        ix.remove("b");
        // The store's rows, read before those changes.
        let mut fresh = Index::default();
        fresh.load_row("a", &viewer(1, "watching", "web", "Old", 0));
        fresh.load_row("b", &viewer(2, "watching", "web", "Old", 0));
        fresh.load_row("c", &viewer(3, "paused", "web", "Old", 0));
        ix.finish_load(fresh);
        let s = ix.summary();
        assert_eq!(s.viewers, 2);
        assert_eq!(s.by_status.get("ended"), Some(&1));
        assert_eq!(
            s.top_titles,
            [("New".to_string(), 1), ("Old".to_string(), 1)]
        );
        assert!(!ix.page_json(&Query::default()).contains("viewer-002"));
    }
}
