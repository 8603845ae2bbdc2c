//! The knowledge graph on LanceDB (feature `lancedb`, `ABSTRACTGATEWAY_KG_BACKEND=lancedb`), in
//! `<data dir>/kg.lancedb`: the same triples, filters, ordering and cosine search as the SQLite
//! backend (the conformance suite in `kg.rs` runs on both).
//!
//! A LanceDB vector column has one fixed size, so assertions live in one table per vector size
//! (`kg_v384` for MiniLM's) plus `kg_plain` for those stored without a vector; a query reads the
//! tables it can match and merges. Search is exact (flat, no ANN index), prefiltered by the
//! other conditions, as on SQLite.
//!
//! LanceDB's API is async; the `KgBackend` calls block (callers are on blocking threads), so they
//! run on a small runtime of their own that lives for the whole process.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use futures_util::TryStreamExt;
use lancedb::arrow::arrow_array::builder::{FixedSizeListBuilder, Float32Builder, Float64Builder, Int64Builder, StringBuilder};
use lancedb::arrow::arrow_array::cast::AsArray;
use lancedb::arrow::arrow_array::types::{Float32Type, Float64Type, Int64Type};
use lancedb::arrow::arrow_array::{Array, ArrayRef, RecordBatch};
use lancedb::arrow::arrow_schema::{DataType, Field, Schema};
use lancedb::query::{ExecutableQuery, QueryBase, Select};
use lancedb::DistanceType;
use serde_json::{Map, Value};

use super::kg::{canonical_term, KgAdded, KgAssertion, KgBackend, KgQuery, KgRow};
use super::{StoreError, StoreResult};

const PLAIN: &str = "kg_plain";
const COLUMNS: &[&str] = &[
    "assertion_id",
    "seq",
    "subject",
    "predicate",
    "object",
    "scope",
    "owner_id",
    "observed_at",
    "valid_from",
    "valid_until",
    "confidence",
    "provenance_json",
    "attributes_json",
    "embedding_space",
];

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("kg-lancedb")
            .enable_all()
            .build()
            .expect("a tokio runtime for LanceDB")
    })
}

/// Runs `f` to completion on the LanceDB runtime; from inside another runtime (the gateway's
/// start-up opens planes on it) the wait happens on a scoped thread, where blocking is allowed.
fn block_on<F: std::future::Future + Send>(f: F) -> F::Output
where
    F::Output: Send,
{
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| s.spawn(|| runtime().block_on(f)).join().expect("LanceDB call panicked"))
    } else {
        runtime().block_on(f)
    }
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Other(format!("lancedb: {e}"))
}

/// Every batch a query yields.
async fn batches(q: impl ExecutableQuery) -> StoreResult<Vec<RecordBatch>> {
    q.execute().await.map_err(err)?.try_collect().await.map_err(err)
}

fn table_name(dim: usize) -> String {
    if dim == 0 {
        PLAIN.to_string()
    } else {
        format!("kg_v{dim}")
    }
}

fn schema(dim: usize) -> Arc<Schema> {
    let text = |n: &str, null: bool| Field::new(n, DataType::Utf8, null);
    let mut fields = vec![
        text("assertion_id", false),
        Field::new("seq", DataType::Int64, false),
        text("subject", false),
        text("predicate", false),
        text("object", false),
        text("scope", false),
        text("owner_id", true),
        text("observed_at", false),
        text("valid_from", true),
        text("valid_until", true),
        Field::new("confidence", DataType::Float64, true),
        text("provenance_json", false),
        text("attributes_json", false),
        text("embedding_space", true),
    ];
    if dim > 0 {
        fields.push(Field::new(
            "embedding",
            DataType::FixedSizeList(Arc::new(Field::new("item", DataType::Float32, true)), dim as i32),
            true,
        ));
    }
    Arc::new(Schema::new(fields))
}

/// A SQL string literal for a LanceDB filter.
fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

