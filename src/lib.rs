pub mod egress;
pub mod probes;
