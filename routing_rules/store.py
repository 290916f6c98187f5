"""Keeping a rules folder loaded and reloading it when files change.

The store has no thread or timer of its own: the host calls
:meth:`RulesStore.reload_if_changed` when it suits it (the node does so from
its scheduler, and before each evaluation if it wants).  Change detection is
a fingerprint of the folder's ``*.toml`` files: name, size and modification
time in nanoseconds.  Adding, removing, renaming or editing a file changes it.
A reload replaces the rule set as a whole, so code that took
``store.ruleset`` keeps using one consistent set while another thread reloads.

What happens to the rules of a file that became invalid: they are *not* kept
from the previous load.  A file that no longer parses contributes no rules
and its error; in a file that parses, only the invalid rules drop out.  Keeping
stale rules would route studies by a version of the file that the
administrator has already replaced, without any sign of it; an error that is
shown, and rules that visibly stop, are easier to reason about.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from routing_rules.actions import ActionRegistry
from routing_rules.errors import RuleError
from routing_rules.loader import load_rules, rule_files
from routing_rules.ruleset import RuleSet

__all__ = ["RulesStore"]

Fingerprint = tuple[tuple[str, int, int], ...]


class RulesStore:
    """The current rules of a folder, reloaded on demand.

    Args:
        folder: the rules folder.
        destinations: destination names actions may use (``None``: unchecked).
        registry: the action types rules may use (the built-in ones when not given).
        known_models: model names finding fields may use (``None``: unchecked).

    Attributes:
        generation: increases by one at every (re)load, so a caller can tell
            whether the rules it holds are still current.
    """

    def __init__(
        self,
        folder: str | Path,
        destinations: Iterable[str] | None = None,
        registry: ActionRegistry | None = None,
        known_models: Iterable[str] | None = None,
    ) -> None:
        self.folder = Path(folder)
        self._destinations = None if destinations is None else frozenset(destinations)
        self._registry = registry
        self._known_models = None if known_models is None else frozenset(known_models)
        self.generation = 0
        self._fingerprint: Fingerprint | None = None
        self._ruleset = RuleSet()
        self.reload()

    @property
    def ruleset(self) -> RuleSet:
        return self._ruleset

    @property
    def errors(self) -> list[RuleError]:
        return self._ruleset.errors

    def fingerprint(self) -> Fingerprint:
        """(name, size, mtime_ns) of every rule file; empty if the folder is missing."""
        if not self.folder.is_dir():
            return ()
        out = []
        for path in rule_files(self.folder):
            try:
                st = os.stat(path)
            except OSError:  # vanished between listing and stat: next poll sees the change
                continue
            out.append((path.name, st.st_size, st.st_mtime_ns))
        return tuple(out)

    def reload(self) -> RuleSet:
        """Load the folder now, whatever changed."""
        self._fingerprint = self.fingerprint()
        self._ruleset = load_rules(self.folder, self._destinations, self._registry, self._known_models)
        self.generation += 1
        return self._ruleset

    def reload_if_changed(self) -> bool:
        """Reload when the fingerprint differs from the last load; True if reloaded."""
        if self.fingerprint() == self._fingerprint:
            return False
        self.reload()
        return True

    def set_destinations(self, destinations: Iterable[str] | None) -> RuleSet:
        """Change the known destinations (node config edited) and reload."""
        self._destinations = None if destinations is None else frozenset(destinations)
        return self.reload()
