//! Simulated tmem guest, workload and load generator.

fn main() {}
