//! Schema versions and the fleet's version protocol: unit tests, and a
//! property test that drives workers through random interleavings of
//! storing a version, updating the table, table outages and kills, and
//! checks that they converge.

use std::sync::atomic::{AtomicBool, Ordering};

use proptest::prelude::*;

use super::*;

fn column(name: &str, ty: &str) -> Column {
    Column { name: name.into(), ty: ty.parse().unwrap(), required: false }
}

fn base() -> TableSpec {
    TableSpec {
        schema: Arc::new(Schema::parse("[[columns]]\nname = \"id\"\ntype = \"bigint\"\n", false).unwrap()),
        template: shardlake::partition::PartitionTemplate::parse("year=!{timestamp:yyyy}/").unwrap(),
        time_source: shardlake::partition::TimeSource::Arrival,
        unknown_fields: UnknownFieldPolicy::Evolve,
        max_record_bytes: 1 << 20,
        error_prefix: "errors/".into(),
        writer: Default::default(),
        max_partition_bytes: 512,
        field_ids: None,
    }
}

/// No interval: every attempt may store (the interval is the reader's
/// business, tested there).
const RULES: Rules = Rules { min_records: 1, interval: Duration::ZERO };

fn names(schema: &Schema) -> Vec<&str> {
    schema.columns.iter().map(|c| c.name.as_str()).collect()
}

#[tokio::test]
async fn the_newest_stored_version_is_current_and_older_ones_load_on_demand() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(dir.path().to_str().unwrap(), "app", "events").unwrap();
    let v1 = base().schema.as_ref().clone();
    // Version 2 as stored before deltas (the whole schema), 3 as a delta.
    let v2 = with_columns(&v1, &[column("a", "string")]);
    assert!(store.save_schema(2, &v2.to_toml()).await.unwrap());
    assert!(store.save_schema(3, &encode(3, &[column("b", "double")])).await.unwrap());
    assert!(!store.save_schema(3, &encode(3, &[column("other", "int")])).await.unwrap(), "the first v3 wins");
    let schemas = Schemas::load(base(), RULES, &store, None).await.unwrap();
    let current = schemas.current();
    assert_eq!(current.number, 3);
    assert_eq!(names(&current.spec.schema), ["id", "a", "b"]);
    assert_eq!(*schemas.version(2, &store).await.unwrap().spec.schema, v2);
    assert_eq!(*schemas.version(1, &store).await.unwrap().spec.schema, v1);
    let err = schemas.version(9, &store).await.unwrap_err().to_string();
    assert!(err.contains("schema version 9 is not in"), "{err}");
    assert!(schemas.watch(&current).is_some());
    assert_eq!(latest(&store, &v1).await.unwrap().1, *current.spec.schema);
    // A worker that started before v3 loads it for a replay.
    let late = Schemas::new(base(), RULES);
    assert_eq!(names(&late.version(3, &store).await.unwrap().spec.schema), ["id", "a", "b"]);
}

#[test]
fn a_delta_names_the_version_it_adds_to() {
    let v1 = base().schema.as_ref().clone();
    let text = encode(2, &[column("coupon", "string")]);
    assert!(text.contains("added_to = 1"), "{text}");
    assert_eq!(names(&decode(&v1, 2, &text).unwrap()), ["id", "coupon"]);
    assert!(decode(&v1, 3, &text).unwrap_err().contains("expected 2"));
}

#[test]
fn versions_take_columns_within_every_cap() {
    let v1 = base().schema.as_ref().clone();
    let huge = format!("struct<{}:string>", "k".repeat(MAX_COLUMN_TYPE_CHARS));
    let (fits, never) = fit(&v1, vec![column("a", "int"), column("big", &huge), column("b", "string")]);
    assert_eq!((fits.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), never), (vec!["a", "b"], vec!["big".into()]));
    // The column cap counts the whole schema.
    let mut full = v1.clone();
    full.columns.extend((1..MAX_INFERRED_FIELDS).map(|i| column(&format!("c{i}"), "int")));
    let (fits, never) = fit(&full, vec![column("x", "int"), column("y", "int")]);
    assert!(fits.is_empty() && never == ["x", "y"]);
    // Per version: what does not fit waits for the next one.
    let wide = format!("struct<{}:string>", "k".repeat(MAX_COLUMN_TYPE_CHARS - 20));
    let many: Vec<Column> = (0..20).map(|i| column(&format!("w{i}"), &wide)).collect();
    let (fits, never) = fit(&v1, many);
    assert_eq!(fits.len(), MAX_VERSION_BYTES / (MAX_COLUMN_TYPE_CHARS + 48 - 20 + 2));
    assert!(never.is_empty());
}

