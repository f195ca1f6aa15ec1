"""Per-job directories.

As root, a workspace is its own size-limited tmpfs, owned by the job user and
mode 0700: a job cannot fill the host's disk and other job users cannot look
in.  The job's private /tmp, /var/tmp and /dev/shm live in it too (``tmp/``).
A slot's tmpfs stays mounted from job to job: once every process of a job is
gone (its keeper killed them all), ``empty`` removes what it left through
descriptors (a link is removed, never followed) and puts ``work/`` and
``tmp/`` back as they were, which costs less than a mount and an unmount
(each umount also waits out an RCU grace period) and lets the slot's keeper
keep its mounts.  A workspace whose processes may still run is unmounted
instead (by the reaper, once they are dead), and the next job of the slot
gets a fresh tmpfs.  The mount point (one per job user, root's, empty when
unmounted) is kept.

Unprivileged, it is a plain directory per slot, emptied after each job with
the fd-based ``shutil.rmtree`` (which does not follow symlinks) and kept:
a job that leaves nothing costs no directory operation at all.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
import stat

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_MS_NOSUID, _MS_NODEV, _MS_REMOUNT = 2, 4, 32
_MNT_DETACH = 2
DEFAULT_SIZE = 64 << 20
# Inodes of a workspace: one per 16 KiB, at least 1024 (a job cannot exhaust
# them with empty files before its bytes run out).
BYTES_PER_INODE = 16 << 10
MIN_INODES = 1024


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def mount_tmpfs(path: str, size: int, inodes: int, uid: int, gid: int) -> None:
    """A size-limited tmpfs owned by the job user: the workspace's limit is the kernel's."""
    options = f"size={size},nr_inodes={inodes},mode=0700,uid={uid},gid={gid}".encode()
    _check(
        _libc.mount(b"tmpfs", os.fsencode(path), b"tmpfs", _MS_NOSUID | _MS_NODEV, options),
        f"mount tmpfs on {path}",
    )


def remount_tmpfs(path: str, size: int, inodes: int) -> None:
    """A new size for a kept (empty) workspace."""
    options = f"size={size},nr_inodes={inodes}".encode()
    _check(
        _libc.mount(b"tmpfs", os.fsencode(path), b"tmpfs", _MS_REMOUNT | _MS_NOSUID | _MS_NODEV, options),
        f"remount tmpfs on {path}",
    )


def unmount(path: str) -> None:
    """Detach a workspace's tmpfs (lazily: a job's leftovers may still hold it)."""
    _check(_libc.umount2(os.fsencode(path), _MNT_DETACH), f"unmount {path}")


class FileTooLarge(Exception):
    """A file to read is over the caller's limit: refused whole, never cut."""

    pass


