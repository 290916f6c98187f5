"""The DICOM node service: receive, store durably, detect completion, route, run models, deliver.

The package is laid out by stage, in the order a study flows (see
docs/architecture.md); a package may import the ones before it, never one
after it:

* foundation: :mod:`.config`, :mod:`.defaults`, :mod:`.clock`,
  :mod:`.processes`, :mod:`.db`
* :mod:`.receive`: C-STORE SCP, spool, instance rows
* :mod:`.delivery`: delivery queue, workers, C-STORE SCU
* :mod:`.outputs`: DICOM SEG, SR and derived images from model results
* :mod:`.jobs`: model job queue, workers, supervisor
* :mod:`.routing`: completion, rules, actions, dispatcher
* :mod:`.ops`: status queries, metrics, operator actions, self test
* :mod:`.web`: the admin app's routes
* :mod:`.runtime`: the processes of ``serve`` and start-up recovery
* :mod:`.cli`: the command line

``tests/test_architecture.py`` enforces this order and that there is no
import cycle.
"""

__version__ = "0.1.0"
PRODUCT_NAME = "dicom-node"
