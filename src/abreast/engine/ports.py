"""TCP ports for the attempts that ask for them (`ports: N`): tasks that start servers
(a dev server, the test suite's own) side by side without fighting over port 3000.

Each port is one the kernel gives for a bind to port 0 on every address, so free when
it is handed out; ports held by attempts still running are not handed out again (the
sockets of one request stay open until all its ports are chosen, so the kernel does
not give the same one twice). Nothing binds them meanwhile: the attempt binds its own
(a server started on `$ABREAST_PORT`), and they go back when the attempt ends.
"""

from __future__ import annotations

import socket


class PortBook:
    def __init__(self) -> None:
        self._held: dict[str, list[int]] = {}  # by the task whose attempt holds them

    def take(self, owner: str, count: int) -> list[int]:
        """`count` free ports for `owner`'s attempt (what it held before goes back)."""
        self.give_back(owner)
        taken = {p for ports in self._held.values() for p in ports}
        socks: list[socket.socket] = []
        ports: list[int] = []
        try:
            while len(ports) < count:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.bind(("", 0))
                port = s.getsockname()[1]
                if port not in taken:
                    ports.append(port)
        finally:
            for s in socks:
                s.close()
        self._held[owner] = ports
        return ports

    def give_back(self, owner: str) -> None:
        self._held.pop(owner, None)