pub struct LanceKg {
    db: lancedb::Connection,
    /// Open tables by vector size (0: no vector).
    tables: Mutex<HashMap<usize, lancedb::Table>>,
    /// Writes of this process one at a time: the duplicate check and the insert go together.
    write: tokio::sync::Mutex<()>,
}

impl LanceKg {
    pub fn open(dir: &Path) -> Result<LanceKg, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let uri = dir.to_str().ok_or_else(|| format!("{} is not UTF-8", dir.display()))?.to_string();
        block_on(async {
            let db = lancedb::connect(&uri)
                .execute()
                .await
                .map_err(|e| format!("cannot open LanceDB at {uri}: {e}"))?;
            let mut tables = HashMap::new();
            for name in db.table_names().execute().await.map_err(|e| e.to_string())? {
                let dim = match name.as_str() {
                    PLAIN => 0,
                    n => match n.strip_prefix("kg_v").and_then(|d| d.parse::<usize>().ok()) {
                        Some(d) => d,
                        None => continue,
                    },
                };
                let t = db.open_table(&name).execute().await.map_err(|e| e.to_string())?;
                tables.insert(dim, t);
            }
            Ok(LanceKg {
                db,
                tables: Mutex::new(tables),
                write: tokio::sync::Mutex::new(()),
            })
        })
    }

    fn tables(&self) -> StoreResult<Vec<(usize, lancedb::Table)>> {
        let t = self.tables.lock().map_err(|_| err("table map poisoned"))?;
        Ok(t.iter().map(|(d, t)| (*d, t.clone())).collect())
    }

    fn table(&self, dim: usize) -> StoreResult<Option<lancedb::Table>> {
        Ok(self.tables.lock().map_err(|_| err("table map poisoned"))?.get(&dim).cloned())
    }

    async fn table_for(&self, dim: usize) -> StoreResult<lancedb::Table> {
        if let Some(t) = self.table(dim)? {
            return Ok(t);
        }
        let t = self
            .db
            .create_empty_table(table_name(dim), schema(dim))
            .mode(lancedb::database::CreateTableMode::exist_ok(|r| r))
            .execute()
            .await
            .map_err(err)?;
        self.tables.lock().map_err(|_| err("table map poisoned"))?.insert(dim, t.clone());
        Ok(t)
    }

    async fn count_where(&self, filter: &str) -> StoreResult<usize> {
        let mut n = 0;
        for (_, t) in self.tables()? {
            n += t.count_rows(Some(filter.to_string())).await.map_err(err)?;
        }
        Ok(n)
    }

    async fn existing_ids(&self, ids: &[String]) -> StoreResult<HashSet<String>> {
        let mut out = HashSet::new();
        if ids.is_empty() {
            return Ok(out);
        }
        let filter = format!("assertion_id IN ({})", ids.iter().map(|i| lit(i)).collect::<Vec<_>>().join(","));
        for (_, t) in self.tables()? {
            let batches = batches(t.query().only_if(&filter).select(Select::columns(&["assertion_id"]))).await?;
            for b in &batches {
                let col = b.column(0).as_string::<i32>();
                out.extend((0..col.len()).map(|i| col.value(i).to_string()));
            }
        }
        Ok(out)
    }

    async fn add_async(&self, rows: Vec<KgRow>, space: Option<String>, dedupe: bool) -> StoreResult<KgAdded> {
        let _w = self.write.lock().await;
        let mut out = KgAdded::default();
        let ids: Vec<String> = rows.iter().map(|r| r.assertion.assertion_id.clone()).collect();
        let existing = self.existing_ids(&ids).await?;
        let mut seen: HashSet<(String, String, String, String, String)> = HashSet::new();
        // Insertion order is kept in `seq`, assigned in the order given, across tables.
        let base = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0);
        let mut by_dim: HashMap<usize, Vec<(i64, KgRow)>> = HashMap::new();
        for r in rows {
            let a = &r.assertion;
            if existing.contains(&a.assertion_id) {
                out.assertion_ids.push(a.assertion_id.clone());
                continue;
            }
            if dedupe {
                let key = (
                    a.subject.clone(),
                    a.predicate.clone(),
                    a.object.clone(),
                    a.scope.clone(),
                    a.owner_id.clone().unwrap_or_default(),
                );
                let owner = match a.owner_id.as_deref() {
                    None | Some("") => "(owner_id IS NULL OR owner_id = '')".to_string(),
                    Some(o) => format!("owner_id = {}", lit(o)),
                };
                let filter = format!(
                    "subject = {} AND predicate = {} AND object = {} AND scope = {} AND {owner} AND assertion_id != {}",
                    lit(&a.subject),
                    lit(&a.predicate),
                    lit(&a.object),
                    lit(&a.scope),
                    lit(&a.assertion_id)
                );
                if seen.contains(&key) || self.count_where(&filter).await? > 0 {
                    out.skipped_duplicates += 1;
                    continue;
                }
                seen.insert(key);
            }
            out.assertion_ids.push(a.assertion_id.clone());
            let seq = base + out.assertion_ids.len() as i64;
            by_dim
                .entry(r.vector.as_ref().map(Vec::len).unwrap_or(0))
                .or_default()
                .push((seq, r));
        }
        for (dim, rows) in by_dim {
            let batch = to_batch(&rows, dim, space.as_deref())?;
            self.table_for(dim).await?.add(batch).execute().await.map_err(err)?;
        }
        Ok(out)
    }

    async fn query_async(&self, q: &KgQuery) -> StoreResult<Vec<KgAssertion>> {
        let filter = filter_of(q);
        let mut items: Vec<(KgAssertion, i64)> = Vec::new();
        if let Some((v, space)) = &q.vector {
            let Some(t) = self.table(v.len())? else {
                return Ok(Vec::new());
            };
            let mut filter = filter;
            filter.push(format!("embedding_space = {}", lit(space)));
            let limit = match q.limit {
                Some(l) => l,
                None => t.count_rows(None).await.map_err(err)?.max(1),
            };
            let batches = batches(
                t.query()
                    .nearest_to(v.as_slice())
                    .map_err(err)?
                    .distance_type(DistanceType::Cosine)
                    .only_if(filter.join(" AND "))
                    .limit(limit),
            )
            .await?;
            for b in &batches {
                let dist = b
                    .column_by_name("_distance")
                    .ok_or_else(|| err("no _distance column"))?
                    .as_primitive::<Float32Type>()
                    .clone();
                for (i, (mut a, seq)) in rows_of(b)?.into_iter().enumerate() {
                    let score = 1.0 - dist.value(i) as f64;
                    if q.min_score.is_some_and(|m| score < m) {
                        continue;
                    }
                    a.set_score(score);
                    items.push((a, seq));
                }
            }
            let score = |a: &KgAssertion| a.attributes["_retrieval"]["score"].as_f64().unwrap_or(0.0);
            items.sort_by(|a, b| score(&b.0).total_cmp(&score(&a.0)));
        } else {
            for (_, t) in self.tables()? {
                let mut query = t.query().select(Select::columns(COLUMNS));
                if !filter.is_empty() {
                    query = query.only_if(filter.join(" AND "));
                }
                let batches = batches(query).await?;
                for b in &batches {
                    items.extend(rows_of(b)?);
                }
            }
            items.sort_by(|a, b| {
                let o =
                    a.0.observed_at
                        .cmp(&b.0.observed_at)
                        .then_with(|| a.0.assertion_id.cmp(&b.0.assertion_id));
                if q.ascending {
                    o
                } else {
                    o.reverse()
                }
            });
        }
        if let Some(l) = q.limit {
            items.truncate(l);
        }
        Ok(items.into_iter().map(|(a, _)| a).collect())
    }

    async fn export_async(&self, offset: usize, limit: usize) -> StoreResult<Vec<(KgRow, Option<String>)>> {
        // Insertion order across tables: by `seq`.
        let mut all: Vec<(i64, KgRow, Option<String>)> = Vec::new();
        for (dim, t) in self.tables()? {
            let batches = batches(t.query()).await?;
            for b in &batches {
                let spaces = b.column_by_name("embedding_space").map(|c| c.as_string::<i32>().clone());
                let vectors = (dim > 0)
                    .then(|| b.column_by_name("embedding").map(|c| c.as_fixed_size_list().clone()))
                    .flatten();
                for (i, (a, seq)) in rows_of(b)?.into_iter().enumerate() {
                    let vector = vectors.as_ref().filter(|v| !v.is_null(i)).map(|v| {
                        let row = v.value(i);
                        row.as_primitive::<Float32Type>().values().to_vec()
                    });
                    let space = spaces.as_ref().filter(|s| !s.is_null(i)).map(|s| s.value(i).to_string());
                    all.push((seq, KgRow { assertion: a, vector }, space));
                }
            }
        }
        all.sort_by_key(|(seq, ..)| *seq);
        Ok(all.into_iter().skip(offset).take(limit).map(|(_, r, s)| (r, s)).collect())
    }
}

