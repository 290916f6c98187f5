"""Fuzzing ``when`` expressions: hostile text never runs code and never crashes the node.

Three claims, each checked on generated input (hypothesis) with a sentinel armed:

* parsing any text either succeeds or raises :class:`ExpressionError`,
  nothing else;
* an accepted expression evaluated on random headers never raises and
  finishes fast;
* no code runs: no ``eval`` / ``exec`` / ``open`` / ``__import__``, no
  ``compile`` other than the syntax-tree-only one of ``ast.parse``, and no
  audited event such as an import, a process start or a file opened.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import os
import string
import sys
import time
import unicodedata  # noqa: F401  # imported up front: see PARSER_IMPORTS
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from rules_helpers import DESTINATIONS

from routing_rules import Expression, ExpressionError, parse_expression, parse_rules_text
from routing_rules.dump import toml_value
from routing_rules.fields import Observed

# --------------------------------------------------------------------------- the sentinel

_TRAPPED_BUILTINS = ("eval", "exec", "open", "__import__", "input", "breakpoint")
# CPython's tokenizer imports unicodedata (through __import__) to normalise non-ASCII names;
# that is the parser's own doing, not code from the expression, so it is the one import let through.
PARSER_IMPORTS = frozenset({"unicodedata"})
_FORBIDDEN_EVENTS = ("exec", "import", "open", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
                     "os.remove", "os.rename", "subprocess.Popen", "socket.connect", "ctypes.dlopen", "code.__new__",
                     "function.__new__", "sys._getframe", "object.__getattr__", "object.__setattr__")


class Sentinel:
    """Records (and blocks) every attempt to run code while it is armed."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.is_armed = False
        self.hooked = False

    def trap(self, name: str) -> Callable[..., Any]:
        def trapped(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            raise AssertionError(f"sentinel: {name} was called")
        return trapped

    def import_trap(self, real_import: Callable[..., Any]) -> Callable[..., Any]:
        def trapped(name: str, *args: Any, **kwargs: Any) -> Any:
            if name in PARSER_IMPORTS and name in sys.modules:
                return real_import(name, *args, **kwargs)
            self.calls.append("__import__")
            raise AssertionError(f"sentinel: __import__ was called for {name!r}")
        return trapped

    @contextmanager
    def armed(self) -> Iterator[None]:
        if not self.hooked:  # audit hooks cannot be removed: one, installed on first use, acting only while armed
            sys.addaudithook(self.audit)
            self.hooked = True
        saved = {name: getattr(builtins, name) for name in (*_TRAPPED_BUILTINS, "compile")}
        real_compile = saved["compile"]

        def compile_tree_only(source: Any, filename: Any, mode: str, flags: int = 0, *args: Any, **kwargs: Any) -> Any:
            if not flags & ast.PyCF_ONLY_AST:
                self.calls.append("compile")
                raise AssertionError("sentinel: compile to code was called")
            return real_compile(source, filename, mode, flags, *args, **kwargs)

        for name in _TRAPPED_BUILTINS:
            setattr(builtins, name, self.trap(name))
        builtins.__import__ = self.import_trap(saved["__import__"])
        builtins.compile = compile_tree_only
        self.is_armed = True
        try:
            yield
        finally:
            self.is_armed = False
            for name, value in saved.items():
                setattr(builtins, name, value)

    def audit(self, event: str, args: tuple[Any, ...]) -> None:
        if self.is_armed and event.startswith(_FORBIDDEN_EVENTS):
            self.calls.append(event)
            raise RuntimeError(f"sentinel: audited event {event}")


SENTINEL = Sentinel()


@pytest.fixture(autouse=True)
def clean_sentinel() -> Iterator[None]:
    SENTINEL.calls.clear()
    yield
    assert SENTINEL.calls == [], f"code ran: {SENTINEL.calls}"


def checked_parse(text: str) -> Expression | None:
    """Parse with the sentinel armed: an Expression, or None for an ExpressionError; anything else fails."""
    with SENTINEL.armed():
        try:
            return parse_expression(text)
        except ExpressionError as exc:
            assert exc.message and exc.path == ("when",)
            return None


def test_the_sentinel_catches_code_execution() -> None:
    with SENTINEL.armed():
        for attempt in (lambda: eval("1 + 1"), lambda: exec("x = 1"), lambda: __import__("os"),
                        lambda: open("/dev/null"), lambda: compile("1", "<x>", "eval")):
            with pytest.raises(AssertionError, match="sentinel"):
                attempt()
        fresh = next(m for m in ("colorsys", "sndhdr", "wave", "chunk", "this") if m not in sys.modules)
        with pytest.raises((AssertionError, RuntimeError), match="sentinel"):
            importlib.import_module(fresh)  # through importlib, not the import statement
        with pytest.raises(RuntimeError, match="sentinel: audited event os.system"):
            os.system("true")
        ast.parse("1 + 1", mode="eval")  # the syntax-tree-only compile stays allowed
    assert SENTINEL.calls[:5] == ["eval", "exec", "__import__", "open", "compile"]
    assert SENTINEL.calls[5] in ("__import__", "import") and SENTINEL.calls[6] == "os.system"
    assert fresh not in sys.modules
    SENTINEL.calls.clear()


# --------------------------------------------------------------------------- hostile input, explicit

HOSTILE = [
    "__import__('os').system('touch /tmp/pwned')",
    "().__class__.__bases__",
    "().__class__.__bases__[0].__subclasses__()",
    "Modality.__class__",
    "upper.__globals__",
    "upper(Modality).__class__ == 'x'",
    "getattr(Modality, 'upper')",
    "Modality.upper() == 'CT'",
    "finding.__class__.__init__",
    "finding('__class__', '__init__')",
    "finding.enhancement-hu.label.__class__ == 1",
    "finding.a.b - open('x')",
    "tag('__import__') == 1",
    "lambda: 0",
    "(lambda: open('/etc/passwd'))()",
    "[c for c in ()]",
    "{c: 1 for c in ()}",
    "(c for c in ())",
    "f'{Modality}'",
    "f'{__import__(\"os\").system(\"x\")}'",
    "(a := 1)",
    "9**9**9",
    "'a' * 10**9",
    "Rows == 10**100",
    "open('/etc/passwd').read()",
    "eval('1')",
    "exec('import os')",
    "compile('1', '', 'eval')",
    "globals()",
    "locals()['x']",
    "vars()",
    "__builtins__",
    "breakpoint()",
    "input()",
    "Modality[0] == 'C'",
    "Modality[:1] == 'C'",
    "1 if Modality else 0",
    "await Modality",
    "(yield)",
    "*Modality",
    "{1, 2}",
    "{'a': 1}",
    "...",
    "Modality == ...",
    "b'CT' == Modality",
    "1j == Rows",
    "Modality == 'CT'; import os",
    "import os",
    "Modality == 'CT'\x00",
    "Modality is not None",
    "upper(Modality, key=open)",
    "upper(*Modality)",
    "contains(**{'a': 1})",
    "Modality == 'CT' and not",
    "@Modality",
    "~Rows == 1",
    "Rows + 1 > 2",
    "-Rows < 0",
    "-'x' == Modality",
    "Modality in Modality",
    "Modality in (Rows, 1)",
    "(Modality == 'CT') == true",
    "present('Modality')",
    "present(upper(Modality))",
    "len(present(Modality)) > 1",
    "'(' * 1000",
    "(" * 300 + "true" + ")" * 300,
    "not " * 300 + "true",
    "-" * 1990 + "1 == Rows",
    "upper(" * 60 + "Modality" + ")" * 60 + " == 'CT'",
    " or ".join(["true"] * 300),
    "Modality == '" + "x" * 1900 + "'",
    "Modality == '" + "x" * 5000 + "'",
    "Rows == " + "9" * 1900,
    "\ud800",  # a lone surrogate: not even valid UTF-8
    "Modality == '\ud800'",
    "\ufeffModality == 'CT'",
    "Modality\u2028== 'CT'",
    "\ufb01nding.__class__.x == 1",  # 'fi' ligature: the parser folds it into 'finding'
    "\uff2dodality.__class__ == 1",  # full-width M: folded into 'Modality'
]


@pytest.mark.parametrize("text", HOSTILE, ids=[f"hostile{i}" for i in range(len(HOSTILE))])
def test_hostile_expressions_are_refused(text: str) -> None:
    start = time.perf_counter()
    assert checked_parse(text) is None
    assert time.perf_counter() - start < 0.5


# --------------------------------------------------------------------------- random text

TOKENS = [
    "Modality", "SliceThickness", "ImageType", "PatientAge", "StudyDate", "ContrastBolusAgent", "Rows",
    "finding", ".", "enhancement-hu", "label", "chest-view", "agrees_with_header", "true", "false", "none",
    "None", "True", "and", "or", "not", "in", "is", "if", "else", "for", "lambda", "yield", "await", "import",
    "==", "!=", "<", "<=", ">", ">=", "=", ":=", "+", "-", "*", "**", "/", "//", "%", "@", "~", "&", "|", "^",
    "<<", ">>", "(", ")", "[", "]", "{", "}", ",", ":", ";", "...", "\\", "\n", "\t", "#",
    "'CT'", '"CHEST"', "'", '"', "'''", "f'{x}'", "b'x'", "r'\\d'", "u'x'", "'\\N{BULLET}'", "'\\x00'",
    "0", "1", "-1", "2.5", "1e999", "1_000", "0x10", "0o7", "0b1", "1j", "9**9**9", "10**100",
    "upper", "lower", "len", "contains", "startswith", "endswith", "present", "absent", "tag", "'(0029,1010)'",
    "__import__", "__class__", "__bases__", "__subclasses__", "__globals__", "__builtins__", "os", "system",
    "eval", "exec", "open", "compile", "getattr", "globals", "vars", "type", "object", "print",
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(st.characters(exclude_categories=()), max_size=120))  # surrogates and controls included
def test_random_text_parses_or_is_refused(text: str) -> None:
    checked_parse(text)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(TOKENS), max_size=30), st.sampled_from([" ", "", "  "]))
