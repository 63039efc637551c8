//! A test's scratch folder (fixture repositories, demo folders, the programs' logs): removed
//! when the test passes, kept when it fails, so that the logs of a failure can be read.

use std::path::Path;

use tempfile::TempDir;

pub struct Scratch(TempDir);

impl Scratch {
    /// A new folder under the system's temporary folder, named `<prefix>…`.
    pub fn new(prefix: &str) -> Scratch {
        Scratch(tempfile::Builder::new().prefix(prefix).tempdir().expect("a scratch folder"))
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.disable_cleanup(true);
            eprintln!("the failed test's scratch folder, with its logs, is kept: {}", self.0.path().display());
        }
    }
}