/// A Glue table as the protocol sees it, that can be made to fail.
#[derive(Default)]
struct MemTable {
    columns: Mutex<Vec<(String, String)>>,
    failing: AtomicBool,
    /// Only `UpdateTable` fails (reads work).
    failing_updates: AtomicBool,
    updates: std::sync::atomic::AtomicU32,
}

impl SchemaTable for MemTable {
    fn add_columns<'a>(&'a self, schema: &'a Schema) -> BoxFuture<'a, anyhow::Result<bool>> {
        Box::pin(async move {
            let failing = self.failing.load(Ordering::SeqCst) || self.failing_updates.load(Ordering::SeqCst);
            anyhow::ensure!(!failing, "UpdateTable: InternalServiceException");
            let mut columns = self.columns.lock().unwrap();
            let before = columns.len();
            for c in &schema.columns {
                if !columns.iter().any(|(n, _)| n.eq_ignore_ascii_case(&c.name)) {
                    columns.push((c.name.clone(), c.ty.to_string()));
                }
            }
            let updated = columns.len() > before;
            if updated {
                self.updates.fetch_add(1, Ordering::SeqCst);
            }
            Ok(updated)
        })
    }

    fn declared_columns(&self) -> BoxFuture<'_, anyhow::Result<Vec<(String, String)>>> {
        Box::pin(async move {
            anyhow::ensure!(!self.failing.load(Ordering::SeqCst), "GetTable: InternalServiceException");
            Ok(self.columns.lock().unwrap().clone())
        })
    }
}

fn evolution<'a>(schemas: &'a Schemas, store: &'a CheckpointStore, table: &'a MemTable) -> Evolution<'a> {
    Evolution { schemas, store, table: Some(table), crash: None }
}

/// The fleet scenario of issue 25, row 1: A meets f1, then f2; B, still on
/// version 1, then meets f1. B catches up to version 3 instead of checking
/// version 2 against a table that has f2.
#[tokio::test]
async fn a_worker_behind_the_stored_versions_catches_up_instead_of_stalling() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(dir.path().to_str().unwrap(), "app", "events").unwrap();
    let table = MemTable::default();
    let (a, b) = (
        Schemas::load(base(), RULES, &store, None).await.unwrap(),
        Schemas::load(base(), RULES, &store, None).await.unwrap(),
    );
    let added = evolution(&a, &store, &table).add(&[column("f1", "string")]).await.unwrap();
    assert_eq!((added.version.number, added.stored), (2, 1));
    let added = evolution(&a, &store, &table).add(&[column("f2", "string")]).await.unwrap();
    assert_eq!(added.version.number, 3);
    let added = evolution(&b, &store, &table).add(&[column("f1", "string")]).await.unwrap();
    assert_eq!((added.version.number, added.stored), (3, 0), "B adopts version 3, which has f1");
    assert_eq!(names(&b.current().spec.schema), ["id", "f1", "f2"]);
    // A column the table's owners declared keeps their type.
    table.columns.lock().unwrap().push(("region".into(), "varchar(8)".into()));
    let added = evolution(&b, &store, &table).add(&[column("region", "bigint")]).await.unwrap();
    assert_eq!(added.version.spec.schema.columns.last().unwrap().ty.to_string(), "string");
}

