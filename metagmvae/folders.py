"""Folders this project writes into, and the record of what it wrote there.

Every folder a command writes into (a run folder, a data build, a feature export, figures, clusters,
predictions) is opened as an OutputFolder.  Before any other file, the folder gets RECORD: what kind of
folder it is ("Omniglot run", "SimCLR features", ...) and, for every file the project wrote there, its size
and SHA-256.  A file is replaced or deleted only when the record lists it and its content still matches;
every other file is the user's and stays as it is, whatever its name.  A folder that holds files but no
record is refused, whatever the files are (copies of a run's files look like a run written before records
existed: nothing tells them apart), and so is a record of another kind or one that names anything outside
the folder (at most one subfolder deep, no "..", no absolute path).

No write, replacement, deletion or lock follows a symbolic link: every operation is made relative to the
folder's descriptor with O_NOFOLLOW, and a link where the project would write is refused.  Only the process
that holds the folder's lock (LOCK_FILE, an flock; a hard link there is refused) writes in it, so two
processes never write one record.

A file is written to a temporary name listed in the record before it is created, fsynced, listed in the
record beside its previous version, renamed over the old one, then the record keeps the new version only:
a crash at any moment leaves each file whole and recognised.
"""
import csv
import errno
import fcntl
import hashlib
import io
import json
import os
import re
import secrets
import stat
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .runfiles import (DISK_FULL, UserError, check_readable, check_writable_folder, checkpoint_bytes,
                       load_checkpoint, metric_number, name_list, special_file_kind)

RECORD = ".metagmvae-files.json"
RECORD_FORMAT = 1
LOCK_FILE = ".metagmvae-lock"  # a name of this project's own: another tool's .lock is the user's file
LOCK_TEXT = re.compile(r"meta-gmvae PID (\d+)\n")  # what the lock holder writes into LOCK_FILE
PID_WAIT_S = 1.0  # how long a refused process waits for the lock holder to have written its PID
HASH_BLOCK = 1 << 20
# output folder (absolute, as given) -> the folder it led to when this process checked it (OutputFolder.check,
# check_outside_inputs): entered later, it must lead there still (a link made meanwhile would lead elsewhere)
_CHECKED_TARGETS = {}
SHELL_VARIABLE = re.compile(r"\$\{?[A-Za-z_]\w*")  # a path part that starts as an unexpanded $NAME or ${NAME}


def file_digest(fd):
    """{"size", "sha256"} of the open file `fd`."""
    digest, offset = hashlib.sha256(), 0
    while block := os.pread(fd, HASH_BLOCK, offset):
        digest.update(block)
        offset += len(block)
    return {"size": offset, "sha256": digest.hexdigest()}


def _read_pid(fd):
    """The PID that the holder of the lock file `fd` wrote, or None if it wrote none within PID_WAIT_S."""
    deadline = time.monotonic() + PID_WAIT_S
    while True:
        match = LOCK_TEXT.fullmatch(os.pread(fd, 64, 0).decode(errors="replace"))
        if match or time.monotonic() > deadline:
            return int(match[1]) if match else None
        time.sleep(0.01)


TEMPORARY_NAME = re.compile(r"\..+\.[0-9a-f]{8}\.tmp")  # what `writing` names a file before its rename
TEMPORARY_TARGET = re.compile(r"(^|/)\.(.+)\.[0-9a-f]{8}\.tmp$")  # the file a temporary of `writing` becomes
RECORD_TEMPORARY = re.compile(re.escape(RECORD) + r"\.[0-9a-f]{8}\.tmp")  # what _write_record writes first
MAX_RECORD_BYTES = 1 << 28  # a record file larger than this is not read as one


def _inside_name(name, depth):
    """Whether `name` names something inside the folder, at most `depth` subfolders down: parts that are
    not empty, "." or "..", and hold no NUL (a record edited to reach outside is damaged)."""
    parts = name.split("/")
    return len(parts) <= depth + 1 and all(part not in ("", ".", "..") and "\0" not in part for part in parts)


def _valid_record(record):
    """Why `record` (parsed JSON) is not a record of ours, or None."""
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        return f"not a format-{RECORD_FORMAT} record"
    if not isinstance(record.get("kind"), str):
        return "no kind"
    versions = [v for key in ("files", "replacing") for v in (record.get(key) or {}).values()]
    if not all(isinstance(record.get(key), dict) and all(isinstance(n, str) for n in record[key])
               for key in ("files", "replacing")) \
            or not all(isinstance(v, dict) and isinstance(v.get("size"), int) and isinstance(v.get("sha256"), str)
                       for v in versions):
        return "its file list is damaged"
    if not all(isinstance(record.get(key), list) and all(isinstance(n, str) for n in record[key])
               for key in ("folders", "temporary")):
        return "its folder list is damaged"
    names = [*record["files"], *record["replacing"]]
    if not all(_inside_name(n, 1) for n in names) or not all(_inside_name(n, 0) for n in record["folders"]) \
            or not all(_inside_name(n, 1) and TEMPORARY_NAME.fullmatch(n.rpartition("/")[2])
                       for n in record["temporary"]):
        return "it names files outside the folder, or files this project does not write"
    return None


