"""Coverage-guided fuzzing of ``when`` expressions with atheris (optional; pytest does not collect it).

The hypothesis tests in ``test_rules_expression_fuzz.py`` are the required
part; this harness lets libFuzzer search much longer, guided by coverage::

    pip install atheris
    python tests/routing/fuzz_expression.py -max_total_time=600
    python tests/routing/fuzz_expression.py -runs=200000 corpus/   # keep interesting inputs

Each input gives an expression text and, from its remaining bytes, one
observation per field the expression reads.  A crash is any exception other
than ``ExpressionError`` from parsing, any exception from evaluation, an
evaluation slower than a second, or an audited event (import of a new
module, exec of a code object, a process start) while the input is handled.
"""

from __future__ import annotations

import sys
import time

import atheris

with atheris.instrument_imports():
    from routing_rules import ExpressionError, parse_expression
    from routing_rules.fields import Observed

_FORBIDDEN = ("exec", "import", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "subprocess.Popen", "ctypes.dlopen")
_armed = False


def _audit(event: str, args: tuple) -> None:
    if _armed and event.startswith(_FORBIDDEN):
        raise RuntimeError(f"code ran while fuzzing an expression: audited event {event} {args!r:.200}")


def _observation(fdp: atheris.FuzzedDataProvider) -> Observed:
    kind = fdp.ConsumeIntInRange(0, 4)
    if kind == 0:
        return Observed((), False)
    if kind == 1:
        return Observed((), True)
    values: list = []
    for _ in range(fdp.ConsumeIntInRange(1, 4)):
        choice = fdp.ConsumeIntInRange(0, 2)
        if choice == 0:
            values.append(fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 40)))
        elif choice == 1:
            values.append(fdp.ConsumeInt(8))
        else:
            values.append(fdp.ConsumeRegularFloat())
    return Observed(tuple(values), True)


def test_one_input(data: bytes) -> None:
    global _armed
    fdp = atheris.FuzzedDataProvider(data)
    text = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 400))
    _armed = True
    try:
        try:
            expression = parse_expression(text)
        except ExpressionError:
            return
        row = [_observation(fdp) for _ in expression.fields]
        start = time.perf_counter()
        if not isinstance(expression.evaluate(row), bool):
            raise AssertionError("evaluate() must give a bool")
        if time.perf_counter() - start > 1.0:
            raise AssertionError(f"evaluation too slow for {text!r}")
    finally:
        _armed = False


def main() -> None:
    sys.addaudithook(_audit)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
