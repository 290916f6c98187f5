"""The node's view of the rules folder: reloads on change, keeps errors visible."""
from __future__ import annotations

import logging
import threading
from typing import Any

from dicom_node.config import NodeConfig

log = logging.getLogger("dicom_node.rules")


class NodeRules:
    """Holds the current :class:`routing_rules.RuleSet`, reloaded when files change."""

    def __init__(self, config: NodeConfig) -> None:
        from dicom_node.model_action import register
        from routing_rules.store import RulesStore

        register()
        from ai_models import available_models

        self._watcher = RulesStore(
            config.rules_folder, destinations=set(config.destinations), known_models={m.name for m in available_models()}
        )
        self._lock = threading.Lock()
        self._ruleset = self._watcher.ruleset
        self._report(self._ruleset)

    def _report(self, ruleset: Any) -> None:
        log.info("rules: %d active from %s", len(ruleset.rules), self._watcher.folder)
        for error in ruleset.errors:
            log.error("rules: %s", error)

    def current(self) -> Any:
        with self._lock:
            return self._ruleset

    def reload_if_changed(self) -> bool:
        with self._lock:
            changed = self._watcher.reload_if_changed()
            if changed:
                self._ruleset = self._watcher.ruleset
        if changed:
            self._report(self._ruleset)
        return changed
