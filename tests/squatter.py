"""A hostile second local user's socket games against a --join group (tests only).

Run as another user (chrun-evil): ``python3 squatter.py MODE SECONDS NAME_HEX...``.
Every NAME_HEX is an abstract socket name (leading NUL included), hex-encoded.
Prints ``ready`` once its sockets are in place, then keeps them SECONDS seconds.

MODE:
  bind     bind each name, never listen (connect: ECONNREFUSED)
  listen   bind + listen, never accept (connect works; the peer is another UID)
  full     bind + listen(0) + one queued connection of its own: backlog full
           (a blocking connect waits forever; a non-blocking one: EAGAIN)
  release  listen on the first name; the moment any other name appears in
           /proc/net/unix (the group moved on), close it and print ``released``
  toggle   like release, then bind the first name again right away, release it
           again 50 ms later, and so on until SECONDS (releases at every moment)
"""

import socket
import sys
import time


def names_bound(names):
    text = open("/proc/net/unix").read()
    return [n for n in names if "@" + n[1:].decode() in text]


def squat(name, mode):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(name)
    extra = None
    if mode in ("listen", "release", "toggle"):
        s.listen(16)
    elif mode == "full":
        s.listen(0)
        extra = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        extra.setblocking(False)
        extra.connect(name)
    return s, extra


def main():
    mode, seconds = sys.argv[1], float(sys.argv[2])
    names = [bytes.fromhex(h) for h in sys.argv[3:]]
    end = time.monotonic() + seconds
    if mode in ("bind", "listen", "full"):
        held = [squat(n, mode) for n in names]
        print("ready", flush=True)
        time.sleep(max(end - time.monotonic(), 0))
        return
    first, rest = names[0], names[1:]
    s, _ = squat(first, mode)
    print("ready", flush=True)
    while not names_bound(rest):
        if time.monotonic() > end:
            return
        time.sleep(0.0005)
    s.close()
    print("released", flush=True)
    while mode == "toggle" and time.monotonic() < end:
        try:
            s, _ = squat(first, mode)
        except OSError:      # the group took it: try again later
            time.sleep(0.01)
            continue
        time.sleep(0.05)
        s.close()
    time.sleep(max(end - time.monotonic(), 0))


if __name__ == "__main__":
    main()
