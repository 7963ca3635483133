//! What herd's benchmark programs (`herd-bench`, `stampede`) share: [`sections`], each
//! program's own section of docs/benchmarks.md.

pub mod sections;
