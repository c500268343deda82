//! A message body: in memory while it is small, in a spool file once it passes
//! [`SPOOL_THRESHOLD`], so the memory a message takes is bounded whatever its size. Either way
//! a body is one copy shared by reference: cloning a mail item (one copy per next hop) clones a
//! pointer, never the bytes.
//!
//! A spool file is written once, as the body arrives, and never changed. Its life on disk:
//! while it is *temporary* (still being received, refused, or a copy made for one delivery)
//! it is removed when the last reference goes; once a queue takes it ([`MessageBody::keep`],
//! [`MessageBody::persist_at`]) the queue owns the file and removes it when the item leaves.
//! Queue directories take a body by hard link (one inode, however many queues hold it), and
//! copy it only where a link cannot be made. A reader never depends on the path: it reads the
//! open file, which stays readable after every path is gone.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Bodies larger than this go to a spool file as they arrive.
pub const SPOOL_THRESHOLD: usize = 128 * 1024;
/// The unit in which a spooled body is read and written.
pub const CHUNK: usize = 64 * 1024;

/// Where spool files are made.
#[derive(Clone, Debug)]
pub struct SpoolPlace {
    dir: PathBuf,
    /// Named files (a queue may keep them); otherwise each file is unlinked as soon as it is
    /// made, for services that store nothing (the Front End, the Mailbox Transport's receive).
    named: bool,
}

impl SpoolPlace {
    /// Named files in `dir`, which a queue on the same file system can take by hard link.
    pub fn named(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            named: true,
        }
    }

    /// Files with no name, in `dir`: they vanish with their last reference, even on a crash.
    pub fn anonymous(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            named: false,
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// A spool file's unique name: time, process and counter.
fn unique_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{nanos:x}-{:x}-{:x}.body",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A body being written to a spool file.
pub struct SpoolWriter {
    file: File,
    path: Option<PathBuf>,
    len: u64,
    ascii: bool,
    /// Writes are gathered into [`CHUNK`]s.
    buffer: Vec<u8>,
}

impl SpoolWriter {
    /// A new, empty spool file. Blocking.
    pub fn create(place: &SpoolPlace) -> io::Result<Self> {
        fs::create_dir_all(&place.dir)?;
        let path = place.dir.join(unique_name());
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        let path = if place.named {
            Some(path)
        } else {
            fs::remove_file(&path)?;
            None
        };
        Ok(Self {
            file,
            path,
            len: 0,
            ascii: true,
            buffer: Vec::new(),
        })
    }

    /// Appends bytes. Blocking.
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.ascii &= bytes.is_ascii();
        self.len += bytes.len() as u64;
        if self.buffer.len() + bytes.len() < CHUNK {
            self.buffer.extend_from_slice(bytes);
            return Ok(());
        }
        if !self.buffer.is_empty() {
            self.file.write_all(&self.buffer)?;
            self.buffer = Vec::new();
        }
        self.file.write_all(bytes)
    }

    /// The body written. Blocking. Not yet durable: the queue that keeps it makes it so.
    pub fn finish(mut self) -> io::Result<MessageBody> {
        self.file.write_all(&self.buffer)?;
        let file = self.file.try_clone()?;
        // From here the body's last reference removes the file, not this writer.
        let path = self.path.take();
        Ok(MessageBody(Repr::File(Arc::new(SpoolFile {
            file,
            len: self.len,
            ascii: self.ascii,
            temporary: AtomicBool::new(path.is_some()),
            path: Mutex::new(path),
        }))))
    }
}

impl Drop for SpoolWriter {
    fn drop(&mut self) {
        // Abandoned before it was finished (refused, too large, the client went away).
        if let Some(path) = &self.path {
            let _ = fs::remove_file(path);
        }
    }
}

/// A body in a file.
struct SpoolFile {
    file: File,
    len: u64,
    ascii: bool,
    /// Its latest path, if it has one.
    path: Mutex<Option<PathBuf>>,
    /// Removed with the last reference (no queue took it).
    temporary: AtomicBool,
}

