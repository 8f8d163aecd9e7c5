//! The compiled-code cache: plugins this host compiled, kept in a private state folder
//! outside the plugins folder, and loaded as native code only when this host wrote them.
//!
//! The state folder (`[service] state_dir`, resolved by the config) is created `0700`:
//! - `cache.key`: 32 random bytes made on first use, `0600`: this host's MAC key;
//! - `code/`: `<plugin>-<32 hex of the .wasm's SHA-256>-<engine key>.cwasm`, `0600` each.
//!
//! An entry is the serialized component followed by an HMAC-SHA256, under the key, of the
//! entry's name and bytes. An entry copied in from elsewhere (a plugin bundle, another host),
//! renamed or changed fails the check and is compiled over, never loaded. The folders and
//! files must also be the host user's and writable by no one else.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use wasmtime::Engine;
use wasmtime::component::Component;

/// The key file in the state folder.
pub const KEY_FILE: &str = "cache.key";
/// The folder of compiled entries in the state folder.
pub const CODE_DIR: &str = "code";
const KEY_BYTES: usize = 32;
const TAG_BYTES: usize = 32;

/// An open code cache: where its entries are and the key that authenticates them.
pub struct CodeCache {
    dir: PathBuf,
    key: [u8; KEY_BYTES],
}

impl CodeCache {
    /// Opens the cache of state folder `state`, creating the folders (`0700`) and the key
    /// (`0600`) on first use. The error says in one line what is wrong and what to do.
    pub fn open(state: &Path) -> Result<CodeCache, String> {
        let dir = state.join(CODE_DIR);
        for folder in [state, dir.as_path()] {
            if !folder.exists() {
                create_cache_dir(folder).map_err(|e| format!("cannot create {}: {e}", folder.display()))?;
            }
            if let Some(problem) = cache_dir_problem(folder) {
                return Err(format!("{}: {problem}", folder.display()));
            }
        }
        let key = read_or_make_key(&state.join(KEY_FILE))?;
        Ok(CodeCache { dir, key })
    }

    /// The folder of entries.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The component cached under `name`, if this host wrote it: `None` when there is no
    /// entry, and (with a warning) when the entry is refused.
    pub fn load(&self, engine: &Engine, name: &str) -> Option<Component> {
        let path = self.dir.join(name);
        let metadata = std::fs::metadata(&path).ok()?;
        if let Some(problem) = cache_problem(&metadata, host_uid(), false) {
            warn_untrusted(&path, &problem);
            return None;
        }
        let bytes = std::fs::read(&path)
            .inspect_err(|error| tracing::warn!(file = %path.display(), %error, "cannot read a cache entry; compiling"))
            .ok()?;
        let Some(code) = self.authenticated(name, &bytes) else {
            tracing::warn!(
                file = %path.display(),
                "code cache entry not written by this host (or changed since): it is not loaded; the plugin is compiled again"
            );
            return None;
        };
        // SAFETY: `code` carries a MAC under this host's private key over the entry's name
        // (the SHA-256 of the very .wasm bytes and this engine's compatibility hash) and its
        // bytes: only `store` below, in this host, makes such entries, from a component this
        // engine compiled.
        match unsafe { Component::deserialize(engine, code) } {
            Ok(component) => Some(component),
            Err(error) => {
                tracing::warn!(file = %path.display(), %error, "unusable cache entry; compiling again");
                None
            }
        }
    }

    /// Writes `component` as entry `name`, authenticated, through a temp file and a rename
    /// (never a partial entry), readable and writable by the host's user only.
    pub fn store(&self, name: &str, component: &Component) {
        let file = self.dir.join(name);
        let written =
            component.serialize().map_err(|e| std::io::Error::other(format!("{e:#}"))).and_then(|mut bytes| {
                let mac = self.mac(name, &bytes).ok_or_else(|| std::io::Error::other("the cache key is unusable"))?;
                bytes.extend_from_slice(&mac.finalize().into_bytes());
                write_private(&file, &bytes)
            });
        if let Err(error) = written {
            tracing::warn!(file = %file.display(), %error, "could not write the compiled plugin to the cache");
        }
    }

