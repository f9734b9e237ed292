"""What the loss benchmarks share (reload-loss.py, takeover-loss.py, soak.py, heavy-client.py):
sink sockets, a paced sender of sequence-numbered lines, a packet recorder and its reader, and
/metrics scraping. Loopback only; every wait is bounded by its caller's stop event.
"""
import re
import selectors
import socket
import struct
import time
import urllib.request

SO_RCVBUFFORCE = 33


def sink_sockets(count, rcvbuf=32 << 20):
    """`count` UDP sockets bound to 127.0.0.1 on ports the kernel picks, each with a receive
    buffer of `rcvbuf` (forced past rmem_max as root, else as large as the limit allows)."""
    socks = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind(("127.0.0.1", 0))
        socks.append(sock)
    return socks


def address_of(sock):
    """A bound socket's `127.0.0.1:PORT`, as a backend is written."""
    return f"127.0.0.1:{sock.getsockname()[1]}"


def numbered_lines(prefix, datagram, per_datagram):
    """Datagram number `datagram`: lines `PREFIX.n:1|c` for its `per_datagram` sequence numbers."""
    first = datagram * per_datagram
    return "\n".join(f"{prefix}.{n}:1|c" for n in range(first, first + per_datagram)).encode()


def paced_sender(port, prefix, per_datagram, count, rate, sent):
    """Sends datagrams 0..count-1 of `numbered_lines` to 127.0.0.1:`port` from one socket,
    paced to `rate` lines/s; `sent.value` counts whole sends (a multiprocessing Value)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    interval = per_datagram / rate
    start = time.monotonic()
    for datagram in range(count):
        delay = start + datagram * interval - time.monotonic()
        if delay > 0.0005:
            time.sleep(delay)
        sock.sendto(numbered_lines(prefix, datagram, per_datagram), ("127.0.0.1", port))
        sent.value = datagram + 1


def record_packets(socks, path, stop, quiet=1.0):
    """Writes every packet each of `socks` receives to `path` as (socket index, length,
    bytes) until `stop` is set and `quiet` seconds pass with nothing arriving."""
    sel = selectors.DefaultSelector()
    for index, sock in enumerate(socks):
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ, index)
    last = time.monotonic()
    with open(path, "wb") as out:
        while True:
            for key, _ in sel.select(0.1):
                while True:
                    try:
                        data = key.fileobj.recv(65536)
                    except BlockingIOError:
                        break
                    out.write(struct.pack("<BI", key.data, len(data)) + data)
                    last = time.monotonic()
            if stop.is_set() and time.monotonic() - last > quiet:
                return


def recorded_packets(path):
    """The (socket index, packet) pairs `record_packets` wrote, in arrival order."""
    with open(path, "rb") as f:
        data = f.read()
    offset = 0
    while offset < len(data):
        index, length = struct.unpack_from("<BI", data, offset)
        offset += 5
        yield index, data[offset:offset + length]
        offset += length


def scrape(admin_port):
    """The relay's /metrics text from its admin endpoint on 127.0.0.1:`admin_port`."""
    return urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5).read().decode()


def metric(text, name, labels=""):
    """The sum of family `name`'s samples in exposition `text`, only those whose labels
    contain `labels` (e.g. `backend="127.0.0.1:9001"`) when given."""
    if labels:
        pattern = rf"^{name}\{{[^}}]*{re.escape(labels)}[^}}]*\}} (\S+)$"
    else:
        pattern = rf"^{name}(?:\{{[^}}]*\}})? (\S+)$"
    return sum(int(float(v)) for v in re.findall(pattern, text, re.M))
