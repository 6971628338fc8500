//! `shardlake-consumer` as a library: the modules of the worker binary
//! (`src/main.rs` is only its command line). The commands are public for the
//! binary; [`fuzzing`] exposes internals to the fuzz targets in `fuzz/`. The
//! rest is private to the crate.

/// `println!` for command output that ends the process quietly when stdout
/// is closed early (`convert ... | head -1`), as a Unix tool killed by
/// SIGPIPE would (exit status 141), where `println!` panics.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` counterpart of `outln!`.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::write_stdout(format_args!($($arg)*))
    };
}

/// Writes command output; see `outln!`.
fn write_stdout(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if let Err(e) = std::io::stdout().lock().write_fmt(args) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(141);
        }
        eprintln!("error: writing to stdout: {e}");
        std::process::exit(1);
    }
}

pub mod checkpoint;
pub mod cli;
mod config;
mod crash;
mod fleet;
mod kinesis;
mod lake;
mod ops;
mod retry;
mod scheduler;
mod shard;
pub mod stop;

/// The lake as an Apache Iceberg table: its spec, catalog and appends.
pub use lake::iceberg;

/// Entry points for the fuzz targets (`fuzz/`); not a stable API.
pub mod fuzzing {
    use std::ops::Range;

    /// One record decoded from a GetRecords body.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct DecodedRecord {
        /// The base64-decoded `Data`.
        pub data: Vec<u8>,
        /// `SequenceNumber`.
        pub sequence: String,
        /// `ApproximateArrivalTimestamp`, epoch millis.
        pub arrival_ms: i64,
    }

    /// What the GetRecords body decoder made of a body.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct DecodedPage {
        /// The records, in order.
        pub records: Vec<DecodedRecord>,
        /// Payload bytes, as the decoder counts them.
        pub bytes: usize,
        /// Where the `Records` array is in the body, brackets included.
        pub records_span: Range<usize>,
    }

    /// Runs the consumer's own GetRecords body decoder (the one that replaces
    /// the SDK's for successful responses) on `body`; `Err` holds its reason
    /// for leaving the body to the SDK.
    pub fn decode_get_records_body(body: &[u8]) -> Result<DecodedPage, String> {
        let mut arena = crate::kinesis::get_records::Arena::default();
        let page = crate::kinesis::get_records::decode(body, &mut arena).map_err(|e| e.to_string())?;
        Ok(DecodedPage {
            records: page
                .records
                .iter()
                .map(|r| DecodedRecord {
                    data: r.data.to_vec(),
                    sequence: r.sequence.to_string(),
                    arrival_ms: r.arrival_ms,
                })
                .collect(),
            bytes: page.bytes,
            records_span: page.records_span,
        })
    }
}