/// A worker stores at most one version per `evolve_interval`, whichever of
/// its shards asks; adopting another worker's version is never held back.
#[tokio::test(start_paused = true)]
async fn a_worker_stores_at_most_one_version_per_interval() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(dir.path().to_str().unwrap(), "app", "events").unwrap();
    let table = MemTable::default();
    let rules = Rules { min_records: 1, interval: Duration::from_secs(10) };
    let (a, b) = (
        Schemas::load(base(), rules, &store, None).await.unwrap(),
        Schemas::load(base(), rules, &store, None).await.unwrap(),
    );
    assert!(a.may_store());
    assert_eq!(evolution(&a, &store, &table).add(&[column("f1", "int")]).await.unwrap().stored, 1);
    assert!(!a.may_store());
    let held = evolution(&a, &store, &table).add(&[column("f2", "int")]).await.unwrap();
    assert_eq!((held.version.number, held.stored, held.refused.len()), (2, 0, 0), "f2 waits, it is not refused");
    // Another worker stores f2, and `a` adopts it within its interval.
    assert_eq!(evolution(&b, &store, &table).add(&[column("f2", "int")]).await.unwrap().version.number, 3);
    assert_eq!(evolution(&a, &store, &table).add(&[column("f2", "int")]).await.unwrap().version.number, 3);
    tokio::time::advance(Duration::from_secs(10)).await;
    assert!(a.may_store());
    assert_eq!(evolution(&a, &store, &table).add(&[column("f3", "int")]).await.unwrap().version.number, 4);
}

/// The CI failure of stop 36: a worker's shard stored a version, and while
/// its table update was in flight (or failing) the worker's other shards
/// put the version's fields in `_extra` (the worker had just stored, and the
/// version was not yet current). They must evolve to it and wait instead.
#[tokio::test(start_paused = true)]
async fn a_version_stored_but_not_yet_current_keeps_the_workers_other_shards_evolving() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(dir.path().to_str().unwrap(), "app", "events").unwrap();
    let table = MemTable::default();
    let rules = Rules { min_records: 1, interval: Duration::from_secs(10) };
    let a = Schemas::load(base(), rules, &store, None).await.unwrap();
    assert!(a.evolve_open(1));
    evolution(&a, &store, &table).catch_up().await.unwrap();
    table.failing_updates.store(true, Ordering::SeqCst);
    let err = evolution(&a, &store, &table).add(&[column("coupon", "string")]).await.unwrap_err();
    assert!(err.to_string().contains("UpdateTable"), "{err}");
    assert_eq!((a.current().number, a.may_store()), (1, false), "stored, not current, within the interval");
    assert!(a.evolve_open(1), "a batch of version 1 must ask for the stored version 2, not defer its fields");
    table.failing_updates.store(false, Ordering::SeqCst);
    let added = evolution(&a, &store, &table).add(&[column("coupon", "string")]).await.unwrap();
    assert_eq!((added.version.number, added.stored), (2, 0));
    assert!(a.evolve_open(1));
    assert!(!a.evolve_open(2), "within the interval, fields new to version 2 wait in _extra");
    tokio::time::advance(Duration::from_secs(10)).await;
    assert!(a.evolve_open(2));
}

/// One step of a worker (or the fleet) in the property test.
#[derive(Debug, Clone)]
enum Step {
    /// Worker `w` meets new fields (indices into a small pool) and runs one
    /// attempt of the protocol.
    Meet(usize, Vec<usize>),
    /// Both workers meet fields at once (their futures interleave).
    MeetBoth(Vec<usize>, Vec<usize>),
    /// Worker `w` stores the next version on top of what it knows, then is
    /// killed before the table update (crash point `after_schema_version`).
    StoreThenKill(usize, Vec<usize>),
    /// Worker `w` is killed and restarted (it loads the stored versions).
    Kill(usize),
    /// Worker `w`'s follower runs.
    Follow(usize),
    /// The table fails (or works again).
    TableFails(bool),
}

const POOL: [(&str, &str); 6] =
    [("f0", "string"), ("f1", "bigint"), ("f2", "double"), ("f3", "boolean"), ("f4", "string"), ("F4", "int")];

fn step() -> impl Strategy<Value = Step> {
    let fields = || proptest::collection::vec(0..POOL.len(), 1..3);
    prop_oneof![
        4 => (0..2usize, fields()).prop_map(|(w, f)| Step::Meet(w, f)),
        2 => (fields(), fields()).prop_map(|(a, b)| Step::MeetBoth(a, b)),
        1 => (0..2usize, fields()).prop_map(|(w, f)| Step::StoreThenKill(w, f)),
        1 => (0..2usize).prop_map(Step::Kill),
        2 => (0..2usize).prop_map(Step::Follow),
        1 => any::<bool>().prop_map(Step::TableFails),
    ]
}

