"""A tracking server that accepts connections and never answers: the outage that costs most."""

import socket
import threading


class BlackHole:
    """Listens on 127.0.0.1, accepts every connection, reads nothing and answers nothing; counts
    the connections it accepted. Use as a context manager."""

    def __init__(self):
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(64)
        self._socket.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        self.accepted = 0
        self._held = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self):
        while not self._stop.is_set():
            try:
                connection, _ = self._socket.accept()
            except socket.timeout:
                continue
            self.accepted += 1
            self._held.append(connection)  # kept open, never answered

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        for connection in self._held:
            connection.close()
        self._socket.close()
