"""Rule actions: an open set of types, each checked by its own validator.

The library knows the common shape of an action (a table with a ``type``)
and one built-in type, ``forward``.  Everything else (the node's ``model``
action, for example) is added by the host application to a registry of its
own, which it passes to every loader::

    def check_model(params, ctx):
        ctx.reject_unknown_keys(params, {"model", "options", "destinations"})
        ...
        return {"model": params["model"], "destinations": ctx.destinations_of(params)}

    MY_ACTIONS = builtin_registry().with_type("model", check_model)
    load_rules("rules/", registry=MY_ACTIONS)

A registry is immutable: ``with_type`` returns a new one.  There is no
process-wide registry to change, so what one caller accepts never depends
on what another caller (a test, a plugin) added before it; a loader given no
registry accepts the built-in types only.

A validator receives the action's keys without ``type`` and an
:class:`ActionContext`, and returns the normalised parameters (what rules
will carry and what :func:`routing_rules.dump_rules` will write).  It reports
a problem by raising :class:`~routing_rules.errors.ActionError`; any other
exception is reported too, so that a faulty validator disables only the rule
it was checking.  An action of an unregistered type is an error of its rule.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from routing_rules.errors import ActionError, Quoted, SpecError

__all__ = [
    "Action",
    "ActionContext",
    "ActionRegistry",
    "ActionValidator",
    "builtin_registry",
]


@dataclass(frozen=True, eq=True)
class Action:
    """One validated action of a rule.

    Attributes:
        type: the action type (``"forward"``, or a host-registered one).
        params: the normalised parameters (every key but ``type``).
    """

    type: str
    params: Mapping[str, Any]

    __hash__ = None  # type: ignore[assignment]  # params is a dict

    @property
    def destinations(self) -> tuple[str, ...]:
        """The action's ``destinations`` if it has any, else empty."""
        value = self.params.get("destinations", ())
        return tuple(value) if isinstance(value, (list, tuple)) else ()

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, **self.params}


class ActionContext:
    """What a validator may check against, with helpers for common checks.

    Attributes:
        destinations: the destination names the caller knows, or ``None``
            when destination names are not to be checked.
        models: the model names the caller knows (checked in
            ``finding.<model>.<key>`` fields; a host's ``model`` action may
            check against them too), or ``None`` when not to be checked.
    """

    def __init__(self, destinations: Iterable[str] | None, models: Iterable[str] | None = None) -> None:
        self.destinations = None if destinations is None else frozenset(destinations)
        self.models = None if models is None else frozenset(models)

    def reject_unknown_keys(self, params: Mapping[str, Any], allowed: Iterable[str]) -> None:
        """Raise for a key the action type does not define (catches typos)."""
        allowed = set(allowed)
        for key in params:
            if key not in allowed:
                known = ", ".join(sorted(allowed)) or "none"
                raise ActionError(f"unknown key '{key}' (known keys: type, {known})", key=key)

    def destinations_of(self, params: Mapping[str, Any], key: str = "destinations", required: bool = True) -> list[str]:
        """Check ``params[key]``: a list of unique names, each a known destination.

        Raises:
            ActionError: missing (when required), not a list of texts, a
                duplicate, or a name outside :attr:`destinations`.
        """
        if key not in params:
            if required:
                raise ActionError(f"'{key}' is required (a list of destination names)")
            return []
        names = params[key]
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
            raise ActionError(f"'{key}' must be a non-empty list of destination names", key=key)
        seen: set[str] = set()
        for name in names:
            if name in seen:
                raise ActionError(f"destination '{name}' is listed twice", key=key, value=name)
            seen.add(name)
            if self.destinations is not None and name not in self.destinations:
                known = ", ".join(sorted(self.destinations)) or "none configured"
                raise ActionError(f"unknown destination '{name}' (known: {known})", key=key, value=name)
        return list(names)


ActionValidator = Callable[[dict[str, Any], ActionContext], Mapping[str, Any]]


def _check_forward(params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    """``{ type = "forward", destinations = ["pacs", ...] }``: send the series/study on."""
    ctx.reject_unknown_keys(params, {"destinations"})
    return {"destinations": ctx.destinations_of(params)}


class ActionRegistry:
    """Action types and their validators; immutable, so one registry can serve every loader of a process.

    Args:
        validators: action type name -> validator; ``ActionRegistry()`` knows
            no type at all (not even ``forward``, see :func:`builtin_registry`).
    """

    def __init__(self, validators: Mapping[str, ActionValidator] | None = None) -> None:
        for name in validators or {}:
            if not isinstance(name, str) or not name:
                raise ValueError("an action type needs a non-empty name")
        self._validators: Mapping[str, ActionValidator] = MappingProxyType(dict(validators or {}))

    def with_type(self, name: str, validator: ActionValidator, *, replace: bool = False) -> ActionRegistry:
        """A new registry with this one's types and ``name``.

        Raises:
            ValueError: the name is empty or already known (unless
                ``replace``).
        """
        if name in self._validators and not replace:
            raise ValueError(f"action type '{name}' is already registered")
        return ActionRegistry({**self._validators, name: validator})

    def names(self) -> list[str]:
        return sorted(self._validators)

    def validate(self, table: Any, ctx: ActionContext, path: tuple[Any, ...]) -> Action:
        """Check one action table and dispatch it to its type's validator.

        Raises:
            SpecError: with a path to the offending key of the action.
        """
        if not isinstance(table, dict):
            raise SpecError("each action must be a table like { type = \"forward\", ... }", path)
        kind = table.get("type")
        if not isinstance(kind, str) or not kind:
            raise SpecError("action without a 'type' (e.g. type = \"forward\")", path)
        validator = self._validators.get(kind)
        if validator is None:
            raise SpecError(
                f"unknown action type '{kind}' (known: {', '.join(self.names()) or 'none'}); "
                "the application adds action types to the registry it passes to the loader",
                path + ("type",),
            )
        params = {k: v for k, v in table.items() if k != "type"}
        try:
            result = validator(params, ctx)
        except ActionError as exc:
            where = path + tuple(p for p in (exc.key, None if exc.value is None else Quoted(exc.value)) if p is not None)
            raise SpecError(f"action '{kind}': {exc.message}", where) from None
        except Exception as exc:  # a faulty host validator must only disable this rule
            raise SpecError(f"action '{kind}': validator failed: {type(exc).__name__}: {exc}", path) from None
        if not isinstance(result, Mapping) or "type" in result:
            raise SpecError(f"action '{kind}': its validator returned no parameter table", path)
        return Action(kind, dict(result))


_BUILTIN = ActionRegistry({"forward": _check_forward})


def builtin_registry() -> ActionRegistry:
    """The registry of the library's own action types (``forward``): what loaders use when given none."""
    return _BUILTIN