    /// Deletes the entries of `plugin` whose `.wasm` hash is not `live_hash`.
    pub fn prune(&self, plugin: &str, live_hash: &str) {
        if cache_dir_problem(&self.dir).is_some() {
            return;
        }
        match prune_cache_entries(&self.dir, plugin, live_hash) {
            Ok((0, _)) => {}
            Ok((files, bytes)) => tracing::debug!(plugin, files, bytes, "pruned compiled code no live version uses"),
            Err(error) => tracing::warn!(plugin, dir = %self.dir.display(), %error, "could not prune the code cache"),
        }
    }

    /// The code of entry `name` whose tag checks under this host's key.
    fn authenticated<'a>(&self, name: &str, entry: &'a [u8]) -> Option<&'a [u8]> {
        let (code, tag) = entry.split_at_checked(entry.len().checked_sub(TAG_BYTES)?)?;
        self.mac(name, code)?.verify_slice(tag).ok().map(|()| code)
    }

    /// The MAC of entry `name` holding `code`, not finalized (`None` only for a key HMAC
    /// refuses, which a 32-byte key never is).
    fn mac(&self, name: &str, code: &[u8]) -> Option<Hmac<Sha256>> {
        let mut mac = <Hmac<Sha256> as hmac::digest::KeyInit>::new_from_slice(&self.key).ok()?;
        mac.update(name.as_bytes());
        mac.update(&[0]);
        mac.update(code);
        Some(mac)
    }
}

/// The MAC key at `path`: made (32 random bytes, `0600`) when missing, else read and
/// checked to be the host user's and readable by no one else.
fn read_or_make_key(path: &Path) -> Result<[u8; KEY_BYTES], String> {
    match make_key(path) {
        Ok(key) => return Ok(key),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(error) => return Err(format!("cannot create the cache key {}: {error}", path.display())),
    }
    let metadata = std::fs::metadata(path).map_err(|e| format!("cannot inspect {}: {e}", path.display()))?;
    if let Some(problem) = key_problem(&metadata) {
        return Err(format!("{}: {problem}", path.display()));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    bytes.try_into().map_err(|_| {
        format!("{} is not a {KEY_BYTES}-byte key: delete it (the cache is rebuilt with a new one)", path.display())
    })
}

/// Makes a new key at `path` unless one is there (`AlreadyExists`): written to a temp file,
/// then linked into place, so a concurrent host never reads half a key.
fn make_key(path: &Path) -> std::io::Result<[u8; KEY_BYTES]> {
    if path.exists() {
        return Err(std::io::ErrorKind::AlreadyExists.into());
    }
    let mut key = [0u8; KEY_BYTES];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
    let temp = path.with_extension(format!("tmp{}", std::process::id()));
    write_private(&temp, &key)?;
    let linked = std::fs::hard_link(&temp, path);
    let _ = std::fs::remove_file(&temp);
    linked.map(|()| key)
}

/// Why the key file must not be used, if it must not: not the host user's, or readable or
/// writable by group or others.
#[cfg(unix)]
fn key_problem(metadata: &std::fs::Metadata) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    if let Some(problem) = cache_problem(metadata, host_uid(), false) {
        return Some(problem);
    }
    let mode = metadata.mode() & 0o777;
    (mode & 0o077 != 0).then(|| format!("the key is readable by group or others (mode {mode:04o}): `chmod 600` it"))
}

#[cfg(not(unix))]
fn key_problem(_: &std::fs::Metadata) -> Option<String> {
    None
}

