//! What the worker writes into the lake, apart from the shard protocol:
//! batches and their flush policy (`batch`), schema versions and their
//! evolution (`evolve`), schema inference at first start (`infer`) and the
//! Glue catalog registrar (`catalog`), and the lake as an Iceberg table
//! (`iceberg`).

pub mod batch;
pub mod catalog;
pub mod evolve;
pub mod iceberg;
pub mod infer;
