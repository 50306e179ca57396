"""The manifest ``make_data.json`` of a data set folder: its settings and a checksum per Arrow file.

``make_dataset`` writes the manifest before rendering (it marks the folder as this tool's own) and adds
``"checksums": {file name: "sha256:<hex>"}`` for the Arrow files and their JSON metadata when it
assembles them. ``load_source``
verifies those checksums before memory-mapping the files, so flipped bytes are an error naming the
file instead of a crash inside Arrow or silently altered rows. Hashing reads each file once at
about 1 GB/s, far less than decoding its images and labels.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from stablemtl.utils import atomic_write_text

logger = logging.getLogger(__name__)
MANIFEST = "make_data.json"
_CHUNK = 1 << 20
_warned_unverified: set[str] = set()  # folders already warned about (warn once per process)


def read_manifest(folder: Path) -> dict | None:
    """The manifest of ``folder`` as a dict, None when there is none; a damaged one raises ``ValueError``."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(
            f"{path} (the stablemtl-make-data manifest) cannot be read ({type(err).__name__}: {err}); "
            "restore it, or delete the folder and render it again"
        ) from err
    if not isinstance(manifest, dict):
        raise ValueError(f"{path} (the stablemtl-make-data manifest) must hold a JSON object")
    return manifest


def write_manifest(folder: Path, manifest: dict) -> None:
    """Write ``manifest`` atomically (its temporary file is ``.make_data.json.*.tmp`` beside it)."""
    atomic_write_text(Path(folder) / MANIFEST, json.dumps(manifest, indent=2))


def file_checksum(path: Path) -> str:
    """``"sha256:<hex>"`` of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def data_files(folder: Path) -> list[str]:
    """The Arrow file names that ``datasets``' ``state.json`` of ``folder`` lists (clear error if damaged)."""
    state_path = Path(folder) / "state.json"
    try:
        state = json.loads(state_path.read_text())
        return [str(entry["filename"]) for entry in state["_data_files"]]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{state_path} cannot be read ({type(err).__name__}: {err})") from err


def missing_data_files(folder: Path) -> list[str]:
    """Arrow files listed in ``state.json`` that are not on disk (a data set with any is incomplete)."""
    return [name for name in data_files(folder) if not (Path(folder) / name).is_file()]


def verify_data_files(folder: Path) -> None:
    """Raise ``ValueError`` naming a listed Arrow file that is missing or whose checksum differs from the
    manifest's; warn once per folder when the manifest records no checksums (older data sets)."""
    folder = Path(folder)
    missing = missing_data_files(folder)
    if missing:
        raise ValueError(
            f"{folder} is incomplete: its data file(s) {missing} are missing; run stablemtl-make-data again "
            "with the same settings to render them again"
        )
    recorded = (read_manifest(folder) or {}).get("checksums")
    if not isinstance(recorded, dict):
        key = str(folder.resolve())
        if key not in _warned_unverified:
            _warned_unverified.add(key)
            logger.warning(
                "%s records no checksums (written before stablemtl-make-data recorded them, or by another "
                "tool): damaged bytes in its Arrow files cannot be detected; render it again to add them",
                folder,
            )
        return
    unrecorded = [name for name in data_files(folder) if name not in recorded]
    if unrecorded:
        raise ValueError(f"{folder}: data files {unrecorded} have no checksum in {MANIFEST}; render it again")
    for name, expected in recorded.items():
        if Path(name).name != name or name in ("", ".", ".."):  # only files of this folder are ours to read
            raise ValueError(f"{folder / MANIFEST} lists {name!r}, which is not a file name of this folder")
        if not (folder / name).is_file():
            raise ValueError(f"{folder / name}, recorded in {MANIFEST}, is missing; render the data again")
        if file_checksum(folder / name) != expected:
            raise ValueError(
                f"{folder / name} is damaged: its checksum differs from the one recorded in "
                f"{MANIFEST} when it was written; run stablemtl-make-data again with the same settings to "
                "render the data set again"
            )