/// Writes `bytes` to `file` through a temp file and a rename, `0600`.
fn write_private(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let temp = file.with_extension(format!("part{}", std::process::id()));
    let written = (|| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut out = options.open(&temp)?;
        #[cfg(unix)]
        out.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        out.write_all(bytes)?;
        out.sync_all()?;
        std::fs::rename(&temp, file)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

/// `<plugin>-<first 32 hex of the .wasm hash>-<engine key>.cwasm`.
pub(super) fn cache_file_name(plugin: &str, hash: &str, engine_key: &str) -> String {
    format!("{plugin}-{}-{engine_key}.cwasm", &hash[..32.min(hash.len())])
}

/// The plugin and wasm-hash prefix a cache file name stands for.
fn parse_cache_file_name(file: &str) -> Option<(&str, &str)> {
    let stem = file.strip_suffix(".cwasm")?;
    let mut parts = stem.rsplitn(3, '-');
    let (_engine_key, hash, plugin) = (parts.next()?, parts.next()?, parts.next()?);
    (hash.len() == 32 && !plugin.is_empty()).then_some((plugin, hash))
}

/// Deletes `<plugin>-*.cwasm` files in `dir` whose hash is not `live_hash`'s; returns how
/// many files and bytes went.
fn prune_cache_entries(dir: &Path, plugin: &str, live_hash: &str) -> std::io::Result<(usize, u64)> {
    let keep = &live_hash[..32.min(live_hash.len())];
    let (mut files, mut bytes) = (0, 0);
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some((owner, hash)) = name.to_str().and_then(parse_cache_file_name) else { continue };
        if owner != plugin || hash == keep {
            continue;
        }
        let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
        match std::fs::remove_file(entry.path()) {
            Ok(()) => (files, bytes) = (files + 1, bytes + size),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
    }
    Ok((files, bytes))
}

/// Whether the cache folder may be used: created (mode 0700) when missing, else owned by the
/// host's user and writable by no one else. Says why not in one warning.
pub(super) fn trusted_cache_dir(dir: &Path) -> bool {
    if !dir.exists()
        && let Err(error) = create_cache_dir(dir)
    {
        tracing::warn!(dir = %dir.display(), %error, "cannot create the code cache folder: compiling every plugin");
        return false;
    }
    match cache_dir_problem(dir) {
        Some(problem) => {
            warn_untrusted(dir, &problem);
            false
        }
        None => true,
    }
}

/// Creates the cache folder readable and writable by the host's user only.
fn create_cache_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir)
}

/// Why the cache folder must not be trusted, if it must not.
fn cache_dir_problem(dir: &Path) -> Option<String> {
    match std::fs::metadata(dir) {
        Ok(metadata) => cache_problem(&metadata, host_uid(), true),
        Err(error) => Some(format!("it cannot be inspected ({error})")),
    }
}

fn warn_untrusted(path: &Path, problem: &str) {
    tracing::warn!(
        path = %path.display(),
        "code cache not trusted: {problem}; it is not loaded as native code, plugins are compiled instead"
    );
}

/// Why a cache folder (`dir`) or file with this metadata must not be loaded as native code:
/// it is not the host user's (`host_uid`; `None` when it cannot be told), or group or others
/// may write it. Each reason names the fix.
#[cfg(unix)]
fn cache_problem(metadata: &std::fs::Metadata, host_uid: Option<u32>, dir: bool) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let what = if dir { "folder" } else { "file" };
    if (dir && !metadata.is_dir()) || (!dir && !metadata.is_file()) {
        return Some(format!("it is not a {what}: remove it"));
    }
    let Some(host_uid) = host_uid else {
        return Some("this host's user id cannot be told".to_string());
    };
    if metadata.uid() != host_uid {
        let recursive = if dir { "-R " } else { "" };
        return Some(format!(
            "the {what} is owned by uid {}, not by this host's user (uid {host_uid}): `chown {recursive}{host_uid}` it, or delete it",
            metadata.uid()
        ));
    }
    let mode = metadata.mode() & 0o7777;
    if mode & 0o022 != 0 {
        let recursive = if dir { "-R " } else { "" };
        return Some(format!(
            "the {what} is writable by group or others (mode {mode:04o}): `chmod {recursive}go-w` it"
        ));
    }
    None
}

#[cfg(not(unix))]
fn cache_problem(_: &std::fs::Metadata, _: Option<u32>, _: bool) -> Option<String> {
    None
}

