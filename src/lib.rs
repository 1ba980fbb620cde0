//! vm-service: a node service that runs ephemeral QEMU VMs behind a REST + WebSocket API.
//! Layers, arrows one way: `api` → `manager` → drivers (`qemu`, `guest`, `catalog`);
//! `cli` is a client of the HTTP API only.
pub mod api;
pub mod catalog;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod doctor;
pub mod guest;
pub mod manager;
pub mod model;
pub mod qemu;
pub mod serve;
pub mod util;
