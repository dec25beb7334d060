//! Compiles `learnsync/v1/*.proto` with protox (no system `protoc`) and generates the tonic
//! client and server, plus the file descriptor set that server reflection serves.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["learnsync/v1/sync.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["."])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("learnsync_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Maps in a request encode in key order, so a retry's digest (the idempotency key's)
        // is the first request's: a HashMap would encode its entries in a random order.
        .btree_map(".learnsync.v1.Mapping.entities")
        .btree_map(".learnsync.v1.FieldMapping.values")
        .compile_fds(descriptors)?;
    Ok(())
}
