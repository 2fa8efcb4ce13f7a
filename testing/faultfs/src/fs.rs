//! The FUSE filesystem: a passthrough of the backing directory by path, with the faults of
//! [`crate::faults`] applied to each operation, and the control file `.faultfs` at its root.
//!
//! Inodes are numbered by faultfs itself (the backing `(st_dev, st_ino)` maps to one number
//! until the backing file's last link goes), each with the path it was last seen at, relative
//! to the root; renames move those paths. Open files are backing file descriptors, so every
//! read, write and sync goes to the very file the program opened, unlinked or not. Entries and
//! attributes have a TTL of zero, so `stat` always asks (and sees a changed fault at once).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, DirEntryExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use rustix::fs::{AtFlags, CWD, FallocateFlags, Mode, SeekFrom, Timespec, Timestamps};

use crate::faults::{FaultTable, Faults, Once};

/// The control file's name, at the root only.
pub const CONTROL_NAME: &str = ".faultfs";
/// The control file's inode number (faultfs numbers the others from 2 up).
const CONTROL_INO: u64 = u64::MAX - 1;
/// Entries and attributes are never cached: a stat asks again.
const TTL: Duration = Duration::ZERO;

#[derive(Debug, Default)]
struct Inodes {
    /// Each inode's path, relative to the root; empty for the root itself.
    nodes: HashMap<u64, PathBuf>,
    /// The inode of each backing `(st_dev, st_ino)`.
    by_key: HashMap<(u64, u64), u64>,
    next: u64,
}

/// An open backing file.
#[derive(Debug)]
struct Handle {
    file: File,
    ino: u64,
}

/// The filesystem served by [`fuser`].
#[derive(Debug)]
pub struct FaultFs {
    backing: PathBuf,
    faults: Arc<FaultTable>,
    inodes: Mutex<Inodes>,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
    /// The uid and gid faultfs runs as, which creates files as them.
    own_ids: (u32, u32),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn errno(e: &io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn rustix_errno(e: rustix::io::Errno) -> Errno {
    Errno::from_i32(e.raw_os_error())
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    let nsecs = u32::try_from(nsecs).unwrap_or(0);
    match u64::try_from(secs) {
        Ok(secs) => UNIX_EPOCH + Duration::new(secs, nsecs),
        Err(_) => UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()),
    }
}

fn timespec(t: Option<TimeOrNow>) -> Timespec {
    match t {
        None => Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        Some(TimeOrNow::Now) => Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW,
        },
        Some(TimeOrNow::SpecificTime(t)) => {
            let (secs, nsecs) = match t.duration_since(UNIX_EPOCH) {
                Ok(d) => (d.as_secs() as i64, i64::from(d.subsec_nanos())),
                Err(e) => (-(e.duration().as_secs() as i64), 0),
            };
            Timespec {
                tv_sec: secs,
                tv_nsec: nsecs,
            }
        }
    }
}

/// The flags of `open(2)` that the backing open keeps: the synchronous-write ones. Creation
/// and truncation are done apart, `O_APPEND` would make `pwrite` ignore the kernel's offsets,
/// and `O_DIRECT` is the kernel's business on this side.
const KEPT_OPEN_FLAGS: i32 = libc::O_SYNC | libc::O_DSYNC;