class OutputFolder:
    """A folder this process writes into (see the module docstring).  Use it in a `with`: entering creates
    the folder if missing, checks it (refusing a folder of files without RECORD, a record of another kind,
    a folder another process holds) and takes its lock; leaving releases the lock, and on an error removes
    the folders entering created if they are still empty.

    kind: what the folder holds, stored in its record ("Omniglot run").  flag: the flag that named it, for
    messages ("--save-dir")."""

    def __init__(self, path, kind, flag):
        self.path, self.kind, self.flag = Path(path), kind, flag
        self.record, self._fd, self._lock_fd, self._deferred = None, None, None, False
        self._created = []  # the folders entering created, deepest first

    def _check_tilde(self):
        """Refuse a path whose first part starts with ~, or with a part that starts as a shell variable ($HOME,
        ${RUNS}): "~/x" or '$HOME/x' quoted, or read from a file, reach us unexpanded."""
        if self.path.parts and self.path.parts[0].startswith("~"):
            raise UserError(f"{self.flag} {self.path}: the shell did not expand its ~ (quoted?), so it would be a "
                            f"folder named {self.path.parts[0]!r} here; write it unquoted, or ./{self.path} for that")
        variable = next((part for part in self.path.parts if SHELL_VARIABLE.match(part)), None)
        if variable is not None:
            raise UserError(f"{self.flag} {self.path}: the shell did not expand {variable} (single-quoted, or read "
                            f"from a file?), so it would be a folder named {variable!r}; give the path it stands for")

    def _check_outside_runs(self):
        """Refuse a folder inside a run folder of this project (a record of kind "... run" in a folder above):
        the run writes there for hours, and another command's files there would stop it."""
        for folder in resolved(self.path, self.flag).parents:
            record = folder / RECORD
            try:
                kind = json.loads(record.read_bytes()).get("kind") if record.is_file() else None
            except (OSError, ValueError, AttributeError, RecursionError):
                continue
            if isinstance(kind, str) and kind.endswith(" run"):
                raise UserError(f"{self.flag} {self.path} lies inside {folder}, a run folder of this project "
                                f"({kind}): its run writes there and would stop at files another command wrote; "
                                "choose a folder outside it")

    def __enter__(self):
        self._check_tilde()
        checked = _CHECKED_TARGETS.get(Path(os.path.abspath(self.path)))
        if checked is not None and resolved(self.path, self.flag) != checked:
            raise UserError(f"{self.flag} {self.path} now leads to {resolved(self.path, self.flag)}, not to {checked} "
                            "as when the command checked it at its start (a link made or changed since?): nothing "
                            "is written there")
        self._check_outside_runs()
        if self.path.is_symlink() and not self.path.exists():
            raise UserError(f"cannot write to {self.flag} {self.path}: it is {special_file_kind(self.path)}")
        self._created = [p for p in (self.path, *self.path.parents) if not os.path.lexists(p)]
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as e:
            if e.errno in (errno.EEXIST, errno.ENOTDIR):  # the path, or a folder it names, is a file
                file = next(p for p in (self.path, *self.path.parents) if os.path.lexists(p) and not p.is_dir())
                reason = "it is not a folder" if file == self.path else f"{file} is not a folder"
            else:
                reason = e.strerror or e
            raise UserError(f"cannot write to {self.flag} {self.path}: {reason}") from None
        try:
            self._check_claimable()
            self._lock()
            for name in self._record_temporaries():  # a record write killed before its rename: the old record holds
                os.unlink(name, dir_fd=self._fd)  # (each record write precedes the file changes it lists)
            if RECORD in self._entries():  # read under the lock: as the previous holder left it
                self.record = self._read_record()
                self._check_kind(self.record)
                if self.record["temporary"]:  # left by a killed write
                    self._remove_temporaries()
            else:  # written with the first file
                self.record = {"format": RECORD_FORMAT, "kind": self.kind, "files": {}, "replacing": {},
                               "folders": [], "temporary": []}
        except BaseException:
            if self._lock_fd is not None:
                os.unlink(LOCK_FILE, dir_fd=self._fd)  # while still held
            self._close()
            self._remove_created_if_empty()
            raise
        return self

    def __exit__(self, exc_type, *exc):
        if self._lock_fd is not None:
            try:
                os.unlink(LOCK_FILE, dir_fd=self._fd)  # while still held: no other process holds this file
            except OSError:  # the folder deleted, or made read-only, while the command ran: a lock file left
                pass  # behind is released (flock) and taken over by the next command; the error in flight stays
        if exc_type is not None and self.path in self._created and self._entries() == [RECORD] and not any(
                self.record[key] for key in ("files", "replacing", "folders", "temporary")):
            os.unlink(RECORD, dir_fd=self._fd)  # a record of nothing, alone in a folder this failed command created
        self._close()
        if exc_type is not None:
            self._remove_created_if_empty()

    def _remove_created_if_empty(self):
        """An error left nothing in the folders entering created: remove them (rmdir removes only an empty
        folder, so anything written there since, by anyone, keeps its folder)."""
        for folder in self._created:
            try:
                os.rmdir(folder)
            except OSError:
                return

    def _close(self):
        for fd in (self._lock_fd, self._fd):
            if fd is not None:
                os.close(fd)
        self._lock_fd = self._fd = None

    # ---- the record

    def _entries(self, fd=None):
        return sorted(os.listdir(self._fd if fd is None else fd))

    def visible_entries(self):
        """Names in the folder besides RECORD and LOCK_FILE, folders with a trailing slash."""
        return [n + "/" * stat.S_ISDIR(self._lstat(n).st_mode) for n in self._entries() if n not in (RECORD, LOCK_FILE)]

    def _lstat(self, name, fd=None):
        return os.stat(name, dir_fd=self._fd if fd is None else fd, follow_symlinks=False)

    def _read_record(self):
        where = self.path / RECORD
        try:
            if not stat.S_ISREG(self._lstat(RECORD).st_mode):
                raise UserError(f"{where} is not a regular file (a link?); choose another {self.flag}")
            fd = os.open(RECORD, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=self._fd)
            with os.fdopen(fd, "rb") as f:
                record = json.loads(f.read())
        except (OSError, ValueError, RecursionError) as e:
            raise UserError(f"{where}: cannot read the record of what this project wrote here ({e}); "
                            f"its files are left as they are: choose another {self.flag}") from None
        reason = _valid_record(record)
        if reason:
            raise UserError(f"{where} is damaged ({reason}); its files are left as they are: choose another "
                            f"{self.flag}")
        return record

    def _write_record(self):
        """Write self.record to RECORD through a temporary file (unless deferred: see one_record_write)."""
        if self._deferred:
            return
        tmp = f"{RECORD}.{secrets.token_hex(4)}.tmp"  # RECORD_TEMPORARY
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666, dir_fd=self._fd)
        try:
            os.write(fd, (json.dumps(self.record, indent=1, sort_keys=True) + "\n").encode())
            os.fsync(fd)
            os.replace(tmp, RECORD, src_dir_fd=self._fd, dst_dir_fd=self._fd)
        finally:
            os.close(fd)
            try:
                os.unlink(tmp, dir_fd=self._fd)
            except FileNotFoundError:
                pass

    def claim(self):
        """Write the record now rather than with the first file: for a folder that other commands fill with
        subfolders of their own before this one writes a file in it."""
        self._write_record()
        return self

    @contextmanager
    def one_record_write(self):
        """Write the record once, as the block ends (on failure too), instead of twice per file: for commands
        that write thousands of small files.  A crash inside the block leaves the files written so far out of
        the record: the user's, to this project, never replaced."""
        self._deferred = True
        try:
            yield self
        finally:
            self._deferred = False
            self._write_record()

    @contextmanager
    def reading(self):
        """Open the existing folder for the block without writing or locking it: self.record is its record,
        or None where it has none."""
        self._fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            self.record = self._read_record() if RECORD in self._entries() else None
            yield self
        finally:
            self.record = None
            self._close()

    def check(self, names=()):
        """Refuse now, writing nothing, a folder that entering would refuse (a lock held by another process
        aside), or where one of `names` is a file this project may not replace: for commands that write their
        outputs only after long work.  Entering later refuses the folder if its path leads elsewhere then."""
        remember_target(self.path)
        self._check_tilde()
        self._check_outside_runs()
        check_writable_folder(self.path, self.flag)
        if not self.path.is_dir():
            return
        with self.reading():
            self._check_claimable()
            for name in names if self.record is not None else ():
                self.check_replaceable(name)

    def _check_claimable(self):
        """Refuse a folder that holds files but no record, a record of another kind, or a LOCK_FILE this
        project did not write."""
        entries, record_temporaries = self._entries(), self._record_temporaries()
        names = [n for n in entries if n != LOCK_FILE and n not in record_temporaries]
        if LOCK_FILE in entries and not self._holds_a_pid(LOCK_FILE):
            info = os.stat(LOCK_FILE, dir_fd=self._fd, follow_symlinks=False)
            if stat.S_ISREG(info.st_mode) and info.st_nlink > 1:
                raise UserError(f"{self.flag} {self.path} holds a {LOCK_FILE} with {info.st_nlink} hard links (the "
                                "folder copied with cp -al or hard links?): a lock shared with another folder would "
                                f"lock both; delete {self.path / LOCK_FILE} (no process may be writing in the "
                                "folder) and run again")
            raise UserError(f"{self.flag} {self.path} holds a {LOCK_FILE} that this project did not write (not a "
                            f"regular file, empty, or another text); move it or choose another {self.flag}")
        if RECORD in names:
            self._check_kind(self._read_record())
        elif names:
            raise UserError(f"{self.flag} {self.path} holds {name_list(names)} but no record of this project "
                            f"({RECORD}), so none of it was written here by this project and none of it will be "
                            "replaced (copies of a run's files, or a run written before this project kept "
                            "records, are not its to replace): choose a new or empty folder")

    def _check_kind(self, record):
        if record["kind"] != self.kind:
            raise UserError(f"{self.flag} {self.path} holds files of another kind ({record['kind']}, says its "
                            f"{RECORD}), not of {self.kind}: choose another {self.flag}")

    def _record_temporaries(self):
        """Names of the temporary files of record writes killed before their rename (RECORD_TEMPORARY): each a
        regular file of one link holding a whole record of this folder's kind, as _write_record writes it
        before anything else happens to the file (a record being written is as much ours as RECORD itself)."""
        found = []
        for name in self._entries():
            if not RECORD_TEMPORARY.fullmatch(name):
                continue
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=self._fd)
            except OSError:
                continue
            try:
                info = os.fstat(fd)
                if stat.S_ISREG(info.st_mode) and info.st_nlink == 1 and info.st_size <= MAX_RECORD_BYTES:
                    record = json.loads(os.pread(fd, info.st_size, 0))
                    if _valid_record(record) is None and record["kind"] == self.kind:
                        found.append(name)
            except (OSError, ValueError, RecursionError):
                pass
            finally:
                os.close(fd)
        return found

    def _holds_a_pid(self, name):
        """Whether `name` is a regular file of one link holding LOCK_TEXT, as a lock file of this project does
        (its holder writes it right after creating the file: an empty one is waited for up to PID_WAIT_S, then
        counts as the user's)."""
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=self._fd)
        except OSError:
            return False
        try:
            info = os.fstat(fd)
            return stat.S_ISREG(info.st_mode) and info.st_nlink == 1 and _read_pid(fd) is not None
        finally:
            os.close(fd)

    def _lock(self):
        """Open and flock LOCK_FILE, write our PID into it."""
        while True:
            try:
                fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644, dir_fd=self._fd)
            except OSError as e:
                raise UserError(f"cannot lock {self.flag} {self.path}: {self.path / LOCK_FILE} "
                                f"{'is a symbolic link' if e.errno == errno.ELOOP else e.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _read_pid(fd)
                os.close(fd)
                holder = "another process" if pid is None else f"another process (PID {pid})"
                raise UserError(f"{self.flag} {self.path} is in use: {holder} is writing in it; wait for it to end "
                                f"or choose another {self.flag}") from None
            try:
                current = os.path.samestat(os.fstat(fd), self._lstat(LOCK_FILE))
            except FileNotFoundError:
                current = False
            if current:  # else its holder removed the file as we opened it: lock the one now there
                self._lock_fd = fd
                try:
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, f"meta-gmvae PID {os.getpid()}\n".encode(), 0)
                except OSError as e:  # entering removes the lock file, and the folder if it created it
                    reason = f"the disk is full ({e.strerror})" if e.errno in DISK_FULL else e.strerror or str(e)
                    raise UserError(f"cannot lock {self.flag} {self.path}: {reason}") from None
                return
            os.close(fd)

    # ---- files

    def _subfolder(self, name, create):
        """(descriptor of the folder that holds `name` (self's or a subfolder's, opened without following
        links), base name).  create: make the subfolder if missing (recorded).  Close a descriptor that is
        not self._fd after use."""
        folder, _, base = name.rpartition("/")
        if not folder:
            return self._fd, base
        try:
            if create and folder not in self._entries():
                os.mkdir(folder, dir_fd=self._fd)
                self.record["folders"].append(folder)
                self._write_record()
            return os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=self._fd), base
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise UserError(f"cannot write to {self.path / folder}: it is a symbolic link or not a folder; "
                                "this project writes through no link") from None
            if e.errno == errno.ENOENT:
                return None, base
            raise

    def _open_file(self, name):
        """A read descriptor of `name` (relative), opened through the folder's descriptor without following a
        link and without waiting on a FIFO, or None where nothing can be opened so."""
        fd, base = self._subfolder(name, create=False)
        if fd is None:
            return None
        try:
            return os.open(base, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
        except OSError:
            return None
        finally:
            if fd != self._fd:
                os.close(fd)

    def _digest_of(self, name, sizes):
        """{"size", "sha256"} of `name` (relative) if it is a regular file (no link followed) of a size among
        `sizes`, else None."""
        file_fd = self._open_file(name)
        if file_fd is None:
            return None
        try:
            info = os.fstat(file_fd)
            return file_digest(file_fd) if stat.S_ISREG(info.st_mode) and info.st_size in sizes else None
        finally:
            os.close(file_fd)

    def current_path(self):
        """Where the opened folder is now (it may have been moved since it was opened): the path the system
        gives its descriptor (Linux's /proc), else the path it was opened at."""
        try:
            return Path(os.readlink(f"/proc/self/fd/{self._fd}"))
        except OSError:
            return self.path

    def read_owned(self, name):
        """The bytes of `name` (relative), read through the folder's descriptor without following a link (a
        folder moved meanwhile is still this one), if they are a content the record lists for it; else None
        (changed since, not in the record, not a regular file)."""
        versions = [v for key in ("files", "replacing") if (v := self.record[key].get(name)) is not None]
        file_fd = self._open_file(name) if versions else None
        if file_fd is None:
            return None
        try:
            if not stat.S_ISREG(os.fstat(file_fd).st_mode):
                return None
            chunks = []
            while chunk := os.read(file_fd, HASH_BLOCK):
                chunks.append(chunk)
            data = b"".join(chunks)
        finally:
            os.close(file_fd)
        return data if {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()} in versions else None

    def owns(self, name):
        """Whether `name` (relative, e.g. "figures/curves.png") is a regular file that the record lists with
        its present content."""
        versions = [v for key in ("files", "replacing") if (v := self.record[key].get(name)) is not None]
        return bool(versions) and self._digest_of(name, {v["size"] for v in versions}) in versions

    def adopt_copy(self, name, originals):
        """Record `name` as ours when its content is, byte for byte, that of a file the record lists under one
        of the names `originals` (the user copied one of our files to one of our names: its bytes are ours);
        returns whether it did."""
        versions = [self.record["files"][n] for n in originals if n in self.record["files"]]
        digest = self._digest_of(name, {v["size"] for v in versions})
        if digest is None or digest not in versions:
            return False
        self.record["files"][name] = digest
        self._write_record()
        return True

    def exists(self, name):
        fd, base = self._subfolder(name, create=False)
        if fd is None:
            return False
        try:
            self._lstat(base, fd)
            return True
        except FileNotFoundError:
            return False
        finally:
            if fd != self._fd:
                os.close(fd)

    def check_replaceable(self, name):
        """Refuse to write `name` where a file of the user's (not in the record, changed since, a link) is."""
        if self.exists(name) and not self.owns(name):
            raise UserError(f"{self.path / name} was not written by this project (it is not in its record "
                            f"{RECORD}, has changed since, or is not a regular file), so it is not replaced: move "
                            f"it or choose another {self.flag}")

    @contextmanager
    def writing(self, name):
        """Yield a binary file for the new content of `name` (relative, at most one subfolder deep); on
        success it replaces `name` (see the module docstring).  A full disk or another write failure raises
        UserError naming the file; `name` then keeps its previous content (or stays absent)."""
        path = self.path / name
        self.check_replaceable(name)
        fd, base = self._subfolder(name, create=True)
        if fd is None:  # its folder cannot be made: this folder was deleted while the command ran
            raise UserError(f"cannot write {path}: {self.path} no longer exists (deleted while this command ran); "
                            f"{Path(name).name} was not written")
        tmp, existed = None, self.exists(name)
        try:
            tmp = f".{base}.{secrets.token_hex(4)}.tmp"
            recorded_tmp = name.rpartition("/")[0] + "/" * ("/" in name) + tmp
            self.record["temporary"].append(recorded_tmp)  # before it exists: a kill leaves no unrecorded file
            self._write_record()
            file_fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666, dir_fd=fd)
            with os.fdopen(file_fd, "wb+") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
                version = file_digest(f.fileno())
            self.record["replacing"][name] = version
            self._write_record()
            os.replace(tmp, base, src_dir_fd=fd, dst_dir_fd=fd)
            tmp = None
            self.record["files"][name] = self.record["replacing"].pop(name)
            self.record["temporary"].remove(recorded_tmp)
            self._write_record()
        except OSError as e:
            kept = "keeps its previous content" if existed else "was not written"
            reason = f"the disk is full ({e.strerror})" if e.errno in DISK_FULL else e.strerror or str(e)
            raise UserError(f"cannot write {path}: {reason}; {Path(name).name} {kept}") from None
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp, dir_fd=fd)
                except FileNotFoundError:
                    pass
                self.record["temporary"].remove(recorded_tmp)
                try:
                    self._write_record()
                except OSError:  # the disk is full: the record lists a temporary file that is gone
                    pass
            if fd != self._fd:
                os.close(fd)

    def __truediv__(self, name):
        return FolderPath(self, name)

    def write_bytes(self, name, data):
        with self.writing(name) as f:
            f.write(data)

    def write_text(self, name, text):
        self.write_bytes(name, text.encode())

    def write_json(self, name, obj):
        self.write_bytes(name, canonical_json(obj))

    def remove(self, name):
        """Delete `name` if the record lists it with its present content; returns whether it did."""
        if not self.owns(name):
            return False
        fd, base = self._subfolder(name, create=False)
        try:
            os.unlink(base, dir_fd=fd)
        except OSError as e:
            raise UserError(f"cannot remove {self.path / name}, which this project wrote: {e.strerror}; it and the "
                            "files not yet removed stay as they are") from None
        finally:
            if fd != self._fd:
                os.close(fd)
        self.record["files"].pop(name, None)
        self.record["replacing"].pop(name, None)
        self._write_record()
        return True

    def _remove_temporaries(self):
        """Delete the temporary files the record lists (a write killed before its rename left them; each was
        listed before it was created, and only the lock holder writes here), then the entries of those gone.
        A file that cannot be deleted (a read-only folder) keeps its entry; so do all if the record cannot
        be written."""
        left = []
        for tmp in self.record["temporary"]:
            fd, base = self._subfolder(tmp, create=False)
            try:
                if fd is not None and stat.S_ISREG(self._lstat(base, fd).st_mode):
                    os.unlink(base, dir_fd=fd)
            except FileNotFoundError:
                pass
            except OSError:
                left.append(tmp)
            finally:
                if fd not in (None, self._fd):
                    os.close(fd)
        listed, self.record["temporary"] = self.record["temporary"], left
        try:
            self._write_record()
        except OSError:
            self.record["temporary"] = listed

    def remove_recorded(self):
        """Delete every file and leftover temporary file the record lists that still matches it, then the
        subfolders made for them if empty; returns the names kept (the user's, or changed since written)."""
        for name in sorted({*self.record["files"], *self.record["replacing"]}):
            self.remove(name)
        self._remove_temporaries()
        for folder in self.record["folders"]:
            try:
                os.rmdir(folder, dir_fd=self._fd)
            except OSError:  # not empty (the user's files), or gone
                pass
        self.record.update(files={}, replacing={}, temporary=[],
                           folders=[f for f in self.record["folders"] if f in self._entries()])
        self._write_record()
        return self.visible_entries()