def test_token_soup_parses_or_is_refused(tokens: list[str], glue: str) -> None:
    expression = checked_parse(glue.join(tokens))
    if expression is not None:  # accepted soup is a real expression: it must evaluate without trouble
        with SENTINEL.armed():
            assert isinstance(expression.evaluate([Observed((), False)] * len(expression.fields)), bool)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=1, max_value=2500), st.sampled_from(["(", "not ", "-", "upper(", "[", "{", "'", "\\", "finding."]))
def test_deep_nesting_and_long_runs(n: int, piece: str) -> None:
    start = time.perf_counter()
    checked_parse(piece * n + "Modality == 'CT'" + {"(": ")", "upper(": ")", "[": "]", "{": "}"}.get(piece, "") * n)
    assert time.perf_counter() - start < 0.5


# --------------------------------------------------------------------------- generated valid expressions

FIELDS = ["Modality", "BodyPartExamined", "SeriesDescription", "ImageType", "SliceThickness", "Rows", "PatientAge",
          "StudyDate", "StudyTime", "ContrastBolusAgent", "tag('(0029,1010)')",
          "finding.enhancement-hu.label", "finding('chest-view', 'agrees_with_header')", "finding.kidney.volume_ml"]
texts = st.text(alphabet=string.ascii_letters + string.digits + " _-.", max_size=10).map(repr)
literals = st.one_of(
    texts,
    st.integers(min_value=-(10**6), max_value=10**6).map(str),
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False).map(repr),
    st.sampled_from(["true", "false", "'CT'", "'CHEST'", "'LOCALIZER'", "'20240101'", "'045Y'", "'enhanced'"]),
)
values = st.recursive(
    st.one_of(st.sampled_from(FIELDS), literals),
    lambda inner: st.builds(lambda f, v: f"{f}({v})", st.sampled_from(["upper", "lower", "len"]), inner),
    max_leaves=3,
)
comparisons = st.one_of(
    st.builds(lambda a, op, b: f"{a} {op} {b}", values, st.sampled_from(["==", "!=", "<", "<=", ">", ">="]), values),
    st.builds(lambda a, op, b, c: f"{a} {op} {b} {op} {c}", values, st.sampled_from(["<", "<="]), values, values),
    st.builds(lambda a, neg, items: f"{a} {neg} ({', '.join(items)},)", values, st.sampled_from(["in", "not in"]),
              st.lists(literals, min_size=1, max_size=4)),
    st.builds(lambda h, a, b: f"{h}({a}, {b})", st.sampled_from(["contains", "startswith", "endswith"]), values, values),
    st.builds(lambda h, f: f"{h}({f})", st.sampled_from(["present", "absent"]), st.sampled_from(FIELDS)),
    st.sampled_from(["true", "false", "finding.chest-view.agrees_with_header", "finding('kidney', 'found')"]),
)
conditions = st.recursive(
    comparisons,
    lambda inner: st.one_of(
        st.builds(lambda a, op, b: f"({a}) {op} ({b})", inner, st.sampled_from(["and", "or"]), inner),
        inner.map(lambda c: f"not ({c})"),
    ),
    max_leaves=6,
)

