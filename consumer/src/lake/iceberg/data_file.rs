//! A written Parquet file as an Iceberg data file: its partition tuple, row
//! count, size and the per-column metrics readers prune on (sizes, value and
//! null counts, lower and upper bounds), read from the file's own footer by
//! the field ids the file carries.

use std::collections::HashMap;
use std::sync::Arc;

use iceberg::spec::{
    DataContentType, DataFile, DataFileBuilder, DataFileFormat, Datum, PrimitiveType, Schema as IcebergSchema, Struct,
    Type,
};
use parquet::file::metadata::ParquetMetaData;
use parquet::file::statistics::Statistics;

use super::spec::{PartitionMapping, SpecError};

/// A Parquet file written into the table's location, not yet committed.
#[derive(Debug, Clone)]
pub struct WrittenFile {
    /// Its full path (`s3://bucket/lake/data/year=2026/.../x.parquet`, `file:///...`).
    pub path: String,
    /// The rendered partition folder it was written under.
    pub folder: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// Its footer.
    pub footer: Arc<ParquetMetaData>,
}

/// The Iceberg data file entry of `file`, for the table's default spec.
pub fn data_file(
    file: &WrittenFile,
    mapping: &PartitionMapping,
    spec_id: i32,
    schema: &IcebergSchema,
) -> Result<DataFile, SpecError> {
    let partition = Struct::from_iter(mapping.partition_of(&file.folder)?);
    let mut sizes: HashMap<i32, u64> = HashMap::new();
    let mut values: HashMap<i32, u64> = HashMap::new();
    let mut nulls: HashMap<i32, u64> = HashMap::new();
    let mut lower: HashMap<i32, Datum> = HashMap::new();
    let mut upper: HashMap<i32, Datum> = HashMap::new();
    for group in file.footer.row_groups() {
        for chunk in group.columns() {
            let descr = chunk.column_descr();
            let info = descr.self_type().get_basic_info();
            if !info.has_id() {
                continue;
            }
            let id = info.id();
            *sizes.entry(id).or_default() += chunk.compressed_size().max(0) as u64;
            *values.entry(id).or_default() += chunk.num_values().max(0) as u64;
            let Some(stats) = chunk.statistics() else { continue };
            if let Some(n) = stats.null_count_opt() {
                *nulls.entry(id).or_default() += n;
            }
            // Bounds only for columns outside lists and maps, as Iceberg
            // writers keep them; a reader prunes on top-level values.
            if descr.max_rep_level() > 0 {
                continue;
            }
            let Some(Type::Primitive(ty)) = schema.field_by_id(id).map(|f| f.field_type.as_ref().clone()) else {
                continue;
            };
            if let Some(min) = bound(&ty, stats, true) {
                merge(&mut lower, id, min, true);
            }
            if let Some(max) = bound(&ty, stats, false) {
                merge(&mut upper, id, max, false);
            }
        }
    }
    let mut builder = DataFileBuilder::default();
    builder
        .content(DataContentType::Data)
        .file_path(file.path.clone())
        .file_format(DataFileFormat::Parquet)
        .partition(partition)
        .partition_spec_id(spec_id)
        .record_count(file.footer.file_metadata().num_rows().max(0) as u64)
        .file_size_in_bytes(file.bytes)
        .column_sizes(sizes)
        .value_counts(values)
        .null_value_counts(nulls)
        .lower_bounds(lower)
        .upper_bounds(upper)
        .split_offsets(Some(file.footer.row_groups().iter().filter_map(|g| g.file_offset()).collect()));
    builder.build().map_err(|e| SpecError(format!("data file {}: {e}", file.path)))
}

fn merge(bounds: &mut HashMap<i32, Datum>, id: i32, value: Datum, lower: bool) {
    match bounds.get(&id) {
        Some(old) if (lower && *old <= value) || (!lower && *old >= value) => {}
        _ => {
            bounds.insert(id, value);
        }
    }
}

/// A column chunk's exact minimum (or maximum) as an Iceberg value of `ty`.
/// Truncated string statistics are still a valid lower bound, never an
/// upper one; types without a bound here (decimals) are left out, which
/// only means readers do not prune on them.
fn bound(ty: &PrimitiveType, stats: &Statistics, lower: bool) -> Option<Datum> {
    let exact = if lower { stats.min_is_exact() } else { stats.max_is_exact() };
    match (ty, stats) {
        (PrimitiveType::Boolean, Statistics::Boolean(s)) => {
            pick(lower, s.min_opt(), s.max_opt()).map(|v| Datum::bool(*v))
        }
        (PrimitiveType::Int, Statistics::Int32(s)) => pick(lower, s.min_opt(), s.max_opt()).map(|v| Datum::int(*v)),
        (PrimitiveType::Date, Statistics::Int32(s)) => pick(lower, s.min_opt(), s.max_opt()).map(|v| Datum::date(*v)),
        (PrimitiveType::Long, Statistics::Int64(s)) => pick(lower, s.min_opt(), s.max_opt()).map(|v| Datum::long(*v)),
        (PrimitiveType::Timestamptz, Statistics::Int64(s)) => {
            pick(lower, s.min_opt(), s.max_opt()).map(|v| Datum::timestamptz_micros(*v))
        }
        (PrimitiveType::Float, Statistics::Float(s)) => {
            pick(lower, s.min_opt(), s.max_opt()).filter(|v| !v.is_nan()).map(|v| Datum::float(*v))
        }
        (PrimitiveType::Double, Statistics::Double(s)) => {
            pick(lower, s.min_opt(), s.max_opt()).filter(|v| !v.is_nan()).map(|v| Datum::double(*v))
        }
        (PrimitiveType::String, Statistics::ByteArray(s)) if exact || lower => {
            let v = pick(lower, s.min_opt(), s.max_opt())?;
            std::str::from_utf8(v.data()).ok().map(Datum::string)
        }
        _ => None,
    }
}

fn pick<T>(lower: bool, min: Option<T>, max: Option<T>) -> Option<T> {
    if lower { min } else { max }
}
