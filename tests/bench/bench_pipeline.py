"""Benchmark: from series completion to the last result stored at the destination.

For a chest DX and a 300-slice chest CT sent by dcmtk storescu into a real
node, prints the time from the moment the series was complete to the last
result object stored at a dcmtk storescp destination, split into read,
inference, output building and sending (from the job and delivery rows).

    .venv/bin/python -m tests.bench.bench_pipeline [--ct-slices 300] [--size 512] [--lung]

``--lung`` adds the lung U-Net (random Keras weights, full 1024 input) on
the DX; everything else uses the weight-free baselines.
"""
from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
import time
from datetime import datetime
from pathlib import Path

from dicom_node.ops.synthetic import chest_ct_series, chest_dx, write_datasets
from tests.peers import NodeProcess, StoreSCP, storescu

RULES = """
[[rule]]
name = "ct-enhancement"
[rule.match]
Modality = "CT"
[[rule.actions]]
type = "model"
model = "enhancement-hu"
outputs = ["sr", "corrected-copy"]
destinations = ["pacs"]

[[rule]]
name = "dx-lr"
[rule.match]
Modality = "DX"
[[rule.actions]]
type = "model"
model = "lr-mark-classic"
outputs = ["sr", "erased"]
destinations = ["pacs"]
"""
LUNG_RULE = """
[[rule]]
name = "dx-lung"
[rule.match]
Modality = "DX"
[[rule.actions]]
type = "model"
model = "lung"
outputs = ["seg", "sr"]
destinations = ["pacs"]
"""


def _t(text: str) -> datetime:
    return datetime.fromisoformat(text)


def measure(node: NodeProcess, series_uid: str) -> list[dict]:
    with sqlite3.connect(node.workdir / "node.db") as conn:
        completed = conn.execute("select completed_at, id from series where series_instance_uid = ?", (series_uid,)).fetchone()
        rows = []
        for job_id, action, timings, started, _finished in conn.execute(
            "select id, action, timings, started_at, finished_at from jobs where series_id = ?", (completed[1],)
        ).fetchall():
            d = conn.execute("select min(created_at), max(finished_at), count(*) from deliveries where job_id = ?", (job_id,)).fetchone()
            last_sent = conn.execute(
                "select max(i.sent_at), count(*) from delivery_items i join deliveries d on d.id = i.delivery_id where d.job_id = ?", (job_id,)
            ).fetchone()
            t = json.loads(timings)
            rows.append({
                "model": json.loads(action)["model"], "objects": last_sent[1],
                "queue_wait_s": (_t(started) - _t(completed[0])).total_seconds(),
                "load_s": t.get("load_s", 0), "read_s": t["read_s"], "inference_s": t["inference_s"], "outputs_s": t["outputs_s"],
                "send_s": (_t(d[1]) - _t(d[0])).total_seconds(),  # queued -> delivered
                "completion_to_last_stored_s": (_t(last_sent[0]) - _t(completed[0])).total_seconds(),
            })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ct-slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--dx-size", type=int, nargs=2, default=(2500, 2048))
    parser.add_argument("--lung", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        work = Path(tmp)
        scp = StoreSCP(work / "pacs-in").start()
        node = NodeProcess(work / "node", destinations={"pacs": {"type": "dicom", "ae_title": scp.aet, "host": "127.0.0.1", "port": scp.port}},
                           rules={"r.toml": RULES + (LUNG_RULE if args.lung else "")})
        node.write_config()
        if args.lung:
            from tests.node.test_models_e2e import random_lung_weights

            random_lung_weights(node.workdir / "var" / "weights" / "lung")
        node.start()
        try:
            ct = chest_ct_series(args.ct_slices, args.size, contrast=True, seed=1)
            for ds in ct:
                del ds.ContrastBolusAgent
            dx = chest_dx(*args.dx_size, marker="L", seed=2)
            cases = [("DX", [dx], "DX"), (f"CT x{args.ct_slices}", ct, "CT")]
            print(f"{'case':<10} {'model':<16} {'objects':>7} {'wait':>6} {'load':>6} {'read':>6} {'infer':>6} {'build':>6} {'send':>6} {'total':>7}")
            for name, datasets, prefix in cases:
                files = write_datasets(datasets, work / prefix, prefix)
                assert storescu(node.port, files, extra=["-pdu", "131072"]).returncode == 0
                deadline = time.monotonic() + 1800
                while time.monotonic() < deadline:
                    with sqlite3.connect(node.workdir / "node.db") as conn:
                        pending = conn.execute(
                            "select count(*) from jobs j join series s on s.id = j.series_id where s.series_instance_uid = ? and j.state in ('pending','running')",
                            (str(datasets[0].SeriesInstanceUID),)).fetchone()[0]
                        total = conn.execute("select count(*) from jobs j join series s on s.id = j.series_id where s.series_instance_uid = ?",
                                             (str(datasets[0].SeriesInstanceUID),)).fetchone()[0]
                        undelivered = conn.execute("select count(*) from deliveries where state != 'delivered'").fetchone()[0]
                    if total and not pending and not undelivered:
                        break
                    time.sleep(0.5)
                for row in measure(node, str(datasets[0].SeriesInstanceUID)):
                    print(f"{name:<10} {row['model']:<16} {row['objects']:>7} {row['queue_wait_s']:>6.2f} {row['load_s']:>6.2f} {row['read_s']:>6.2f} "
                          f"{row['inference_s']:>6.2f} {row['outputs_s']:>6.2f} {row['send_s']:>6.2f} {row['completion_to_last_stored_s']:>7.2f}")
        finally:
            node.stop()
            scp.stop()


if __name__ == "__main__":
    main()
