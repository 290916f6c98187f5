"""The model catalog read in a child process: descriptions here, torch only where a model runs."""
from __future__ import annotations

import subprocess
import sys
import textwrap


def _python(code: str) -> subprocess.CompletedProcess:
    """Run in a fresh interpreter: whether torch is imported is a property of the whole process."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)


def test_catalog_knows_every_builtin_model_without_importing_torch() -> None:
    result = _python("""
        import sys
        from ai_models.registry import CatalogChild, available_models, get_info
        assert CatalogChild().apply()
        names = sorted(m.name for m in available_models())
        print(",".join(names))
        print(get_info("enhancement").header_fix, get_info("kidney").output_kind)
        print("torch" in sys.modules)
    """)
    assert result.returncode == 0, result.stderr
    names, details, torch_loaded = result.stdout.split()[0], result.stdout.split()[1:3], result.stdout.split()[3]
    in_process = _python("from ai_models import available_models; print(','.join(sorted(m.name for m in available_models())))")
    assert names == in_process.stdout.strip()  # the same models as importing them here
    assert {"enhancement", "kidney", "lung", "enhancement-hu"} <= set(names.split(","))
    assert details == ["ContrastBolusAgent", "segmentation"]
    assert torch_loaded == "False"


def test_a_model_known_from_the_catalog_still_loads_and_runs() -> None:
    result = _python("""
        import sys
        import numpy as np
        from ai_models import load_model
        from ai_models.registry import CatalogChild
        assert CatalogChild().apply()
        model = load_model("enhancement-hu", device="cpu")  # weight-free baseline: imports its module now
        print(type(model).__name__, "torch" in sys.modules)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["EnhancementHU", "True"]
