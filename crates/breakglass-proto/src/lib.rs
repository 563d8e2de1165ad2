//! Generated code for the protobuf messages in `proto/`, and nothing else.
//!
//! Every other crate depends on this one for the wire types; nobody else
//! runs protoc. The messages are documented in the `.proto` files and in the
//! docs/BUS.md.

/// Version 1 of the breakglass events and APIs.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/breakglass.v1.rs"));
}

/// The encoded `FileDescriptorSet` of every `.proto` file, for gRPC server
/// reflection (so `grpcurl` works without the `.proto` files).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/breakglass_descriptor.bin"));