/// The effective user id of this process, read once: from `/proc/self/status`, else (no
/// procfs) the owner of a file it creates.
fn host_uid() -> Option<u32> {
    static UID: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *UID.get_or_init(|| {
        let from_proc = || {
            // "Uid:\t<real>\t<effective>\t<saved>\t<filesystem>"
            let status = std::fs::read_to_string("/proc/self/status").ok()?;
            let uids = status.lines().find_map(|line| line.strip_prefix("Uid:"))?;
            uids.split_whitespace().nth(1)?.parse().ok()
        };
        #[cfg(unix)]
        let from_probe = || {
            use std::os::unix::fs::MetadataExt;
            let probe = std::env::temp_dir().join(format!(".warren-uid-{}", std::process::id()));
            std::fs::write(&probe, b"").ok()?;
            let uid = std::fs::metadata(&probe).map(|m| m.uid()).ok();
            let _ = std::fs::remove_file(&probe);
            uid
        };
        #[cfg(not(unix))]
        let from_probe = || None;
        from_proc().or_else(from_probe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wasm::engine::content_hash;

    fn temp_folder(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("warren-unit-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn cache_file_names_say_their_plugin_and_hash() {
        let hash = content_hash(b"some wasm");
        let name = cache_file_name("my-plugin", &hash, "0123456789abcdef");
        assert_eq!(parse_cache_file_name(&name), Some(("my-plugin", &hash[..32])));
        assert_eq!(parse_cache_file_name("my-plugin.wasm"), None);
        assert_eq!(parse_cache_file_name("x-short-0123456789abcdef.cwasm"), None);
        assert_eq!(parse_cache_file_name(&format!("{name}.tmp42")), None);
    }

    #[test]
    fn pruning_keeps_the_live_version_and_other_plugins() {
        let dir = temp_folder("prune");
        let (live, old, older) = (content_hash(b"v3"), content_hash(b"v2"), content_hash(b"v1"));
        let file = |plugin: &str, hash: &str, key: &str| dir.join(cache_file_name(plugin, hash, key));
        let keep = [
            file("hello", &live, "0123456789abcdef"),
            file("hello", &live, "fedcba9876543210"),
            file("hello-world", &old, "0123456789abcdef"),
            file("other", &older, "0123456789abcdef"),
            dir.join("notes.txt"),
        ];
        let go = [file("hello", &old, "0123456789abcdef"), file("hello", &older, "fedcba9876543210")];
        for path in keep.iter().chain(&go) {
            std::fs::write(path, b"12345").unwrap();
        }
        assert_eq!(prune_cache_entries(&dir, "hello", &live).unwrap(), (2, 10));
        for path in &keep {
            assert!(path.exists(), "{} was kept", path.display());
        }
        for path in &go {
            assert!(!path.exists(), "{} was pruned", path.display());
        }
        assert_eq!(prune_cache_entries(&dir, "hello", &live).unwrap(), (0, 0));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[cfg(unix)]
    #[test]
    fn a_cache_others_could_write_is_refused_naming_the_fix() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let chmod = |path: &Path, mode| std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        let root = temp_folder("cacheperm");
        let dir = root.join(".warren-cache");
        assert!(trusted_cache_dir(&dir), "a missing folder is created");
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700, "for the host's user alone");
        assert_eq!(cache_dir_problem(&dir), None);

        chmod(&dir, 0o775);
        let problem = cache_dir_problem(&dir).expect("group-writable");
        assert!(
            problem.contains("writable by group or others (mode 0775)") && problem.contains("chmod -R go-w"),
            "{problem}"
        );
        assert!(!trusted_cache_dir(&dir));
        chmod(&dir, 0o757);
        assert!(cache_dir_problem(&dir).is_some(), "others may write");
        chmod(&dir, 0o755);
        assert_eq!(cache_dir_problem(&dir), None, "readable by others is fine");

        let file = dir.join("x.cwasm");
        std::fs::write(&file, b"code").unwrap();
        chmod(&file, 0o666);
        let metadata = std::fs::metadata(&file).unwrap();
        let problem = cache_problem(&metadata, host_uid(), false).expect("world-writable");
        assert!(problem.contains("file is writable") && problem.contains("`chmod go-w`"), "{problem}");
        chmod(&file, 0o600);
        let metadata = std::fs::metadata(&file).unwrap();
        assert_eq!(cache_problem(&metadata, host_uid(), false), None);
        assert_eq!(host_uid(), Some(metadata.uid()), "the host owns what it creates");

        let stranger = metadata.uid() + 1;
        let problem = cache_problem(&metadata, Some(stranger), false).expect("another user's");
        assert!(
            problem.contains(&format!("owned by uid {}, not by this host's user (uid {stranger})", metadata.uid()))
                && problem.contains(&format!("`chown {stranger}`")),
            "{problem}"
        );
        assert!(cache_problem(&metadata, None, false).is_some(), "an unknown user is not trusted");
        assert!(cache_problem(&metadata, host_uid(), true).unwrap().contains("not a folder"));
        let _ = std::fs::remove_dir_all(root);
    }

    /// The smallest component: a header and nothing else.
    const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0";

    #[cfg(unix)]
    #[test]
    fn only_entries_this_host_wrote_are_loaded() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        let root = temp_folder("cachemac");
        let engine = Engine::default();
        let component = Component::new(&engine, EMPTY_COMPONENT).unwrap();
        let ours = CodeCache::open(&root.join("ours")).unwrap();
        assert_eq!((mode(&root.join("ours")), mode(ours.dir())), (0o700, 0o700), "private folders");
        assert_eq!(mode(&root.join("ours").join(KEY_FILE)), 0o600, "a private key");
        let name = cache_file_name("p", &"ab".repeat(32), "0123456789abcdef");
        assert!(ours.load(&engine, &name).is_none(), "nothing cached yet");
        ours.store(&name, &component);
        assert_eq!(mode(&ours.dir().join(&name)), 0o600);
        assert!(ours.load(&engine, &name).is_some(), "an entry it wrote loads");
        assert!(CodeCache::open(&root.join("ours")).unwrap().load(&engine, &name).is_some(), "after a restart too");

        // Copied in from another host (its own key), renamed, changed, or unauthenticated:
        // never loaded.
        let theirs = CodeCache::open(&root.join("theirs")).unwrap();
        theirs.store(&name, &component);
        std::fs::copy(theirs.dir().join(&name), ours.dir().join(&name)).unwrap();
        assert!(ours.load(&engine, &name).is_none(), "another host's entry");
        ours.store(&name, &component);
        let other = cache_file_name("p", &"cd".repeat(32), "0123456789abcdef");
        std::fs::copy(ours.dir().join(&name), ours.dir().join(&other)).unwrap();
        assert!(ours.load(&engine, &other).is_none(), "an entry under another name");
        let mut changed = std::fs::read(ours.dir().join(&name)).unwrap();
        changed[4] ^= 1;
        std::fs::write(ours.dir().join(&name), &changed).unwrap();
        assert!(ours.load(&engine, &name).is_none(), "a changed entry");
        std::fs::write(ours.dir().join(&name), component.serialize().unwrap()).unwrap();
        assert!(ours.load(&engine, &name).is_none(), "a bare .cwasm with no MAC");
        std::fs::write(ours.dir().join(&name), b"short").unwrap();
        assert!(ours.load(&engine, &name).is_none(), "a file shorter than a MAC");

        // A key others may read is refused, naming the fix.
        std::fs::set_permissions(root.join("ours").join(KEY_FILE), std::fs::Permissions::from_mode(0o644)).unwrap();
        let refused = CodeCache::open(&root.join("ours")).err().expect("a readable key is refused");
        assert!(refused.contains("readable by group or others") && refused.contains("chmod 600"), "{refused}");
        let _ = std::fs::remove_dir_all(root);
    }
}