impl SpoolFile {
    fn path(&self) -> Option<PathBuf> {
        self.path.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for SpoolFile {
    fn drop(&mut self) {
        if self.temporary.load(Ordering::Acquire) {
            if let Some(path) = self.path() {
                let _ = fs::remove_file(path);
            }
        }
    }
}

#[derive(Clone)]
enum Repr {
    Memory(Arc<[u8]>),
    File(Arc<SpoolFile>),
}

/// A message body, shared by reference; see the module documentation.
#[derive(Clone)]
pub struct MessageBody(Repr);

impl Default for MessageBody {
    fn default() -> Self {
        Self(Repr::Memory(Arc::from(&[][..])))
    }
}

impl fmt::Debug for MessageBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Memory(b) => write!(f, "MessageBody::Memory({} bytes)", b.len()),
            Repr::File(s) => write!(f, "MessageBody::File({} bytes, {:?})", s.len, s.path()),
        }
    }
}

impl PartialEq for MessageBody {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (Repr::Memory(a), Repr::Memory(b)) => a == b,
            (Repr::File(a), Repr::File(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for MessageBody {}

impl From<Vec<u8>> for MessageBody {
    fn from(bytes: Vec<u8>) -> Self {
        Self(Repr::Memory(Arc::from(bytes)))
    }
}

impl MessageBody {
    /// Its size in bytes.
    pub fn len(&self) -> u64 {
        match &self.0 {
            Repr::Memory(b) => b.len() as u64,
            Repr::File(s) => s.len,
        }
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes it holds in memory (all of them, or none when it is spooled).
    pub fn memory_len(&self) -> usize {
        match &self.0 {
            Repr::Memory(b) => b.len(),
            Repr::File(_) => 0,
        }
    }

    /// Whether every byte is 7-bit (known without reading a spooled body again).
    pub fn is_ascii(&self) -> bool {
        match &self.0 {
            Repr::Memory(b) => b.is_ascii(),
            Repr::File(s) => s.ascii,
        }
    }

    /// The bytes, when the body is in memory.
    pub fn in_memory(&self) -> Option<&[u8]> {
        match &self.0 {
            Repr::Memory(b) => Some(b),
            Repr::File(_) => None,
        }
    }

    /// Whether it is in a spool file.
    pub fn is_spooled(&self) -> bool {
        matches!(self.0, Repr::File(_))
    }

    /// The spool file's latest path.
    pub fn path(&self) -> Option<PathBuf> {
        match &self.0 {
            Repr::Memory(_) => None,
            Repr::File(s) => s.path(),
        }
    }

    /// Up to `max` bytes from `offset` (empty at the end). Blocking for a spooled body.
    pub fn read_at(&self, offset: u64, max: usize) -> io::Result<Vec<u8>> {
        match &self.0 {
            Repr::Memory(b) => {
                let start = (offset as usize).min(b.len());
                Ok(b[start..(start + max).min(b.len())].to_vec())
            }
            Repr::File(s) => {
                let want = (s.len.saturating_sub(offset)).min(max as u64) as usize;
                let mut out = vec![0u8; want];
                s.file.read_exact_at(&mut out, offset)?;
                Ok(out)
            }
        }
    }

    /// Calls `each` with the body's bytes in order, a [`CHUNK`] at a time. Blocking.
    pub fn for_each_chunk(&self, mut each: impl FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
        match &self.0 {
            Repr::Memory(b) => each(b),
            Repr::File(s) => {
                let mut buffer = vec![0u8; CHUNK];
                let mut offset = 0;
                while offset < s.len {
                    let n = (s.len - offset).min(CHUNK as u64) as usize;
                    s.file.read_exact_at(&mut buffer[..n], offset)?;
                    each(&buffer[..n])?;
                    offset += n as u64;
                }
                Ok(())
            }
        }
    }

    /// The next piece of the body from `offset`, for async writers: a spooled body is read on
    /// the blocking pool. Empty at the end.
    pub async fn chunk(&self, offset: u64) -> io::Result<Vec<u8>> {
        match &self.0 {
            Repr::Memory(b) => {
                let start = (offset as usize).min(b.len());
                Ok(b[start..(start + CHUNK * 4).min(b.len())].to_vec())
            }
            Repr::File(_) => {
                let body = self.clone();
                tokio::task::spawn_blocking(move || body.read_at(offset, CHUNK * 4))
                    .await
                    .map_err(io::Error::other)?
            }
        }
    }

    /// All of it, in memory (for an agent that asks for the body). Blocking.
    pub fn to_vec(&self) -> io::Result<Vec<u8>> {
        match &self.0 {
            Repr::Memory(b) => Ok(b.to_vec()),
            Repr::File(s) => self.read_at(0, s.len as usize),
        }
    }

    /// Makes a spooled body durable where it is and hands it to its queue: it is no longer
    /// removed with its last reference. Blocking.
    pub fn keep(&self) -> io::Result<()> {
        if let Repr::File(s) = &self.0 {
            s.file.sync_data()?;
            if let Some(dir) = s.path().as_deref().and_then(Path::parent) {
                File::open(dir)?.sync_all()?;
            }
            s.temporary.store(false, Ordering::Release);
        }
        Ok(())
    }

    /// Undoes [`keep`](Self::keep) when the queue could not take the item after all: the
    /// file goes with the last reference again.
    pub fn let_go(&self) {
        if let Repr::File(s) = &self.0 {
            s.temporary.store(true, Ordering::Release);
        }
    }

    /// Puts the spooled body at `dest` for a queue: a hard link to its file where one can be
    /// made, a copy otherwise; fsync'd (the caller syncs `dest`'s directory). Nothing to do
    /// for a body in memory, or when `dest` is its file already. Blocking.
    pub fn persist_at(&self, dest: &Path) -> io::Result<()> {
        let Repr::File(s) = &self.0 else {
            return Ok(());
        };
        if let Some(current) = s.path() {
            if current == dest {
                return Ok(());
            }
            match fs::hard_link(&current, dest) {
                // Durable too: the file's data (cheap when it was kept already).
                Ok(()) => return s.file.sync_data(),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if same_file(&current, dest) {
                        return Ok(());
                    }
                    fs::remove_file(dest)?;
                    if fs::hard_link(&current, dest).is_ok() {
                        return Ok(());
                    }
                }
                // Gone (its queue let go of it) or another file system: copy.
                Err(_) => {}
            }
        }
        let tmp = dest.with_extension("body-tmp");
        {
            let mut out = File::create(&tmp)?;
            self.for_each_chunk(|chunk| out.write_all(chunk))?;
            out.sync_all()?;
        }
        fs::rename(&tmp, dest)
    }

    /// A spooled body a queue keeps at `path` (read back after a restart).
    pub fn open(path: &Path, ascii: bool) -> io::Result<Self> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        Ok(Self(Repr::File(Arc::new(SpoolFile {
            file,
            len,
            ascii,
            path: Mutex::new(Some(path.to_path_buf())),
            temporary: AtomicBool::new(false),
        }))))
    }

    /// The same body, now known at `path` (a queue moved or linked it there).
    pub fn moved_to(&self, path: &Path) {
        if let Repr::File(s) = &self.0 {
            *s.path.lock().unwrap_or_else(|e| e.into_inner()) = Some(path.to_path_buf());
        }
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Gathers a body piece by piece: in memory up to [`SPOOL_THRESHOLD`], then in a spool file
/// (when a place is given).
pub struct BodyBuilder {
    place: Option<SpoolPlace>,
    memory: Vec<u8>,
    spool: Option<SpoolWriter>,
}

impl BodyBuilder {
    /// A builder spooling to `place` (`None`: always in memory).
    pub fn new(place: Option<SpoolPlace>) -> Self {
        Self {
            place,
            memory: Vec::new(),
            spool: None,
        }
    }

    /// Appends bytes. Blocking once it spools.
    pub fn push(&mut self, bytes: &[u8]) -> io::Result<()> {
        if let Some(spool) = self.spool.as_mut() {
            return spool.write(bytes);
        }
        self.memory.extend_from_slice(bytes);
        if self.memory.len() > SPOOL_THRESHOLD {
            if let Some(place) = &self.place {
                let mut spool = SpoolWriter::create(place)?;
                spool.write(&std::mem::take(&mut self.memory))?;
                self.spool = Some(spool);
            }
        }
        Ok(())
    }

    /// The body.
    pub fn finish(self) -> io::Result<MessageBody> {
        match self.spool {
            Some(spool) => spool.finish(),
            None => Ok(self.memory.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(name: &str, named: bool) -> SpoolPlace {
        let dir = std::env::temp_dir().join(format!("mta-body-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        if named {
            SpoolPlace::named(&dir)
        } else {
            SpoolPlace::anonymous(&dir)
        }
    }

    fn files(dir: &Path) -> usize {
        fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
    }

    #[test]
    fn a_large_body_is_spooled_and_read_back_whole() {
        let place = place("large", true);
        let mut builder = BodyBuilder::new(Some(place.clone()));
        let data: Vec<u8> = (0..SPOOL_THRESHOLD * 3).map(|i| (i % 251) as u8).collect();
        for piece in data.chunks(1000) {
            builder.push(piece).unwrap();
        }
        let body = builder.finish().unwrap();
        assert!(body.is_spooled());
        assert_eq!(body.len(), data.len() as u64);
        assert!(!body.is_ascii());
        assert_eq!(body.to_vec().unwrap(), data);
        let mut streamed = Vec::new();
        body.for_each_chunk(|c| {
            streamed.extend_from_slice(c);
            Ok(())
        })
        .unwrap();
        assert_eq!(streamed, data);
        assert_eq!(files(place.dir()), 1);
        let copy = body.clone();
        drop(body);
        assert_eq!(files(place.dir()), 1, "a reference remains");
        drop(copy);
        assert_eq!(
            files(place.dir()),
            0,
            "temporary: gone with the last reference"
        );
    }

    #[test]
    fn a_kept_body_stays_and_links_into_queues() {
        let place = place("kept", true);
        let mut w = SpoolWriter::create(&place).unwrap();
        w.write(b"hello\r\n").unwrap();
        let body = w.finish().unwrap();
        body.keep().unwrap();
        let queue = place.dir().join("queue");
        fs::create_dir_all(&queue).unwrap();
        let dest = queue.join("ID.body");
        body.persist_at(&dest).unwrap();
        body.persist_at(&dest).unwrap();
        assert!(same_file(&body.path().unwrap(), &dest), "a hard link");
        // Its first path goes (the journal let go of it); a copy is still possible.
        fs::remove_file(body.path().unwrap()).unwrap();
        let other = queue.join("OTHER.body");
        body.persist_at(&other).unwrap();
        assert_eq!(fs::read(&other).unwrap(), b"hello\r\n");
        drop(body);
        assert!(
            dest.exists() && other.exists(),
            "kept files are the queues'"
        );
        let back = MessageBody::open(&dest, true).unwrap();
        assert_eq!(back.to_vec().unwrap(), b"hello\r\n");
    }

    #[test]
    fn an_anonymous_or_abandoned_spool_leaves_nothing() {
        let place = place("anon", false);
        let mut w = SpoolWriter::create(&place).unwrap();
        w.write(&[b'x'; 10]).unwrap();
        assert_eq!(files(place.dir()), 0);
        let body = w.finish().unwrap();
        assert_eq!(body.to_vec().unwrap(), [b'x'; 10]);
        let named = self::place("abandoned", true);
        let w = SpoolWriter::create(&named).unwrap();
        assert_eq!(files(named.dir()), 1);
        drop(w);
        assert_eq!(files(named.dir()), 0);
    }
}
