"""The ``dicom-node`` command line.

Exit codes (stable, for scripts): 0 success; 1 the operation failed (echo
refused, objects not sent, rule errors found); 2 usage or configuration
error; 3 partly done (some objects sent, some not).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from dicom_node import __version__
from dicom_node.config import ConfigError, DicomDestination, NodeConfig, load_config

if TYPE_CHECKING:
    from dicom_node.db import Database

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3
_PEER_RE = re.compile(r"^(?P<aet>[^@]{1,16})@(?P<host>[^:]+):(?P<port>\d+)$")


def _config(args: argparse.Namespace) -> NodeConfig:
    return load_config(args.config)


def _own_node(config: NodeConfig) -> DicomDestination:
    host = "127.0.0.1" if config.bind in ("0.0.0.0", "::") else config.bind
    return DicomDestination(name="node", ae_title=config.listeners[0].ae_title, host=host, port=config.port)


def _resolve_peer(config: NodeConfig, name: str | None) -> Any:
    """A destination by name, ``AET@host:port``, or the node itself (None / 'node')."""
    if name in (None, "node"):
        return _own_node(config)
    if name in config.destinations:
        return config.destinations[name]
    match = _PEER_RE.match(name)
    if match:
        try:
            return DicomDestination(name=name, ae_title=match["aet"], host=match["host"], port=int(match["port"]))
        except ValidationError as exc:
            raise ConfigError.from_validation(exc, f"destination {name!r}") from None
    known = ", ".join(sorted(config.destinations)) or "none configured"
    raise ConfigError(f"unknown destination {name!r}: use a name from node.toml ({known}), 'node', or AET@host:port")


# --- commands -------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from dicom_node.runtime.service import serve

    _config(args)  # fail fast with the field name before anything starts
    return serve(Path(args.config))


def cmd_echo(args: argparse.Namespace) -> int:
    from dicom_node.config import FolderDestination
    from dicom_node.delivery.send import echo

    config = _config(args)
    peer = _resolve_peer(config, args.destination)
    if isinstance(peer, FolderDestination):
        ok = peer.path.exists() or peer.path.parent.exists()
        print(f"folder destination {peer.name}: {peer.path} {'is writable' if ok else 'does not exist'}")
        return EXIT_OK if ok else EXIT_FAILED
    ok, message = echo(peer, args.calling_ae or "DICOM_NODE_SCU")
    print(message)
    return EXIT_OK if ok else EXIT_FAILED


def _collect_files(paths: list[str]) -> list[str]:
    import pydicom

    files: list[str] = []
    for raw in paths:
        path = Path(raw)
        candidates = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for candidate in candidates:
            try:
                pydicom.filereader.read_file_meta_info(candidate)
            except Exception:  # noqa: BLE001 - not a Part 10 file: skip, count
                print(f"skipping {candidate}: not a DICOM Part 10 file", file=sys.stderr)
                continue
            files.append(str(candidate))
    return files


def cmd_send(args: argparse.Namespace) -> int:
    from dicom_node.delivery.send import ItemResult, SendError, send

    config = _config(args)
    peer = _resolve_peer(config, args.to)
    files = _collect_files(args.paths)
    if not files:
        print("nothing to send: no DICOM files found", file=sys.stderr)
        return EXIT_FAILED
    total_bytes = sum(os.path.getsize(f) for f in files)
    state = {"done": 0, "failed": 0, "bytes": 0}
    start = time.monotonic()
    tty = sys.stderr.isatty()

    def progress(result: ItemResult) -> None:
        state["done"] += 1
        state["bytes"] += os.path.getsize(result.path)
        if not result.ok:
            state["failed"] += 1
            print(f"\nfailed: {result.path}: {result.error}", file=sys.stderr)
        if tty or state["done"] == len(files) or state["done"] % 50 == 0:
            rate = state["bytes"] / 1e6 / max(time.monotonic() - start, 1e-6)
            end = "\r" if tty and state["done"] < len(files) else "\n"
            print(f"sent {state['done']}/{len(files)} ({state['bytes'] / 1e6:.1f}/{total_bytes / 1e6:.1f} MB, {rate:.1f} MB/s)", end=end, file=sys.stderr)

    calling = args.calling_ae or "DICOM_NODE_SCU"
    try:
        send(peer, files, calling, progress)
    except SendError as exc:
        print(f"send failed: {exc}", file=sys.stderr)
        return EXIT_FAILED if state["done"] == 0 else EXIT_PARTIAL
    ok = state["done"] - state["failed"]
    print(f"{ok} of {len(files)} object(s) sent to {peer.name}")
    if state["failed"]:
        return EXIT_PARTIAL if ok else EXIT_FAILED
    return EXIT_OK


@contextmanager
def _current_database(config: NodeConfig) -> Iterator[Database]:
    """The node's database for a command that reads or writes rows but never the schema (SchemaError if not current)."""
    from dicom_node.db import Database

    db = Database(config.database_url, migrate=False)
    try:
        db.require_current_schema()
        yield db
    finally:
        db.dispose()


