// Shared by the build scripts of openhqm-core and the sample app (included
// with `include!`): the source revision baked into `--version` and
// `openhqm_build_info`. `OPENHQM_REVISION` wins (image builds without a
// .git), else `git rev-parse`, else "unknown"; a build never fails on it.

fn git(args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn emit_revision() {
    println!("cargo:rerun-if-env-changed=OPENHQM_REVISION");
    let revision = std::env::var("OPENHQM_REVISION")
        .ok()
        .filter(|r| !r.trim().is_empty())
        .or_else(|| {
            // Rebuild when HEAD moves (a commit or a checkout), not on
            // every build: watch only paths that exist (cargo counts a
            // missing one as changed, every time).
            let git_dir = git(&["rev-parse", "--git-dir"]);
            let common = git(&["rev-parse", "--git-common-dir"]);
            let watch = [
                git_dir.as_ref().map(|d| format!("{d}/HEAD")),
                common.as_ref().map(|d| format!("{d}/packed-refs")),
                // A directory: any branch's ref file written in it.
                common.as_ref().map(|d| format!("{d}/refs/heads")),
            ];
            for path in watch.into_iter().flatten() {
                if std::path::Path::new(&path).exists() {
                    println!("cargo:rerun-if-changed={path}");
                }
            }
            git(&["rev-parse", "--short=12", "HEAD"])
        })
        .unwrap_or_else(|| "unknown".to_string());
    // Label values and a version line: keep it printable.
    let revision: String = revision
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(64)
        .collect();
    println!("cargo:rustc-env=OPENHQM_REVISION={revision}");
}
