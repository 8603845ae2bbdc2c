//! Bundles shipped inside the binary: listed by `/bundles` next to the flows dir's, unless a file
//! there has the same id and version (a file wins, so an operator can replace one).
//!
//! `basic-agent` is our own authoring in the upstream `.flow` format (sources and their generator
//! under `builtin/basic-agent/`): the same bundle id, entrypoint interface (`abstractcode.agent.v1`)
//! and output pins (`response`, `success`, `meta`, `scratchpad`) as upstream's. Its provider/model
//! pins default to the gateway's own text default: the bundled local model unless an operator set
//! an `input.text` capability default.

use std::io::Write;

use super::bundle::{load_bundle, Bundle, BundleError};

const BASIC_AGENT: &[(&str, &str)] = &[
    ("manifest.json", include_str!("builtin/basic-agent/manifest.json")),
    ("flows/81795ea9.json", include_str!("builtin/basic-agent/flows/81795ea9.json")),
];

fn zip_of(files: &[(&str, &str)]) -> Result<Vec<u8>, BundleError> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, text) in files {
        w.start_file(*name, opts).map_err(|e| BundleError::BadZip(e.to_string()))?;
        w.write_all(text.as_bytes()).map_err(|e| BundleError::BadZip(e.to_string()))?;
    }
    Ok(w.finish().map_err(|e| BundleError::BadZip(e.to_string()))?.into_inner())
}

/// The built-in bundles, parsed by the same loader as uploaded ones.
pub fn bundles() -> Vec<Result<Bundle, BundleError>> {
    vec![zip_of(BASIC_AGENT).and_then(|bytes| load_bundle(&bytes, None))]
}

#[cfg(test)]
mod tests {
    #[test]
    fn basic_agent_loads_with_the_upstream_interface() {
        let b = super::bundles().remove(0).expect("basic-agent loads");
        assert_eq!(b.id, "basic-agent");
        let flow = b.flows.values().next().expect("one flow");
        assert!(flow.nodes.values().any(|n| n.kind == "agent"));
    }
}