def status_report(config: NodeConfig) -> dict[str, Any]:
    """The report ``dicom-node status`` prints (the queries are the web's and the metrics', in ops.queries)."""
    from dicom_node.clock import utcnow
    from dicom_node.ops.queries import status_report as node_status

    with _current_database(config) as db, db.session() as session:
        return node_status(session, config, utcnow())


def cmd_status(args: argparse.Namespace) -> int:
    from dicom_node.db.engine import SchemaError

    try:
        report = status_report(_config(args))
    except SchemaError as exc:
        print(f"dicom-node status: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return EXIT_OK
    c = report["counts"]
    awaiting = c["instances_awaiting_instance_rules"]
    print(f"studies {c['studies']}, instances {c['instances']}" + (f" ({awaiting} awaiting instance-level rules)" if awaiting else ""))
    print("series: " + (", ".join(f"{k} {v}" for k, v in sorted(c["series"].items())) or "none"))
    print("deliveries: " + (", ".join(f"{k} {v}" for k, v in sorted(c["deliveries"].items())) or "none"))
    print("model jobs: " + (", ".join(f"{k} {v}" for k, v in sorted(c["jobs"].items())) or "none"))
    if report["waiting_series"]:
        print("\nwaiting series:")
        for w in report["waiting_series"]:
            fires = f", fires at {w['fires_at']}" if w["fires_at"] else ""
            print(f"  {w['series_instance_uid']} {w['modality'] or '?'} {w['instances']} inst: {w['reason']}{fires}")
    if report["failed_dispatches"]:
        print("\nfailed series and studies (dicom-node retry / dismiss --series ID or --study ID):")
        for f in report["failed_dispatches"]:
            what = f"{f['modality'] or '?'} {f['instances']} inst" if f["level"] == "series" else "study"
            print(f"  {f['level']} {f['id']} {f['uid']} {what}: {f['reason']}")
    if report["recent_jobs"]:
        print("\nrecent model jobs:")
        for j in report["recent_jobs"]:
            took = f" in {j['timings']['total_s']:.1f}s" if j["timings"] and "total_s" in j["timings"] else ""
            error = f" error: {j['error']}" if j["error"] and j["state"] != "done" else ""
            print(f"  #{j['id']} {j['rule']} -> {j['model']} run {j['run']}: {j['state']}{took}{error}")
    if report["recent_deliveries"]:
        print("\nrecent deliveries:")
        for d in report["recent_deliveries"]:
            extra = f" next try {d['next_attempt_at']}" if d["next_attempt_at"] else ""
            error = f" error: {d['last_error']}" if d["last_error"] and d["state"] != "delivered" else ""
            print(f"  #{d['id']} {d['rule']} -> {d['destination']}: {d['state']} {d['sent']}/{d['objects']} (attempt {d['attempts']}){extra}{error}")
    return EXIT_OK


def _failed_dispatches(db: Any, args: argparse.Namespace, act: Any, done: str) -> int:
    """Apply ``act`` (retry or dismiss, audited in ops.admin_actions) to each --series and --study; how many were failed."""
    from dicom_node.cli.admin import _author

    count = 0
    for level, ids in (("series", args.series or []), ("study", args.study or [])):
        for row_id in ids:
            ok = act(db, _author(), None, level, row_id)
            print(f"{level} {row_id} {done}" if ok else f"{level} {row_id} is not failed: nothing done", file=sys.stdout if ok else sys.stderr)
            count += ok
    return count


def cmd_retry(args: argparse.Namespace) -> int:
    from dicom_node.db.engine import SchemaError

    if not args.delivery and not args.all_failed and not args.job and not args.series and not args.study:
        print("say which: --delivery ID, --job ID, --series ID, --study ID (all repeatable) or --all-failed", file=sys.stderr)
        return EXIT_USAGE
    try:
        with _current_database(_config(args)) as db:
            return _retry(db, args)
    except SchemaError as exc:
        print(f"dicom-node retry: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _retry(db: Database, args: argparse.Namespace) -> int:
    """Queue again what ``dicom-node retry`` names; the exit code."""
    from dicom_node.delivery.queue import retry
    from dicom_node.jobs.queue import retry_jobs
    from dicom_node.ops.admin_actions import retry_dispatch

    count = 0
    if args.delivery or args.all_failed:
        deliveries = retry(db, delivery_ids=args.delivery, all_failed=args.all_failed)
        print(f"{deliveries} deliver{'y' if deliveries == 1 else 'ies'} queued again")
        count += deliveries
    if args.job:
        jobs = retry_jobs(db, args.job)
        print(f"{jobs} job(s) queued again")
        count += jobs
    count += _failed_dispatches(db, args, retry_dispatch, "will be dispatched again by the next sweep")
    return EXIT_OK if count else EXIT_FAILED


def cmd_dismiss(args: argparse.Namespace) -> int:
    from functools import partial

    from dicom_node.db import Database
    from dicom_node.ops.admin_actions import dismiss_dispatch

    if not args.series and not args.study:
        print("say which: --series ID or --study ID (both repeatable)", file=sys.stderr)
        return EXIT_USAGE
    config = _config(args)
    db = Database(config.database_url)
    count = _failed_dispatches(db, args, partial(dismiss_dispatch, note=args.note), "dismissed (dispatched, nothing queued)")
    return EXIT_OK if count else EXIT_FAILED


def _model_names() -> set[str]:
    from ai_models import available_models

    return {m.name for m in available_models()}


def cmd_rules_check(args: argparse.Namespace) -> int:
    from dicom_node.routing.actions import NODE_ACTIONS
    from routing_rules.loader import load_rules

    config = _config(args)
    ruleset = load_rules(config.rules_folder, destinations=set(config.destinations), registry=NODE_ACTIONS, known_models=_model_names())
    for rule in ruleset.rules:
        print(f"ok     {rule.name} ({rule.level}{'' if rule.enabled else ', disabled'}) {rule.file}:{rule.line}")
    for error in ruleset.errors:
        print(f"ERROR  {error}")
    print(f"{len(ruleset.rules)} valid rule(s), {len(ruleset.errors)} error(s) in {config.rules_folder}")
    return EXIT_FAILED if ruleset.errors else EXIT_OK


def cmd_rules_test(args: argparse.Namespace) -> int:
    from dicom_node.receive.headers import read_header
    from dicom_node.routing.actions import NODE_ACTIONS
    from routing_rules.headers import SeriesHeaders
    from routing_rules.loader import load_rules

    config = _config(args)
    ruleset = load_rules(config.rules_folder, destinations=set(config.destinations), registry=NODE_ACTIONS, known_models=_model_names())
    groups: dict[str, list[Any]] = {}
    for path in _collect_files(args.paths):
        ds = read_header(path)
        groups.setdefault(str(ds.get("SeriesInstanceUID", "?")), []).append(ds)
    if not groups:
        print("no DICOM files found", file=sys.stderr)
        return EXIT_FAILED
    for series_uid, datasets in groups.items():
        first = datasets[0]
        print(f"series {series_uid} ({first.get('Modality', '?')}, {len(datasets)} file(s), {first.get('SeriesDescription', '')!s})")
        for explanation in ruleset.explain(SeriesHeaders.from_datasets(datasets), level="series"):
            if explanation.rule.level != "instance":  # those are judged file by file below
                print(f"  {explanation}")
        for explanation, fired in ruleset.explain_instances(datasets):
            print(f"  instance level, fires for {fired} of {len(datasets)} file(s): {explanation}")
    for error in ruleset.errors:
        print(f"rule error: {error}")
    return EXIT_OK


def cmd_generate(args: argparse.Namespace) -> int:
    from dicom_node.ops.synthetic import chest_ct_series, chest_dx, write_datasets

    out = Path(args.output)
    if args.kind == "ct":
        paths = write_datasets(chest_ct_series(args.count, args.size, contrast=args.contrast), out, "CT")
    else:
        paths = write_datasets([chest_dx(args.size, args.size, seed=i) for i in range(args.count)], out, "DX")
    print(f"wrote {len(paths)} synthetic {args.kind.upper()} file(s) to {out}")
    return EXIT_OK


def cmd_models_list(args: argparse.Namespace) -> int:
    """Every model and the state of its weights; exit 1 when the models extra is missing (no model can run)."""
    from ai_models.catalog import describe_models
    from ai_models.registry import models_extra_problem

    config = _config(args)
    rows = describe_models(config.weights_dir)
    problem = models_extra_problem()
    code = EXIT_OK if problem is None else EXIT_FAILED
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        if problem is not None:
            print(f"models unavailable: {problem}", file=sys.stderr)
        return code
    if problem is not None:
        print(f"models unavailable: {problem}")
        if not rows:
            return code
    print(f"weights folder: {config.weights_dir} (<model>/<key>.<ext>)")
    for row in rows:
        if row["available"]:
            state = "ready"
        elif any(w["found"] and w["valid"] is False for w in row["weights"]):
            state = "BAD WEIGHTS"
        else:
            state = "no weights"
        print(f"{row['name']:<16} {state:<12} {', '.join(row['modalities']):<10} {row['task']}")
        for weight in row["weights"]:
            if weight["found"] and weight["valid"] is False:
                print(f"    {weight['key']}: {weight['path']}: {weight['problem']}")
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dicom-node", description="DICOM AI router: receive, route by rules, run models, send results.")
    parser.add_argument("--version", action="version", version=f"dicom-node {__version__}")
    parser.add_argument("-c", "--config", default=os.environ.get("DICOM_NODE_CONFIG", "node.toml"), help="path to node.toml (default: $DICOM_NODE_CONFIG or ./node.toml)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the node (receiver, completion, rules, delivery)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("echo", help="C-ECHO a destination or the node itself")
    p.add_argument("destination", nargs="?", help="destination name from node.toml, AET@host:port, or 'node' (default)")
    p.add_argument("--calling-ae", help="our AE title for the association")
    p.set_defaults(func=cmd_echo)

    p = sub.add_parser("send", help="send DICOM files or folders to a destination or to the node")
    p.add_argument("paths", nargs="+", help="files or folders (recursive)")
    p.add_argument("--to", help="destination name, AET@host:port, or 'node' (default)")
    p.add_argument("--calling-ae", help="our AE title (default DICOM_NODE_SCU)")
    p.set_defaults(func=cmd_send)

    p = sub.add_parser("status", help="counts, waiting series (why and until when), recent deliveries")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("retry", help="queue failed deliveries or model jobs again, dispatch failed series or studies again")
    p.add_argument("--delivery", type=int, action="append", help="delivery id (repeatable)")
    p.add_argument("--all-failed", action="store_true", help="every delivery in state failed")
    p.add_argument("--job", type=int, action="append", help="model job id to run again (repeatable)")
    p.add_argument("--series", type=int, action="append", help="failed series id to dispatch again (repeatable; see status)")
    p.add_argument("--study", type=int, action="append", help="failed study id to dispatch again (repeatable)")
    p.set_defaults(func=cmd_retry)

    p = sub.add_parser("dismiss", help="give up on a failed series or study: mark it dispatched, queue nothing")
    p.add_argument("--series", type=int, action="append", help="failed series id (repeatable; see status)")
    p.add_argument("--study", type=int, action="append", help="failed study id (repeatable)")
    p.add_argument("--note", help="why (kept with the series or study, and in the audit log)")
    p.set_defaults(func=cmd_dismiss)

    rules = sub.add_parser("rules", help="validate rules or dry-run them on files")
    rules_sub = rules.add_subparsers(dest="rules_command", required=True, metavar="SUBCOMMAND")
    p = rules_sub.add_parser("check", help="validate every rule file; exit 1 if any has errors")
    p.set_defaults(func=cmd_rules_check)
    p = rules_sub.add_parser("test", help="show which rules would fire for DICOM files or folders, and why")
    p.add_argument("paths", nargs="+")
    p.set_defaults(func=cmd_rules_test)
    from dicom_node.cli.admin import register as register_admin_commands  # web admin hook
    register_admin_commands(sub, rules_sub)

    p = sub.add_parser("generate", help="write synthetic test DICOM (no patient data)")
    p.add_argument("kind", choices=["ct", "dx"])
    p.add_argument("output", help="folder to write into")
    p.add_argument("--count", type=int, default=20, help="CT slices or DX images (default 20)")
    p.add_argument("--size", type=int, default=256, help="rows/columns (default 256)")
    p.add_argument("--contrast", action="store_true", help="CT with contrast-enhanced blood pool")
    p.set_defaults(func=cmd_generate)

    models = sub.add_parser("models", help="model registry")
    models_sub = models.add_subparsers(dest="models_command", required=True, metavar="SUBCOMMAND")
    p = models_sub.add_parser("list", help="every model, whether its weights are configured and valid")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
