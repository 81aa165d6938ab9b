//! Channel sources. Today: `--channels PATH`, a YAML (multi-document) or JSON file, or a
//! directory of them, holding InMemoryChannel manifests as `kubectl get imc -o yaml` prints them
//! (a `List` of items too). The path is watched (inotify, plus a slow re-read as a safety net for
//! ConfigMap symlink swaps) and every change is applied without a restart.
//!
//! Runs on its own thread: parsing, validation and DNS-free config building never touch a core.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use serde_json::Value;

use crate::channels::{BuildOptions, ChannelSet, FileLoad, Hub};
use crate::imc::{Imc, Source};

/// How often the path is re-read even without a file-system event.
const RESCAN: Duration = Duration::from_secs(5);
/// Events arriving within this window are applied together (editors write in several steps).
const DEBOUNCE: Duration = Duration::from_millis(50);

/// Parses one file's text: YAML documents (JSON is YAML too), each an InMemoryChannel or a
/// `List` of them. Documents of other kinds are skipped with a log line.
pub fn parse_manifests(text: &str, path: &Path) -> Result<Vec<Imc>, String> {
    let mut out = Vec::new();
    let mut docs = Vec::new();
    let is_json = path.extension().is_some_and(|e| e == "json");
    if is_json {
        docs.push(serde_json::from_str::<Value>(text).map_err(|e| format!("invalid JSON: {e}"))?);
    } else {
        for doc in serde_yaml_ng::Deserializer::from_str(text) {
            let v = <Value as serde::Deserialize>::deserialize(doc)
                .map_err(|e| format!("invalid YAML: {e}"))?;
            docs.push(v);
        }
    }
    for (i, doc) in docs.into_iter().enumerate() {
        collect(doc, &mut out, &format!("document {}", i + 1), path)?;
    }
    Ok(out)
}

fn collect(doc: Value, out: &mut Vec<Imc>, at: &str, path: &Path) -> Result<(), String> {
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("");
    match kind {
        _ if doc.is_null() => Ok(()),
        "InMemoryChannel" => {
            let imc: Imc = serde_json::from_value(doc).map_err(|e| format!("{at}: {e}"))?;
            out.push(imc);
            Ok(())
        }
        "List" | "InMemoryChannelList" => {
            let items = match doc.get("items") {
                Some(Value::Array(items)) => items.clone(),
                Some(Value::Null) | None => Vec::new(),
                Some(_) => return Err(format!("{at}: items must be a list")),
            };
            for (j, item) in items.into_iter().enumerate() {
                collect(item, out, &format!("{at}, item {}", j + 1), path)?;
            }
            Ok(())
        }
        "" => Err(format!("{at}: no `kind` (want InMemoryChannel or List)")),
        other => {
            tracing::info!(file = %path.display(), kind = other, "{at}: not an InMemoryChannel, skipped");
            Ok(())
        }
    }
}

/// The files a path stands for: itself, or the YAML/JSON files directly in the directory (hidden
/// entries, such as a ConfigMap's `..data`, are skipped; the symlinks beside them are followed).
fn files_of(path: &Path) -> Result<Vec<PathBuf>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
            !name.starts_with('.') && matches!(ext, "yaml" | "yml" | "json") && p.is_file()
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Reads every file of the path. Returns the loads and a fingerprint of what was read.
pub fn read_path(path: &Path) -> (Vec<FileLoad>, u64) {
    let mut hasher = DefaultHasher::new();
    let files = match files_of(path) {
        Ok(f) => f,
        Err(e) => {
            e.hash(&mut hasher);
            return (
                vec![FileLoad {
                    path: path.to_path_buf(),
                    result: Err(e),
                }],
                hasher.finish(),
            );
        }
    };
    let loads = files
        .into_iter()
        .map(|p| {
            let result = match std::fs::read_to_string(&p) {
                Ok(text) => {
                    text.hash(&mut hasher);
                    parse_manifests(&text, &p)
                }
                Err(e) => Err(format!("cannot read: {e}")),
            };
            p.hash(&mut hasher);
            FileLoad { path: p, result }
        })
        .collect();
    (loads, hasher.finish())
}

