"""``ai-models``: list the registered models and run one on DICOM input.

Usage::

    ai-models list [--weights-dir DIR] [--weight NAME:KEY=PATH ...] [--check-load] [--json]
    ai-models run MODEL INPUT [--weights [KEY=]PATH ...] [--weights-dir DIR]
                  [--option NAME=VALUE ...] [--device cpu|cuda|auto] [--json]

Weight files are found by convention as ``<weights-dir>/<model-name>/<key>.<ext>``
(``ext``: ``h5`` or ``hdf5`` for Keras HDF5, ``pth`` or ``pt`` for torch
checkpoints); ``--weight``/``--weights`` name files explicitly and win over
the convention.  A file is *valid* when it opens in its declared format
(:func:`check_weight_file`): that catches truncated and wrong-format files
cheaply.  Whether every layer fits the network is only known when the model
is built and loaded, which ``--check-load`` does (on the CPU, seconds per
model).

Exit codes: 0 ok, 2 usage (bad arguments, unknown model or option),
3 weight problem (for ``list``: a weight file that is present but invalid;
absent files are normal), 4 input problem, 1 anything else.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ai_models.catalog import conventional_weight_path, describe_models
from ai_models.errors import InputError, ModelError, WeightError
from ai_models.registry import IMPORT_ERRORS, ModelInfo, available_models, get_info, load_model

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_WEIGHTS, EXIT_INPUT = 0, 1, 2, 3, 4

# --- results to text / JSON ----------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """Dataclasses, numpy values and paths to JSON-ready Python; arrays become a summary."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        out["type"] = type(value).__name__
        return out
    if isinstance(value, np.ndarray):
        summary: dict[str, Any] = {"shape": list(value.shape), "dtype": str(value.dtype)}
        if value.dtype.kind in "iub" and value.size:
            labels, counts = np.unique(value, return_counts=True)
            summary["counts"] = {str(int(k)): int(c) for k, c in zip(labels, counts)}
        return summary
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _format_result(result: Any) -> str:
    data = _plain(result)
    lines = [f"{data.pop('type')} by {data.pop('model')} v{data.pop('model_version')}"]
    if "label" in data:
        label = data.pop("label")
        lines.append(f"  label: {label} ({data['probabilities'][label]:.3f})")
        lines.append("  probabilities: " + ", ".join(f"{k} {v:.3f}" for k, v in data.pop("probabilities").items()))
        lines.append(f"  header value: {data.pop('header_value')!r}, agrees with header: {data.pop('agrees_with_header')}")
        evidence = data.pop("evidence")
        lines.append(f"  evidence: {len(evidence)} image(s), {sum(e['used'] for e in evidence)} used")
    sources = data.pop("source_sop_instance_uids", [])
    lines.append(f"  source images: {len(sources)}")
    for key, value in data.items():
        lines.append(f"  {key}: {json.dumps(value) if isinstance(value, (dict, list)) else value}")
    return "\n".join(lines)


def _format_models(models: list[dict[str, Any]]) -> str:
    blocks = []
    for m in models:
        lines = [
            f"{m['name']}  v{m['version']}  [{'available' if m['available'] else 'unavailable'}]",
            f"  task: {m['task']}",
            f"  modalities: {', '.join(m['modalities'])}; input: {m['input_kind']}; output: {m['output_kind']}",
        ]
        if m["header_fix"]:
            lines.append(f"  header fix: {m['header_fix']}")
        for w in m["weights"]:
            if not w["found"]:
                state = "missing"
            else:
                state = {True: "valid", False: "INVALID", None: "found"}[w["valid"]]
            where = w["path"] or "-"
            lines.append(f"  weight {w['key']} ({w['format']}{', optional' if w['optional'] else ''}): {state} {where}")
            if w["problem"] and w["found"]:
                lines.append(f"    problem: {w['problem']}")
        if not m["weights"]:
            lines.append("  weights: none needed")
        if m["problem"]:
            lines.append(f"  problem: {m['problem']}")
        lines.extend(f"  caveat: {c}" for c in m["caveats"])
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


# --- argument parsing ----------------------------------------------------------------------------


class _UsageError(Exception):
    pass


def _parse_override(text: str) -> tuple[str, str, Path]:
    """``NAME:KEY=PATH`` for ``list --weight``."""
    head, sep, path = text.partition("=")
    name, colon, key = head.partition(":")
    if not (sep and colon and name and key and path):
        raise _UsageError(f"--weight expects NAME:KEY=PATH, got {text!r}")
    return name, key, Path(path)