@dataclass(frozen=True)
class FolderPath:
    """A file's place in an opened OutputFolder: `folder / "figures" / "curves.png"` is figures/curves.png."""
    folder: OutputFolder
    name: str

    def __truediv__(self, name):
        return FolderPath(self.folder, f"{self.name}/{name}")

    @property
    def path(self):
        return self.folder.path / self.name

    def writing(self):
        return self.folder.writing(self.name)


def resolved(path, flag):
    """`path` made absolute with every symbolic link on it followed; a link loop on the way (which pathlib
    reports as RuntimeError or OSError, by Python version) raises UserError naming `flag`."""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError) as e:
        raise UserError(f"{flag} {path}: its symbolic links cannot be followed ({e}): a link loop?") from None


def remember_target(path):
    """Note where output folder `path` leads now (see _CHECKED_TARGETS); a path whose links cannot be
    followed is refused where it is checked."""
    try:
        _CHECKED_TARGETS[Path(os.path.abspath(path))] = Path(path).resolve()
    except (RuntimeError, OSError):
        pass


def check_outside_inputs(output, flag, inputs):
    """Refuse an output folder that is one of the `inputs` ((flag, folder) pairs: folders the command reads,
    or its other outputs), lies inside one or holds one (a run writes figures/ in its folder): nothing is
    written into a folder the user gives as input (nor, entered later, where the path leads then:
    remember_target)."""
    remember_target(output)
    output = resolved(output, flag)
    for input_flag, folder in inputs:
        folder = resolved(folder, input_flag)
        if output == folder or folder in output.parents:
            where = "is" if output == folder else "lies inside"
            raise UserError(f"{flag} {output} {where} {input_flag} {folder}; the outputs go to a folder of their "
                            f"own: choose another {flag}")
        if output in folder.parents:
            raise UserError(f"{input_flag} {folder} lies inside {flag} {output}; the outputs go to a folder of "
                            f"their own, which holds no input: choose another {flag}")


