"""The terminal's keystroke lane (terminal/lane.py) on a real Daphne, a real shell in a
real container (and a local one): whatever way a client's frames arrive and whatever
way the shell's output leaves, the shell gets every byte in order and the browser
sees every byte in order. The lane itself is measured by `make bench`
(terminal-echo); here it must be taken, and must lose and reorder nothing."""

import hashlib
import json
import re
import time
import uuid

import pytest

from dashboard.port_streams import BINARY, CLOSE, PING, TEXT, frame
from runs.services import terminate_run
from terminal.lane import server_frame, small_binary_frames
from tests.conftest import wait_for, wait_until
from tests.test_live import session_cookie
from tests.test_terminal import running
from tests.websocket_client import WebSocket


@pytest.fixture(params=["docker", "local"])
def executor(request, engine):
    if request.param == "docker":
        request.getfixturevalue("docker_engine")
    return request.param


def lane_counts(console_url, session_id: str) -> tuple[int, int, int]:
    """What the console logged of a closed terminal's lane: messages taken, messages in all, frames sent."""
    def logged():
        found = re.search(rf"terminal {re.escape(session_id)} in run \d+ closed: the keystroke lane took (\d+) of (\d+) "
                          r"messages in and sent (\d+) frames out", console_url.log.read_text(errors="replace"))
        return found and tuple(int(n) for n in found.groups())

    return wait_until(logged, timeout=30, what="the terminal's closing line in the console's log")


def opened(console_url, run, user) -> tuple[WebSocket, str]:
    port = int(console_url.rsplit(":", 1)[1])
    shell = WebSocket(port, f"/ws/runs/{run.pk}/terminal/?mode=shell", session_cookie(user))
    assert shell.status == 101, shell.headers
    opcode, hello = shell.receive()
    assert opcode == 1 and json.loads(hello)["type"] == "session", hello
    return shell, json.loads(hello)["id"]


def typed_lines(count: int, width: int, tag: str) -> bytes:
    return b"".join(f"{tag}{n:05d}-".encode() + b"x" * (width - 7 - len(tag)) + b"\r" for n in range(count))


def test_typed_bytes_reach_the_shell_whole_and_in_order_however_the_frames_come(alice, executor, console_url):
    run = running(alice, executor)
    shell, session_id = opened(console_url, run, alice)
    typed = f"/tmp/typed-{uuid.uuid4().hex}.txt".encode()
    shell.send(BINARY, b"stty -echo; echo ready-$((1 + 1)); cat > %s; echo sum-$(sha256sum < %s)-done; rm %s\r" % (typed, typed, typed))
    shell.until(b"ready-2")

    sent = b""

    def keys(data: bytes) -> None:  # one frame per key, each in its own write, typed quickly
        nonlocal sent
        for key in data:
            shell.sock.sendall(frame(BINARY, bytes([key])))
            time.sleep(0.001)
        sent += data

    def raw(data: bytes, *frames: bytes) -> None:
        nonlocal sent
        shell.sock.sendall(b"".join(frames))
        sent += data

    keys(typed_lines(3, 40, "a"))
    paste = typed_lines(60, 50, "b")  # 3,000 bytes in one frame: autobahn's way, into Daphne's queue
    raw(paste, frame(BINARY, paste))
    keys(typed_lines(2, 30, "c"))  # behind the paste, in line: never before it
    shell.send(TEXT, json.dumps({"type": "resize", "cols": 100, "rows": 30}).encode())
    keys(typed_lines(2, 30, "d"))
    burst = [b"e%03d" % n for n in range(40)] + [b"\r"]
    raw(b"".join(burst), *(frame(BINARY, piece) for piece in burst))  # many frames in one read
    split = typed_lines(1, 60, "f")
    cut = frame(BINARY, split)
    raw(b"", cut[:5])  # a frame cut in two across reads
    time.sleep(0.05)
    raw(split, cut[5:])
    shell.sock.sendall(frame(PING, b""))  # a ping between keystrokes
    keys(typed_lines(3, 40, "g"))
    shell.sock.sendall(frame(BINARY, b"\x04"))  # end of file, at the start of a line: cat is done

    expected = hashlib.sha256(sent.replace(b"\r", b"\n")).hexdigest()
    while not (said := re.search(rb"sum-([0-9a-f]{64})", shell.output)):
        opcode, data = shell.receive()
        shell.output += data if opcode == 2 else b""
    assert said.group(1).decode() == expected, "the shell got other bytes, or the same in another order"

    shell.send(TEXT, json.dumps({"type": "close"}).encode())
    shell.sock.close()
    taken, messages, _ = lane_counts(console_url, session_id)
    if executor == "docker":  # a shell's plain socket takes keystrokes on the loop: the lane carries most of them
        assert taken > messages // 2, (taken, messages)
    else:  # a local shell is written by a thread: every message goes in line
        assert taken == 0 and messages > 100, (taken, messages)
    terminate_run(run, actor=alice)
    wait_for(run.pk, "terminated")