scalars = st.one_of(
    st.text(max_size=12),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["CT", "chest", "LOCALIZER", "045Y", "20240101", "true", "false", "enhanced", "1e999", "nan", "", " "]),
)
observations = st.one_of(
    st.just(Observed((), False)),
    st.just(Observed((), True)),  # present without a comparable value (a sequence, binary data)
    st.lists(scalars, min_size=1, max_size=4).map(lambda v: Observed(tuple(v), True)),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(conditions, st.data())
def test_generated_expressions_evaluate_safely_and_consistently(text: str, data: st.DataObject) -> None:
    expression = checked_parse(text)
    assume(expression is not None)  # e.g. a date field compared with a text that is no date
    negated, doubled = checked_parse(f"not ({text})"), checked_parse(f"({text}) and ({text}) or false")
    rows = data.draw(st.lists(st.tuples(*[observations] * len(expression.fields)), min_size=1, max_size=4))
    with SENTINEL.armed():
        start = time.perf_counter()
        verdict = expression.judge(Counter(rows))
        results = [expression.evaluate(row) for row in rows]
        assert time.perf_counter() - start < 0.5
    assert verdict.total == len(rows) and verdict.holds == (verdict.matched > 0)
    assert all(isinstance(r, bool) for r in results)
    if verdict.too_costly:
        return
    assert verdict.matched == sum(results)
    with SENTINEL.armed():
        if negated is not None:  # not (e) is the negation of e, row by row
            assert [negated.evaluate(row) for row in rows] == [not r for r in results]
        if doubled is not None:
            assert [doubled.evaluate(row) for row in rows] == results


# --------------------------------------------------------------------------- through the rule loader

@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=80), st.lists(st.sampled_from(TOKENS), max_size=20).map(" ".join), conditions))
def test_rule_files_with_any_when_load_without_raising(when: str) -> None:
    text = f'[[rule]]\nname = "fuzz"\nwhen = {toml_value(when)}\nactions = [{{ type = "forward", destinations = ["pacs"] }}]\n'
    with SENTINEL.armed():
        rs = parse_rules_text(text, "fuzz.toml", DESTINATIONS)
    assert len(rs.rules) + len(rs.errors) >= 1
    for error in rs.errors:
        assert error.file == "fuzz.toml" and error.line == 3 and error.message.startswith("when:")
