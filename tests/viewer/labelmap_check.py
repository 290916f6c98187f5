"""Run OHIF's SEG labelmap builder (seg_check.mjs under Node) and compare its result with the truth.

The comparison is per source SOP Instance UID: the viewer's labelmap on that
image must equal the expected one voxel for voxel (segment numbers included),
which implies the same count per slice.
"""
from __future__ import annotations

import base64
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

VIEWER_DIR = Path(__file__).resolve().parent
SEG_CHECK = VIEWER_DIR / "seg_check.mjs"
REQUIRED_MODULES = ("@cornerstonejs/adapters", "@cornerstonejs/core", "@cornerstonejs/tools", "dcmjs", "@babel/runtime")


class SegCheckFailed(RuntimeError):
    """The adapter refused the SEG (OHIF would not display it)."""


def node_missing_reason() -> str | None:
    """Why the Node check cannot run here, or None when it can."""
    if shutil.which("node") is None:
        return "node is not installed (deploy/setup.sh test installs the viewer check's npm packages)"
    missing = [name for name in REQUIRED_MODULES if not (VIEWER_DIR / "node_modules" / name / "package.json").exists()]
    if missing:
        return f"npm packages missing in tests/viewer/node_modules ({', '.join(missing)}): run `npm ci --prefix tests/viewer`"
    return None


@dataclass
class LabelmapImage:
    """What the viewer put on one source image."""

    sop_instance_uid: str
    instance_number: int
    mask: np.ndarray | None  # rows x cols labelmap, None when empty


@dataclass
class AdapterLabelmap:
    segments: dict[int, str]
    images: list[LabelmapImage]
    warnings: list[str]
    overlapping: bool
    adapter_ms: float


def run_seg_check(seg: Path, sources: list[Path], shape: tuple[int, int], timeout: float = 60) -> AdapterLabelmap:
    """The labelmap OHIF's builder makes of ``seg`` on the stack ``sources`` (in that order)."""
    run = subprocess.run(["node", str(SEG_CHECK), str(seg), *map(str, sources)],
                         capture_output=True, text=True, timeout=timeout, cwd=VIEWER_DIR)
    if run.returncode != 0:
        raise SegCheckFailed(run.stderr.strip().splitlines()[0] if run.stderr.strip() else f"exit {run.returncode}")
    data = json.loads(run.stdout)
    images = []
    for item in data["images"]:
        mask = None
        if item["mask"]:
            mask = np.frombuffer(base64.b64decode(item["mask"]), dtype=np.uint8).reshape(shape)
        images.append(LabelmapImage(item["sopInstanceUID"], item["instanceNumber"], mask))
    return AdapterLabelmap(
        segments={s["number"]: s["label"] for s in data["segments"]}, images=images,
        warnings=data["warnings"], overlapping=data["overlapping"], adapter_ms=data["adapterMs"],
    )


def mismatches(labelmap: dict[str, np.ndarray | None], expected: dict[str, np.ndarray]) -> list[str]:
    """One line per source image whose labelmap differs from the truth; empty when all agree.

    ``labelmap`` maps SOP Instance UID to the viewer's labelmap (None = empty);
    an image the viewer has no entry for at all counts as a mismatch.
    """
    problems = []
    for uid, truth in expected.items():
        if uid not in labelmap:
            problems.append(f"{uid}: no labelmap image in the viewer")
            continue
        got = labelmap[uid]
        got = np.zeros_like(truth) if got is None else got
        if not np.array_equal(got, truth):
            differing = int(np.count_nonzero(got != truth))
            problems.append(f"{uid}: {np.count_nonzero(got)} voxels shown, {np.count_nonzero(truth)} expected, "
                            f"{differing} differ")
    extra = set(labelmap) - set(expected)
    problems += [f"{uid}: labelmap on an image that is not a source" for uid in sorted(extra)]
    return problems
