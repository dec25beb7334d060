//! learnsync's gRPC API, generated from `proto/learnsync/v1/*.proto` at build time.
//!
//! Layout:
//! - [`v1`]: messages, enums, `sync_service_client` and `sync_service_server`.
//! - [`mapping`]: a `Mapping` message and its JSON document, both ways.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, for server reflection.

/// The `learnsync.v1` package.
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("learnsync.v1");
}

pub mod mapping;

/// The encoded `FileDescriptorSet` of every learnsync proto file (with its imports), served by
/// gRPC reflection so that grpcurl and generic clients can call the API without the files.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/learnsync_descriptor.bin"));
