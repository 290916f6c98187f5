"""The ``dicom-node`` command line: argument parsing and printing only; the work is done by the stages and ops.

Owns: the commands (:mod:`.main`) and the administration commands that
need the web admin's tables (:mod:`.admin`: accounts, rule import/export,
self test).  Nothing in the node imports it.
"""
