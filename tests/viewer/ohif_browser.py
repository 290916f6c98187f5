"""Drive the real OHIF viewer in headless Chromium (Playwright, the system browser) and read back what it shows.

Only the local OHIF server may be reached: every other request is aborted and
recorded, so a test can assert that the viewer never tried to go online.
The read-backs use the objects OHIF 3.13 puts on ``window``
(``cornerstone``, ``cornerstoneTools``), i.e. the very labelmaps and
annotations it renders.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # playwright is optional: the tests skip without it
    from playwright.sync_api import Browser, Page, Route

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-default-apps"]
VIEWPORT = {"width": 1400, "height": 900}
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "viewer"

# Every labelmap OHIF holds, as the SOP Instance UID of the image it lies on
# and its non-zero voxels (flat indices and segment numbers).
PROBE_LABELMAPS = """() => {
  const cs = window.cornerstone, cst = window.cornerstoneTools;
  return cst.segmentation.state.getSegmentations().map(s => {
    const labelmap = s.representationData.Labelmap;
    const images = labelmap.imageIds.map(id => {
      const image = cs.cache.getImage(id);
      if (!image) return null;
      const pixels = image.voxelManager.getScalarData();
      const indices = [], values = [];
      pixels.forEach((v, i) => { if (v) { indices.push(i); values.push(v); } });
      const source = cs.metaData.get('generalImageModule', image.referencedImageId) || {};
      return { sopInstanceUID: source.sopInstanceUID, instanceNumber: source.instanceNumber,
               rows: image.rows, columns: image.columns, indices, values };
    });
    return { label: s.label, segments: Object.fromEntries(Object.entries(s.segments).map(([n, x]) => [n, x.label])),
             images };
  });
}"""

# Every annotation drawn on an image, its points in image pixel coordinates (column, row).
PROBE_ANNOTATIONS = """() => {
  const cs = window.cornerstone;
  return window.cornerstoneTools.annotation.state.getAllAnnotations()
    .filter(a => a.metadata.referencedImageId)
    .map(a => ({ tool: a.metadata.toolName, label: a.data.label,
                 sopInstanceUID: (cs.metaData.get('generalImageModule', a.metadata.referencedImageId) || {}).sopInstanceUID,
                 points: a.data.handles.points.map(p => cs.utilities.worldToImageCoords(a.metadata.referencedImageId, p)) }));
}"""

# The state of the SEG display sets with this series description: whether OHIF started
# loading one, is still at it, and has finished (OHIF's own flags; a failed load ends
# with loading and isLoaded both false).
PROBE_SEG_LOAD = """(description) => window.services.displaySetService.getActiveDisplaySets()
  .filter(ds => ds.Modality === 'SEG' && ds.SeriesDescription === description)
  .map(ds => ({ started: Boolean(ds.loadingPromise), loading: Boolean(ds.loading), loaded: Boolean(ds.isLoaded) }))"""

# Whether OHIF draws its segmentations: the SEG display set with this series description
# loaded, and each segmentation in cornerstone's state with every labelmap image in the
# cache and attached to a viewport.  OHIF fills a labelmap before it adds the segmentation
# to that state, so what the probe reads then is the finished labelmap, not a partial one.
PROBE_SEG_SHOWN = """(description) => {
  const cs = window.cornerstone, state = window.cornerstoneTools.segmentation.state;
  const seg = window.services.displaySetService.getActiveDisplaySets()
    .filter(ds => ds.Modality === 'SEG' && ds.SeriesDescription === description);
  const all = state.getSegmentations();
  return seg.length > 0 && seg.every(ds => ds.isLoaded) && all.length > 0 && all.every(s =>
    s.representationData.Labelmap.imageIds.every(id => cs.cache.getImage(id))
    && state.getViewportIdsWithSegmentation(s.segmentationId).length > 0);
}"""

# Whether the viewer has laid out the study and drawn it: every viewport shows a loaded
# image.  A series double-clicked before that would be replaced by the initial layout.
PROBE_VIEWER_DRAWN = """() => {
  const cs = window.cornerstone;
  const viewports = cs && cs.getRenderingEngines ? cs.getRenderingEngines().flatMap(e => e.getViewports()) : [];
  return viewports.length > 0 && viewports.every(v => v.getCurrentImageId && v.getCurrentImageId() && cs.cache.getImage(v.getCurrentImageId()));
}"""

# Show the image with this SOP Instance UID in the viewport that holds it; true when found.
SHOW_IMAGE = """async (uid) => {
  const cs = window.cornerstone;
  for (const engine of cs.getRenderingEngines()) {
    for (const viewport of engine.getViewports()) {
      const ids = viewport.getImageIds ? viewport.getImageIds() : [];
      const index = ids.findIndex(id => (cs.metaData.get('generalImageModule', id) || {}).sopInstanceUID === uid);
      if (index >= 0) { await viewport.setImageIdIndex(index); viewport.render(); return true; }
    }
  }
  return false;
}"""


class OhifRefusedSeg(RuntimeError):
    """OHIF failed to open a SEG (the error it logged instead of asking to load it)."""


def browser_missing_reason() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright (Python) is not installed: pip install -e '.[test]' (never `playwright install`)"
    if not Path(CHROMIUM).is_file():
        return "chromium is not installed (deploy/setup.sh test installs the Debian package)"
    return None


@dataclass
class ViewerPage:
    """One browser context + page on the local OHIF, with every outside request blocked and logged."""

    page: Page
    base: str
    blocked: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, browser: Browser, base: str) -> ViewerPage:
        # Service workers would fetch behind the router's back; OHIF runs without them.
        context = browser.new_context(viewport=VIEWPORT, service_workers="block")
        viewer = cls(page=context.new_page(), base=base)
        context.route("**/*", viewer._route)
        viewer.page.on("pageerror", lambda error: viewer.page_errors.append(str(error)))
        viewer.page.on("console", lambda message: message.type == "error" and viewer.console_errors.append(message.text))
        return viewer

    def _route(self, route: Route) -> None:
        url = route.request.url
        if url.startswith(self.base + "/"):
            route.continue_()
        else:
            self.blocked.append(url)
            route.abort()

    def close(self) -> None:
        self.page.context.close()

    def load_local_files(self, files: list[Path], wait_for_text: str, timeout_ms: int = 60_000) -> None:
        """OHIF's "load local files" route: it parses them in the page and opens the viewer by itself.

        Returns once ``wait_for_text`` is in the study browser and the viewer drew its first image.
        """
        self.page.goto(f"{self.base}/localbasic")
        chooser = self.page.locator("input[type=file]").first
        chooser.wait_for(state="attached", timeout=timeout_ms)
        chooser.set_input_files([str(p) for p in files])
        self.page.get_by_text(wait_for_text).first.wait_for(timeout=timeout_ms)
        self.page.wait_for_function(PROBE_VIEWER_DRAWN, timeout=timeout_ms, polling=200)

    def open_series(self, description: str) -> None:
        """Double-click a series in the study browser, as a reader would."""
        self.page.get_by_text(description).first.dblclick()

    def open_segmentation(self, description: str, timeout_s: float = 60) -> None:
        """Open a SEG series and answer OHIF's "Do you want to open this Segmentation?" with Yes.

        A SEG OHIF cannot handle never gets that question: its load fails
        (OHIF's display set says so) or OHIF crashes to "Something went
        wrong".  Either ends the wait with OhifRefusedSeg, with the error
        OHIF logged; nothing else does, so a slow machine only makes it wait.
        """
        yes = self.page.get_by_role("button", name="Yes", exact=True)
        crashed = self.page.get_by_text("Something went wrong")
        errors_before = len(self.console_errors)
        self.open_series(description)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            loads = self.page.evaluate(PROBE_SEG_LOAD, description)
            if yes.count():
                yes.click()
                return
            new_errors = self.console_errors[errors_before:]
            logged = new_errors[0].splitlines()[0] if new_errors else "no error logged"
            if crashed.count():
                raise OhifRefusedSeg(f"OHIF crashed: {logged}")
            if any(load["started"] and not load["loading"] and not load["loaded"] for load in loads):
                raise OhifRefusedSeg(f"OHIF could not load the SEG: {logged}")
            self.page.wait_for_timeout(200)
        raise TimeoutError(f"OHIF neither offered to open the SEG nor failed to load it within {timeout_s}s")

    def shown_labelmaps(self, description: str, timeout_s: float = 60) -> list[dict]:
        """The labelmaps once OHIF draws the SEG with this series description (see PROBE_SEG_SHOWN)."""
        self.page.wait_for_function(PROBE_SEG_SHOWN, arg=description, timeout=timeout_s * 1000, polling=200)
        return self.page.evaluate(PROBE_LABELMAPS)

    def annotations(self, count: int, timeout_s: float = 30) -> list[dict]:
        deadline = time.monotonic() + timeout_s
        found: list[dict] = []
        while time.monotonic() < deadline:
            found = self.page.evaluate(PROBE_ANNOTATIONS)
            if len(found) >= count:
                return found
            self.page.wait_for_timeout(250)
        raise TimeoutError(f"OHIF drew {len(found)} annotations, expected {count}, within {timeout_s}s")

    def show_image(self, sop_instance_uid: str, overlay_text: str, timeout_ms: int = 15_000) -> None:
        """Scroll the viewport to one source image and wait until its overlay says so (e.g. "I:7 (7/12)")."""
        assert self.page.evaluate(SHOW_IMAGE, sop_instance_uid), f"no viewport holds {sop_instance_uid}"
        self.page.get_by_text(overlay_text).first.wait_for(timeout=timeout_ms)

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / name
        self.page.screenshot(path=str(path))
        return path


def labelmaps_by_uid(segmentation: dict) -> dict[str, np.ndarray | None]:
    """One probed segmentation as SOP Instance UID -> rows x cols labelmap (None when empty)."""
    out: dict[str, np.ndarray | None] = {}
    for image in segmentation["images"]:
        mask = None
        if image["indices"]:
            mask = np.zeros(image["rows"] * image["columns"], dtype=np.uint8)
            mask[image["indices"]] = image["values"]
            mask = mask.reshape(image["rows"], image["columns"])
        out[image["sopInstanceUID"]] = mask
    return out