def _parse_option(text: str) -> tuple[str, Any]:
    """``NAME=VALUE``; VALUE is read as JSON when it parses (numbers, true/false), else as a string."""
    name, sep, raw = text.partition("=")
    if not (sep and name):
        raise _UsageError(f"--option expects NAME=VALUE, got {text!r}")
    try:
        return name, json.loads(raw)
    except json.JSONDecodeError:
        return name, raw


def _run_weights(info: ModelInfo, given: Sequence[str], weights_dir: Path | None) -> dict[str, Path] | list[Path]:
    """Weights for ``run``: ``KEY=PATH`` items by key, bare paths in declared order, the rest by convention."""
    keys = {spec.key for spec in info.weights}
    keyed = [item.partition("=") for item in given]
    if any(sep and key in keys for key, sep, _ in keyed):
        if not all(sep and key in keys for key, sep, _ in keyed):
            raise _UsageError(f"mix of KEY=PATH and bare paths in --weights; keys of {info.name}: {sorted(keys)}")
        mapping = {key: Path(path) for key, _, path in keyed}
    elif given:
        return [Path(p) for p in given]
    else:
        mapping = {}
    if weights_dir is not None:
        for spec in info.weights:
            if spec.key not in mapping:
                found = conventional_weight_path(weights_dir, info.name, spec)
                if found is not None:
                    mapping[spec.key] = found
    return mapping


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ai-models", description="List and run the DICOM AI models.")
    commands = parser.add_subparsers(dest="command", required=True)

    lister = commands.add_parser("list", help="show every registered model and the state of its weights")
    lister.add_argument("--weights-dir", type=Path, help="look for <dir>/<model>/<key>.<ext>")
    lister.add_argument("--weight", action="append", default=[], metavar="NAME:KEY=PATH", help="a weight file by hand")
    lister.add_argument("--check-load", action="store_true", help="also build each model and load its weights")
    lister.add_argument("--json", action="store_true", help="machine-readable output")

    runner = commands.add_parser("run", help="run one model on a DICOM file, folder or series")
    runner.add_argument("model")
    runner.add_argument("input", type=Path)
    runner.add_argument("--weights", nargs="+", default=[], metavar="[KEY=]PATH", help="weight file(s)")
    runner.add_argument("--weights-dir", type=Path, help="look for <dir>/<model>/<key>.<ext>")
    runner.add_argument("--option", action="append", default=[], metavar="NAME=VALUE", help="a model option")
    runner.add_argument("--device", default="auto", choices=("cpu", "cuda", "auto"))
    runner.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _cmd_list(args: argparse.Namespace) -> int:
    known = {info.name: {spec.key for spec in info.weights} for info in available_models()}
    overrides: dict[str, dict[str, Path]] = {}
    for text in args.weight:
        name, key, path = _parse_override(text)
        if key not in known.get(name, ()):
            raise _UsageError(f"--weight {text}: no model {name!r} with a weight key {key!r}")
        overrides.setdefault(name, {})[key] = path
    models = describe_models(args.weights_dir, overrides, load=args.check_load)
    if args.json:
        print(json.dumps({"models": models, "import_errors": dict(IMPORT_ERRORS)}, indent=2, default=str))
    else:
        print(_format_models(models))
        for module, error in IMPORT_ERRORS.items():
            print(f"\nmodule {module} failed to import: {error}")
    broken = any(m["problem"] for m in models) or any(w["valid"] is False for m in models for w in m["weights"])
    return EXIT_WEIGHTS if broken else EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    info = get_info(args.model)
    options = dict(_parse_option(text) for text in args.option)
    weights = _run_weights(info, args.weights, args.weights_dir)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise _UsageError("--device cuda: no CUDA device is available")
    try:
        model = load_model(info.name, weights=weights or None, device=args.device, **options)
    except TypeError as exc:  # the base class rejects unknown options this way
        raise _UsageError(str(exc)) from exc
    if info.input_kind == "image":
        from ai_models.inputs import read_datasets

        results: Any = [model.predict(ds) for ds in read_datasets(args.input)]
    else:
        results = [model.predict(args.input)]
    if args.json:
        payload = _plain(results if len(results) > 1 else results[0])
        print(json.dumps(payload, indent=2, default=str))
    else:
        print("\n\n".join(_format_result(r) for r in results))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``ai-models``; returns the exit code (see the module docstring)."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 on --help
        return int(exc.code or 0)
    try:
        return _cmd_list(args) if args.command == "list" else _cmd_run(args)
    except _UsageError as exc:
        print(f"ai-models: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except WeightError as exc:
        print(f"ai-models: weight problem: {exc}", file=sys.stderr)
        return EXIT_WEIGHTS
    except InputError as exc:
        print(f"ai-models: input problem: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except ModelError as exc:  # unknown model, bad option value
        print(f"ai-models: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # noqa: BLE001 - last resort: a message, not a traceback
        print(f"ai-models: unexpected error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