def test_a_flood_of_output_reaches_a_slow_reader_whole_and_in_order(alice, executor, console_url):
    run = running(alice, executor)
    shell, session_id = opened(console_url, run, alice)
    shell.send(BINARY, b"seq 1 60000; echo flood-$((2 + 3))-over\r")
    time.sleep(2)  # a reader that falls behind: the socket fills, and the rest waits in Twisted's buffer
    shell.until(b"flood-5-over")
    printed = shell.output.split(b"flood-$((2 + 3))-over\r\n", 1)[-1].split(b"flood-5-over")[0]
    plain = re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]", b"", printed).replace(b"\r", b"")  # a shell's own escapes
    numbers = [int(line) for line in plain.split(b"\n") if line.isdigit()]
    assert numbers == list(range(1, 60001)), "lines went missing or came out of order"
    shell.send(BINARY, b"echo still-$((6 * 7))\r")  # the socket is whole after it
    shell.until(b"still-42")

    shell.send(TEXT, json.dumps({"type": "close"}).encode())
    shell.sock.close()
    _, _, frames = lane_counts(console_url, session_id)
    assert frames > 0
    terminate_run(run, actor=alice)
    wait_for(run.pk, "terminated")


@pytest.mark.parametrize("data, payloads", [
    (frame(BINARY, b"a"), [b"a"]),
    (frame(BINARY, b"a") + frame(BINARY, b"bc") + frame(BINARY, b""), [b"a", b"bc", b""]),
    (frame(BINARY, b"k" * 125), [b"k" * 125]),
])
def test_the_lane_reads_whole_small_binary_frames(data, payloads):
    assert small_binary_frames(data) == (payloads, len(data))


def test_the_lane_takes_the_small_frames_a_read_begins_with_and_leaves_the_rest():
    first, paste, last = frame(BINARY, b"ab"), frame(BINARY, b"p" * 300), frame(BINARY, b"c")
    assert small_binary_frames(first + paste + last) == ([b"ab"], len(first))
    assert small_binary_frames(first + last[:3]) == ([b"ab"], len(first))  # the second one cut short


@pytest.mark.parametrize("data", [
    frame(BINARY, b"a")[:-1],  # cut short
    frame(BINARY, b"k" * 126),  # a 16-bit length: more than a keystroke
    frame(TEXT, b"hi"),  # text: a control message
    frame(PING, b""),  # a ping
    frame(CLOSE, b""),  # a close
    bytes([0x02, 0x81, 0, 0, 0, 0, 0x61]),  # a first fragment (no FIN)
    bytes([0xC2, 0x81, 0, 0, 0, 0, 0x61]),  # RSV1: compressed
    bytes([0x82, 0x01, 0x61]),  # unmasked: a client must mask
    b"",
])
def test_the_lane_leaves_anything_else_to_autobahn(data):
    assert small_binary_frames(data) == ([], 0)


def test_the_lane_frames_output_of_every_size_with_the_length_it_has():
    for size in (0, 1, 125, 126, 65535, 65536, 200_000):
        sent = server_frame(b"z" * size)
        assert sent[0] == 0x82
        length = sent[1]
        header = 2 + {126: 2, 127: 8}.get(length, 0)
        stated = length if length < 126 else int.from_bytes(sent[2:header], "big")
        assert stated == size and len(sent) == header + size


def test_a_member_removed_from_the_team_loses_a_shell_whose_keys_take_the_lane(alice, bob, engine, docker_engine, console_url):
    from runs.models import Membership
    from terminal.models import Ending, TerminalSessionRecord

    run = running(alice, "docker")
    shell, session_id = opened(console_url, run, alice)
    for key in b"echo typed-$((3 * 3))\r":  # keystrokes on the lane, as a browser types them
        shell.sock.sendall(frame(BINARY, bytes([key])))
        time.sleep(0.005)
    shell.until(b"typed-9")

    Membership.objects.filter(user=alice, team=run.team).delete()
    while True:  # typing goes on; the console must notice and end it all the same
        shell.sock.sendall(frame(BINARY, b"x"))
        opcode, data = shell.receive()
        if opcode == 8:
            break
    assert int.from_bytes(data[:2], "big") == 4403, data
    record = wait_until(lambda: TerminalSessionRecord.objects.filter(session_key=session_id, ended_at__isnull=False).first(),
                        timeout=30, what="the session ended on record")
    assert record.ended_how == Ending.ACCESS_LOST
    terminate_run(run, actor=bob)
    wait_for(run.pk, "terminated")
