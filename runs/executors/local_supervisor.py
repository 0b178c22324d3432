"""Keeps one local run alive: `python -m runs.executors.local_supervisor RUN_DIR`.

Started detached from the worker, so the run outlives a worker that dies. It owns
the run's PTY (stdout) and stderr pipe and appends every piece of output to
RUN_DIR/output.jsonl as `[unix_time, stream, text]`, one record a line, complete
lines only, so the collector can resume from any byte offset. When the main
process group is done it writes RUN_DIR/ended with the exit status.

RUN_DIR/stdin is a FIFO whose bytes go to the PTY: the main process's keyboard, for
an attached web terminal (runs.executors.local.LocalAttach). The supervisor holds
it open for writing too, so an attach that goes away is no end of input.

Standard library only: this runs beside Django, not inside it. What it writes
(the raw output among it) is readable by the console's user only; the run's
commands keep the umask they would have had.
"""

import errno
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
    attrs[3] &= ~termios.ECHO  # typed lines are echoed to the one typing, not into the run's log
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    err_read, err_write = os.pipe()
    keyboard = open_keyboard(os.path.join(run_dir, "stdin"))  # before the run starts: an attach may come at once
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
    os.set_blocking(master, False)  # typed input the run does not read must not stall its output
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
    if keyboard is not None:
        selector.register(keyboard, selectors.EVENT_READ)
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
            if key.fd == keyboard:
                type_in(keyboard, master)
                continue
            try:
                data = os.read(key.fd, 65536)
            except BlockingIOError:
                continue
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
        if keyboard is not None and set(selector.get_map()) == {keyboard}:
            break  # the output has ended: the keyboard alone keeps nothing going
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


def open_keyboard(path: str) -> int | None:
    """The FIFO an attach writes to, opened for reading and writing: never at its end."""
    try:
        os.mkfifo(path, 0o600)
        return os.open(path, os.O_RDWR | os.O_NONBLOCK)
    except OSError as exc:  # no FIFOs here: the run goes on, without attach
        print(f"no keyboard for attach: {exc}", file=sys.stderr)
        return None


def type_in(keyboard: int, master: int) -> None:
    """Pass what an attach typed to the PTY; what does not fit (a run that never
    reads its input) is dropped rather than stalling the output."""
    try:
        data = os.read(keyboard, 65536)
        os.write(master, data)
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EIO):
            raise


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