/// The conditions of `q` other than the vector, as LanceDB SQL (as `kg::query` builds them).
fn filter_of(q: &KgQuery) -> Vec<String> {
    let mut parts = Vec::new();
    for (col, v) in [("subject", &q.subject), ("predicate", &q.predicate), ("object", &q.object)] {
        if let Some(v) = v.as_deref().map(canonical_term).filter(|s| !s.is_empty()) {
            parts.push(format!("{col} = {}", lit(&v)));
        }
    }
    if let Some(s) = &q.scope {
        parts.push(format!("scope = {}", lit(s)));
    }
    match q.owner_id.as_deref() {
        Some("") => parts.push("(owner_id IS NULL OR owner_id = '')".into()),
        Some(o) => parts.push(format!("owner_id = {}", lit(o))),
        None => {}
    }
    if let Some(s) = &q.since {
        parts.push(format!("observed_at >= {}", lit(s)));
    }
    if let Some(u) = &q.until {
        parts.push(format!("observed_at <= {}", lit(u)));
    }
    if let Some(a) = &q.active_at {
        parts.push(format!("(valid_from IS NULL OR valid_from <= {})", lit(a)));
        parts.push(format!("(valid_until IS NULL OR valid_until > {})", lit(a)));
    }
    parts
}

fn to_batch(rows: &[(i64, KgRow)], dim: usize, space: Option<&str>) -> StoreResult<RecordBatch> {
    let n = rows.len();
    let mut cols: Vec<StringBuilder> = (0..COLUMNS.len()).map(|_| StringBuilder::with_capacity(n, n * 16)).collect();
    let mut seq = Int64Builder::with_capacity(n);
    let mut confidence = Float64Builder::with_capacity(n);
    let mut emb = FixedSizeListBuilder::new(Float32Builder::with_capacity(n * dim), dim as i32);
    for (at, r) in rows {
        let a = &r.assertion;
        let text = |v: &Option<String>, b: &mut StringBuilder| match v {
            Some(s) => b.append_value(s),
            None => b.append_null(),
        };
        cols[0].append_value(&a.assertion_id);
        seq.append_value(*at);
        cols[2].append_value(&a.subject);
        cols[3].append_value(&a.predicate);
        cols[4].append_value(&a.object);
        cols[5].append_value(&a.scope);
        text(&a.owner_id, &mut cols[6]);
        cols[7].append_value(&a.observed_at);
        text(&a.valid_from, &mut cols[8]);
        text(&a.valid_until, &mut cols[9]);
        confidence.append_option(a.confidence);
        cols[11].append_value(Value::Object(a.provenance.clone()).to_string());
        cols[12].append_value(Value::Object(a.attributes.clone()).to_string());
        text(&r.vector.as_ref().and(space.map(str::to_string)), &mut cols[13]);
        if dim > 0 {
            match &r.vector {
                Some(v) => {
                    emb.values().append_slice(v);
                    emb.append(true);
                }
                None => {
                    emb.values().append_slice(&vec![0.0; dim]);
                    emb.append(false);
                }
            }
        }
    }
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(COLUMNS.len() + 1);
    for (i, b) in cols.iter_mut().enumerate() {
        arrays.push(match i {
            1 => Arc::new(seq.finish()),
            10 => Arc::new(confidence.finish()),
            _ => Arc::new(b.finish()),
        });
    }
    if dim > 0 {
        arrays.push(Arc::new(emb.finish()));
    }
    RecordBatch::try_new(schema(dim), arrays).map_err(err)
}

