//! Rebuilds when a migration is added (`sqlx::migrate!` embeds the files at
//! compile time, and cargo does not watch the directory by itself), and
//! compiles the provider catalog into the binary: `providers/*.toml`
//! become `BUILT_IN` in `$OUT_DIR/built_in_providers.rs`.
use std::fmt::Write as _;

fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=providers");
    let mut files: Vec<String> = std::fs::read_dir("providers")
        .expect("the providers directory")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".toml"))
        .collect();
    files.sort();
    let mut code = String::from(
        "/// The provider files compiled in: (file name, text).\npub const BUILT_IN: &[(&str, &str)] = &[\n",
    );
    for name in &files {
        writeln!(
            code,
            "    ({name:?}, include_str!(concat!(env!(\"CARGO_MANIFEST_DIR\"), \"/providers/{name}\"))),"
        )
        .expect("writing to a string");
    }
    code.push_str("];\n");
    let out =
        std::path::Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("built_in_providers.rs");
    std::fs::write(out, code).expect("OUT_DIR is writable");
}
