"""Model registry: names, metadata, and ``load_model``.

Models register themselves with :func:`register` when their module is
imported; :func:`_import_builtin_models` imports the built-in ones lazily so
that ``import ai_models`` stays cheap (no torch import until a model is used).

A process that only needs to know the models (to check rules, list them)
but never runs one can use :class:`CatalogChild`: the
modules, and torch with them, are imported in a short-lived child and only
the descriptions come back.  The node's main process does this; its model
jobs run in worker processes that import the models themselves.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import pickle
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ai_models.errors import ModelError, WeightError
from ai_models.info import ModelInfo

if TYPE_CHECKING:
    from ai_models.base import Model

_REGISTRY: dict[str, tuple[ModelInfo, Callable[..., Model]]] = {}

# Modules that register built-in models on import.  Kept as strings so that
# a broken optional model never stops the others from loading.
BUILTIN_MODULES: tuple[str, ...] = (
    "ai_models.chest.enhancement",
    "ai_models.chest.view",
    "ai_models.chest.lr_mark",
    "ai_models.chest.lung",
    "ai_models.baselines.enhancement_hu",
    "ai_models.baselines.lr_mark_classic",
    "ai_models.abdomen.kidney",
    "ai_models.abdomen.liver",
    "ai_models.abdomen.polyp",
    "ai_models.brain.bet",
    "ai_models.brain.blackblood",
)
_imported = False
_catalog_only = False  # descriptions came from a CatalogChild; modules not imported here
IMPORT_ERRORS: dict[str, str] = {}
log = logging.getLogger("ai_models.registry")

MODELS_EXTRA_MISSING = "the models extra is not installed (pip install 'dicom-node[models]')"
MODELS_EXTRA_MODULES: tuple[str, ...] = ("torch", "SimpleITK", "cv2", "h5py", "scipy", "highdicom")
"""Top-level modules of the ``models`` extra in pyproject.toml: the built-in models import them.

