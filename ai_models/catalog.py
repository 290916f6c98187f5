"""Which models exist and whether their weights are here: lookup by convention, cheap checks, a description of each.

Weight files are found as ``<weights_dir>/<model>/<key>.<ext>``; a file is
*valid* when it opens in its declared format.  Used by ``ai-models list``,
the node's ``models list``, its models page and its job workers, so every
place agrees on where a weight file is and whether it is usable.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ai_models.errors import ModelError, WeightError
from ai_models.info import ModelInfo, WeightSpec
from ai_models.registry import available_models, load_model

WEIGHT_EXTENSIONS: dict[str, tuple[str, ...]] = {"keras_h5": ("h5", "hdf5"), "torch_pickle": ("pth", "pt")}
"""File extensions tried, in order, when looking a weight file up by convention."""


# --- weight files --------------------------------------------------------------------------------


def conventional_weight_path(weights_dir: Path, model: str, spec: WeightSpec) -> Path | None:
    """``<weights_dir>/<model>/<key>.<ext>`` for the first extension of the format that exists."""
    for ext in WEIGHT_EXTENSIONS.get(spec.format, ()):
        candidate = Path(weights_dir) / model / f"{spec.key}.{ext}"
        if candidate.is_file():
            return candidate
    return None


def check_weight_file(path: Path, fmt: str) -> str | None:
    """Open ``path`` as ``fmt``; return None when it is usable, else the reason it is not."""
    try:
        if fmt == "keras_h5":
            from ai_models.weights.keras_h5 import read_keras_h5

            read_keras_h5(path)
        elif fmt == "torch_pickle":
            import pickle

            import torch

            try:
                checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError:
                return f"{path}: holds non-tensor objects; it loads only with the model option allow_pickle=True"
            if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("net"), dict):
                return f"{path}: no state dict under 'net'"
        else:
            return f"unknown weight format {fmt!r}"
    except WeightError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - any failure to open means "not valid"
        return f"{path}: cannot be read as {fmt} ({type(exc).__name__}: {exc})"
    return None


def _weight_status(spec: WeightSpec, path: Path | None, check: bool) -> dict[str, Any]:
    status: dict[str, Any] = {
        "key": spec.key,
        "format": spec.format,
        "description": spec.description,
        "original_name": spec.original_name,
        "optional": spec.optional,
        "path": str(path) if path is not None else None,
        "found": path is not None and path.is_file(),
        "valid": None,
        "problem": None,
    }
    if not status["found"]:
        status["problem"] = "not given" if path is None else f"not found: {path}"
    elif check:
        status["problem"] = check_weight_file(path, spec.format)  # type: ignore[arg-type]
        status["valid"] = status["problem"] is None
    return status


def describe_models(
    weights_dir: Path | None = None,
    overrides: Mapping[str, Mapping[str, str | Path]] | None = None,
    check: bool = True,
    load: bool = False,
) -> list[dict[str, Any]]:
    """Every registered model with its metadata and the state of its weight files.

    ``overrides`` maps model name -> weight key -> path and wins over the
    ``weights_dir`` convention.  ``check=False`` skips opening the files
    (``valid`` stays None).  ``load=True`` also builds each model whose
    files look valid and loads them on the CPU, so layer and shape
    mismatches show up; a failure is reported in ``problem``.
    ``available`` is True when every required weight file is found (and,
    when checked or loaded, usable).
    """
    overrides = overrides or {}
    out = []
    for info in available_models():
        weights = []
        for spec in info.weights:
            given = overrides.get(info.name, {}).get(spec.key)
            if given is not None:
                path: Path | None = Path(given)
            elif weights_dir is not None:
                path = conventional_weight_path(weights_dir, info.name, spec)
            else:
                path = None
            weights.append(_weight_status(spec, path, check))
        available = all(
            w["found"] and w["valid"] is not False for w, spec in zip(weights, info.weights) if not spec.optional
        )
        problem = None
        if load and available:
            problem = _load_problem(info, {w["key"]: Path(w["path"]) for w in weights if w["found"]})
            available = problem is None
        out.append(
            {
                "name": info.name,
                "task": info.task,
                "modalities": list(info.modalities),
                "input_kind": info.input_kind,
                "output_kind": info.output_kind,
                "version": info.version,
                "description": info.description,
                "labels": list(info.labels),
                "header_fix": info.header_fix,
                "options": dict(info.options),
                "caveats": list(info.caveats),
                "weights": weights,
                "available": available,
                "problem": problem,
            }
        )
    return out


def _load_problem(info: ModelInfo, weights: dict[str, Path]) -> str | None:
    """Build the model on the CPU with these files; None when that works, else why not."""
    try:
        load_model(info.name, weights=weights, device="cpu")
    except ModelError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - reported, not raised: listing must go on
        return f"{type(exc).__name__}: {exc}"
    return None
