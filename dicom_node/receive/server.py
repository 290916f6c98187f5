"""The listening socket: connections become pynetdicom associations only after a valid A-ASSOCIATE-RQ.

pynetdicom starts an association thread for every accepted connection and
counts it against the association limit at once; its reader then blocks in
``recv()`` without a deadline, so idle or garbage connections hold slots
forever (issue 15).  Here the connection's thread first reads the
A-ASSOCIATE-RQ itself under ARTIM and a size cap, counted only against the
pending-connection caps (:mod:`dicom_node.receive.limits`), and only then
creates the association, hands it the request and gives the socket the
read timeout that bounds a stall in the middle of any later PDU.
"""
from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from typing import Any, cast

from pynetdicom import evt
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from dicom_node.defaults import LISTEN_BACKLOG
from dicom_node.receive import pynetdicom_patches
from dicom_node.receive.limits import NothingSent, PendingConnections, Refused, bound_reads, read_associate_rq

log = logging.getLogger("dicom_node.receive.server")


@dataclass(frozen=True)
class ConnectionLimits:
    """The per-connection limits, from ``[node]``."""

    artim_seconds: float
    read_timeout_seconds: float
    max_pending: int
    max_pending_per_host: int


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


class AdmittingRequestHandler(RequestHandler):
    """pynetdicom's handler, with the A-ASSOCIATE-RQ read and checked before the association exists."""

    server: NodeServer

    def handle(self) -> None:
        sock = cast(socket.socket, self.request)
        host = str(self.client_address[0])
        limits = self.server.limits
        self.server.pending.admit(sock, host)
        try:
            request = read_associate_rq(sock, timeout=limits.artim_seconds)
            A_ASSOCIATE_RQ().decode(request)  # pynetdicom's parse, before an association is spent on it
        except NothingSent:
            log.debug("connection from %s closed without sending anything", host)
            _close(sock)
            return
        except Refused as exc:
            log.warning("connection from %s closed before association: %s", host, exc)
            _close(sock)
            return
        except Exception as exc:  # noqa: BLE001 - pynetdicom raises many types on a malformed PDU
            log.warning("connection from %s closed before association: A-ASSOCIATE-RQ does not decode (%s: %s)",
                        host, type(exc).__name__, exc)
            _close(sock)
            return
        finally:
            self.server.pending.release(sock)
        bound_reads(sock, limits.read_timeout_seconds)
        # from here as RequestHandler.handle, with the request already read
        assoc = self._create_association()
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        pynetdicom_patches.hand_over_associate_rq(assoc.dul, request)
        assoc.start()


class NodeServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with :class:`AdmittingRequestHandler` and the pending-connection caps."""

    request_queue_size = LISTEN_BACKLOG

    def __init__(
        self, ae: Any, address: tuple[str, int], ae_title: str, contexts: list[Any], ssl_context: Any = None,
        evt_handlers: list[Any] | None = None, *, limits: ConnectionLimits,
    ) -> None:
        """As pynetdicom's, which ``AE.make_server`` calls with these arguments; ``limits`` is passed through it."""
        self.limits = limits
        self.pending = PendingConnections(total=limits.max_pending, per_host=limits.max_pending_per_host)
        super().__init__(ae, address, ae_title, contexts, ssl_context, evt_handlers=evt_handlers,
                         request_handler=AdmittingRequestHandler)

    def server_close(self) -> None:
        """Close the connections still waiting for their request first, so their threads end now, not at ARTIM."""
        self.pending.close_all()
        super().server_close()
