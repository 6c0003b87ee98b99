#!/usr/bin/env python3
"""Runs a SecantusDB server (MongoDB wire protocol) for the Chorus test suite.

Started by the Rust test support (api/tests/support/secantus.rs), never by hand in
normal use. Prints one line `READY <port>` on stdout once it accepts connections,
then serves until its stdin closes (the test process dropped its handle or died) or
it gets SIGTERM/SIGINT. Set up its venv with scripts/setup-test-deps.
"""

import argparse
import ctypes
import signal
import sys
import threading


def die_with_parent() -> None:
    # Belt and braces beside the stdin watch: if the test process is SIGKILLed the
    # kernel sends us SIGTERM (Linux only; elsewhere the stdin EOF still works).
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--storage-path", required=True)
    parser.add_argument("--ttl-sweep-seconds", type=float, default=1.0)
    args = parser.parse_args()

    die_with_parent()
    from secantus import SecantusDBServer

    server = SecantusDBServer(
        host=args.host,
        port=args.port,
        storage_path=args.storage_path,
        ttl_sweep_seconds=args.ttl_sweep_seconds,
    )
    server.start()

    stop = threading.Event()

    def on_signal(_signum, _frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def watch_stdin():
        # Returns at EOF: the parent closed the pipe or exited.
        try:
            while sys.stdin.buffer.read(4096):
                pass
        finally:
            stop.set()

    threading.Thread(target=watch_stdin, name="stdin-watch", daemon=True).start()

    _host, port = server.address
    print(f"READY {port}", flush=True)
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
