//! Reading the configuration reference (`docs/configuration.md`) and the keys
//! a serde config type accepts, for the consumer's and the producer's tests
//! that keep the two in step both ways.

/// The fenced TOML block after `<!-- config-reference: {file} -->` in `doc`.
pub fn reference_block(doc: &str, file: &str) -> String {
    let marker = format!("<!-- config-reference: {file} -->");
    let at = doc.find(&marker).unwrap_or_else(|| panic!("docs/configuration.md has no `{marker}`"));
    let rest = &doc[at + marker.len()..];
    let start = rest.find("```toml\n").expect("a ```toml block after the marker") + "```toml\n".len();
    let end = rest[start..].find("\n```").expect("the block's closing fence");
    rest[start..=start + end].to_string()
}

/// The block with its `# key = value` lines (documented keys without a
/// default) uncommented, so every documented key is set.
pub fn every_key(block: &str) -> String {
    let commented_key = |line: &str| {
        let rest = line.strip_prefix("# ")?;
        let (key, _) = rest.split_once(" = ")?;
        (!key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')).then_some(rest.to_string())
    };
    block.lines().map(|l| commented_key(l).unwrap_or_else(|| l.to_string())).collect::<Vec<_>>().join("\n")
}

/// Asserts that every key `sections` accepts (section name, `""` for the
/// top level, and its serde names) is in the `documented` table, and that
/// every documented table but those in `other_tables` is one of `sections`.
pub fn assert_every_key_documented(
    file: &str,
    documented: &toml::Table,
    sections: &[(&str, &[&str])],
    other_tables: &[&str],
) {
    for (key, value) in documented {
        if value.is_table() && !other_tables.contains(&key.as_str()) {
            assert!(sections.iter().any(|(s, _)| s == key), "[{key}]: add its struct to this test");
        }
    }
    for (section, fields) in sections {
        let table = match *section {
            "" => documented,
            s => documented[s].as_table().unwrap_or_else(|| panic!("[{s}] is not documented")),
        };
        let dot = if section.is_empty() { "" } else { "." };
        for field in *fields {
            assert!(
                table.contains_key(*field),
                "`{section}{dot}{field}` is a key of {file} missing from docs/configuration.md"
            );
        }
    }
}

/// The field names of a serde struct, or the variant names of an enum, as
/// its `Deserialize` implementation hands them to a deserializer that stops
/// there.
pub fn serde_names<T: serde::de::DeserializeOwned>() -> &'static [&'static str] {
    struct Probe<'a>(&'a mut &'static [&'static str]);
    impl<'de> serde::Deserializer<'de> for Probe<'_> {
        type Error = serde::de::value::Error;
        fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(serde::de::Error::custom("neither a struct nor an enum"))
        }
        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _: &'static str,
            names: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = names;
            Err(serde::de::Error::custom("names recorded"))
        }
        fn deserialize_enum<V: serde::de::Visitor<'de>>(
            self,
            name: &'static str,
            names: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, Self::Error> {
            self.deserialize_struct(name, names, visitor)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
            unit_struct newtype_struct seq tuple tuple_struct map identifier ignored_any
        }
    }
    let mut names: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut names));
    assert!(!names.is_empty(), "{} has no names", std::any::type_name::<T>());
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_is_found_by_its_marker_and_commented_keys_are_set() {
        let doc = "x\n<!-- config-reference: a.toml -->\n```toml\nk = 1\n# opt = \"v\"\n# a comment\n```\n";
        let block = reference_block(doc, "a.toml");
        assert_eq!(block, "k = 1\n# opt = \"v\"\n# a comment\n");
        assert_eq!(every_key(&block), "k = 1\nopt = \"v\"\n# a comment");
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        struct S {
            k: u32,
            opt: Option<String>,
        }
        assert_eq!(serde_names::<S>(), ["k", "opt"]);
    }
}