A forward-only install (``pip install dicom-node``) lacks them, so every
built-in model is unavailable there for this one reason, said once.
"""


def models_extra_problem() -> str | None:
    """None when the ``models`` extra is installed, else why not; finds the modules without importing them."""
    missing = [name for name in MODELS_EXTRA_MODULES if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    if len(missing) == len(MODELS_EXTRA_MODULES):
        return MODELS_EXTRA_MISSING
    return f"{MODELS_EXTRA_MISSING}; missing: {', '.join(missing)}"


def register(info: ModelInfo, factory: Callable[..., Model]) -> None:
    """Add a model; a second registration under the same name replaces the first."""
    _REGISTRY[info.name] = (info, factory)


def _import_builtin_models() -> None:
    global _imported
    if _imported:
        return
    _imported = True
    for module in BUILTIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith(module.rsplit(".", 1)[0]):
                continue  # the module is not part of this build yet
            if exc.name and exc.name.split(".")[0] in MODELS_EXTRA_MODULES:
                IMPORT_ERRORS[module] = f"{MODELS_EXTRA_MISSING}: no module named {exc.name!r}"
            else:
                IMPORT_ERRORS[module] = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # noqa: BLE001 - reported by `models list`
            IMPORT_ERRORS[module] = f"{type(exc).__name__}: {exc}"


def _deferred_factory(name: str) -> Callable[..., Model]:
    """A factory for a model known from the catalog only: imports the model modules at first use."""

    def factory(*args: Any, **kwargs: Any) -> Model:
        global _catalog_only
        _catalog_only = False
        _import_builtin_models()  # the model's module registers its real factory over this one
        real = _REGISTRY[name][1]
        if real is factory:
            raise ModelError(f"model {name!r} is in the catalog but its module did not register it: {IMPORT_ERRORS or 'no error'}")
        return real(*args, **kwargs)

    return factory


def _write_catalog() -> None:
    """Child side of :class:`CatalogChild`: the descriptions and import errors, pickled to stdout."""
    with contextlib.redirect_stdout(sys.stderr):  # whatever a module prints must not corrupt the pickle
        _import_builtin_models()
    sys.stdout.buffer.write(pickle.dumps(([info for info, _ in _REGISTRY.values()], dict(IMPORT_ERRORS))))


class CatalogChild:
    """Learn the built-in models' descriptions without importing torch in this process.

    The model modules import torch and the networks' code, about 300 MiB
    resident, for a process that only needs names, options and output
    kinds.  The child starts at construction, so the caller can do other
    start-up work while it imports; :meth:`apply` waits for it and fills
    the registry.
    """

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        if _imported:
            return  # already imported here: nothing to gain
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", "from ai_models.registry import _write_catalog; _write_catalog()"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )
        except OSError as exc:
            log.warning("model catalog: cannot start the child process (%s); importing the models here", exc)

    def apply(self, timeout: float = 300.0) -> bool:
        """Wait for the child and register what it found; False (models imported here when needed) if it failed."""
        global _catalog_only
        if self._proc is None:
            return _imported
        try:
            out, err = self._proc.communicate(timeout=timeout)
            if self._proc.returncode != 0:
                raise RuntimeError(f"exit code {self._proc.returncode}: {err.decode(errors='replace')[-300:]}")
            infos, errors = pickle.loads(out)  # our own child's output
        except (subprocess.SubprocessError, pickle.UnpicklingError, RuntimeError, ValueError, EOFError) as exc:
            self._proc.kill()
            log.warning("model catalog: the child process failed (%s); importing the models here", exc)
            return False
        for info in infos:
            _REGISTRY.setdefault(info.name, (info, _deferred_factory(info.name)))
        IMPORT_ERRORS.update(errors)
        _catalog_only = True
        problem = models_extra_problem()
        if problem is not None:
            log.warning("model catalog: %d model(s) available; %s", len(infos), problem)
        return True


def _known() -> None:
    """Make the built-in models known: from the catalog if one was loaded, else by importing them."""
    if not _catalog_only:
        _import_builtin_models()


def available_models() -> list[ModelInfo]:
    """All registered models, sorted by name."""
    _known()
    return [info for info, _ in sorted(_REGISTRY.values(), key=lambda item: item[0].name)]


def get_info(name: str) -> ModelInfo:
    """The description of model ``name``; the ModelError for an unknown name says why it is not here."""
    _known()
    try:
        return _REGISTRY[name][0]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        problem = models_extra_problem()
        if problem is not None:  # not a typo in the rule: no built-in model can be here
            raise ModelError(f"model {name!r} is not available: {problem}" + (f"; known models: {known}" if _REGISTRY else "")) from None
        raise ModelError(f"unknown model {name!r}; known models: {known}") from None


def resolve_weights(
    info: ModelInfo, weights: str | Path | Sequence[str | Path] | Mapping[str, str | Path] | None
) -> dict[str, Path]:
    """Map whatever the caller gave onto the model's weight keys.

    A single path fills the model's only weight file, a sequence fills them
    in declared order, a mapping is taken by key.  Missing required files and
    files that do not exist raise :class:`WeightError` naming them.
    """
    specs = info.weights
    if weights is None:
        given: dict[str, Path] = {}
    elif isinstance(weights, Mapping):
        unknown = set(weights) - {s.key for s in specs}
        if unknown:
            raise WeightError(
                f"{info.name}: unknown weight key(s) {sorted(unknown)}; expected {[s.key for s in specs]}"
            )
        given = {k: Path(v) for k, v in weights.items()}
    elif isinstance(weights, (str, Path)):
        required = [s for s in specs if not s.optional]
        if len(specs) != 1 and len(required) != 1:
            raise WeightError(
                f"{info.name} needs {len(specs)} weight files {[s.key for s in specs]}; pass a list or a mapping"
            )
        given = {(required or specs)[0].key: Path(weights)}
    else:
        paths = list(weights)
        if len(paths) > len(specs):
            raise WeightError(f"{info.name}: {len(paths)} weight files given, it takes at most {len(specs)}")
        given = {spec.key: Path(p) for spec, p in zip(specs, paths)}
    missing = [s.key for s in specs if not s.optional and s.key not in given]
    if missing:
        raise WeightError(f"{info.name}: missing weight file(s) for {missing}")
    for key, path in given.items():
        if not path.is_file():
            raise WeightError(f"{info.name}: weight file for {key!r} not found: {path}")
    return given


def load_model(
    name: str,
    weights: str | Path | Sequence[str | Path] | Mapping[str, str | Path] | None = None,
    device: str = "auto",
    **options: Any,
) -> Model:
    """Create a model, load its weights, and return it ready for ``predict``."""
    info = get_info(name)
    factory = _REGISTRY[name][1]
    resolved = resolve_weights(info, weights)
    from ai_models.allocator import retain_freed_memory
    from ai_models.base import select_device

    retain_freed_memory()
    return factory(weights=resolved, device=select_device(device), **options)
