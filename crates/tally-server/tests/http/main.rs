//! The HTTP API, driven through the router without a socket: one integration-test binary.

mod auth;
mod campaigns;
mod documented;
mod errors;
mod feed;
mod ledgers;
mod malformed;
mod observability;
mod offline;
mod operations;
mod properties;
mod semantics;
mod status;
mod support;