fn columns_of(fields: &[usize]) -> Vec<Column> {
    fields.iter().map(|i| column(POOL[*i].0, POOL[*i].1)).collect()
}

/// Runs `steps` on two workers sharing one store and one table; then, with
/// the table working, each worker's follower runs once. Returns the
/// workers, and the fields whose protocol attempt succeeded.
async fn run_fleet(steps: &[Step], store: &CheckpointStore, table: &MemTable) -> (Vec<Schemas>, Vec<String>) {
    let mut workers = vec![
        Schemas::load(base(), RULES, store, None).await.unwrap(),
        Schemas::load(base(), RULES, store, None).await.unwrap(),
    ];
    let mut met = Vec::new();
    for step in steps {
        match step {
            Step::Meet(w, f) => {
                if evolution(&workers[*w], store, table).add(&columns_of(f)).await.is_ok() {
                    met.extend(f.iter().map(|i| POOL[*i].0.to_string()));
                }
            }
            Step::MeetBoth(a, b) => {
                let (ea, eb) = (evolution(&workers[0], store, table), evolution(&workers[1], store, table));
                let (ca, cb) = (columns_of(a), columns_of(b));
                let (ra, rb) = futures::join!(ea.add(&ca), eb.add(&cb));
                for (r, f) in [(ra, a), (rb, b)] {
                    if r.is_ok() {
                        met.extend(f.iter().map(|i| POOL[*i].0.to_string()));
                    }
                }
            }
            Step::StoreThenKill(w, f) => {
                let newest = workers[*w].newest(store).await.unwrap();
                let (fits, _) = fit(
                    &newest.spec.schema,
                    columns_of(f)
                        .into_iter()
                        .filter(|c| !newest.spec.schema.columns.iter().any(|o| o.name.eq_ignore_ascii_case(&c.name)))
                        .collect(),
                );
                if !fits.is_empty() {
                    store.save_schema(newest.number + 1, &encode(newest.number + 1, &fits)).await.unwrap();
                }
                workers[*w] = Schemas::load(base(), RULES, store, None).await.unwrap();
            }
            Step::Kill(w) => workers[*w] = Schemas::load(base(), RULES, store, None).await.unwrap(),
            Step::Follow(w) => {
                let _ = evolution(&workers[*w], store, table).catch_up().await;
            }
            Step::TableFails(on) => table.failing.store(*on, Ordering::SeqCst),
        }
    }
    table.failing.store(false, Ordering::SeqCst);
    for w in &workers {
        evolution(w, store, table).catch_up().await.unwrap();
    }
    (workers, met)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Whatever the interleaving: the stored versions form one chain of
    /// deltas with unique names, every worker ends on the newest version
    /// after one follower pass, the table has every column of it, and every
    /// field whose attempt succeeded is a column.
    #[test]
    fn a_fleet_converges_on_the_newest_version_whatever_the_interleaving(steps in proptest::collection::vec(step(), 1..24)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let store = CheckpointStore::open(dir.path().to_str().unwrap(), "app", "events").unwrap();
            let table = MemTable::default();
            let (workers, met) = run_fleet(&steps, &store, &table).await;
            let (number, newest) = latest(&store, &base().schema).await.unwrap();
            newest.validate().unwrap();
            for w in &workers {
                let current = w.current();
                prop_assert_eq!(current.number, number);
                prop_assert_eq!(current.spec.schema.as_ref(), &newest);
            }
            let table_columns = table.columns.lock().unwrap().clone();
            for c in &newest.columns {
                prop_assert!(table_columns.iter().any(|(n, _)| n == &c.name), "{} not in the table", c.name);
            }
            prop_assert_eq!(table_columns.len(), newest.columns.len(), "no column twice in the table");
            for name in &met {
                prop_assert!(newest.columns.iter().any(|c| c.name.eq_ignore_ascii_case(name)), "{} was met", name);
            }
            for n in 2..=number {
                let text = store.load_schema(n).await.unwrap().unwrap();
                prop_assert!(text.contains(&format!("added_to = {}", n - 1)), "version {} is a delta", n);
            }
            Ok(())
        })?;
    }
}
