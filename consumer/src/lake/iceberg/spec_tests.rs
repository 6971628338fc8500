use super::*;

fn schema() -> Schema {
    Schema::parse(
        r#"
[[columns]]
name = "event_id"
type = "string"
required = true
[[columns]]
name = "ts"
type = "timestamp"
[[columns]]
name = "country"
type = "string"
[[columns]]
name = "n"
type = "int"
[[columns]]
name = "device"
type = "struct<os:string,tags:array<string>>"
[[columns]]
name = "attrs"
type = "map<string,bigint>"
"#,
        false,
    )
    .unwrap()
}

fn mapping(template: &str, time_field: Option<&str>) -> Result<PartitionMapping, SpecError> {
    PartitionMapping::new(&PartitionTemplate::parse(template).unwrap(), time_field, &schema())
}

#[test]
fn the_default_template_is_hour_of_the_time_field() {
    let m = mapping(shardlake::partition::DEFAULT_TEMPLATE, Some("ts")).unwrap();
    let table = iceberg_schema(&schema(), true).unwrap();
    let spec = m.spec(&table, Some("ts")).unwrap();
    assert_eq!(spec.fields().len(), 1);
    assert_eq!(spec.fields()[0].transform, Transform::Hour);
    assert_eq!(spec.fields()[0].name, "ts_hour");
    assert_eq!(spec.fields()[0].source_id, table.field_by_name("ts").unwrap().id);
    // 2026-11-22T07 is 20,779 days and 7 hours after 1970-01-01.
    let tuple = m.partition_of("year=2026/month=11/day=22/hour=07/").unwrap();
    assert_eq!(tuple, vec![Some(Literal::int(20_779 * 24 + 7))]);
    // A record without a time lands in the default partition: null.
    let missing = "year=__HIVE_DEFAULT_PARTITION__/month=__HIVE_DEFAULT_PARTITION__/\
                   day=__HIVE_DEFAULT_PARTITION__/hour=__HIVE_DEFAULT_PARTITION__/";
    assert_eq!(m.partition_of(missing).unwrap(), vec![None]);
}

#[test]
fn coarser_templates_and_identity_fields_map_to_their_transforms() {
    let m = mapping("dt=!{timestamp:yyyy-MM-dd}/country=!{field:country}/", Some("ts")).unwrap();
    let table = iceberg_schema(&schema(), false).unwrap();
    let spec = m.spec(&table, Some("ts")).unwrap();
    let transforms: Vec<_> = spec.fields().iter().map(|f| (f.name.as_str(), f.transform)).collect();
    assert_eq!(transforms, [("ts_day", Transform::Day), ("country", Transform::Identity)]);
    let tuple = m.partition_of("dt=2026-11-22/country=DE/").unwrap();
    assert_eq!(tuple, vec![Some(Literal::int(20_779)), Some(Literal::string("DE"))]);
    let tuple = m.partition_of("dt=2026-11-22/country=__HIVE_DEFAULT_PARTITION__/").unwrap();
    assert_eq!(tuple, vec![Some(Literal::int(20_779)), None]);

    let m = mapping("year=!{timestamp:yyyy}/month=!{timestamp:MM}/", Some("ts")).unwrap();
    assert_eq!(m.partition_of("year=1971/month=02/").unwrap(), vec![Some(Literal::int(13))]);
    let m = mapping("n=!{field:n}/", None).unwrap();
    assert_eq!(m.partition_of("n=-5/").unwrap(), vec![Some(Literal::int(-5))]);
    assert_eq!(mapping("", None).unwrap().partition_of("").unwrap(), vec![]);
}

#[test]
fn templates_without_an_iceberg_form_are_config_errors_naming_the_fix() {
    let cases = [
        ("year=!{timestamp:yyyy}/minute=!{timestamp:mm}/", Some("ts"), "`mm`"),
        ("!{timestamp:yyyy}/", Some("ts"), "whole `name=!{...}` folder"),
        ("year=!{timestamp:yyyy}/day=!{timestamp:dd}/", Some("ts"), "without gaps"),
        ("year=!{timestamp:yyyy}/", None, "set time_field"),
        ("year=!{timestamp:yyyy}/", Some("country"), "declare it as timestamp"),
        ("year=!{timestamp:yyyy}/", Some("nope"), "not a column"),
        ("k=!{field:missing}/", None, "add `missing` to the schema"),
        ("k=!{field:device}/", None, "must be string, int, bigint or boolean"),
    ];
    for (template, time_field, want) in cases {
        let e = mapping(template, time_field).unwrap_err().to_string();
        assert!(e.contains(want), "{template}: {e}");
    }
}

#[test]
fn field_ids_come_from_the_table_by_name_at_every_level() {
    let ours = schema();
    let table = iceberg_schema(&ours, true).unwrap();
    let ids = field_ids(&table, &ours, true).unwrap();
    assert_eq!(ids.len(), ours.columns.len() + 1);
    let device = &ids[4];
    assert_eq!(device.id, table.field_by_name("device").unwrap().id);
    let tags = &device.children[1].1;
    assert_eq!(tags.id, table.field_by_name("device.tags").unwrap().id);
    assert_eq!(tags.children[0].0, "element");
    assert_eq!(tags.children[0].1.id, table.field_by_name("device.tags.element").unwrap().id);
    let attrs = &ids[5];
    assert_eq!(attrs.children[1].1.id, table.field_by_name("attrs.value").unwrap().id);
    assert_eq!(ids[6].id, table.field_by_name(EXTRA_COLUMN).unwrap().id);

    // A column the table lacks, or of another type, is named.
    let mut other = ours.clone();
    other.columns[3].ty = HiveType::String;
    let e = field_ids(&table, &other, true).unwrap_err().to_string();
    assert!(e.contains("column `n` is int in the Iceberg table but `string`"), "{e}");
    let e = field_ids(&iceberg_schema(&ours, false).unwrap(), &ours, true).unwrap_err().to_string();
    assert!(e.contains("no `_extra` column"), "{e}");
}
