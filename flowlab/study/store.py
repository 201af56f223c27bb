"""A run folder: resolved config, manifest, per-cell arrays and rows, summary table.

Layout::

    RUN/config.json        the resolved config (what determines the results)
    RUN/manifest.json      versions, devices, git commit, sessions, each cell's status
    RUN/cells/ID.npz       a cell's arrays (seed axis first)
    RUN/cells/ID.json      a cell's summary rows (one per seed)
    RUN/summary.csv        all finished rows, in grid order

Every file is written atomically (temporary file in the same folder, then os.replace), and a
cell counts as finished only once its arrays and rows are on disk and the manifest says so:
a killed run leaves a folder that resumes. A folder holding another config is refused.
"""

import csv
import datetime as _dt
import io
import json
import math
import os
import platform
import subprocess
import sys
from importlib import metadata

import numpy as np

from .records import parse_value

__all__ = ["RunStore", "StoreError", "atomic_write", "read_summary"]


class StoreError(RuntimeError):
    """The run folder cannot be used (another config, not a run folder, damaged)."""


def now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def atomic_write(path: str, data: bytes | str) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a part."""
    if isinstance(data, str):
        data = data.encode()
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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


class RunStore:
    """One run folder. Use `RunStore.open(path, study)` to create or resume it."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        self.cells_dir = os.path.join(self.path, "cells")
        self.manifest = self._read_json("manifest.json")

    # reading ------------------------------------------------------------------------------
    def _read_json(self, name):
        p = os.path.join(self.path, name)
        if not os.path.isfile(p):
            raise StoreError(f"{self.path} is not a flowlab run folder (no {name})")
        with open(p) as f:
            return json.load(f)

    @property
    def config(self) -> dict:
        return self._read_json("config.json")

    def cell_ids(self) -> list[str]:
        return list(self.manifest["cells"])

    def is_done(self, cell_id: str) -> bool:
        entry = self.manifest["cells"].get(cell_id, {})
        return entry.get("status") == "done" and all(
            os.path.isfile(os.path.join(self.cells_dir, f"{cell_id}{ext}"))
            for ext in (".npz", ".json")
        )

    def load_arrays(self, cell_id: str) -> dict[str, np.ndarray]:
        with np.load(os.path.join(self.cells_dir, f"{cell_id}.npz"), allow_pickle=False) as f:
            return {k: f[k] for k in f.files}

    def load_rows(self, cell_id: str) -> list[dict]:
        with open(os.path.join(self.cells_dir, f"{cell_id}.json")) as f:
            return json.load(f)

    def rows(self) -> list[dict]:
        """All finished rows, in grid order."""
        out = []
        for cid in self.cell_ids():
            if self.is_done(cid):
                out.extend(self.load_rows(cid))
        return out

    # creating / resuming ------------------------------------------------------------------
    @classmethod
    def open(cls, path: str, study, cells) -> "RunStore":
        """Create the folder for `study`, or resume it when it holds the same config.

        `cells` is the expanded grid (objects with .id and .values). Raises StoreError when
        the folder holds another config or something that is not a run."""
        path = os.path.abspath(path)
        config = study.as_dict()
        fingerprint = study.fingerprint()
        started = os.path.isfile(os.path.join(path, "manifest.json"))
        if os.path.isdir(path) and os.listdir(path) and (
            started or not os.path.isfile(os.path.join(path, "config.json"))
        ):
            # (config.json without a manifest: killed while creating, nothing computed yet)
            if not os.path.isfile(os.path.join(path, "config.json")):
                raise StoreError(
                    f"{path} exists and is not a flowlab run folder; choose another --out"
                )
            store = cls(path)
            old = store.manifest.get("fingerprint")
            if old != fingerprint:
                before, after = _flatten(store.config), _flatten(config)
                diffs = [
                    f"{k}: {before.get(k, '<unset>')!r} -> {after.get(k, '<unset>')!r}"
                    for k in sorted(set(before) | set(after))
                    if before.get(k) != after.get(k)
                    and k not in ("output.dir", "output.columns", "description")
                ]
                raise StoreError(
                    f"{path} holds results of a different config (fingerprint {old}, this "
                    f"config {fingerprint}); refusing to mix them. Differences: "
                    + ("; ".join(diffs[:8]) or "(none in values: format change)")
                    + ". Use another --out folder, or delete this one to start over."
                )
            # same results: refresh what only shapes the output (description, report columns)
            atomic_write(os.path.join(path, "config.json"), _json(config))
            store.manifest["sessions"].append({"start": now(), "end": None, **environment()})
            store._write_manifest()
            return store
        os.makedirs(os.path.join(path, "cells"), exist_ok=True)
        atomic_write(os.path.join(path, "config.json"), _json(config))
        manifest = {
            "name": study.name,
            "source": os.path.abspath(study.source),
            "fingerprint": fingerprint,
            "created": now(),
            "status": "running",
            "sessions": [{"start": now(), "end": None, **environment()}],
            "cells": {c.id: {"status": "pending", "values": c.values} for c in cells},
        }
        atomic_write(os.path.join(path, "manifest.json"), _json(manifest))
        return cls(path)

    def _write_manifest(self):
        atomic_write(os.path.join(self.path, "manifest.json"), _json(self.manifest))

    def mark(self, cell_id: str, status: str, **info) -> None:
        entry = self.manifest["cells"].setdefault(cell_id, {})
        entry.update(status=status, **info)
        self._write_manifest()

    def save_cell(self, cell_id: str, arrays: dict, rows: list[dict], **info) -> None:
        """Store a finished cell: arrays, rows, then the manifest entry (in that order)."""
        buf = io.BytesIO()
        np.savez_compressed(buf, **{k: np.asarray(v) for k, v in arrays.items()})
        atomic_write(os.path.join(self.cells_dir, f"{cell_id}.npz"), buf.getvalue())
        atomic_write(os.path.join(self.cells_dir, f"{cell_id}.json"), _json(rows))
        self.mark(cell_id, "done", finished=now(), **info)
        self.write_summary()

    def write_summary(self) -> str:
        rows = self.rows()
        path = os.path.join(self.path, "summary.csv")
        if not rows:
            return path
        columns = list(rows[0])
        for r in rows[1:]:
            columns += [c for c in r if c not in columns]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: _fmt(v) for k, v in r.items()})
        atomic_write(path, buf.getvalue())
        return path

    def close(self, status: str) -> None:
        self.manifest["status"] = status
        self.manifest["sessions"][-1]["end"] = now()
        self._write_manifest()


def _fmt(v):
    if isinstance(v, float):
        return "nan" if math.isnan(v) else repr(v)
    return v


def read_summary(path: str) -> list[dict]:
    """summary.csv as a list of dicts, each value parsed to its RunRecord column's type."""
    if os.path.isdir(path):
        path = os.path.join(path, "summary.csv")
    if not os.path.isfile(path):
        raise StoreError(f"no summary at {path}: has the run finished any cell?")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [{k: parse_value(k, v) for k, v in r.items()} for r in rows]
