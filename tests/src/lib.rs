//! Test support for privatelink: network namespaces, the lab topology and its tools (the
//! GWLB test appliance, the lab's own XDP programs), and a runner that feeds frames
//! through the loaded XDP program (BPF_PROG_TEST_RUN).

pub mod apidaemon;
pub mod appliance;
pub mod dig;
pub mod dnsbench;
pub mod dual;
pub mod etcd;
pub mod fleetlab;
pub mod frames;
pub mod gwlb;
pub mod lab;
pub mod netns;
pub mod reference;
pub mod scale;
pub mod scapy;
pub mod slotrace;
pub mod testrun;
pub mod throughput;
