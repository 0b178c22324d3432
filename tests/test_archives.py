"""Uploads and archives are bounded (issue 7): every odd archive is a 400 naming
the entry and stores nothing, a decompression bomb stops at the cap, and a body
over its cap is refused without the server holding it in memory.

Real PostgreSQL, storage and a real Daphne (the `console_url` fixture)."""

import http.client
import io
import json
import random
import re
import struct
import tarfile
import warnings
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.core.files.storage import default_storage
from django.test import Client

from runs.models import Archive, CodeSnapshot, Dataset, DatasetVersion
from tests.conftest import Api, in_thread

MiB = 1 << 20


def tar_bytes(entries: list[tuple[str, bytes | None]], mode: str = "w:gz") -> bytes:
    """A tar (gzipped by default) of (name, content) entries in order; None is a directory."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode=mode, format=tarfile.PAX_FORMAT) as tar:
        for name, content in entries:
            info = tarfile.TarInfo(name)
            if content is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return out.getvalue()


def zip_bytes(entries: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        warnings.simplefilter("ignore")  # zipfile warns of a duplicate name, and writes it
        for name, content in entries:
            zf.writestr(name, content)
    return out.getvalue()


def zip_with_local_name(original: str, forged: str) -> bytes:
    """A zip whose local header names another file than its central directory does."""
    data = bytearray(zip_bytes([(original, b"central says " + original.encode())]))
    at = data.index(b"PK\x03\x04") + 30
    assert data[at:at + len(original)] == original.encode() and len(forged) == len(original)
    data[at:at + len(original)] = forged.encode()
    return bytes(data)


def zip_with_local_size(name: str) -> bytes:
    """A zip whose local header gives another size and CRC than its central directory."""
    data = bytearray(zip_bytes([(name, b"x" * 1000)]))
    header = data.index(b"PK\x03\x04")
    struct.pack_into("<III", data, header + 14, 0xDEADBEEF, 5, 5)
    return bytes(data)


def bad_crc_gzip() -> bytes:
    data = bytearray(tar_bytes([("numbers.txt", b"1 2 3\n" * 1000)]))
    data[-8] ^= 0xFF  # the gzip trailer's CRC-32; every data byte is intact
    return bytes(data)


def upload(alice, body: bytes, content_type: str = "application/gzip", name: str = "shapes"):
    api = Api(alice)
    return api.client.post(f"/api/v1/datasets/{name}/versions", body, content_type=content_type, headers=api.headers)


def stored_files() -> set[str]:
    return set(default_storage.listdir("archives")[1]) if default_storage.exists("archives") else set()


@pytest.fixture
def nothing_stored(db):
    """Asserts, after the test, that no archive, dataset or snapshot was stored."""
    before = stored_files()
    yield
    assert DatasetVersion.objects.count() == 0 and Dataset.objects.count() == 0
    assert Archive.objects.count() == 0 and CodeSnapshot.objects.count() == 0
    assert stored_files() == before


NOISE = random.Random(7).randbytes(MiB)  # does not compress: a cut falls inside its data
DEEP = "/".join(["d"] * 2000) + "/leaf.txt"
LONG = "n" * 300 + ".txt"

SHAPES = [
    pytest.param(tar_bytes([("a", b"file"), ("a/b", b"under a file")]), "application/gzip", "a/b", id="file-then-under-it"),
    pytest.param(tar_bytes([("a", None), ("a", b"now a file")]), "application/gzip", "'a'", id="dir-then-file"),
    pytest.param(tar_bytes([("a", b"a file"), ("a", None)]), "application/gzip", "'a'", id="file-then-dir"),
    pytest.param(tar_bytes([(LONG, b"x")]), "application/gzip", "nnnnnnnnnn", id="300-character-name"),
    pytest.param(tar_bytes([(DEEP, b"x")]), "application/gzip", "d/d/d/d/d", id="2000-deep-path"),
    pytest.param(tar_bytes([("big.bin", NOISE)])[:-3000], "application/gzip", "big.bin", id="truncated-gzip"),
    pytest.param(tar_bytes([("big.bin", bytes(range(256)) * 4096)], mode="w")[:300_000], "application/x-tar", "big.bin", id="truncated-tar"),
    pytest.param(zip_bytes([("same.txt", b"one"), ("same.txt", b"two")]), "application/zip", "same.txt", id="zip-same-name-twice"),
    pytest.param(zip_with_local_name("real.txt", "fake.txt"), "application/zip", "real.txt", id="zip-local-name-differs"),
    pytest.param(zip_with_local_size("sized.txt"), "application/zip", "sized.txt", id="zip-local-size-differs"),
    pytest.param(zip_bytes([("a", b"file"), ("a/b", b"under a file")]), "application/zip", "a/b", id="zip-file-then-under-it"),
    pytest.param(bad_crc_gzip(), "application/gzip", "CRC", id="gzip-bad-crc"),
]


@pytest.mark.parametrize("body, content_type, named", SHAPES)
def test_an_odd_archive_is_a_400_naming_the_entry_and_stores_nothing(alice, nothing_stored, body, content_type, named):
    response = upload(alice, body, content_type)
    assert response.status_code == 400, response.content
    answer = response.json()
    assert named in answer["detail"], answer
    assert answer["errors"] and answer["errors"][0]["loc"] == "body"
    assert len(answer["detail"]) < 1000  # a 4,000-character name is shown shortened


def test_the_same_shapes_as_a_code_snapshot_are_a_400_too(alice, nothing_stored):
    api = Api(alice)
    for body, content_type in ((tar_bytes([("a", b"f"), ("a/b", b"g")]), "application/gzip"), (bad_crc_gzip(), "application/gzip")):
        response = api.client.post("/api/v1/code", body, content_type=content_type, headers=api.headers)
        assert response.status_code == 400, response.content


def test_a_sound_archive_still_stores_and_a_repeated_directory_is_fine(alice):
    body = tar_bytes([("data", None), ("data", None), ("data/x.txt", b"x"), ("data/y/z.txt", b"z")])
    response = upload(alice, body)
    assert response.status_code == 201, response.content
    assert response.json()["file_count"] == 2
    zipped = upload(alice, zip_bytes([("data/x.txt", b"x"), ("data/y/z.txt", b"z")]), "application/zip")
    assert zipped.status_code == 200 and zipped.json()["version"] == 1  # same files, same content


@pytest.mark.parametrize("kind", ["gzip", "zip"])
def test_a_decompression_bomb_stops_at_the_cap(alice, nothing_stored, settings, kind):
    settings.RUNYARD_MAX_UNPACKED_BYTES = 8 * MiB
    zeros = b"\0" * (64 * MiB)
    body = tar_bytes([("bomb.bin", zeros)]) if kind == "gzip" else zip_bytes([("bomb.bin", zeros)])
    assert len(body) < MiB
    response = upload(alice, body, "application/gzip" if kind == "gzip" else "application/zip")
    assert response.status_code == 400, response.content
    assert "8 MiB" in response.json()["detail"]


async def _echo_length(scope, receive, send):
    """An app behind the limit: reads the whole body and answers its length."""
    length = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        length += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(length).encode()})


def _asgi_post(path: str, chunks: list[bytes], declared: bool) -> tuple[int, bytes, int]:
    """POST through BodyLimitMiddleware: the answer's status and body, and the chunks it read."""
    from dashboard.body_limit import BodyLimitMiddleware

    headers = [(b"content-type", b"application/x-tar")]
    if declared:
        headers.append((b"content-length", str(sum(map(len, chunks))).encode()))
    scope = {"type": "http", "method": "POST", "path": path, "headers": headers}
    messages = [{"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1} for i, chunk in enumerate(chunks)]
    sent = []

    async def receive():
        return messages.pop(0)

    async def send(message):
        sent.append(message)

    in_thread(BodyLimitMiddleware(_echo_length), scope, receive, send)  # Playwright may hold this thread's loop
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"), len(chunks) - len(messages)


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "streamed"])
def test_a_body_over_its_cap_is_a_413_before_it_is_read(settings, declared):
    settings.RUNYARD_MAX_UPLOAD_BYTES = MiB
    settings.RUNYARD_MAX_REQUEST_BYTES = 64 * 1024
    chunks = [b"x" * 65536] * 32  # 2 MiB
    status, answer, read = _asgi_post("/api/v1/datasets/big/versions", chunks, declared)
    assert status == 413
    assert json.loads(answer) == {"detail": "the request body is larger than 1 MiB", "errors": [{"loc": "body", "msg": f"at most {MiB} bytes"}]}
    assert read == (0 if declared else 17)  # refused unread, or at the chunk that passed the cap
    assert _asgi_post("/api/v1/code", chunks[:8], declared)[:2] == (200, str(8 * 65536).encode())  # under the cap: through
    status, answer, _ = _asgi_post("/runs/new/", chunks[:2], declared)  # pages and specs: the small cap
    assert status == 413 and b"larger than 64 KiB" in answer and b"256 KiB" in answer
    assert _asgi_post("/api/v1/runs", chunks[:1], declared)[:2] == (200, b"65536")


