"""Command-line parts of the admin features, hooked into ``dicom-node`` by one call in cli.build_parser.

* ``dicom-node admin create-user NAME --role admin|editor|viewer`` (the
  password is asked twice, or read from the first line of stdin with
  ``--password-stdin``);
* ``dicom-node rules import FOLDER [--delete-missing]`` and
  ``dicom-node rules export FOLDER``: the database rule source to and from
  TOML files (for git);
* ``dicom-node selftest --rule NAME --destination NAME``: the end-to-end
  self test against the running node, printing each step with its time.

These commands need no web framework: they work on the database directly.
"""
from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _author() -> str:
    try:
        return f"cli:{getpass.getuser()}"[:64]
    except (KeyError, OSError):  # no passwd entry (containers)
        return "cli"


def _setup(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from dicom_node.config import load_config
    from dicom_node.db import Database

    config = load_config(args.config)
    return config, Database(config.database_url)


def cmd_create_user(args: argparse.Namespace) -> int:
    from dicom_node.web.auth import AccountError, create_user

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass(f"password for {args.name}: ")
        if password != getpass.getpass("again: "):
            print("the two passwords differ; nothing created", file=sys.stderr)
            return EXIT_FAILED
    _config, db = _setup(args)
    try:
        create_user(db, args.name, password, args.role, created_by=_author())
    except AccountError as exc:
        print(f"not created: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        db.dispose()
    print(f"user {args.name} created with role {args.role}")
    return EXIT_OK


def cmd_rules_import(args: argparse.Namespace) -> int:
    from dicom_node.routing.rule_editing import import_from_folder

    config, db = _setup(args)
    folder = Path(args.folder)
    if not folder.is_dir():
        print(f"{folder}: not a folder", file=sys.stderr)
        return EXIT_USAGE
    report = import_from_folder(db, folder, author=_author(), destinations=set(config.destinations), delete_missing=args.delete_missing)
    db.dispose()
    for label, names in (("created", report.created), ("updated", report.updated), ("unchanged", report.unchanged), ("deleted", report.deleted)):
        for name in names:
            print(f"{label:<9} {name}")
    for error in report.errors:
        print(f"ERROR     {error}")
    for warning in report.warnings:
        print(f"warning: {warning}")
    print(report.summary())
    if config.rules_source != "database":
        print('note: this node reads rules from its folder; set [rules] source = "database" in node.toml to use the imported rules')
    return EXIT_FAILED if report.errors else EXIT_OK


def cmd_rules_export(args: argparse.Namespace) -> int:
    from dicom_node.routing.rule_editing import export_to_folder

    _config, db = _setup(args)
    written = export_to_folder(db, args.folder, author=_author())
    db.dispose()
    for path in written:
        print(path)
    print(f"{len(written)} rule file(s) written to {args.folder}")
    return EXIT_OK


def cmd_selftest(args: argparse.Namespace) -> int:
    from dicom_node.db.states import SelfTestState
    from dicom_node.ops import selftest
    from dicom_node.routing.rule_sources import configured_ruleset

    config, db = _setup(args)
    ruleset = configured_ruleset(config, db)
    try:
        run_id = selftest.create_run(config, db, ruleset, args.rule, args.destination, author=_author(), timeout_seconds=args.timeout)
    except selftest.SelfTestError as exc:
        print(f"self test not started: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"self test {run_id}: rule {args.rule} -> {args.destination}; waiting for the node to load the temporary rule ...")
    printed: set[str] = set()

    def show(steps: list[selftest.Step]) -> None:
        with db.session() as session:
            run = session.get(selftest.SelfTestRun, run_id)
            origin = run.sent_at if run is not None else None
        for step in steps:
            if step.state != "waiting" and step.name not in printed:
                printed.add(step.name)
                data = step.as_dict(origin)
                when = f"{data['seconds']:+8.2f} s" if data["seconds"] is not None else " " * 10
                print(f"  {when}  {step.state:<7} {step.name}{': ' + step.detail if step.detail else ''}")

    outcome = selftest.execute(config, db, run_id, ruleset=ruleset, on_progress=show, timeout_seconds=args.timeout)
    report = selftest.run_report(db, run_id) or {}
    show([selftest.Step(s["name"], s["state"], None, s["detail"]) for s in report.get("steps", []) if s["name"] not in printed and s["state"] != "waiting"])
    for note in report.get("notes", []):
        print(f"  note: {note}")
    if outcome != SelfTestState.PASSED:
        print(f"FAILED: {report.get('error')}")
    else:
        print("passed")
    db.dispose()
    return EXIT_OK if outcome == SelfTestState.PASSED else EXIT_FAILED


def register(sub: argparse._SubParsersAction, rules_sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the admin commands to the ``dicom-node`` parser (``sub``) and its ``rules`` group (``rules_sub``)."""
    admin = sub.add_parser("admin", help="admin accounts for the web app")
    admin_sub = admin.add_subparsers(dest="admin_command", required=True, metavar="SUBCOMMAND")
    p = admin_sub.add_parser("create-user", help="create an account (the first admin, for example)")
    p.add_argument("name")
    p.add_argument("--role", choices=["admin", "editor", "viewer"], required=True)
    p.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    p.set_defaults(func=cmd_create_user)

    p = rules_sub.add_parser("import", help="import a folder of rule files into the database rule source")
    p.add_argument("folder")
    p.add_argument("--delete-missing", action="store_true", help="delete database rules that are not in the folder")
    p.set_defaults(func=cmd_rules_import)
    p = rules_sub.add_parser("export", help="write the database rules to a folder, one file per rule")
    p.add_argument("folder")
    p.set_defaults(func=cmd_rules_export)

    p = sub.add_parser("selftest", help="send a synthetic series through the running node, a rule and a destination")
    p.add_argument("--rule", required=True, help="the rule whose actions to test")
    p.add_argument("--destination", required=True, help="where the test sends (instead of the rule's destinations)")
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait for the end (default: quiet period + 90)")
    p.set_defaults(func=cmd_selftest)
