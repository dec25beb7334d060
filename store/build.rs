//! Rebuilds the store when a migration is added or changed: refinery's `embed_migrations!` reads
//! `../migrations` at compile time but does not tell cargo to watch it.

fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
