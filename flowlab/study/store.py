"""A run folder: resolved config, manifest, per-cell arrays and rows, summary table.

Layout::

    RUN/config.json        the resolved config (what determines the results; the SHA-256 of
                           a data file's contents included)
    RUN/manifest.json      sessions (versions, devices, git commit, host, pid, part), each
                           cell's status, the session that computed it and the SHA-256 of its
                           two files, those of config.json and summary.csv, and of its own
                           contents; the folder's status (running, complete, failed,
                           interrupted, or partial: other parts' cells still to do)
    RUN/cells/ID.npz       a cell's arrays (seed axis first)
    RUN/cells/ID.json      a cell's summary rows (one per seed)
    RUN/summary.csv        all finished rows, in grid order
    RUN/.flowlab.lock      the manifest's lock (an OS file lock, `filelock`): held while a run
                           re-reads, changes and writes the manifest and the summary
    RUN/cells/.ID.lock     a cell's lock: held by the run computing that cell

The folder cannot lie:

- every file is written atomically (temporary file in the same folder, then os.replace), and a
  cell counts as finished only once its arrays and rows are on disk and the manifest records
  their checksums: a killed run leaves a folder that resumes;
- a finished cell whose file is missing, or does not match its checksum, is reported and
  recomputed by the next run; `plot` and `report` refuse it, naming the file;
- an unreadable manifest is rebuilt by the next run from config.json (when it is the same
  config) and the cell files that load completely; `plot` and `report` name it;
- a folder holding another config (or results of other data) is refused, listing the
  differences.

Any number of runs may write one folder at once (`flowlab run --part I/N`, or whole runs): a
run computes a cell only while it holds that cell's lock, and changes the manifest only under
the manifest's lock, re-reading it from disk first, so that no run loses another's cells. The
summary is written with every change of the manifest, from all the cells finished so far. The
OS releases the locks of a killed run (even by kill -9): its unfinished cell is taken by the
next run that reaches it.

Every problem is a StoreError whose message names the path.
"""

import contextlib
import csv
import datetime as _dt
import hashlib
import io
import json
import math
import os
import platform
import re
import subprocess
import sys
import uuid
from importlib import metadata

import numpy as np

from .records import columns, parse_value

__all__ = ["LOCK_NAME", "RunStore", "StoreError", "atomic_write", "check_run_folder",
           "read_summary"]

#: the manifest's lock file inside a run folder
LOCK_NAME = ".flowlab.lock"
#: seconds a run waits for the manifest's lock (held only while a run writes the manifest and
#: the summary) before it calls the folder stuck
LOCK_TIMEOUT = 60.0
_TMP = re.compile(r"^\..+\.tmp\d+$")  # atomic_write's temporary files
_LOCK = re.compile(r"^\..+\.lock$")  # the manifest's lock, the cells' locks


class StoreError(RuntimeError):
    """The run folder cannot be used (another config, not a run folder, damaged, in use,
    not writable); the message names the path and the problem."""