impl FaultFs {
    pub fn new(backing: PathBuf, faults: Arc<FaultTable>) -> io::Result<FaultFs> {
        let md = fs::metadata(&backing)?;
        if !md.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{} is not a directory", backing.display()),
            ));
        }
        let mut inodes = Inodes {
            next: 2,
            ..Inodes::default()
        };
        let key = (md.dev(), md.ino());
        inodes.nodes.insert(INodeNo::ROOT.0, PathBuf::new());
        inodes.by_key.insert(key, INodeNo::ROOT.0);
        Ok(FaultFs {
            backing,
            faults,
            inodes: Mutex::new(inodes),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            own_ids: (
                rustix::process::geteuid().as_raw(),
                rustix::process::getegid().as_raw(),
            ),
        })
    }

    /// The path of `ino` relative to the root.
    fn rel(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        lock(&self.inodes)
            .nodes
            .get(&ino.0)
            .cloned()
            .ok_or(Errno::ENOENT)
    }

    fn abs(&self, rel: &Path) -> PathBuf {
        if rel.as_os_str().is_empty() {
            self.backing.clone()
        } else {
            self.backing.join(rel)
        }
    }

    /// The relative path of `name` in directory `parent`.
    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        if name.as_encoded_bytes().contains(&b'/') {
            return Err(Errno::EINVAL);
        }
        Ok(self.rel(parent)?.join(name))
    }

    fn is_control(parent: INodeNo, name: &OsStr) -> bool {
        parent == INodeNo::ROOT && name == CONTROL_NAME
    }

    /// The inode number of a backing file seen at `rel`, made if new; records `rel` as its path.
    fn remember(&self, rel: &Path, md: &Metadata) -> u64 {
        let key = (md.dev(), md.ino());
        let mut inodes = lock(&self.inodes);
        let ino = match inodes.by_key.get(&key) {
            Some(&ino) => ino,
            None => {
                let ino = inodes.next;
                inodes.next += 1;
                inodes.by_key.insert(key, ino);
                ino
            }
        };
        inodes.nodes.insert(ino, rel.to_owned());
        ino
    }

    /// Forgets the backing key of a file that lost its last link, so that a new file which gets
    /// the same backing inode number gets a new inode here.
    fn forget_key(&self, md: &Metadata) {
        let removed_last_link = md.is_dir() || md.nlink() <= 1;
        if removed_last_link {
            lock(&self.inodes).by_key.remove(&(md.dev(), md.ino()));
        }
    }

    /// Moves every path at or below `from` to `to`.
    fn renamed(&self, from: &Path, to: &Path) {
        let mut inodes = lock(&self.inodes);
        for path in inodes.nodes.values_mut() {
            if let Ok(rest) = path.strip_prefix(from) {
                *path = if rest.as_os_str().is_empty() {
                    to.to_owned()
                } else {
                    to.join(rest)
                };
            }
        }
    }

    fn attr(&self, ino: u64, rel: &Path, md: &Metadata) -> FileAttr {
        let faults = self.faults.get(rel);
        FileAttr {
            ino: INodeNo(ino),
            size: faults.size.unwrap_or(md.size()),
            blocks: md.blocks(),
            atime: time(md.atime(), md.atime_nsec()),
            mtime: time(md.mtime(), md.mtime_nsec()),
            ctime: time(md.ctime(), md.ctime_nsec()),
            crtime: UNIX_EPOCH,
            kind: FileType::from_std(md.file_type()).unwrap_or(FileType::RegularFile),
            perm: (md.mode() & 0o7777) as u16,
            nlink: md.nlink() as u32,
            uid: md.uid(),
            gid: md.gid(),
            rdev: md.rdev() as u32,
            blksize: md.blksize() as u32,
            flags: 0,
        }
    }

    fn control_attr(&self) -> FileAttr {
        let now = SystemTime::now();
        FileAttr {
            ino: INodeNo(CONTROL_INO),
            size: 0,
            blocks: 0,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            kind: FileType::RegularFile,
            perm: 0o666,
            nlink: 1,
            uid: self.own_ids.0,
            gid: self.own_ids.1,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    /// Looks `rel` up in the backing directory: its inode number and attributes.
    fn entry(&self, rel: &Path) -> Result<FileAttr, Errno> {
        let md = fs::symlink_metadata(self.abs(rel)).map_err(|e| errno(&e))?;
        let ino = self.remember(rel, &md);
        Ok(self.attr(ino, rel, &md))
    }

    /// Makes the node `name` in `parent` by `make` (given its backing path) and gives it to the
    /// caller; the control file's name is taken (EEXIST). Its path in the backing directory,
    /// and what `make` returned.
    fn make_node<T>(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        make: impl FnOnce(&Path) -> Result<T, Errno>,
    ) -> Result<(PathBuf, T), Errno> {
        if Self::is_control(parent, name) {
            return Err(Errno::EEXIST);
        }
        let rel = self.child(parent, name)?;
        let abs = self.abs(&rel);
        let made = make(&abs)?;
        self.chown_to_caller(&abs, req)?;
        Ok((rel, made))
    }

    /// Makes a node as [`FaultFs::make_node`] and answers with its entry.
    fn make_entry(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        reply: ReplyEntry,
        make: impl FnOnce(&Path) -> Result<(), Errno>,
    ) {
        let result = self
            .make_node(req, parent, name, make)
            .and_then(|(rel, ())| self.entry(&rel));
        match result {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    /// Removes the node `name` in `parent` by `remove` (given its backing path), forgets its
    /// inode number and answers.
    fn remove_node(
        &self,
        parent: INodeNo,
        name: &OsStr,
        reply: ReplyEmpty,
        remove: impl FnOnce(&Path) -> io::Result<()>,
    ) {
        let result = (|| {
            let abs = self.abs(&self.child(parent, name)?);
            let md = fs::symlink_metadata(&abs).map_err(|e| errno(&e))?;
            remove(&abs).map_err(|e| errno(&e))?;
            self.forget_key(&md);
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    /// Gives a newly made node to the user that made it (faultfs runs as root).
    fn chown_to_caller(&self, abs: &Path, req: &Request) -> Result<(), Errno> {
        if (req.uid(), req.gid()) == self.own_ids {
            return Ok(());
        }
        rustix::fs::chownat(
            CWD,
            abs,
            Some(rustix::fs::Uid::from_raw(req.uid())),
            Some(rustix::fs::Gid::from_raw(req.gid())),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(rustix_errno)
    }

    fn handle(&self, fh: FileHandle) -> Result<Arc<Handle>, Errno> {
        lock(&self.handles).get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    fn any_handle_of(&self, ino: u64) -> Option<Arc<Handle>> {
        lock(&self.handles).values().find(|h| h.ino == ino).cloned()
    }

    fn add_handle(&self, file: File, ino: u64) -> FileHandle {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(fh, Arc::new(Handle { file, ino }));
        FileHandle(fh)
    }

    /// The faults of the file behind `ino` (none for a node faultfs no longer knows).
    fn faults_of(&self, ino: u64) -> Faults {
        match self.rel(INodeNo(ino)) {
            Ok(rel) => self.faults.get(&rel),
            Err(_) => Faults::default(),
        }
    }

    fn open_flags(faults: &Faults) -> FopenFlags {
        if faults.any() {
            FopenFlags::FOPEN_DIRECT_IO
        } else {
            FopenFlags::empty()
        }
    }

    fn set_attributes(
        &self,
        ino: INodeNo,
        changes: &AttrChanges,
        fh: Option<FileHandle>,
    ) -> Result<FileAttr, Errno> {
        if ino.0 == CONTROL_INO {
            // `echo … > .faultfs` truncates first; there is nothing to truncate.
            return Ok(self.control_attr());
        }
        let rel = self.rel(ino)?;
        let abs = self.abs(&rel);
        let handle = fh.and_then(|fh| self.handle(fh).ok());
        if let Some(size) = changes.size {
            if self.faults.get(&rel).truncate_eio {
                return Err(Errno::EIO);
            }
            match &handle {
                Some(h) => h.file.set_len(size),
                None => OpenOptions::new()
                    .write(true)
                    .open(&abs)
                    .and_then(|f| f.set_len(size)),
            }
            .map_err(|e| errno(&e))?;
        }
        if let Some(mode) = changes.mode {
            let mode = Mode::from_raw_mode(mode & 0o7777);
            match &handle {
                Some(h) => rustix::fs::fchmod(&h.file, mode),
                None => rustix::fs::chmod(&abs, mode),
            }
            .map_err(rustix_errno)?;
        }
        if changes.uid.is_some() || changes.gid.is_some() {
            let uid = changes.uid.map(rustix::fs::Uid::from_raw);
            let gid = changes.gid.map(rustix::fs::Gid::from_raw);
            match &handle {
                Some(h) => rustix::fs::fchown(&h.file, uid, gid),
                None => rustix::fs::chownat(CWD, &abs, uid, gid, AtFlags::SYMLINK_NOFOLLOW),
            }
            .map_err(rustix_errno)?;
        }
        if changes.atime.is_some() || changes.mtime.is_some() {
            let times = Timestamps {
                last_access: timespec(changes.atime),
                last_modification: timespec(changes.mtime),
            };
            match &handle {
                Some(h) => rustix::fs::futimens(&h.file, &times),
                None => rustix::fs::utimensat(CWD, &abs, &times, AtFlags::SYMLINK_NOFOLLOW),
            }
            .map_err(rustix_errno)?;
        }
        let md = match &handle {
            Some(h) => h.file.metadata(),
            None => fs::symlink_metadata(&abs),
        }
        .map_err(|e| errno(&e))?;
        Ok(self.attr(ino.0, &rel, &md))
    }

    fn do_read(&self, handle: Arc<Handle>, offset: u64, size: u32, reply: ReplyData) {
        let faults = self.faults_of(handle.ino);
        let mut limit = u64::from(size);
        if let Some(off) = faults.read_eio {
            if offset >= off {
                reply.error(Errno::EIO);
                return;
            }
            limit = limit.min(off - offset);
        }
        if let Some(n) = faults.short_read {
            limit = limit.min(u64::from(n));
        }
        let read = move |handle: &Handle| -> io::Result<Vec<u8>> {
            let mut buf = vec![0; limit as usize];
            let mut done = 0;
            while done < buf.len() {
                match handle.file.read_at(&mut buf[done..], offset + done as u64) {
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            buf.truncate(done);
            Ok(buf)
        };
        let rel = self.rel(INodeNo(handle.ino)).ok();
        let table = Arc::clone(&self.faults);
        let answer = move |handle: &Handle, reply: ReplyData| match read(handle) {
            Ok(mut data) => {
                // The corrupt bytes: flipped in what is answered, never in the backing file.
                let bytes = offset..offset + data.len() as u64;
                let once = faults
                    .read_corrupt_once
                    .and_then(|_| table.fire_once(rel.as_ref()?, Once::Read, bytes.clone()));
                for off in [faults.read_corrupt.filter(|off| bytes.contains(off)), once]
                    .into_iter()
                    .flatten()
                {
                    data[(off - offset) as usize] ^= 0xff;
                }
                reply.data(&data)
            }
            Err(e) => reply.error(errno(&e)),
        };
        match faults.read_delay_ms {
            // Answered from a thread of its own, so that the delay holds up no other request.
            Some(ms) => {
                thread::spawn(move || {
                    thread::sleep(Duration::from_millis(ms));
                    answer(&handle, reply);
                });
            }
            None => answer(&handle, reply),
        }
    }
}

/// The attribute changes of one `setattr`.
#[derive(Debug)]
struct AttrChanges {
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    size: Option<u64>,
    atime: Option<TimeOrNow>,
    mtime: Option<TimeOrNow>,
}

impl Filesystem for FaultFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if Self::is_control(parent, name) {
            reply.entry(&TTL, &self.control_attr(), Generation(0));
            return;
        }
        match self.child(parent, name).and_then(|rel| self.entry(&rel)) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        if ino.0 == CONTROL_INO {
            reply.attr(&TTL, &self.control_attr());
            return;
        }
        let result = (|| {
            let rel = self.rel(ino)?;
            // fstat(2) comes without a handle: any open one of this inode is the very file,
            // even if its path was unlinked or now names another file.
            let handle = fh
                .and_then(|fh| self.handle(fh).ok())
                .or_else(|| self.any_handle_of(ino.0));
            let md = match handle {
                Some(h) => h.file.metadata().map_err(|e| errno(&e))?,
                None => {
                    let md = fs::symlink_metadata(self.abs(&rel)).map_err(|e| errno(&e))?;
                    let now_at_path = lock(&self.inodes)
                        .by_key
                        .get(&(md.dev(), md.ino()))
                        .copied();
                    if now_at_path.is_some_and(|other| other != ino.0) {
                        // The path names another file now; this one is gone.
                        return Err(Errno::ENOENT);
                    }
                    md
                }
            };
            Ok(self.attr(ino.0, &rel, &md))
        })();
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let changes = AttrChanges {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
        };
        match self.set_attributes(ino, &changes, fh) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self
            .rel(ino)
            .and_then(|rel| fs::read_link(self.abs(&rel)).map_err(|e| errno(&e)))
        {
            Ok(target) => reply.data(target.as_os_str().as_encoded_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        self.make_entry(req, parent, name, reply, |abs| {
            rustix::fs::mknodat(
                CWD,
                abs,
                rustix::fs::FileType::from_raw_mode(mode),
                Mode::from_raw_mode(mode & !umask & 0o7777),
                u64::from(rdev),
            )
            .map_err(rustix_errno)
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        self.make_entry(req, parent, name, reply, |abs| {
            fs::DirBuilder::new()
                .mode(mode & !umask & 0o7777)
                .create(abs)
                .map_err(|e| errno(&e))
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if Self::is_control(parent, name) {
            reply.error(Errno::EPERM);
            return;
        }
        self.remove_node(parent, name, reply, |abs| fs::remove_file(abs));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove_node(parent, name, reply, |abs| fs::remove_dir(abs));
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        self.make_entry(req, parent, link_name, reply, |abs| {
            std::os::unix::fs::symlink(target, abs).map_err(|e| errno(&e))
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if Self::is_control(parent, name) || Self::is_control(newparent, newname) {
            reply.error(Errno::EPERM);
            return;
        }
        let result = (|| {
            if !(flags - RenameFlags::RENAME_NOREPLACE).is_empty() {
                return Err(Errno::EINVAL);
            }
            let from = self.child(parent, name)?;
            let to = self.child(newparent, newname)?;
            let replaced = fs::symlink_metadata(self.abs(&to)).ok();
            let rustix_flags = if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                rustix::fs::RenameFlags::NOREPLACE
            } else {
                rustix::fs::RenameFlags::empty()
            };
            rustix::fs::renameat_with(CWD, self.abs(&from), CWD, self.abs(&to), rustix_flags)
                .map_err(rustix_errno)?;
            if let Some(md) = replaced {
                self.forget_key(&md);
            }
            self.renamed(&from, &to);
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if ino.0 == CONTROL_INO {
            reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
            return;
        }
        let result = (|| {
            let rel = self.rel(ino)?;
            let faults = self.faults.get(&rel);
            let mut options = OpenOptions::new();
            options.read(true).custom_flags(flags.0 & KEPT_OPEN_FLAGS);
            if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
                options.write(true);
            }
            let file = options.open(self.abs(&rel)).map_err(|e| errno(&e))?;
            Ok((self.add_handle(file, ino.0), Self::open_flags(&faults)))
        })();
        match result {
            Ok((fh, flags)) => reply.opened(fh, flags),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let result = self
            .make_node(req, parent, name, |abs| {
                let mut options = OpenOptions::new();
                options
                    .read(true)
                    .write(true)
                    .mode(mode & !umask & 0o7777)
                    .custom_flags(flags & KEPT_OPEN_FLAGS);
                if flags & libc::O_EXCL != 0 {
                    options.create_new(true);
                } else {
                    options.create(true);
                }
                options.open(abs).map_err(|e| errno(&e))
            })
            .and_then(|(rel, file)| {
                let md = file.metadata().map_err(|e| errno(&e))?;
                let ino = self.remember(&rel, &md);
                let attr = self.attr(ino, &rel, &md);
                let faults = self.faults.get(&rel);
                Ok((attr, self.add_handle(file, ino), Self::open_flags(&faults)))
            });
        match result {
            Ok((attr, fh, flags)) => reply.created(&TTL, &attr, Generation(0), fh, flags),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if ino.0 == CONTROL_INO {
            let listing = self.faults.listing().into_bytes();
            let start = (offset as usize).min(listing.len());
            let end = start.saturating_add(size as usize).min(listing.len());
            reply.data(&listing[start..end]);
            return;
        }
        match self.handle(fh) {
            Ok(handle) => self.do_read(handle, offset, size, reply),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if ino.0 == CONTROL_INO {
            let applied = std::str::from_utf8(data)
                .map_err(|_| "not UTF-8".to_owned())
                .and_then(|text| self.faults.apply(text));
            match applied {
                Ok(()) => reply.written(data.len() as u32),
                Err(e) => {
                    eprintln!("faultfs: refused control write: {e}");
                    reply.error(Errno::EINVAL);
                }
            }
            return;
        }
        let result = (|| {
            let handle = self.handle(fh)?;
            let faults = self.faults_of(handle.ino);
            let mut limit = data.len() as u64;
            if let Some((off, errno)) = faults.write_failure() {
                if offset >= off {
                    return Err(Errno::from_i32(errno.raw()));
                }
                limit = limit.min(off - offset);
            }
            if let Some(n) = faults.short_write {
                limit = limit.min(u64::from(n));
            }
            let mut data = std::borrow::Cow::Borrowed(&data[..limit as usize]);
            let bytes = offset..offset + limit;
            if faults.write_corrupt_once.is_some()
                && let Ok(rel) = self.rel(INodeNo(handle.ino))
                && let Some(off) = self.faults.fire_once(&rel, Once::Write, bytes)
            {
                // Stored flipped: the write is answered as done, its byte is wrong.
                data.to_mut()[(off - offset) as usize] ^= 0xff;
            }
            handle
                .file
                .write_all_at(&data, offset)
                .map_err(|e| errno(&e))?;
            Ok(data.len() as u32)
        })();
        match result {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        if ino.0 != CONTROL_INO && self.faults_of(ino.0).flush_eio {
            reply.error(Errno::EIO);
        } else {
            reply.ok();
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        lock(&self.handles).remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        if ino.0 == CONTROL_INO {
            reply.ok();
            return;
        }
        let result = (|| {
            let handle = self.handle(fh)?;
            if self.faults_of(handle.ino).fsync_eio {
                return Err(Errno::EIO);
            }
            if datasync {
                handle.file.sync_data()
            } else {
                handle.file.sync_all()
            }
            .map_err(|e| errno(&e))
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let result = (|| {
            let rel = self.rel(ino)?;
            let mut entries: Vec<(u64, FileType, std::ffi::OsString)> = vec![
                (ino.0, FileType::Directory, ".".into()),
                (INodeNo::ROOT.0, FileType::Directory, "..".into()),
            ];
            let mut names = Vec::new();
            for entry in fs::read_dir(self.abs(&rel)).map_err(|e| errno(&e))? {
                let entry = entry.map_err(|e| errno(&e))?;
                let kind = entry
                    .file_type()
                    .ok()
                    .and_then(FileType::from_std)
                    .unwrap_or(FileType::RegularFile);
                names.push((entry.ino().max(1), kind, entry.file_name()));
            }
            // One order for every call, so that the offsets stay meaningful.
            names.sort_by(|a, b| a.2.cmp(&b.2));
            entries.extend(names);
            Ok(entries)
        })();
        match result {
            Ok(entries) => {
                for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match rustix::fs::statvfs(&self.backing) {
            Ok(st) => reply.statfs(
                st.f_blocks,
                st.f_bfree,
                st.f_bavail,
                st.f_files,
                st.f_ffree,
                st.f_bsize as u32,
                st.f_namemax as u32,
                st.f_frsize as u32,
            ),
            Err(e) => reply.error(rustix_errno(e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let result = (|| {
            let handle = self.handle(fh)?;
            if self.faults_of(handle.ino).fallocate_eopnotsupp {
                return Err(Errno::EOPNOTSUPP);
            }
            rustix::fs::fallocate(
                &handle.file,
                FallocateFlags::from_bits_retain(mode as u32),
                offset,
                length,
            )
            .map_err(rustix_errno)
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let result = (|| {
            let handle = self.handle(fh)?;
            // The kernel asks only for these two; it does the others itself.
            let offset = u64::try_from(offset).map_err(|_| Errno::EINVAL)?;
            let pos = match whence {
                libc::SEEK_DATA => SeekFrom::Data(offset),
                libc::SEEK_HOLE => SeekFrom::Hole(offset),
                _ => return Err(Errno::EINVAL),
            };
            if self.faults_of(handle.ino).no_seek {
                return Err(Errno::EINVAL);
            }
            let found = rustix::fs::seek(&handle.file, pos).map_err(rustix_errno)?;
            i64::try_from(found).map_err(|_| Errno::EOVERFLOW)
        })();
        match result {
            Ok(pos) => reply.offset(pos),
            Err(e) => reply.error(e),
        }
    }
}
