//! Writes the CRD YAML: `crdgen` prints all CRDs; `crdgen --write DIR` writes one file per CRD.

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => {
            for (_, yaml) in kubelvs_crds::crd_yaml_files() {
                print!("---\n{yaml}");
            }
            Ok(())
        }
        [flag, dir] if flag == "--write" => {
            let dir = PathBuf::from(dir);
            std::fs::create_dir_all(&dir)?;
            for (file, yaml) in kubelvs_crds::crd_yaml_files() {
                std::fs::write(dir.join(file), yaml)?;
            }
            Ok(())
        }
        _ => {
            eprintln!("usage: crdgen [--write DIR]");
            std::process::exit(2);
        }
    }
}