def now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def atomic_write(path: str, data: bytes | str) -> str:
    """Write `data` to `path` so that readers see the old file or the new one, never a part;
    returns the SHA-256 of the bytes written. A file-system failure is a StoreError naming
    `path`, and leaves no temporary file behind."""
    if isinstance(data, str):
        data = data.encode()
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.remove(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise StoreError(f"cannot write {path}: {e.strerror or e}") from None
        raise
    return _sha256(data)


def _json(obj) -> str:
    def default(o):
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        raise TypeError(f"not JSON-serialisable: {type(o).__name__}")

    return json.dumps(obj, indent=2, sort_keys=False, default=default, allow_nan=True) + "\n"


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


def git_commit(path: str) -> dict | None:
    """The commit (and whether the tree is dirty) of the git checkout holding `path`."""
    try:
        run = lambda *a: subprocess.run(
            ["git", *a], cwd=path, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        commit = run("rev-parse", "HEAD")
        dirty = bool(run("status", "--porcelain", "--untracked-files=no"))
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict:
    """Package versions, devices and precision of this process."""
    import jax

    versions = {"python": sys.version.split()[0]}
    for pkg in ("flowlab", "jax", "jaxlib", "equinox", "diffrax", "lineax", "optimistix",
                "numpy", "scipy", "matplotlib"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "versions": versions,
        "platform": platform.platform(),
        "devices": [str(d) for d in jax.devices()],
        "backend": jax.default_backend(),
        "x64": bool(jax.config.jax_enable_x64),
        "git": git_commit(os.path.dirname(os.path.abspath(__file__))),
    }


# --- the folder itself ---------------------------------------------------------------------


def _entries(path: str) -> list[str]:
    """What a folder holds, less lock files and left-over temporary files."""
    return [n for n in os.listdir(path) if not _LOCK.match(n) and not _TMP.match(n)]


def check_run_folder(path: str) -> str:
    """Check, writing nothing, that `path` can be a run folder: an existing run folder, an empty
    folder, or a path that can be created, on a writable file system. Returns the absolute
    path; raises StoreError naming the path and the problem."""
    path = os.path.abspath(path)
    if os.path.lexists(path) and not os.path.isdir(path):
        raise StoreError(f"{path} is a file, not a run folder; choose another --out")
    existing = path
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise StoreError(f"cannot create the run folder {path}: {existing} is a file")
    if existing == path:
        names = _entries(path)
        fresh = names == ["cells"] and os.path.isdir(os.path.join(path, "cells")) and not _entries(
            os.path.join(path, "cells"))  # created, then killed before config.json
        if names and not fresh and not ({"manifest.json", "config.json"} & set(names)):
            raise StoreError(f"{path} exists and is not a flowlab run folder (it holds "
                             f"{', '.join(sorted(names)[:3])}{', ...' if len(names) > 3 else ''}); "
                             "choose another --out")
    if not os.access(existing, os.W_OK | os.X_OK):
        why = "read-only file system" if _read_only_fs(existing) else "permission denied"
        raise StoreError(f"cannot write the run folder {path}: {existing} is not writable ({why})")
    return path


def _read_only_fs(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def _new_lock(path: str):
    """The manifest's lock of the run folder `path` (not yet taken)."""
    from filelock import FileLock

    return FileLock(os.path.join(path, LOCK_NAME), thread_local=False)


def _take_lock(path: str, timeout: float | None = None, lock=None):
    """Take the manifest's lock (`lock`, or a new one), waiting up to `timeout` seconds
    (default LOCK_TIMEOUT). An OS lock: released when the process ends, even by kill -9."""
    from filelock import Timeout

    timeout = LOCK_TIMEOUT if timeout is None else timeout
    lock = lock if lock is not None else _new_lock(path)
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        raise StoreError(f"{path} is in use by another flowlab run (it has held {lock.lock_file} "
                         f"for over {timeout:g} s, where a run holds it only while it writes the "
                         "manifest and the summary: that run is stuck); wait for it to finish, "
                         "or choose another --out") from None
    except OSError as e:
        raise StoreError(f"cannot write the run folder {path}: {e.strerror or e}") from None
    return lock


def _try_lock(path: str, lock_path: str):
    """The lock at `lock_path`, taken at once; None when another process holds it."""
    from filelock import FileLock, Timeout

    lock = FileLock(lock_path, thread_local=False)
    try:
        lock.acquire(blocking=False)
    except Timeout:
        return None
    except OSError as e:
        raise StoreError(f"cannot write the run folder {path}: {e.strerror or e}") from None
    return lock


def _check_manifest(m) -> None:
    """Raise ValueError unless `m` has a manifest's structure."""
    ok = (isinstance(m, dict) and isinstance(m.get("fingerprint"), str)
          and isinstance(m.get("name"), str) and isinstance(m.get("sessions"), list)
          and all(isinstance(s, dict) for s in m["sessions"])
          and isinstance(m.get("cells"), dict)
          and all(isinstance(c, dict) and isinstance(c.get("status"), str)
                  for c in m["cells"].values()))
    if not ok:
        raise ValueError("not the structure of a manifest")


def _manifest_sha256(m: dict) -> str:
    """SHA-256 of a manifest's contents (less its own checksum), canonically serialised."""
    body = {k: v for k, v in json.loads(_json(m)).items() if k != "sha256"}
    return _sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def _manifest_text(m: dict) -> str:
    """The manifest as written: with the checksum of its own contents, so that a changed byte
    anywhere in it is noticed."""
    m["sha256"] = _manifest_sha256(m)
    return _json(m)


def _summary_text(rows: list[dict]) -> str:
    columns = list(rows[0])
    for r in rows[1:]:
        columns += [c for c in r if c not in columns]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _fmt(v) for k, v in r.items()})
    return buf.getvalue()


def _parse_summary(text: str) -> list[dict]:
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    return [{k: parse_value(k, v) for k, v in r.items()} for r in rows]


class RunStore:
    """One run folder. `RunStore.open(path, study, cells)` creates or resumes it for a run
    (which takes its cells with `claim` and ends with `close`); `RunStore(path)` reads it."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        if not os.path.isdir(self.path):
            raise StoreError(f"{self.path} is not a flowlab run folder (no such folder)")
        self.cells_dir = os.path.join(self.path, "cells")
        self.manifest = self._load_manifest()
        self.notes: list[str] = []  # what opening found and repaired (damaged cells, ...)
        self._verified: dict[str, str | None] = {}  # cell id -> None (intact) or the problem
        self._rows: dict[str, list[dict]] = {}
        self._manifest_lock = None  # one object per process: flock conflicts between objects
        self._held: dict = {}  # cell id -> its lock, while this process computes the cell
        self.session: str | None = None  # this run's entry in manifest["sessions"]

    def _load_manifest(self) -> dict:
        manifest = self._read_json("manifest.json")
        try:
            _check_manifest(manifest)
            if "sha256" in manifest and manifest["sha256"] != _manifest_sha256(manifest):
                raise ValueError("its contents do not match its SHA-256")
        except ValueError as e:
            raise StoreError(self._damaged("manifest.json", e)) from None
        return manifest

    def _reload(self) -> "RunStore":
        """Read the manifest again (other runs may have changed it), forgetting what was
        verified of the cells whose entries changed."""
        fresh, old = self._load_manifest(), self.manifest["cells"]
        for cid, entry in fresh["cells"].items():
            before = old.get(cid, {})
            if (before.get("status"), before.get("sha256")) != (entry.get("status"), entry.get("sha256")):
                self._verified.pop(cid, None)
                self._rows.pop(cid, None)
        self.manifest = fresh
        return self

    @contextlib.contextmanager
    def _update(self):
        """Change the manifest: under its lock, re-read from disk (so that no other run's
        cells are lost), changed by the body, then written with the summary of every finished
        cell. Yields the manifest."""
        if self._manifest_lock is None:
            self._manifest_lock = _new_lock(self.path)
        _take_lock(self.path, lock=self._manifest_lock)
        try:
            self._reload()
            yield self.manifest
            self._write_summary()
            self._write_manifest()
        finally:
            self._manifest_lock.release()

    # reading ------------------------------------------------------------------------------
    def _damaged(self, name, error) -> str:
        return (f"{os.path.join(self.path, name)} is damaged ({error}); run `flowlab run` with "
                f"this folder's config and --out {self.path} to rebuild it")

    def _read_json(self, name):
        p = os.path.join(self.path, name)
        if not os.path.isfile(p):
            raise StoreError(f"{self.path} is not a flowlab run folder (no {name})")
        try:
            with open(p, "rb") as f:
                return json.loads(f.read().decode())
        except OSError as e:
            raise StoreError(f"cannot read {p}: {e.strerror or e}") from None
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
            raise StoreError(self._damaged(name, e)) from None

    @property
    def config(self) -> dict:
        config = self._read_json("config.json")
        if not isinstance(config, dict):
            raise StoreError(self._damaged("config.json", "not a table"))
        return config

    def cell_ids(self) -> list[str]:
        return list(self.manifest["cells"])

    def cell_file(self, cell_id: str, ext: str) -> str:
        return os.path.join(self.cells_dir, f"{cell_id}.{ext}")

    def verify(self, cell_id: str) -> str | None:
        """None when the cell's two files are intact, else what is wrong, naming the file:
        missing, unreadable, or not matching the checksum in the manifest (a cell stored
        without checksums, by an older flowlab or a rebuilt manifest, must load completely)."""
        if cell_id in self._verified:
            return self._verified[cell_id]
        sums = self.manifest["cells"].get(cell_id, {}).get("sha256")
        sums = sums if isinstance(sums, dict) else {}
        problem, rows = None, None
        for ext in ("npz", "json"):
            p = self.cell_file(cell_id, ext)
            try:
                with open(p, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                problem = f"{p} is missing"
                break
            except OSError as e:
                problem = f"{p} cannot be read ({e.strerror or e})"
                break
            if ext in sums:
                if _sha256(data) != sums[ext]:
                    problem = f"{p} is damaged (its SHA-256 differs from the manifest's)"
                    break
                if ext == "json":
                    rows = json.loads(data)
                continue
            try:  # no checksum: the file must load completely (zip CRCs, JSON syntax)
                if ext == "npz":
                    with np.load(io.BytesIO(data), allow_pickle=False) as z:
                        for k in z.files:
                            z[k]
                else:
                    rows = json.loads(data)
                    if not (isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows)):
                        raise ValueError("not a list of rows")
            except Exception as e:  # noqa: BLE001 -- any failure to load is damage
                problem = f"{p} is damaged ({type(e).__name__}: {e})"
                break
        self._verified[cell_id] = problem
        if problem is None and rows is not None:
            self._rows[cell_id] = rows
        return problem

    def is_done(self, cell_id: str) -> bool:
        """Finished, and its files are intact."""
        entry = self.manifest["cells"].get(cell_id, {})
        return entry.get("status") == "done" and self.verify(cell_id) is None

    def damaged(self) -> list[str]:
        """The problems of the cells that the manifest calls done but whose files are not."""
        return [p for cid, c in self.manifest["cells"].items()
                if c.get("status") == "done" and (p := self.verify(cid)) is not None]

    def _refuse_damaged(self, cell_id: str):
        problem = self.verify(cell_id)
        if problem is not None:
            raise StoreError(f"{problem}; run `flowlab run` with this folder's config and --out "
                             f"{self.path} to recompute it")

    def load_arrays(self, cell_id: str) -> dict[str, np.ndarray]:
        self._refuse_damaged(cell_id)
        p = self.cell_file(cell_id, "npz")
        try:
            with np.load(p, allow_pickle=False) as f:
                return {k: f[k] for k in f.files}
        except Exception as e:  # noqa: BLE001 -- changed since it was verified
            raise StoreError(f"{p} is damaged ({type(e).__name__}: {e})") from None

    def load_rows(self, cell_id: str) -> list[dict]:
        self._refuse_damaged(cell_id)
        if cell_id not in self._rows:
            p = self.cell_file(cell_id, "json")
            try:
                with open(p, "rb") as f:
                    self._rows[cell_id] = json.loads(f.read())
            except (OSError, ValueError) as e:
                raise StoreError(f"{p} is damaged ({type(e).__name__}: {e})") from None
        return self._rows[cell_id]

    def rows(self) -> list[dict]:
        """All finished rows (of intact cells), in grid order."""
        out = []
        for cid in self.cell_ids():
            if self.is_done(cid):
                out.extend(self.load_rows(cid))
        return out

    def summary_rows(self) -> list[dict]:
        """The rows of summary.csv, typed as `read_summary` types them, built from the intact
        cells (not read from summary.csv)."""
        rows = self.rows()
        return _parse_summary(_summary_text(rows)) if rows else []

    def check(self) -> list[str]:
        """Verify a folder before reading it (plot, report): raises StoreError naming every
        damaged cell file; a summary.csv that does not match the finished cells is rewritten
        (when no run holds the folder and it is writable; else StoreError). Returns notes on
        what was repaired."""
        problems = self.damaged()
        if problems:
            raise StoreError("; ".join(problems) + f". Run `flowlab run` with this folder's "
                             f"config and --out {self.path} to recompute "
                             + ("these cells" if len(problems) > 1 else "the cell"))
        if "config_sha256" in self.manifest:
            p = os.path.join(self.path, "config.json")
            try:
                have = _file_sha256(p)
            except OSError as e:
                have = e.strerror
            if have != self.manifest["config_sha256"]:
                raise StoreError(self._damaged("config.json", "its SHA-256 differs from the manifest's"))
        p = os.path.join(self.path, "summary.csv")
        if "summary_sha256" not in self.manifest:  # written before checksums: trust it
            return []
        if _summary_sha256(p) == self.manifest["summary_sha256"]:
            return []
        # another run may have written both files since the manifest was read: look again
        # under the manifest's lock, and rewrite the summary only if it still differs
        if self._manifest_lock is None:
            self._manifest_lock = _new_lock(self.path)
        try:
            _take_lock(self.path, lock=self._manifest_lock)
        except StoreError as e:
            raise StoreError(f"{p} does not match the finished cells (damaged, or being written) "
                             f"and cannot be rewritten now: {e}") from None
        try:
            if _summary_sha256(p) == self._reload().manifest.get("summary_sha256"):
                return []
            self._write_summary()
            self._write_manifest()
        finally:
            self._manifest_lock.release()
        return [f"{p} did not match the finished cells; rewrote it from them"]

    # creating / resuming ------------------------------------------------------------------
    @classmethod
    def open(cls, path: str, study, cells, *, part: tuple[int, int] | None = None,
             wait: float | None = None) -> "RunStore":
        """Create the folder for `study`, or resume it when it holds the same config, under
        the manifest's lock (waiting up to `wait` seconds, default LOCK_TIMEOUT, for another
        run to release it); other runs may write the folder at the same time.

        `cells` is the expanded grid (objects with .id and .values); `part` (i, n) is recorded
        in this run's session. Finished cells whose files are damaged or missing are marked for
        recomputation (listed in `store.notes`); an unreadable manifest is rebuilt from the
        cell files. Raises StoreError when the folder holds another config, is not a run
        folder, stays locked or cannot be written."""
        path = check_run_folder(path)
        try:
            os.makedirs(os.path.join(path, "cells"), exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create the run folder {path}: {e.strerror or e}") from None
        session = {"id": uuid.uuid4().hex[:12], "start": now(), "end": None,
                   "host": platform.node(), "pid": os.getpid(),
                   **({"part": f"{part[0]}/{part[1]}"} if part else {}), **environment()}
        try:  # verified before the lock (reading every cell may take long): under it, only
            # the cells changed in between are read again
            known = cls(path)
            known.damaged()
        except StoreError:
            known = None
        lock = _take_lock(path, wait)
        try:
            store = cls._open_locked(path, study, cells, session, known)
        finally:
            lock.release()
        store._manifest_lock = lock
        store.session = session["id"]
        return store

    @classmethod
    def _open_locked(cls, path, study, cells, session, known) -> "RunStore":
        config, fingerprint = study.as_dict(), study.fingerprint()
        config_p, manifest_p = (os.path.join(path, n) for n in ("config.json", "manifest.json"))
        _remove_temporaries(path)
        notes, store = [], None
        if os.path.isfile(manifest_p):
            try:
                store = known._reload() if known is not None else cls(path)
            except StoreError as e:
                notes.append(str(e).split("; run `flowlab run`")[0])
        if store is not None:
            if store.manifest["fingerprint"] != fingerprint:
                raise StoreError(_refusal(path, store.manifest["fingerprint"], fingerprint,
                                          _stored_config(path), config))
        else:
            store = cls._create(path, study, cells, notes)
        # refresh what only shapes the output (description, report columns)
        m = store.manifest
        m["config_sha256"] = atomic_write(config_p, _json(config))
        for cid, entry in m["cells"].items():
            if entry.get("status") != "done":
                continue
            problem = store.verify(cid)
            if problem is not None:
                notes.append(f"{problem}; recomputing cell {cid}")
                entry.update(status="damaged", damage=problem)
                entry.pop("sha256", None)
            elif "sha256" not in entry:  # an older folder, or a rebuilt manifest: record them now
                entry["sha256"] = {e: _file_sha256(store.cell_file(cid, e)) for e in ("npz", "json")}
        m["status"] = "running"
        m["sessions"].append({**session, **({"repaired": notes} if notes else {})})
        store._write_summary()
        store._write_manifest()
        store.notes = notes
        return store

    @classmethod
    def _create(cls, path, study, cells, notes) -> "RunStore":
        """A new manifest: no manifest (killed while creating) or an unreadable one. The cell
        files are this config's only if config.json says so; those that load completely are
        kept."""
        config, fingerprint = study.as_dict(), study.fingerprint()
        config_p, manifest_p = (os.path.join(path, n) for n in ("config.json", "manifest.json"))
        has_cells = any(n.endswith((".npz", ".json")) for n in os.listdir(os.path.join(path, "cells")))
        if has_cells and not notes:
            notes.append(f"{manifest_p} is missing")
        if has_cells:
            old = _stored_config(path)
            if old is None:
                raise StoreError(f"{manifest_p} is missing or damaged and {config_p} is "
                                 "unreadable: nothing says which config the cell files belong "
                                 "to. Delete the folder to start over, or choose another --out")
            from .config import Study

            old_fp = Study(name=study.name, source=study.source, config=old).fingerprint()
            if old_fp != fingerprint:
                raise StoreError(_refusal(path, old_fp, fingerprint, old, config))
        atomic_write(config_p, _json(config))
        manifest = {
            "name": study.name,
            "source": os.path.abspath(study.source),
            "fingerprint": fingerprint,
            "created": now(),
            "status": "running",
            "sessions": [],
            "cells": {c.id: {"status": "pending", "values": c.values} for c in cells},
        }
        atomic_write(manifest_p, _manifest_text(manifest))
        store = cls(path)
        if has_cells:  # rebuild: adopt every cell whose files load completely
            kept = 0
            for c in cells:
                if store.verify(c.id) is None:
                    store.manifest["cells"][c.id]["status"] = "done"
                    kept += 1
            notes[-1] += f"; rebuilt it: {kept} of {len(cells)} cells kept from their files"
        return store

    def _write_manifest(self):
        atomic_write(os.path.join(self.path, "manifest.json"), _manifest_text(self.manifest))

    def claim(self, cell_id: str, values: dict) -> str:
        """Take a cell to compute. Returns 'claimed' (this process holds the cell's lock until
        `save_cell` or `mark(.., 'failed')`, and the manifest calls the cell running), 'busy'
        (another run holds its lock) or 'done' (another run finished it)."""
        lock = _try_lock(self.path, os.path.join(self.cells_dir, f".{cell_id}.lock"))
        if lock is None:
            return "busy"
        try:
            _remove_temporaries(self.path, cell_id)  # a killed writer's: the cell is ours now
            with self._update() as m:
                if self.is_done(cell_id):
                    lock.release()
                    return "done"
                entry = m["cells"].setdefault(cell_id, {})
                entry.update(status="running", started=now(), values=values, session=self.session)
                entry.pop("sha256", None)
                self._verified.pop(cell_id, None)
                self._rows.pop(cell_id, None)
        except BaseException:
            lock.release()
            raise
        self._held[cell_id] = lock
        return "claimed"

    def _release(self, cell_id: str) -> None:
        lock = self._held.pop(cell_id, None)
        if lock is not None:
            lock.release()

    def mark(self, cell_id: str, status: str, **info) -> None:
        """Record a cell's status (and `info`) in the manifest; a cell marked anything but
        running is released."""
        with self._update() as m:
            entry = m["cells"].setdefault(cell_id, {})
            entry.update(status=status, **info)
            if status != "done":
                entry.pop("sha256", None)
                self._verified.pop(cell_id, None)
                self._rows.pop(cell_id, None)
        if status != "running":
            self._release(cell_id)

    def save_cell(self, cell_id: str, arrays: dict, rows: list[dict], **info) -> None:
        """Store a finished cell: arrays, rows, then the manifest entry with the two files'
        checksums and the summary (in that order: a kill before the manifest leaves the cell
        unfinished), and release the cell."""
        buf = io.BytesIO()
        np.savez_compressed(buf, **{k: np.asarray(v) for k, v in arrays.items()})
        npz, js = buf.getvalue(), _json(rows).encode()
        sums = {"npz": atomic_write(self.cell_file(cell_id, "npz"), npz),
                "json": atomic_write(self.cell_file(cell_id, "json"), js)}
        with self._update() as m:
            entry = m["cells"].setdefault(cell_id, {})
            for k in ("error", "damage"):
                entry.pop(k, None)
            entry.update(status="done", finished=now(), sha256=sums, **info)
            self._verified[cell_id] = None
            self._rows[cell_id] = json.loads(js)
        self._release(cell_id)

    def _write_summary(self) -> str:
        """summary.csv from the intact finished cells; its checksum goes into the manifest (in
        memory: the caller writes the manifest, under the manifest's lock)."""
        rows = self.rows()
        path = os.path.join(self.path, "summary.csv")
        # no finished cell: the header alone (the file a run reports exists, and says so)
        text = _summary_text(rows) if rows else ",".join(
            n for n, _ in columns() if "." not in n) + "\n"
        self.manifest["summary_sha256"] = atomic_write(path, text)
        return path

    def write_summary(self) -> str:
        """Write summary.csv (and the manifest) from every cell finished so far."""
        with self._update():
            pass
        return os.path.join(self.path, "summary.csv")

    def close(self, status: str) -> None:
        """Write the session's end, the folder's status and the summary, and release the
        cells this run still holds. `status` is this run's ('complete', 'failed',
        'interrupted'); the folder's is 'partial' while other cells are unfinished."""
        try:
            with self._update() as m:
                for s in m["sessions"]:
                    if s.get("id") == self.session:
                        s["end"] = now()
                m["status"] = _folder_status(status, m["cells"])
        except StoreError:
            if status in ("complete", "failed"):
                raise
            # interrupted by a write failure: the first error is the one to report
        finally:
            for cell_id in list(self._held):
                self._release(cell_id)


def _folder_status(run: str, cells: dict) -> str:
    """The folder's status once a run ended with `run`: 'interrupted', or from the cells:
    'complete' (all done), 'failed' (one failed), else 'partial' (other runs' cells to do)."""
    if run == "interrupted":
        return run
    statuses = {c.get("status") for c in cells.values()}
    return "complete" if statuses <= {"done"} else "failed" if "failed" in statuses else "partial"


def _file_sha256(path: str) -> str:
    with open(path, "rb") as f:
        return _sha256(f.read())


def _summary_sha256(path: str) -> str | None:
    try:
        return _file_sha256(path)
    except OSError:
        return None


def _remove_temporaries(path: str, cell_id: str | None = None) -> None:
    """Temporary files of writers killed mid-write: of config.json, manifest.json and
    summary.csv (the caller holds the manifest's lock), or of cell `cell_id` (the caller holds
    its lock). Only these: another run may be writing the other cells now."""
    folder = path if cell_id is None else os.path.join(path, "cells")
    names = ((".config.json", ".manifest.json", ".summary.csv") if cell_id is None
             else (f".{cell_id}.npz", f".{cell_id}.json"))
    for name in os.listdir(folder):
        if _TMP.match(name) and name.rsplit(".tmp", 1)[0] in names:
            try:
                os.remove(os.path.join(folder, name))
            except OSError:
                pass


def _stored_config(path: str) -> dict | None:
    try:
        with open(os.path.join(path, "config.json"), "rb") as f:
            cfg = json.loads(f.read())
        return cfg if isinstance(cfg, dict) else None
    except (OSError, ValueError):
        return None


def _refusal(path, old, fingerprint, stored: dict | None, config: dict) -> str:
    """Why a folder is refused: the data file that changed, and the differing keys."""
    before, after = _flatten(stored or {}), _flatten(config)
    diffs = [
        f"{k}: {before.get(k, '<unset>')!r} -> {after.get(k, '<unset>')!r}"
        for k in sorted(set(before) | set(after))
        if before.get(k) != after.get(k)
        and k not in ("output.dir", "output.columns", "description", "data.sha256")
    ] if stored is not None else []
    data = ""
    a, b = before.get("data.sha256"), after.get("data.sha256")
    if stored is not None and a != b and after.get("data.file") is not None:
        data = (f"the data in {after['data.file']} differs from the data these results were "
                f"computed from (contents' SHA-256 {str(a)[:12]}... -> {str(b)[:12]}...)"
                if a is not None else f"these results were computed from other data (now "
                f"{after['data.file']})")
    what = ("; ".join(([data] if data else []) + diffs[:8])
            or "(none in values: format change)" if stored is not None
            else "(its config.json is unreadable)")
    return (f"{path} holds results of a different config (fingerprint {old}, this config "
            f"{fingerprint}); refusing to mix them. Differences: {what}. Use another --out "
            "folder, or delete this one to start over.")


def _fmt(v):
    if isinstance(v, float):
        return "nan" if math.isnan(v) else repr(v)
    return v


def read_summary(path: str) -> list[dict]:
    """summary.csv as a list of dicts, each value parsed to its RunRecord column's type
    (as written; `RunStore(path).summary_rows()` builds it from the verified cells)."""
    if os.path.isdir(path):
        path = os.path.join(path, "summary.csv")
    if not os.path.isfile(path):
        raise StoreError(f"no summary at {path}: has the run finished any cell?")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return _parse_summary(f.read())
    except OSError as e:
        raise StoreError(f"cannot read {path}: {e.strerror or e}") from None
    except (ValueError, csv.Error) as e:
        raise StoreError(f"{path} is damaged ({type(e).__name__}: {e})") from None
