//! The reference event generator: deterministic clickstream / sales events
//! (~520 bytes of JSON each) used by the demo, the tests, the benchmarks and
//! the load-test harness. The same seed and arguments give the same bytes.
//!
//! Shape: `event_id` (unique), `event_type` (10 values, skewed), `user_id`,
//! `session_id`, `ts` (RFC 3339 UTC with millis, roughly ordered over the
//! window with ±10 min jitter and ~1% up to 2 h late), `amount`, `quantity`,
//! `currency`, `country` (nullable), `device` {os, browser, version},
//! `tags` (0–3 strings), `properties` (keys missing at random), `is_test`.

use std::io::Write;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::time::format_rfc3339_millis;

const EVENT_TYPES: [&str; 10] = [
    "page_view",
    "click",
    "search",
    "add_to_cart",
    "remove_from_cart",
    "checkout_start",
    "purchase",
    "login",
    "logout",
    "signup",
];
const EVENT_WEIGHTS: [u32; 10] = [35, 20, 10, 8, 3, 5, 6, 6, 4, 3];
const CURRENCIES: [&str; 8] = ["USD", "EUR", "GBP", "JPY", "CAD", "AUD", "CHF", "SEK"];
const COUNTRIES: [&str; 30] = [
    "US", "DE", "GB", "FR", "JP", "CA", "AU", "NL", "SE", "ES", "IT", "BR", "MX", "IN", "PL", "CH", "AT", "BE", "DK",
    "NO", "FI", "IE", "PT", "NZ", "SG", "KR", "ZA", "AR", "CL", "CZ",
];
const OS: [&str; 6] = ["iOS", "Android", "Windows", "macOS", "Linux", "ChromeOS"];
const BROWSERS: [&str; 6] = ["Chrome", "Safari", "Firefox", "Edge", "Samsung Internet", "Opera"];
const TAGS: [&str; 16] = [
    "promo",
    "mobile",
    "returning",
    "new_user",
    "newsletter",
    "ab_test_a",
    "ab_test_b",
    "vip",
    "cart_recovery",
    "organic",
    "paid",
    "social",
    "email",
    "affiliate",
    "holiday_sale",
    "clearance",
];
const PAGES: [&str; 13] = [
    "/",
    "/home",
    "/search",
    "/cart",
    "/checkout",
    "/account",
    "/help",
    "/category/shoes",
    "/category/electronics",
    "/category/books",
    "/category/home-garden",
    "/category/toys",
    "/deals/today",
];
const REFERRERS: [&str; 8] = [
    "https://www.google.com/",
    "https://www.bing.com/",
    "https://duckduckgo.com/",
    "https://www.facebook.com/",
    "https://t.co/",
    "https://news.ycombinator.com/",
    "https://www.reddit.com/r/deals/",
    "https://mail.example.com/",
];
const CAMPAIGNS: [&str; 6] =
    ["spring_sale_2024", "retarget_q1", "brand_search", "newsletter_w11", "influencer_collab", "black_friday_preview"];
const WORDS: [&str; 25] = [
    "red",
    "running",
    "shoes",
    "wireless",
    "headphones",
    "kids",
    "lego",
    "coffee",
    "maker",
    "organic",
    "tea",
    "desk",
    "lamp",
    "usb",
    "cable",
    "winter",
    "jacket",
    "garden",
    "hose",
    "phone",
    "case",
    "laptop",
    "stand",
    "yoga",
    "mat",
];
const USER_AGENTS: [&str; 5] = [
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_3 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.3 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/122.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2 Safari/605.1.15",
    "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/121.0.6167.178 Mobile Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:123.0) Gecko/20100101 Firefox/123.0",
];

/// 2024-03-15T00:00:00Z, the default window start (as in the shared reference).
pub const DEFAULT_START_MS: i64 = 1_710_460_800_000;

/// Generator settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenOptions {
    /// Events to write.
    pub count: u64,
    /// Random seed.
    pub seed: u64,
    /// Hours the timestamps spread over (one hour partition each).
    pub hours: u32,
    /// Window start, epoch ms.
    pub start_ms: i64,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions { count: 1000, seed: 42, hours: 48, start_ms: DEFAULT_START_MS }
    }
}

fn pick<'a, R: Rng>(rng: &mut R, items: &[&'a str]) -> &'a str {
    items[rng.random_range(0..items.len())]
}

/// Appends a JSON string literal. Generated text is ASCII without control
/// characters, but quotes and backslashes are escaped all the same.
fn push_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            _ => out.push(c),
        }
    }
    out.push('"');
}