def test_a_spec_file_over_256_kib_is_refused_on_the_new_run_page(alice):
    from django.core.files.uploadedfile import SimpleUploadedFile

    client = Client()
    client.force_login(alice)
    big = SimpleUploadedFile("huge.yaml", b"name: x\n" + b"# padding\n" * 40_000, content_type="text/yaml")
    response = client.post("/runs/new/", {"file": big})
    assert response.status_code == 400
    page = response.content.decode()
    assert "huge.yaml" in page and "at most 256 KiB" in page


# The live console: a real Daphne, its memory read from /proc.


def _memory_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def _reset_peak(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM
        return True
    except OSError:
        return False


def _signed_in(console_url, user) -> tuple[str, str]:
    """A session cookie and CSRF token for `user` on the live console."""
    client = Client()
    client.force_login(user)
    session = client.cookies[settings.SESSION_COOKIE_NAME].value
    host = urlsplit(console_url)
    conn = http.client.HTTPConnection(host.hostname, host.port, timeout=30)
    conn.request("GET", "/runs/new/", headers={"Cookie": f"{settings.SESSION_COOKIE_NAME}={session}"})
    response = conn.getresponse()
    page = response.read().decode()
    assert response.status == 200, page[:500]
    csrf = re.search(r"csrftoken=([^;]+)", response.getheader("Set-Cookie") or "").group(1)
    conn.close()
    return session, csrf


def _post_streamed(console_url, path, headers, parts, total: int | None):
    """POST a body made by a generator; `total` sets Content-Length, else chunked."""
    host = urlsplit(console_url)
    conn = http.client.HTTPConnection(host.hostname, host.port, timeout=300)
    if total is not None:
        headers = {**headers, "Content-Length": str(total)}
    try:
        conn.request("POST", path, body=parts, headers=headers, encode_chunked=total is None)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server may answer and close before the whole body is sent
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, response.getheader("Content-Type") or "", body


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_a_300_mb_page_upload_is_refused_with_flat_memory(console_url, transactional_db, alice, declared):
    pid = console_url.pid
    session, csrf = _signed_in(console_url, alice)
    boundary = "runyardboundary7"
    head = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"csrfmiddlewaretoken\"\r\n\r\n{csrf}\r\n"
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"spec.yaml\"\r\n"
        "Content-Type: text/yaml\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    size = 300 * MiB
    block = b"name: x\n" * (MiB // 8)

    def parts():
        yield head
        for _ in range(size // MiB):
            yield block
        yield tail

    rss_before = _memory_kb(pid, "VmRSS")
    peak_resettable = _reset_peak(pid)
    status, content_type, body = _post_streamed(
        console_url, "/runs/new/",
        {"Cookie": f"{settings.SESSION_COOKIE_NAME}={session}; csrftoken={csrf}",
         "Content-Type": f"multipart/form-data; boundary={boundary}"},
        parts(), len(head) + size + len(tail) if declared else None,
    )
    assert status in (413, 400), body[:500]
    assert "text/html" in content_type and b"larger than 1 MiB" in body and b"256 KiB" in body
    grown = (_memory_kb(pid, "VmHWM" if peak_resettable else "VmRSS") - rss_before) * 1024
    assert grown < 50 * MiB, f"Daphne grew by {grown / MiB:.0f} MiB for a {size // MiB} MiB body"
    # An API path answers the same refusal as JSON.
    api_status, api_type, api_body = _post_streamed(
        console_url, "/api/v1/runs", {"Authorization": f"Bearer {alice.token}", "Content-Type": "application/yaml"},
        iter([b"x" * (2 * MiB)]), 2 * MiB,
    )
    assert api_status == 413 and "application/json" in api_type
    assert b'"detail"' in api_body and b'"errors"' in api_body


def test_an_accepted_300_mb_upload_reaches_the_app_whole_with_flat_memory(console_url, transactional_db, alice):
    """Under its cap a large body goes through, byte for byte, without Daphne holding it in memory."""
    import hashlib

    pid, size = console_url.pid, 300 * MiB
    header = tarfile.TarInfo("big.bin")
    header.size = size
    head = header.tobuf(format=tarfile.PAX_FORMAT)

    def block(i: int) -> bytes:
        return i.to_bytes(4, "big") * (MiB // 4)  # every MiB differs: order and loss both show

    def parts():
        yield head
        for i in range(size // MiB):
            yield block(i)
        yield bytes(2 * tarfile.BLOCKSIZE)

    digest = hashlib.sha256()
    for i in range(size // MiB):
        digest.update(block(i))
    manifest = [["big.bin", size, digest.hexdigest()]]
    expected = hashlib.sha256(json.dumps(manifest, separators=(",", ":")).encode()).hexdigest()

    rss_before = _memory_kb(pid, "VmRSS")
    peak_resettable = _reset_peak(pid)
    status, _, body = _post_streamed(
        console_url, "/api/v1/code", {"Authorization": f"Bearer {alice.token}", "Content-Type": "application/x-tar"},
        parts(), len(head) + size + 2 * tarfile.BLOCKSIZE,
    )
    grown = (_memory_kb(pid, "VmHWM" if peak_resettable else "VmRSS") - rss_before) * 1024
    try:
        assert status == 201, body[:500]
        assert json.loads(body) == {"hash": expected, "size_bytes": size, "file_count": 1}
        assert grown < 50 * MiB, f"Daphne grew by {grown / MiB:.0f} MiB for a {size // MiB} MiB body"
    finally:
        if default_storage.exists(f"archives/{expected}.tar"):
            default_storage.delete(f"archives/{expected}.tar")


def test_a_tar_whose_first_file_is_pkg_info_is_a_tar(alice):
    response = upload(alice, tar_bytes([("PKG-INFO", b"Name: x\n"), ("setup.py", b"")], mode="w"), "application/octet-stream")
    assert response.status_code == 201, response.content
    assert response.json()["file_count"] == 2