fn rows_of(b: &RecordBatch) -> StoreResult<Vec<(KgAssertion, i64)>> {
    let s = |name: &str| -> StoreResult<_> {
        Ok(b.column_by_name(name)
            .ok_or_else(|| err(format!("no column {name}")))?
            .as_string::<i32>()
            .clone())
    };
    let (id, subject, predicate, object, scope, owner) = (
        s("assertion_id")?,
        s("subject")?,
        s("predicate")?,
        s("object")?,
        s("scope")?,
        s("owner_id")?,
    );
    let (observed, from, until, prov, attrs) = (
        s("observed_at")?,
        s("valid_from")?,
        s("valid_until")?,
        s("provenance_json")?,
        s("attributes_json")?,
    );
    let seq = b
        .column_by_name("seq")
        .ok_or_else(|| err("no column seq"))?
        .as_primitive::<Int64Type>()
        .clone();
    let conf = b
        .column_by_name("confidence")
        .ok_or_else(|| err("no column confidence"))?
        .as_primitive::<Float64Type>()
        .clone();
    let opt = |a: &lancedb::arrow::arrow_array::StringArray, i: usize| (!a.is_null(i)).then(|| a.value(i).to_string());
    let obj = |s: &str| -> Map<String, Value> {
        serde_json::from_str::<Value>(s)
            .ok()
            .and_then(|v| v.as_object().cloned())
            .unwrap_or_default()
    };
    Ok((0..b.num_rows())
        .map(|i| {
            (
                KgAssertion {
                    assertion_id: id.value(i).to_string(),
                    subject: subject.value(i).to_string(),
                    predicate: predicate.value(i).to_string(),
                    object: object.value(i).to_string(),
                    scope: scope.value(i).to_string(),
                    owner_id: opt(&owner, i),
                    observed_at: observed.value(i).to_string(),
                    valid_from: opt(&from, i),
                    valid_until: opt(&until, i),
                    confidence: (!conf.is_null(i)).then(|| conf.value(i)),
                    provenance: obj(prov.value(i)),
                    attributes: obj(attrs.value(i)),
                },
                seq.value(i),
            )
        })
        .collect())
}

impl KgBackend for LanceKg {
    fn name(&self) -> &'static str {
        "lancedb"
    }

    fn add(&self, rows: Vec<KgRow>, space: Option<String>, dedupe: bool) -> StoreResult<KgAdded> {
        block_on(self.add_async(rows, space, dedupe))
    }

    fn query(&self, q: &KgQuery) -> StoreResult<Vec<KgAssertion>> {
        block_on(self.query_async(q))
    }

    fn count(&self) -> StoreResult<u64> {
        block_on(async {
            let mut n = 0u64;
            for (_, t) in self.tables()? {
                n += t.count_rows(None).await.map_err(err)? as u64;
            }
            Ok(n)
        })
    }

    fn export(&self, offset: usize, limit: usize) -> StoreResult<Vec<(KgRow, Option<String>)>> {
        block_on(self.export_async(offset, limit))
    }
}
