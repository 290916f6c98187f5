"""The same node on a real PostgreSQL (Debian's server, a throwaway cluster)."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import sqlalchemy

from dicom_node.ops.synthetic import chest_ct_series, write_datasets
from tests.node.conftest import forward_rule
from tests.peers import DCMTK_ENV, StoreSCP, free_port, wait_for, wait_port

pytestmark = [pytest.mark.peers, pytest.mark.postgres]


def _alembic_head() -> str:
    from alembic.script import ScriptDirectory

    from dicom_node.db.engine import alembic_config

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _accepts_connections(url: str) -> bool:
    """The server listens before it accepts logins (it is still starting up)."""
    try:
        sqlalchemy.create_engine(url).connect().close()
    except sqlalchemy.exc.OperationalError:
        return False
    return True


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@pytest.fixture(scope="module")
def postgres_url():  # type: ignore[no-untyped-def]
    """Start a private PostgreSQL cluster on a free loopback port; stop it by PID."""
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries not installed (deploy/test.sh installs them)")
    # directly under /tmp: pytest's own temp folders are private to root, and
    # initdb refuses to run as root, so the server runs as user postgres
    base = Path(tempfile.mkdtemp(prefix="dicom-node-pg-"))
    data = base / "data"
    port = free_port()
    as_user: list[str] = []
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(base, "postgres")
    subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"], check=True, capture_output=True)
    proc = subprocess.Popen(
        [*as_user, str(bin_dir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(data), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=on"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wait_port(port, 30, proc)
    url = f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    wait_for(lambda: _accepts_connections(url), timeout=10, what="PostgreSQL accepting connections")
    yield url
    proc.terminate()
    proc.wait(30)
    shutil.rmtree(base, ignore_errors=True)


def test_node_on_postgresql_receives_from_concurrent_senders_and_forwards(make_node, postgres_url, tmp_path) -> None:
    scp = StoreSCP(tmp_path / "scp-in").start()
    try:
        copies = tmp_path / "as-stored"
        as_stored = forward_rule("copies", level="instance", name="as-stored")
        node = make_node(destinations={"scp": {"type": "dicom", "ae_title": scp.aet, "host": "127.0.0.1", "port": scp.port},
                                       "copies": {"type": "folder", "path": str(copies)}},
                         rules={"f.toml": forward_rule("scp"), "i.toml": as_stored})
        node.stop()
        node.config_path.write_text(node.config_path.read_text().replace('url = "sqlite:///node.db"', f'url = "{postgres_url}"'))
        node.start()
        procs = []
        expected = 0
        for i, calling in enumerate(["STORESCU", "SENDER2", "SENDER3"]):
            series = chest_ct_series(15, 64, seed=40 + i)
            expected += len(series)
            files = write_datasets(series, tmp_path / f"s{i}")
            procs.append(subprocess.Popen(["storescu", "-aet", calling, "-aec", "DICOM_NODE", "127.0.0.1", str(node.port), *map(str, files)], env=DCMTK_ENV))
        assert all(p.wait(120) == 0 for p in procs)
        engine = sqlalchemy.create_engine(postgres_url)
        with engine.connect() as conn:
            assert conn.execute(sqlalchemy.text("select count(*) from instances")).scalar() == expected
            assert conn.execute(sqlalchemy.text("select version_num from alembic_version")).scalar() == _alembic_head()
        wait_for(lambda: len(scp.files()) >= expected, timeout=60, what="every object at the DICOM destination")
        assert len(scp.files()) == expected

        def forward_states() -> list:
            with engine.connect() as conn:
                return conn.execute(sqlalchemy.text(
                    "select state, count(*) from deliveries where rule_name = 'forward-all' group by state")).all()

        # the last item is committed just after storescp wrote it
        wait_for(lambda: forward_states() == [("delivered", 3)], timeout=10, what="three delivered series deliveries")
        # the instance-level rule copied every object as it was stored, each once (partial index on PostgreSQL too)
        wait_for(lambda: len(list(copies.rglob("*.dcm"))) >= expected, timeout=30, what="every object copied as stored")
        assert len(list(copies.rglob("*.dcm"))) == expected
        with engine.connect() as conn:
            assert conn.execute(sqlalchemy.text("select count(*) from instances where routed_version is null")).scalar() == 0
        engine.dispose()
    finally:
        scp.stop()
