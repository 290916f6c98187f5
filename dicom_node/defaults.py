"""The node's built-in numbers that are not in ``node.toml``, each with the reason for its value.

What an administrator may need to change (association limit, receiver
timeouts, sweep period, delivery batch size, ...) is a field of
``node.toml``, documented there.  What is left here is internal pacing or a
bound on one piece of work: named in one place, so that changing one is a
reviewed one-line edit, not a hunt through the stages.
"""
from __future__ import annotations

# --- receive -----------------------------------------------------------------------------------------

SPOOL_SLOT_BATCH = 32
"""Empty spool slots made (and made durable with one directory flush) at a time: one flush per 32
objects instead of one per object, and at most 32 empty files left behind by a stop."""

REACTOR_BUSY_SLICE_SECONDS = 0.0002
"""How often a busy DUL checks its socket while waiting on its send queue: a fifth of the 1 ms
pynetdicom would sleep, small against a 6-7 ms C-STORE round trip, long enough not to spin a core."""

REACTOR_BUSY_WINDOW_SECONDS = 0.5
"""How long after the last traffic a DUL counts as busy: spans the gaps between the objects of a
transfer; an idle association goes back to waiting on its socket alone."""

# --- delivery ----------------------------------------------------------------------------------------

SCU_UNLIMITED_FRAGMENT = 4 << 20
"""Fragment size (bytes) when the peer sets no maximum PDU length: a CT slice or a radiograph goes
in one or two PDUs, and no PDU is ever the size of a whole multi-frame object."""

SCU_RECEIVE_MAX_PDU = 1 << 20
"""Our receive limit (bytes) as an SCU, advertised in the request: responses are a few hundred bytes."""

# --- routing -----------------------------------------------------------------------------------------

INSTANCE_PASS_LIMIT = 256
"""Objects judged per instance-level pass: a pass reads their headers in the dispatcher's thread
(~0.7 ms each, so about 0.2 s), and a burst of thousands is worked through over several sweeps
instead of holding up series completion in one."""

# --- ops ---------------------------------------------------------------------------------------------

DRY_RUN_MAX_FILES = 500
"""Headers read per dry run; a series is judged on these.  More than a typical CT series, and a
dry run (a click in the admin app) stays under a second."""

# --- runtime -----------------------------------------------------------------------------------------

RULES_RELOAD_SECONDS = 2.0
"""How often the rules (folder or database) are checked for edits: node.toml promises an edit is
picked up within 2 s; a check is a stat per file or one query."""

JOB_SUPERVISOR_SECONDS = 1.0
"""How often the supervisor looks for timed-out jobs and idle or dead workers: job timeouts are
minutes, so a second is precise enough, and the check is one query."""

RECEIVER_START_SECONDS = 30.0
"""How long the node waits for its receiver process to listen before giving up: the child imports
pynetdicom and opens the database (a few seconds on a busy machine)."""

RECEIVER_CHECK_SECONDS = 0.5
"""How often the parent checks that the receiver process is alive (and restarts it when not)."""

RECEIVER_STOP_SECONDS = 15.0
"""How long a stopping receiver may take (it finishes the object in flight) before it is killed."""

# --- web ---------------------------------------------------------------------------------------------

LOGIN_FAILURES_PER_ADDRESS = 10
"""Failed logins for one name from one client address within the window after which that address is
refused for that name until the window has passed: ten is more than a person mistypes, and a guesser
from that address gets ten tries per window.  Another address (the owner's) is not affected."""

LOGIN_FAILURES_PER_NAME = 100
"""Failed logins for one name from all addresses within the window after which addresses that never
logged in as that name (within LOGIN_KNOWN_ADDRESS_DAYS) are refused for it: caps a guesser spread over
many addresses, while the owner's usual address still gets in."""

LOGIN_WINDOW_SECONDS = 15 * 60
"""How far back failed logins are counted: a lock ends at the latest this long after the failures."""

LOGIN_KNOWN_ADDRESS_DAYS = 30
"""A client address with a successful login for a name within this many days is that name's usual
address: the name-wide limit does not apply to it (the per-address one does)."""

PASSWORD_CHECK_QUEUE = 8
"""Logins that may wait for a free password-check slot; one more is answered 429 at once.  Waiting
requests hold web threads (40 in all), so the queue stays well below that and other pages stay served."""

PASSWORD_CHECK_WAIT_SECONDS = 20.0
"""How long a login waits for a password-check slot before it is answered 429: at ~0.1-1 s per check
and a queue of 8, a fair wait always fits."""

STRUCTURE_MAX_DEPTH = 64
"""Deepest nesting of sequences and items (counted together) the structural walk of a received
dataset accepts: real objects nest under ten levels (RT structure sets are among the deepest);
a hostile one nested thousands deep would otherwise reach readers that recurse per level."""

MAX_CONTROL_PDU_BYTES = 64 << 10
"""Largest A-ASSOCIATE-RQ (and any PDU other than P-DATA-TF) the receiver reads: a request with the
128 presentation contexts DICOM allows and a few transfer syntaxes each is about 20 KiB, so a
length field above this is an attack or garbage, and is refused before any of it is buffered."""

# --- deflated datasets ---------------------------------------------------------------------------

HEADER_INFLATE_BYTES = 16 << 20
"""Most bytes of a deflated dataset inflated to read its header (rules, recovery, dry runs): real
headers are kilobytes, a few megabytes with large private blocks or sequences; the pixel data after
them is never inflated for a header."""

LISTEN_BACKLOG = 128
"""Connections the kernel queues for the receiver's accept loop (socketserver's default is 5): a burst
of connects (an attacker's, or several modalities at once) would otherwise overflow the queue, and
every SYN dropped costs the sender a 1 s retransmission."""

IDENTIFIER_INFLATE_BYTES = 256 << 10
"""Bytes of a received deflated dataset inflated to read its identifying attributes (they end at
Series Instance UID, early in any dataset); the full header read (HEADER_INFLATE_BYTES) is the fallback."""
