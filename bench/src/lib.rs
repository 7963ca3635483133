//! What herd's benchmark programs (`herd-bench`, `stampede`) share: [`sections`], each
//! program's own section of docs/benchmarks.md, and [`figures`], the median and the machine
//! line both print.

pub mod figures;
pub mod sections;
