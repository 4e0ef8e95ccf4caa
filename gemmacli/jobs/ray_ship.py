"""Getting a model folder to Ray workers that do not share the driver's file system.

Why this shape
--------------
* The driver packs the folder once (an uncompressed tar of the files its manifest lists, plus the
  manifest) and puts it in Ray's object store once. Every actor receives the same ObjectRef; the object
  store moves the bytes to each node once, however many tasks or actors run there, and nothing is copied
  per task.
* A worker first looks for the driver's folder at the same path (a single machine, a shared file system,
  an image baked with the model): if its manifest is byte-for-byte the driver's, it is used as is and the
  tar is never fetched.
* Otherwise the tar is unpacked into a folder keyed by the sha256 of the manifest, under a lock so that
  two actors on one node unpack it once; every file is re-hashed against the manifest before the folder is
  published (renamed into place). A later actor finds the published folder and only checks sizes.

Nothing here imports ray at module level: the object store is reached through the caller's `put`/`get`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gemmacli.errors import ModelError

#: Where workers unpack shipped models: `<temp>/gemmacli-ray-models/<manifest sha256>/<folder name>`.
UNPACK_ROOT_ENV = "GEMMACLI_RAY_MODELS"


@dataclass(frozen=True)
class ModelShipment:
    """What an actor needs to find or rebuild the driver's model folder (small and picklable: the tar
    itself stays in the object store, behind `blob`, an ObjectRef)."""

    folder: str  # the folder on the driver (used in place where it exists with the same manifest)
    manifest_sha256: str  # sha256 of manifest.json's bytes: identifies the whole folder
    blob: Any = None  # ObjectRef of the tar, or None when shipping is off (the folder must exist)
    always_unpack: bool = False  # ignore a local folder (tests; a node with a stale copy at that path)


def manifest_digest(folder: Path) -> str | None:
    """sha256 of the folder's manifest.json, or None when it has none (then it cannot be shipped)."""
    from gemmacli.models.store import MANIFEST

    try:
        return hashlib.sha256((folder / MANIFEST).read_bytes()).hexdigest()
    except OSError:
        return None


def pack_model(folder: Path) -> bytes:
    """The manifest and every file it lists, as one uncompressed tar (INT4 weights do not compress)."""
    from gemmacli.models.store import MANIFEST, read_manifest

    manifest = read_manifest(folder)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for relative in [MANIFEST, *sorted(manifest["files"])]:
            try:
                tar.add(folder / relative, arcname=relative, recursive=False)
            except OSError as exc:
                raise ModelError(f"cannot pack {folder / relative} for the Ray workers: {exc}") from exc
    return buffer.getvalue()


def ship_model(folder: Path, *, put: Callable[[bytes], Any] | None, always_unpack: bool = False
               ) -> ModelShipment:
    """Describe the driver's model for its workers; with `put` (ray.put) the packed folder goes into the
    object store once. Without `put`, workers must find the folder at the same path."""
    digest = manifest_digest(folder)
    if digest is None:
        if put is not None or always_unpack:
            raise ModelError(f"{folder} has no manifest.json, so it cannot be shipped to Ray workers",
                             hint="give --ray-ship never when every node has this folder")
        return ModelShipment(str(folder), "")
    blob = put(pack_model(folder)) if put is not None else None
    return ModelShipment(str(folder), digest, blob, always_unpack)


def unpack_root() -> Path:
    return Path(os.environ.get(UNPACK_ROOT_ENV) or Path(tempfile.gettempdir()) / "gemmacli-ray-models")


def materialize(shipment: ModelShipment, get: Callable[[Any], bytes]) -> Path:
    """The model folder this worker loads: the driver's own path when it holds the same manifest, else the
    shipped tar unpacked and verified (once per node; `get` is ray.get)."""
    local = Path(shipment.folder)
    if not shipment.always_unpack and (
        not shipment.manifest_sha256 or manifest_digest(local) == shipment.manifest_sha256
    ):
        return local
    if shipment.blob is None:
        raise ModelError(f"the model folder {local} is not on this Ray node (or differs from the driver's)",
                         hint="drop --ray-ship never, so the driver ships the model")
    key = shipment.manifest_sha256
    home = unpack_root() / key
    target = home / (local.name or "model")
    home.mkdir(parents=True, exist_ok=True)
    with _locked(home / ".lock"):
        if manifest_digest(target) == key:
            from gemmacli.models.store import check_sizes, read_manifest

            check_sizes(target, read_manifest(target))  # published whole and verified; cheap re-check
            return target
        staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=home))
        try:
            _unpack(get(shipment.blob), staging)
            _verify(staging, key)
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _unpack(data: bytes, into: Path) -> None:
    """Regular files only, no absolute or `..` names: the tar is ours, but it crossed a network."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        for member in tar.getmembers():
            name = Path(member.name)
            if not member.isfile() or name.is_absolute() or ".." in name.parts:
                raise ModelError(f"the shipped model holds an unexpected entry {member.name!r}")
            source = tar.extractfile(member)
            assert source is not None
            destination = into / name
            destination.parent.mkdir(parents=True, exist_ok=True)
            with source, destination.open("wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)


def _verify(folder: Path, manifest_sha256: str) -> None:
    """The manifest is the driver's (its sha256), and every file matches the manifest's sha256."""
    from gemmacli.models.store import verify_model

    if manifest_digest(folder) != manifest_sha256:
        raise ModelError("the shipped model's manifest.json differs from the driver's (damaged in transit)")
    verify_model(folder)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