/// The file source: loads the path, publishes the set, and keeps watching.
pub struct FileSource {
    path: PathBuf,
    cluster_domain: String,
    namespace_mode: Option<String>,
    hub: Arc<Hub>,
    current: Arc<ChannelSet>,
    published: bool,
    fingerprint: Option<u64>,
}

impl FileSource {
    pub fn new(
        path: PathBuf,
        cluster_domain: String,
        namespace_mode: Option<String>,
        hub: Arc<Hub>,
    ) -> Self {
        FileSource {
            path,
            cluster_domain,
            namespace_mode,
            hub,
            current: Arc::default(),
            published: false,
            fingerprint: None,
        }
    }

    /// Reads the path and publishes a new set if anything changed. Before the first complete
    /// read (every file parsed) nothing is published, so the dispatcher stays not ready (D14).
    pub fn reload(&mut self) {
        let (loads, fp) = read_path(&self.path);
        if self.fingerprint == Some(fp) {
            return;
        }
        self.fingerprint = Some(fp);
        let failed = loads.iter().filter(|l| l.result.is_err()).count();
        let opts = BuildOptions {
            cluster_domain: &self.cluster_domain,
            namespace_mode: self.namespace_mode.as_deref(),
            source: Source::File,
        };
        let (set, report) = ChannelSet::build(&self.current, &loads, &opts);
        self.hub
            .record_reload(report.files_failed == 0 && report.channels_rejected == 0);
        if !self.published && failed > 0 {
            tracing::error!(path = %self.path.display(), "no complete channel set yet; not ready until every file parses");
            return;
        }
        let channels = set.len();
        let set = Arc::new(set);
        let generation = self.hub.publish(set.clone());
        self.current = set;
        self.published = true;
        tracing::info!(
            path = %self.path.display(),
            channels,
            generation,
            files_failed = report.files_failed,
            channels_rejected = report.channels_rejected,
            "channel set applied"
        );
    }

    /// Loads once, then watches forever on the calling thread.
    pub fn run(mut self) {
        let (tx, rx) = mpsc::channel();
        let watch_root = if self.path.is_dir() {
            self.path.clone()
        } else {
            // Watch the directory: editors and ConfigMaps replace files rather than write them.
            self.path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
        };
        let watcher = notify::recommended_watcher(move |ev| {
            let _ = tx.send(ev);
        })
        .and_then(|mut w| {
            w.watch(&watch_root, RecursiveMode::Recursive)?;
            Ok(w)
        });
        let _watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(path = %watch_root.display(), error = %e,
                    "cannot watch the channels path; re-reading it every {}s instead", RESCAN.as_secs());
                None
            }
        };
        self.reload();
        loop {
            match rx.recv_timeout(RESCAN) {
                Ok(_) => {
                    std::thread::sleep(DEBOUNCE);
                    while rx.try_recv().is_ok() {}
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => std::thread::sleep(RESCAN),
            }
            self.reload();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_yaml_and_lists() {
        let text = "apiVersion: messaging.knative.dev/v1\nkind: InMemoryChannel\nmetadata: {name: a}\n---\napiVersion: v1\nkind: List\nitems:\n- {kind: InMemoryChannel, metadata: {name: b, namespace: x}}\n---\nkind: Service\nmetadata: {name: s}\n---\n";
        let imcs = parse_manifests(text, Path::new("c.yaml")).unwrap();
        let names: Vec<_> = imcs
            .iter()
            .map(|i| (i.namespace(), i.metadata.name.as_str()))
            .collect();
        assert_eq!(names, [("default", "a"), ("x", "b")]);
    }

    #[test]
    fn json_files_and_errors_name_the_document() {
        let imcs = parse_manifests(
            r#"{"kind":"InMemoryChannel","metadata":{"name":"j"}}"#,
            Path::new("c.json"),
        )
        .unwrap();
        assert_eq!(imcs[0].metadata.name, "j");
        let e = parse_manifests(
            "kind: InMemoryChannel\nmetadata: {name: a}\n---\nkind: InMemoryChannel\nmetadata: 7\n",
            Path::new("c.yaml"),
        )
        .unwrap_err();
        assert!(e.contains("document 2"), "{e}");
        assert!(parse_manifests("a: [", Path::new("c.yaml")).is_err());
    }
}
