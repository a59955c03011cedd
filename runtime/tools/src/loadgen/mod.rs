//! The load generator behind `pagedrt bench serve`: any OpenAI-compatible server, measured
//! from the stream as a client sees it (TTFT, TPOT, every ITL, end-to-end latency).

pub mod arrivals;
pub mod dataset;
pub mod http;
pub mod report;
pub mod run;
pub mod sse;