def check_as_written(path, flag, names):
    """Refuse an input folder (`flag` names it) that is no longer as the command that wrote it left it: its
    record lists writes that have not ended ("replacing", "temporary": a build or export killed midway, or
    one still running), or one of `names` (the files the caller reads) has changed since, or was put there
    by something else (not a regular file with the content the record lists: the test split of another
    export copied in, say); either way its files may not belong together.  A folder without a record
    (built by other code) is not checked."""
    if not (Path(path) / RECORD).is_file():
        return
    for name in names:  # a file this user may not read is not a changed one
        if (Path(path) / name).is_file():
            check_readable(Path(path) / name)
    with OutputFolder(path, None, flag).reading() as folder:
        temporaries = [TEMPORARY_TARGET.sub(r"\1\2", name) for name in folder.record["temporary"]]
        unfinished = sorted({*folder.record["replacing"], *temporaries})
        changed = [name for name in names if folder.exists(name) and not folder.owns(name)]
    if unfinished:
        raise UserError(f"{flag} {path}: the command that wrote it has not finished (its record {RECORD} lists "
                        f"writes that never ended: {name_list(unfinished)}), so its files may come from two runs "
                        "of it: if it was stopped, run it again")
    if changed:
        raise UserError(f"{flag} {path}: {name_list(changed)} changed since the command that wrote the folder "
                        f"wrote {'it' if len(changed) == 1 else 'them'} (not the content its record {RECORD} "
                        "lists), so the folder's files may not belong together (a split of another build or "
                        "export copied in?): write the folder again, or, to read it as data of your own, remove "
                        f"{RECORD}")


