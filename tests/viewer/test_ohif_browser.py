"""The real OHIF v3 viewer (prebuilt @ohif/app dist, headless Chromium) shows our SEG and SR correctly.

Files are handed to OHIF's "local files" data source, so no PACS is needed;
the page may talk to the local static server only.  Each test reads back the
labelmap / annotations OHIF renders, compares them with the truth, and keeps
a screenshot in artifacts/viewer/.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from tests.viewer.cases import (
    TUMOUR_SLICES,
    ViewerCase,
    ct_case,
    dx_case,
    dx_marker_sr,
    shift_references,
)
from tests.viewer.labelmap_check import mismatches
from tests.viewer.ohif_app import OhifServer, dist_missing_reason
from tests.viewer.ohif_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    ViewerPage,
    browser_missing_reason,
    labelmaps_by_uid,
)

if TYPE_CHECKING:
    from playwright.sync_api import Browser

_MISSING = dist_missing_reason() or browser_missing_reason()
# OHIF renders asynchronously: each read-back waits for what OHIF has drawn (ohif_browser's
# probes), never for a time, so the tests pass on a loaded machine without reruns.
pytestmark = [pytest.mark.peers, pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")]


@pytest.fixture(scope="module")
def ohif(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OhifServer]:
    server = OhifServer(tmp_path_factory.mktemp("ohif")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright  # only here: the module must import without it to skip

    playwright = sync_playwright().start()
    chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    yield chromium
    chromium.close()
    playwright.stop()


@pytest.fixture
def viewer(browser: Browser, ohif: OhifServer) -> Iterator[ViewerPage]:
    page = ViewerPage.open(browser, ohif.base)
    yield page
    page.close()
    assert page.blocked == [], "OHIF tried to reach something other than the local server"
    assert page.page_errors == []  # uncaught exceptions
    if page.console_errors:  # OHIF logs some of its own now and then; the read-backs are the verdict
        print("OHIF console errors:", [e.splitlines()[0] for e in page.console_errors])


def _seg_in_ohif(viewer: ViewerPage, case: ViewerCase, seg: Path, description: str) -> dict[str, np.ndarray | None]:
    """Load the case's sources and one SEG in OHIF, open the SEG, return OHIF's labelmap per SOP Instance UID."""
    started = time.monotonic()
    viewer.load_local_files([*case.sources, seg], wait_for_text=description)
    loaded = time.monotonic()
    viewer.open_segmentation(description)
    (segmentation,) = viewer.shown_labelmaps(description)
    print(f"OHIF: files to viewer {loaded - started:.1f} s, SEG opened and read back {time.monotonic() - loaded:.1f} s")
    assert {int(n): label for n, label in segmentation["segments"].items()} == case.segment_labels
    return labelmaps_by_uid(segmentation)


def test_ohif_draws_the_ct_seg_on_the_right_slices(viewer: ViewerPage, tmp_path: Path) -> None:
    case = ct_case(tmp_path)
    labelmap = _seg_in_ohif(viewer, case, case.seg, "viewer check SEG")
    counts = sorted((case.instance_numbers[uid], 0 if m is None else int(np.count_nonzero(m))) for uid, m in labelmap.items())
    print("OHIF instance/voxels:", counts, "expected:", sorted((case.instance_numbers[u], n) for u, n in case.expected_counts().items()))
    assert mismatches(labelmap, case.expected) == []

    # A slice with both segments, and the Segmentations panel listing them, for the screenshot.
    k = TUMOUR_SLICES[0]
    uid = next(u for u, n in case.instance_numbers.items() if n == k + 1)
    viewer.show_image(uid, f"I:{k + 1} ({k + 1}/{len(case.sources)})")
    viewer.page.locator("[data-cy=panelSegmentation-btn]").click()
    viewer.page.get_by_text("kidney tumour").first.wait_for(timeout=15_000)
    shot = viewer.screenshot("ohif_ct_seg.png")
    print(f"screenshot: {shot}")


def test_ohif_shows_a_shifted_seg_on_the_wrong_slices(viewer: ViewerPage, tmp_path: Path) -> None:
    """Negative control in the browser: OHIF follows the (wrong) references, and the check notices."""
    case = ct_case(tmp_path)
    bad = shift_references(case, tmp_path / "seg_shifted.dcm", by=1)
    labelmap = _seg_in_ohif(viewer, case, bad, "viewer check SEG")
    problems = mismatches(labelmap, case.expected)
    print("OHIF with shifted references:", problems)
    assert problems
    order = sorted(case.expected, key=case.instance_numbers.__getitem__)
    first = next(k for k, uid in enumerate(order) if case.expected[uid].any())
    shown = labelmap[order[first + 1]]  # the first masked slice's F, drawn one slice further on
    assert shown is not None and np.array_equal(shown, case.expected[order[first]])
    viewer.screenshot("ohif_ct_seg_shifted_negative_control.png")


def test_ohif_draws_the_dx_lung_seg_as_built(viewer: ViewerPage, tmp_path: Path) -> None:
    case, _ = dx_case(tmp_path)
    try:
        labelmap = _seg_in_ohif(viewer, case, case.seg, "viewer check lung SEG")
    finally:
        viewer.screenshot("ohif_dx_seg.png")
    assert mismatches(labelmap, case.expected) == []


def test_ohif_shows_the_lr_marker_sr_on_the_radiograph(viewer: ViewerPage, tmp_path: Path) -> None:
    from playwright.sync_api import expect  # only here: the module must import without it to skip

    case, dx = dx_case(tmp_path)
    sr, boxes = dx_marker_sr(dx, tmp_path / "sr_lr.dcm")
    started = time.monotonic()
    viewer.load_local_files([*case.sources, sr], wait_for_text="viewer check L/R SR")
    viewer.open_series("viewer check L/R SR")
    # OHIF offers to turn the SR into editable measurements; the read-only SR view is what we check.
    viewer.page.locator("[data-cy=no-hydrate-btn]").click()
    # drawn: OHIF renders an outline's label with it, so once every label is in the viewport
    # the outlines are there too (up to 30 s on a loaded machine)
    pane = viewer.page.locator("[data-cy=viewport-pane]").first
    for box in boxes:
        expect(pane).to_contain_text(f"Probability: {box.score:.2f}", timeout=30_000)
    drawn = viewer.annotations(count=len(boxes))
    print(f"OHIF: SR shown after {time.monotonic() - started:.1f} s")

    assert len(drawn) == len(boxes)
    for box in boxes:
        expected = [[box.x0, box.y0], [box.x1, box.y0], [box.x1, box.y1], [box.x0, box.y1], [box.x0, box.y0]]
        matching = [a for a in drawn if np.allclose(np.asarray(a["points"])[:, :2], expected, atol=0.01)]
        assert len(matching) == 1, f"no outline drawn at {expected}: {drawn}"
        assert matching[0]["sopInstanceUID"] == str(dx.SOPInstanceUID)
    shot = viewer.screenshot("ohif_dx_lr_sr.png")
    print(f"screenshot: {shot}")
