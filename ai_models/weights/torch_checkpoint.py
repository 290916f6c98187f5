"""Load MI2RLNet torch checkpoints (state dict under ``"net"``)."""
from __future__ import annotations

import logging
import pickle
from pathlib import Path

import torch
from torch import nn

from ai_models.errors import WeightError

log = logging.getLogger(__name__)


def load_state_dict(module: nn.Module, path: str | Path, *, allow_pickle: bool = False, key: str = "net") -> None:
    """Load ``torch.load(path)[key]`` into ``module`` with ``strict=True``.

    ``weights_only=True`` is tried first; a checkpoint that also holds
    arbitrary Python objects is only unpickled fully when the operator said
    the file is trusted (``allow_pickle``).  Key or shape mismatches become
    a :class:`WeightError` listing what is missing, unexpected or misshapen.
    """
    path = Path(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not allow_pickle:
            raise WeightError(
                f"{path}: the checkpoint holds non-tensor objects; load it with allow_pickle=True only if you trust it ({exc})"
            ) from exc
        log.warning("loading %s with full unpickling (trusted file)", path)
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError) as exc:
        raise WeightError(f"{path}: not a readable torch checkpoint ({exc}); truncated?") from exc
    state = checkpoint.get(key) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        found = sorted(checkpoint)[:10] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise WeightError(f"{path}: expected a dict with the state dict under {key!r}, found {found}")
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshapen = [
        f"{k}: expected {tuple(expected[k].shape)}, found {tuple(state[k].shape)}"
        for k in expected
        if k in state and tuple(expected[k].shape) != tuple(state[k].shape)
    ]
    if missing or unexpected or misshapen:
        raise WeightError(
            f"{path}: state dict does not fit {type(module).__name__}: "
            f"missing {missing[:5]} ({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)}), "
            f"misshapen {misshapen[:5]}"
        )
    module.load_state_dict(state, strict=True)
