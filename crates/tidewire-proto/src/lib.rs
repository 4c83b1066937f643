//! Generated code for the `tidewire.v1` gRPC services. No logic lives here: convert to core types
//! at the service edge.
#![forbid(unsafe_code)]

/// `tidewire.v1`: Federation, Publisher, Subscriber and Admin.
pub mod v1 {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("tidewire.v1");
}

/// The encoded file descriptor set, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tidewire_descriptor");