# ---- the run folder

CONFIG, METRICS, RESULTS, EVAL_RESULTS, LAST_CHECKPOINT = (
    "config.json", "metrics.csv", "results.json", "eval_results.json", "last.pt")
FIGURES = "figures"
# The names a run writes in its folder (figures alone: where the folder is not a folder, a link say); only these
# can clash with a user's file.
RUN_FILE_NAMES = re.compile(r"(config\.json|metrics\.csv|results\.json|eval_results\.json|last\.pt"
                            r"|best_(\d+shot|elbo)\.pt|figures"
                            r"|figures/(reconstructions|mixture|test_episode|curves)\.png)")


def canonical_json(obj):
    """The bytes this project writes for a JSON file."""
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def metrics_table(rows):
    """metrics.csv's text: a header of the union of the rows' keys, in order, then the rows."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


class RunDir:
    """The run folder of a `model` ("Omniglot", "Mini-ImageNet", "SimCLR"): config.json, metrics.csv,
    checkpoints (*.pt), results.json and figures/, in an OutputFolder of kind "<model> run".

    Paths are available at once; writing needs the folder opened (`opened`), which holds its lock."""

    def __init__(self, path, model):
        self.path, self.model, self.folder = Path(path), model, None

    @contextmanager
    def opened(self):
        """Hold the folder for the block (see OutputFolder)."""
        with OutputFolder(self.path, f"{self.model} run", "--save-dir") as self.folder:
            try:
                yield self
            finally:
                self.folder = None

    def check(self, names=()):
        """OutputFolder.check of the run folder."""
        OutputFolder(self.path, f"{self.model} run", "--save-dir").check(names)

    @staticmethod
    def _present_run_names(folder):
        """The names of run files (RUN_FILE_NAMES) in the folder, links, folders and other kinds included
        (all but the figures folder itself, whose files are listed)."""
        names = [n.rstrip("/") for n in folder.visible_entries() if n != f"{FIGURES}/"]
        if f"{FIGURES}/" in folder.visible_entries():
            names += [f"{FIGURES}/{n}" for n in sorted(os.listdir(folder.path / FIGURES))]
        return [n for n in names if RUN_FILE_NAMES.fullmatch(n) and os.path.lexists(folder.path / n)]

    def check_resumable(self):
        """Refuse --resume unless the folder has a last.pt, saying what to do instead."""
        if not self.path.is_dir():
            raise UserError(f"--resume: {self.path} does not exist; run without --resume to start a run there")
        if not self.last_checkpoint.is_file():
            unwritten = "" if self.recorded_best() else " (the run wrote no checkpoint yet)"
            raise UserError(f"--resume: {self.path} holds no {LAST_CHECKPOINT}{unwritten}"
                            + self.instead_of_last("run without --resume to start the run anew"))

    def recorded_best(self):
        """The best_*.pt checkpoints this run wrote (in the record, unchanged), sorted."""
        if not (self.path / RECORD).is_file():
            return []
        with OutputFolder(self.path, f"{self.model} run", "--save-dir").reading() as folder:
            if folder.record["kind"] != folder.kind:  # not a run of this model
                return []
            return sorted(n for n in folder.record["files"] if n.startswith("best_") and RUN_FILE_NAMES.fullmatch(n)
                          and folder.owns(n))

    def instead_of_last(self, otherwise):
        """The end of a message about an absent or unreadable last.pt: the best_*.pt checkpoints this run wrote
        (recorded_best) that could be resumed from instead, if any, else `otherwise` (what to do)."""
        best = self.recorded_best()
        if best:
            hold = "hold checkpoints" if len(best) > 1 else "holds a checkpoint"
            return f"; {name_list(best)} in {self.path} {hold} of this run: copy one to {LAST_CHECKPOINT} to resume"
        return f"; {otherwise}"

    def owns_last_checkpoint(self):
        """Whether the opened folder's last.pt is the one this project wrote, or a copy of a best_*.pt it wrote
        (as instead_of_last advises), which is then recorded as last.pt."""
        folder = self.folder
        return folder.owns(LAST_CHECKPOINT) or folder.adopt_copy(
            LAST_CHECKPOINT, [n for n in folder.record["files"] if n.startswith("best_")])

    def prepare(self, config, resume=False, overwrite=False):
        """Make the opened folder ready for training and write config.json; returns what it removed, as a line
        to print, or None.

        Every file of a run's names (RUN_FILE_NAMES) that is there must be ours (in the record, unchanged),
        or the run could not write it later.  Without resume, a folder whose record lists files of a run
        besides config.json (a run stopped before its first checkpoint) is refused unless overwrite; those
        recorded files are then removed, nothing else.  With resume, results.json and eval_results.json are
        removed: they describe checkpoints that the training now changes (a run stopped before its end would
        leave numbers that no checkpoint there gave)."""
        folder = self.folder
        clashes = [n for n in self._present_run_names(folder) if not folder.owns(n)]
        if clashes:
            raise UserError(f"{self.path} holds {name_list(clashes)}, which a run writes, but this project did not "
                            f"write them (not in its record {RECORD}, changed since, or not a regular file): move "
                            "them or choose another --save-dir")
        note = None
        if resume:
            results = [n for n in (RESULTS, EVAL_RESULTS) if n in folder.record["files"]]
            for name in results:
                folder.remove(name)
            if results:
                note = (f"removed {name_list(results)} from {self.path}: the checkpoints they describe change as "
                        "the run goes on (it writes its results again when it ends)")
        else:
            earlier = [n for n in folder.record["files"] if n != CONFIG]
            if LAST_CHECKPOINT in earlier and not overwrite:
                raise UserError(f"{self.path} already holds a run; pass --resume to continue it, --overwrite to "
                                "replace it (only the files the run wrote are removed), or choose another --save-dir")
            if earlier and not overwrite:
                raise UserError(f"{self.path} holds files this project wrote ({name_list(earlier)}); pass "
                                "--overwrite to replace them, or choose another --save-dir")
            if earlier:
                kept = name_list(folder.remove_recorded())
                note = f"replaced the run in {self.path}" + (f"; kept the files this project did not write: {kept}"
                                                             if kept else "")
        folder.write_json(CONFIG, config)
        return note

    def earlier_config(self):
        """The config.json of the run in the folder if its record lists it unchanged, else None (reads only)."""
        if not (self.path / RECORD).is_file():
            return None
        with OutputFolder(self.path, f"{self.model} run", "--save-dir").reading() as folder:
            if folder.record["kind"] != folder.kind or not folder.owns(CONFIG):
                return None
            return json.loads((self.path / CONFIG).read_text())

    @property
    def last_checkpoint(self):
        return self.path / LAST_CHECKPOINT

    @property
    def metrics(self):
        return self.path / METRICS

    def checkpoint(self, name):
        return self.path / f"{name}.pt"

    def read_checkpoint(self, name):
        """The state of checkpoint `name`.pt as this run wrote it, read through the opened folder (a folder
        moved meanwhile is read where it is now); a file changed since, or not this run's, raises UserError:
        its test would score another model."""
        data = self.folder.read_owned(f"{name}.pt")
        if data is None:
            raise UserError(f"{self.checkpoint(name)} is not the checkpoint this run wrote (changed since, not in its "
                            f"record {RECORD}, or a link), so the test would score another model: put the run's "
                            "own file back and run the same command with --resume to test it")
        return load_checkpoint(self.checkpoint(name), data)

    def save_checkpoint(self, name, state):
        """Write checkpoint `name`.pt (e.g. "last", "best_1shot")."""
        self.folder.write_bytes(f"{name}.pt", checkpoint_bytes(state))

    def read_metrics(self, up_to, key="step"):
        """Rows of metrics.csv (as strings) whose `key` column is <= up_to, those a checkpoint at up_to has
        seen, the last being up_to's.  A missing file, one that is not a table of numbers with a `key` column,
        or one without up_to's row raises UserError: --resume would lose or garble the run's history."""
        fix = "restore it, or start the run anew with --overwrite"
        if not self.metrics.is_file():
            raise UserError(f"--resume: {self.metrics} is missing (it holds the run's rows up to {key} {up_to} "
                            f"of {LAST_CHECKPOINT}); {fix}")
        try:
            with self.metrics.open(newline="") as f:
                rows = list(csv.DictReader(f))
            for row in rows:
                for value in row.values():
                    if value != "":  # an empty cell is a column that other rows have
                        metric_number(value)  # raises on a cell that is not a number (None: a short row)
            steps = [int(row[key]) for row in rows]
        except (OSError, UnicodeDecodeError, csv.Error, ValueError, TypeError, KeyError) as e:
            if isinstance(e, OSError):
                raise UserError(f"--resume: cannot read {self.metrics} ({e.strerror or e}); {fix}") from None
            reason = f"no {key!r} column" if isinstance(e, KeyError) else "not a table of numbers"
            raise UserError(f"--resume: {self.metrics} is damaged ({reason}); {fix}") from None
        seen = [row for row, step in zip(rows, steps) if step <= up_to]
        if not seen or int(seen[-1][key]) != up_to:
            raise UserError(f"--resume: {self.metrics} has no row for {key} {up_to} of {LAST_CHECKPOINT}; {fix}")
        return seen

    def write_metrics(self, rows):
        self.folder.write_text(METRICS, metrics_table(rows))

    def write_results(self, results, name=RESULTS):
        self.folder.write_json(name, results)
