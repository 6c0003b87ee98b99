#!/usr/bin/env python3
"""Runs a SecantusDB server (MongoDB wire protocol) for the Chorus test suite.

Started by the Rust test support (api/tests/support/secantus.rs), never by hand in
normal use. Prints one line `READY <port>` on stdout once it accepts connections,
then serves until its stdin closes (the test process dropped its handle or died) or
it gets SIGTERM/SIGINT. Set up its venv with scripts/setup-test-deps.
"""

import argparse
import shutil
import signal
import sys
import tempfile
import threading

# No PR_SET_PDEATHSIG: it fires when the *thread* that spawned us exits, and the test
# harness spawns from a short-lived test thread. The stdin pipe covers parent death:
# the kernel closes it when the parent process exits, however it exits.


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--storage-path",
        help="data directory; default: a fresh temporary directory removed at exit",
    )
    parser.add_argument("--ttl-sweep-seconds", type=float, default=1.0)
    args = parser.parse_args()

    from secantus import SecantusDBServer

    owned_dir = None
    storage_path = args.storage_path
    if storage_path is None:
        owned_dir = tempfile.mkdtemp(prefix="chorus-secantus-")
        storage_path = owned_dir

    server = SecantusDBServer(
        host=args.host,
        port=args.port,
        storage_path=storage_path,
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
    if owned_dir is not None:
        shutil.rmtree(owned_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