fn push_opt(out: &mut String, s: Option<&str>) {
    match s {
        Some(s) => push_str(out, s),
        None => out.push_str("null"),
    }
}

struct Session {
    user_id: String,
    session_id: String,
    country: Option<&'static str>,
    os: &'static str,
    browser: &'static str,
    version: Option<String>,
    user_agent: &'static str,
}

/// Streams `opts.count` events as JSON Lines into `out`.
pub fn generate(opts: &GenOptions, out: &mut impl Write) -> std::io::Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let span_ms = i64::from(opts.hours.max(1)) * 3_600_000;
    let n = opts.count.max(1) as i64;
    let total_weight: u32 = EVENT_WEIGHTS.iter().sum();
    let mut session: Option<Session> = None;
    let mut line = String::with_capacity(1024);
    for i in 0..opts.count {
        let mut t = opts.start_ms + (i as i64 * span_ms) / n + ((rng.random::<f64>() - 0.5) * 1_200_000.0) as i64;
        if rng.random::<f64>() < 0.01 {
            t -= rng.random_range(0..=7_200_000);
        }
        let t = t.clamp(opts.start_ms, opts.start_ms + span_ms - 1);

        let mut w = rng.random_range(0..total_weight);
        let mut et = EVENT_TYPES[0];
        for (name, weight) in EVENT_TYPES.iter().zip(EVENT_WEIGHTS) {
            if w < weight {
                et = name;
                break;
            }
            w -= weight;
        }
        if session.is_none() || rng.random::<f64>() < 0.15 {
            session = Some(Session {
                user_id: format!("u_{:07}", rng.random_range(1..=250_000)),
                session_id: format!("s_{:016x}", rng.random::<u64>()),
                country: (rng.random::<f64>() > 0.02).then(|| pick(&mut rng, &COUNTRIES)),
                os: pick(&mut rng, &OS),
                browser: pick(&mut rng, &BROWSERS),
                version: (rng.random::<f64>() > 0.05).then(|| {
                    format!(
                        "{}.0.{}.{}",
                        rng.random_range(90..=124),
                        rng.random_range(0..=6000),
                        rng.random_range(0..=200)
                    )
                }),
                user_agent: pick(&mut rng, &USER_AGENTS),
            });
        }
        let s = session.as_ref().expect("set above");

        let money = matches!(et, "purchase" | "add_to_cart" | "remove_from_cart" | "checkout_start");
        let (amount, quantity, currency) = if money || rng.random::<f64>() < 0.1 {
            let amount = ((rng.random::<f64>() * 480.0 + 0.99) * 100.0).round() / 100.0;
            (Some(amount), Some(rng.random_range(1..=12i64)), Some(pick(&mut rng, &CURRENCIES)))
        } else {
            let amount = if rng.random::<f64>() < 0.7 { None } else { Some(0.0) };
            let quantity = if rng.random::<f64>() < 0.5 { None } else { Some(0) };
            (amount, quantity, None)
        };

        line.clear();
        line.push_str("{\"event_id\":");
        push_str(&mut line, &format!("evt_{i:010}_{:012x}", rng.random::<u64>() >> 16));
        line.push_str(",\"event_type\":");
        push_str(&mut line, et);
        line.push_str(",\"user_id\":");
        push_str(&mut line, &s.user_id);
        line.push_str(",\"session_id\":");
        push_str(&mut line, &s.session_id);
        line.push_str(",\"ts\":\"");
        line.push_str(&format_rfc3339_millis(t));
        line.push('"');
        line.push_str(",\"amount\":");
        match amount {
            // Python's json writes 0.0 where Rust's Display writes 0.
            Some(0.0) => line.push_str("0.0"),
            Some(a) => line.push_str(&a.to_string()),
            None => line.push_str("null"),
        }
        line.push_str(",\"quantity\":");
        match quantity {
            Some(q) => line.push_str(&q.to_string()),
            None => line.push_str("null"),
        }
        line.push_str(",\"currency\":");
        push_opt(&mut line, currency);
        line.push_str(",\"country\":");
        push_opt(&mut line, s.country);
        line.push_str(",\"device\":{\"os\":");
        push_str(&mut line, s.os);
        line.push_str(",\"browser\":");
        push_str(&mut line, s.browser);
        line.push_str(",\"version\":");
        push_opt(&mut line, s.version.as_deref());
        line.push_str("},\"tags\":[");
        for k in 0..rng.random_range(0..=3) {
            if k > 0 {
                line.push(',');
            }
            let tag = pick(&mut rng, &TAGS);
            push_str(&mut line, tag);
        }
        line.push_str("],\"properties\":{\"page\":");
        let mut page = pick(&mut rng, &PAGES).to_string();
        if rng.random::<f64>() < 0.3 {
            page.push_str(&format!("?p={}", rng.random_range(1..=40)));
        }
        push_str(&mut line, &page);
        if rng.random::<f64>() < 0.5 {
            line.push_str(",\"referrer\":");
            let r = (rng.random::<f64>() < 0.9).then(|| pick(&mut rng, &REFERRERS));
            push_opt(&mut line, r);
        }
        if rng.random::<f64>() < 0.2 {
            line.push_str(",\"campaign\":");
            let c = pick(&mut rng, &CAMPAIGNS);
            push_str(&mut line, c);
        }
        if et == "search" || rng.random::<f64>() < 0.1 {
            let words: Vec<&str> = (0..rng.random_range(1..=4)).map(|_| pick(&mut rng, &WORDS)).collect();
            line.push_str(",\"search_query\":");
            push_str(&mut line, &words.join(" "));
        }
        if money || rng.random::<f64>() < 0.1 {
            let sku = format!("SKU-{:05}-{}", rng.random_range(0..=99_999), (b'A' + rng.random_range(0..8u8)) as char);
            line.push_str(",\"item_sku\":");
            push_str(&mut line, &sku);
        }
        if et == "purchase" && rng.random::<f64>() < 0.25 {
            line.push_str(",\"coupon\":");
            push_str(&mut line, &format!("SAVE{}", rng.random_range(5..=50)));
        }
        if rng.random::<f64>() < 0.92 {
            line.push_str(",\"user_agent\":");
            push_str(&mut line, s.user_agent);
        }
        line.push_str("},\"is_test\":");
        line.push_str(if rng.random::<f64>() < 0.02 { "true" } else { "false" });
        line.push_str("}\n");
        out.write_all(line.as_bytes())?;
    }
    Ok(())
}

