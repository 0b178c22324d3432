"""Keeps one local run alive: `python -m runs.executors.local_supervisor RUN_DIR`.

Started detached from the worker, so the run outlives a worker that dies. It owns
the run's PTY (stdout) and stderr pipe and appends every piece of output to
RUN_DIR/output.jsonl as `[unix_time, stream, text]`, one record a line, complete
lines only, so the collector can resume from any byte offset. When the main
process group is done it writes RUN_DIR/ended with the exit status.

Standard library only: this runs beside Django, not inside it. What it writes
(the raw output among it) is readable by the console's user only; the run's
commands keep the umask they would have had.
"""

import json
import os
import selectors
import signal
import subprocess
import sys
import termios
import time


def main(run_dir: str) -> int:
    inherited_umask = os.umask(0o077)
    with open(os.path.join(run_dir, "env.json")) as f:
        env = json.load(f)
    master, slave = os.openpty()
    attrs = termios.tcgetattr(slave)
    attrs[1] &= ~termios.ONLCR  # keep "\n" as the program wrote it
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    err_read, err_write = os.pipe()
    workdir = os.path.join(run_dir, "work")
    os.makedirs(workdir, exist_ok=True)
    child = subprocess.Popen(
        ["/bin/sh", os.path.join(run_dir, "script.sh")],
        stdin=slave,
        stdout=slave,
        stderr=err_write,
        cwd=workdir,
        env=env,
        start_new_session=True,  # its own session and process group: stop signals the whole group
        close_fds=True,
        umask=inherited_umask,
    )
    os.close(slave)
    os.close(err_write)
    with open(os.path.join(run_dir, "pgid.tmp"), "w") as f:
        f.write(str(child.pid))
    os.replace(os.path.join(run_dir, "pgid.tmp"), os.path.join(run_dir, "pgid"))

    def forward(signum, _frame):
        try:
            os.killpg(child.pid, signum)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)

    output = open(os.path.join(run_dir, "output.jsonl"), "a", buffering=1)
    selector = selectors.DefaultSelector()
    partial = {master: b"", err_read: b""}
    stream_of = {master: 0, err_read: 1}
    selector.register(master, selectors.EVENT_READ)
    selector.register(err_read, selectors.EVENT_READ)
    exited_at = None

    def emit(fd: int, data: bytes) -> None:
        now = time.time()
        data = partial[fd] + data
        *lines, partial[fd] = data.split(b"\n")
        records = [json.dumps([now, stream_of[fd], (line + b"\n").decode("utf-8", "surrogateescape")]) for line in lines]
        if len(partial[fd]) > 65536:  # an endless line is still stored, in parts
            records.append(json.dumps([now, stream_of[fd], partial[fd].decode("utf-8", "surrogateescape")]))
            partial[fd] = b""
        if records:
            output.write("\n".join(records) + "\n")

    while selector.get_map():
        for key, _ in selector.select(timeout=0.2):
            try:
                data = os.read(key.fd, 65536)
            except OSError:  # EIO: every writer of the PTY is gone
                data = b""
            if data:
                emit(key.fd, data)
            else:
                selector.unregister(key.fd)
        if exited_at is None and child.poll() is not None:
            exited_at = time.time()
        # Background processes may keep the PTY open after the shell exits: give them a moment.
        if exited_at is not None and time.time() - exited_at > 1.0:
            break
    for fd, rest in partial.items():
        if rest:
            output.write(json.dumps([time.time(), stream_of[fd], rest.decode("utf-8", "surrogateescape")]) + "\n")
    output.close()
    code = child.wait()
    status = code if code >= 0 else 128 - code
    with open(os.path.join(run_dir, "ended.tmp"), "w") as f:
        f.write(str(status))
    os.replace(os.path.join(run_dir, "ended.tmp"), os.path.join(run_dir, "ended"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