class Workspace:
    """One job's directory tree: ``path`` (its cwd) and ``tmp``."""

    def __init__(self, root: str, owner, privileged: bool, size: int | None):
        self.root = root
        self.path = os.path.join(root, "work")
        self.tmp = os.path.join(root, "tmp")
        self.owner = owner
        self.privileged = privileged
        self.size = size
        self._mounted = False

    def create(self, known_empty: bool = False, kept: int | None = None) -> None:
        """``known_empty``: (unprivileged) the slot's last job's workspace
        was emptied by ``remove``, and no process of that job is left: no
        need to look.  ``kept`` (privileged): the slot's tmpfs is still
        mounted, emptied by ``empty``, with that size."""
        if self.privileged and kept is not None:
            size = self.size or DEFAULT_SIZE
            if size != kept:  # (empty: any size fits)
                remount_tmpfs(self.root, size, max(MIN_INODES, size // BYTES_PER_INODE))
            self._mounted = True
            return
        if not self.privileged:
            if known_empty:
                return
            if not os.path.isdir(self.path):
                for d in (self.root, self.path, self.tmp):
                    os.makedirs(d, 0o700, exist_ok=True)
            elif os.listdir(self.path) or os.listdir(self.tmp):
                raise OSError(errno.ENOTEMPTY, f"{self.root} still holds a job's files")
            return
        self._mount_point()
        size = self.size or DEFAULT_SIZE
        mount_tmpfs(self.root, size, max(MIN_INODES, size // BYTES_PER_INODE), self.owner.uid, self.owner.gid)
        self._mounted = True
        for sub in (self.path, self.tmp):
            os.mkdir(sub, 0o700)
            os.chown(sub, self.owner.uid, self.owner.gid)

    def _mount_point(self) -> None:
        """Make sure the root is an empty mount point, not mounted yet: two
        ``lstat`` (``ismount`` and ``makedirs`` took eight system calls and
        a ``realpath`` in Python), and a ``mkdir`` at a slot's first job."""
        try:
            st = os.lstat(self.root)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(self.root), 0o711, exist_ok=True)
            os.mkdir(self.root, 0o700)
            return
        if not stat.S_ISDIR(st.st_mode):
            raise OSError(errno.ENOTDIR, f"{self.root} is not a directory")
        parent = os.lstat(os.path.dirname(self.root))
        if st.st_dev != parent.st_dev or st.st_ino == parent.st_ino:
            raise OSError(errno.EBUSY, f"{self.root} is still mounted")

    @property
    def mounted(self) -> bool:
        """The workspace is its own tmpfs (privileged mode)."""
        return self._mounted

    def unmounted(self) -> None:
        """Someone else (the sandbox's reaper) has unmounted it."""
        self._mounted = False

    def unmount_if_mounted(self) -> None:
        """Detach the tmpfs unless the reaper has done so already."""
        if self._mounted:
            unmount(self.root)
            self._mounted = False

    @property
    def mounted_size(self) -> int:
        """The size the tmpfs was mounted with (privileged mode)."""
        return self.size or DEFAULT_SIZE

    def empty(self) -> None:
        """Privileged, with no process of the job left: remove what the job
        left in its tmpfs, which stays mounted, through descriptors; put
        ``work/`` and ``tmp/`` back, the job user's and mode 0700 (a job may
        have replaced, moved or opened them up); raises OSError when the
        root is no longer a mount of ours."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if st.st_dev == os.lstat(os.path.dirname(self.root)).st_dev:
                raise OSError(errno.EINVAL, f"{self.root} is no longer mounted")
            uid, gid = self.owner.uid, self.owner.gid
            if (st.st_mode & 0o7777, st.st_uid, st.st_gid) != (0o700, uid, gid):
                os.fchown(fd, uid, gid)
                os.fchmod(fd, 0o700)
            kept = set()
            for name in os.listdir(fd):
                if name in ("work", "tmp") and _empty_at(fd, name, uid, gid):
                    kept.add(name)
                else:
                    _remove_at(fd, name)
            for name in ("work", "tmp"):
                if name not in kept:
                    os.mkdir(name, 0o700, dir_fd=fd)
                    os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)
        finally:
            os.close(fd)

    def remove(self) -> None:
        """Unmount (privileged), or empty without following links."""
        if self.privileged:
            self.unmount_if_mounted()
            return
        for directory in (self.path, self.tmp):
            _empty(directory)

    def write_file(self, name: str, data: bytes, mode: int = 0o644) -> str:
        """Stage an input file before the job starts (nothing planted yet)."""
        parts = _safe_parts(name)
        directory = self.path
        for part in parts[:-1]:
            directory = os.path.join(directory, part)
            if not os.path.isdir(directory):
                os.mkdir(directory, 0o755)
                self._chown(directory)
        target = os.path.join(directory, parts[-1])
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        try:
            _write_all(fd, data)
            if self.privileged:
                os.fchown(fd, self.owner.uid, self.owner.gid)
        finally:
            os.close(fd)
        return target

    def make_dir(self, name: str, mode: int = 0o755) -> str:
        """A directory for the job (made before it starts)."""
        path = os.path.join(self.path, *_safe_parts(name))
        os.mkdir(path, mode)
        self._chown(path)
        return path

    def _chown(self, path: str) -> None:
        if self.privileged:
            os.chown(path, self.owner.uid, self.owner.gid, follow_symlinks=False)

    def read_file(self, name: str, limit: int) -> bytes:
        """Read what the job wrote, refusing links, non-files and big files."""
        parts = _safe_parts(name)
        dirfd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            for part in parts[:-1]:
                nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
                os.close(dirfd)
                dirfd = nxt
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dirfd)
        finally:
            os.close(dirfd)
        return _read_regular(fd, name, limit)


def read_files(directory: str, max_files: int, max_bytes: int) -> list[tuple[str, bytes]]:
    """The regular files a job left in ``directory`` (a path no job can
    replace), sorted by name, at most ``max_bytes`` together; links and
    other odd entries are skipped, never followed."""
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        names = sorted(os.listdir(dir_fd))
        if len(names) > max_files:
            raise ValueError(f"{len(names)} files, more than {max_files}")
        files, total = [], 0
        for name in names:
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
                data = _read_regular(fd, name, max_bytes - total)
            except FileTooLarge:
                raise ValueError(f"the files exceed {max_bytes} bytes") from None
            except OSError:
                continue  # a link, a FIFO, a directory...
            total += len(data)
            files.append((name, data))
        return files
    finally:
        os.close(dir_fd)


def _read_regular(fd: int, name: str, limit: int) -> bytes:
    """Read an open file (and close it): a regular file of at most ``limit``
    bytes, or OSError / FileTooLarge."""
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, f"{name} is not a regular file")
        if st.st_size > limit:
            raise FileTooLarge(f"{name} has {st.st_size} bytes, more than {limit}")
        chunks, total = [], 0
        while total <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            raise FileTooLarge(f"{name} grew past {limit} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _empty(directory: str) -> None:
    """Delete what is inside ``directory`` through a file descriptor: a
    symlink planted in place of the directory, or inside it, is removed,
    never followed."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    except OSError as e:
        if e.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        os.unlink(directory)  # replaced by a link or a file: put a directory back
        os.mkdir(directory, 0o700)
        return
    try:
        for name in os.listdir(fd):
            _remove_at(fd, name)
    finally:
        os.close(fd)


def _is_dir(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(name, dir_fd=dir_fd).st_mode)
    except FileNotFoundError:
        return False


def _remove_at(dir_fd: int, name: str) -> None:
    """Remove ``name`` in ``dir_fd``, a tree or not, never following a link."""
    if _is_dir(dir_fd, name):
        shutil.rmtree(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)


def _empty_at(dir_fd: int, name: str, uid: int, gid: int) -> bool:
    """Empty the directory ``name`` in ``dir_fd`` (opened without following
    a link) and make it ``uid``'s, mode 0700; False if it is not a directory."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            return False
        raise
    try:
        st = os.fstat(fd)
        if (st.st_mode & 0o7777, st.st_uid, st.st_gid) != (0o700, uid, gid):
            os.fchown(fd, uid, gid)
            os.fchmod(fd, 0o700)
        for entry in os.listdir(fd):
            _remove_at(fd, entry)
    finally:
        os.close(fd)
    return True


def _safe_parts(name: str) -> list[str]:
    parts = name.split("/")
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\0" in name:
        raise ValueError(f"bad file name {name!r}")
    return parts


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