/// The schema TOML matching the generated events (the reference schema).
pub const EVENTS_SCHEMA_TOML: &str = r#"[[columns]]
name = "event_id"
type = "string"
required = true

[[columns]]
name = "event_type"
type = "string"

[[columns]]
name = "user_id"
type = "string"

[[columns]]
name = "session_id"
type = "string"

[[columns]]
name = "ts"
type = "timestamp"

[[columns]]
name = "amount"
type = "double"

[[columns]]
name = "quantity"
type = "bigint"

[[columns]]
name = "currency"
type = "string"

[[columns]]
name = "country"
type = "string"

[[columns]]
name = "device"
type = "struct<os:string,browser:string,version:string>"

[[columns]]
name = "tags"
type = "array<string>"

[[columns]]
name = "properties"
type = "struct<page:string,referrer:string,campaign:string,search_query:string,item_sku:string,coupon:string,user_agent:string>"

[[columns]]
name = "is_test"
type = "boolean"
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Schema;

    fn gen_bytes(opts: GenOptions) -> Vec<u8> {
        let mut out = Vec::new();
        generate(&opts, &mut out).unwrap();
        out
    }

    #[test]
    fn deterministic_for_a_seed() {
        let opts = GenOptions { count: 500, ..GenOptions::default() };
        assert_eq!(gen_bytes(opts), gen_bytes(opts));
        assert_ne!(gen_bytes(opts), gen_bytes(GenOptions { seed: 7, ..opts }));
    }

    #[test]
    fn events_match_the_reference_shape() {
        let opts = GenOptions { count: 20_000, hours: 48, ..GenOptions::default() };
        let out = gen_bytes(opts);
        let lines: Vec<&[u8]> = out.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
        assert_eq!(lines.len(), 20_000);
        let avg = out.len() / lines.len();
        assert!((430..=600).contains(&avg), "average record size {avg}");
        let mut hours = std::collections::BTreeSet::new();
        let mut ids = std::collections::HashSet::new();
        for l in &lines {
            let v: serde_json::Value = serde_json::from_slice(l).unwrap();
            assert!(ids.insert(v["event_id"].as_str().unwrap().to_string()));
            let ms = crate::time::parse_rfc3339_millis(v["ts"].as_str().unwrap()).unwrap();
            assert!((DEFAULT_START_MS..DEFAULT_START_MS + 48 * 3_600_000).contains(&ms));
            hours.insert(ms / 3_600_000);
            assert!(v["device"]["os"].is_string() && v["tags"].is_array() && v["is_test"].is_boolean());
        }
        assert_eq!(hours.len(), 48);
        Schema::parse(EVENTS_SCHEMA_TOML, false).unwrap();
    }
}
