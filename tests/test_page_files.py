"""The Files tab (SPEC §5): a run's exported files browsed, previewed and
downloaded in a real browser (Playwright driving Debian's Chromium), against a
live Daphne and Celery worker, from runs on the real Docker engine."""

import base64
import io
import struct
import zipfile
import zlib
from urllib.parse import quote

import pytest
import yaml
from django.template.defaultfilters import filesizeformat
from playwright.sync_api import expect

from runs.models import Run, RunFile
from runs.services import create_run
from tests.conftest import BUSYBOX, sign_in, wait_for
from tests.test_engine import wait_for_log


def png(width: int, height: int) -> bytes:
    """A real PNG: a colour gradient, so the preview has something to show."""
    raw = b"".join(b"\x00" + b"".join(bytes((x * 255 // width, y * 255 // height, 160)) for x in range(width)) for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


WRITTEN = {
    "/output/notes.txt": b"hello from the run\nsecond line <not a tag>\n" + b"a long line, " * 40 + b"\n",
    "/output/metrics.csv": b'step,loss,note\n1,0.5,"<b>bold?</b>"\n2,0.25,"a, b"\n',
    "/output/plot.png": png(48, 32),
    "/output/logo.svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><script>alert(1)</script></svg>',
    "/output/sub/deep.txt": b"down in a folder\n",
}
BIG_LOG = "".join(f"{n}\n" for n in range(1, 20001)).encode()  # `seq 1 20000`: about 106 KiB


def export_spec(name: str, command: str, **extra) -> str:
    return yaml.safe_dump({"name": name, "image": BUSYBOX, "export": {"/output/": "volume://out"},
                           "run": [{"command": command}], **extra})


@pytest.fixture
def exported(alice, engine, docker_engine) -> Run:
    """A completed Docker run that wrote WRITTEN and /output/big.log."""
    writes = " && ".join(f"echo {base64.b64encode(data).decode()} | base64 -d > {path}" for path, data in WRITTEN.items())
    command = f"mkdir -p /output/sub && {writes} && seq 1 20000 > /output/big.log"
    run = wait_for(create_run(user=alice, source=export_spec("exports", command), executor="docker").pk, "completed", removed=True)
    assert set(RunFile.objects.filter(run=run).values_list("path", flat=True)) == {*WRITTEN, "/output/big.log"}
    return run


def files_url(run: Run, what: str = "", path: str = "") -> str:
    return f"/runs/{run.pk}/files/{what}" + (f"?path={quote(path, safe='')}" if path else "")


def test_it_previews_text_csv_and_an_image_and_downloads_a_file_and_the_zip(browser, exported):
    page = browser.page
    browser.goto(files_url(exported))
    tree = page.get_by_role("navigation", name="Exported files")
    total = filesizeformat(sum(map(len, WRITTEN.values())) + len(BIG_LOG)).replace("\xa0", " ")
    expect(page.locator(".files-summary")).to_have_text(f"6 files, {total}, from /output/")
    deep = tree.get_by_role("link", name="deep.txt", exact=True)
    expect(deep).to_be_hidden()  # nested folders start closed
    tree.locator("summary", has_text="sub/").focus()
    page.keyboard.press("Enter")  # a folder opens from the keyboard
    expect(deep).to_be_visible()
    expect(tree.get_by_role("link", name="Download deep.txt")).to_be_visible()
    browser.screenshot("files-tree")

    # Text, chosen by keyboard: the preview is swapped in and takes the focus.
    tree.get_by_role("link", name="notes.txt", exact=True).focus()
    page.keyboard.press("Enter")
    expect(page.locator("#preview-title")).to_be_focused()
    expect(page.locator("#preview pre")).to_have_text(WRITTEN["/output/notes.txt"].decode())
    assert page.url.endswith(files_url(exported, path="/output/notes.txt"))
    expect(tree.get_by_role("link", name="notes.txt", exact=True)).to_have_attribute("aria-current", "true")
    browser.screenshot("files-text")

    # A large text file: the first 64 KiB, and it says so.
    tree.get_by_role("link", name="big.log", exact=True).click()
    expect(page.locator("#preview")).to_contain_text("Showing the first 64 KiB of")
    shown = page.locator("#preview pre").text_content()
    assert len(shown) == 64 * 1024 and BIG_LOG.decode().startswith(shown)

    # CSV as a table, escaped.
    tree.get_by_role("link", name="metrics.csv", exact=True).click()
    table = page.locator("#preview table")
    expect(table.locator("thead th")).to_have_text(["step", "loss", "note"])
    expect(table.locator("tbody tr")).to_have_count(2)
    expect(table.locator("tbody tr").nth(0).locator("td")).to_have_text(["1", "0.5", "<b>bold?</b>"])
    expect(table.locator("tbody tr").nth(1).locator("td")).to_have_text(["2", "0.25", "a, b"])
    assert table.locator("b").count() == 0
    browser.screenshot("files-csv")

    # An image, loaded for real.
    tree.get_by_role("link", name="plot.png", exact=True).click()
    image = page.locator("#preview img")
    expect(image).to_have_attribute("alt", f"plot.png, exported by run #{exported.pk}")
    page.wait_for_function("() => { const i = document.querySelector('#preview img'); return i && i.complete && i.naturalWidth > 0; }")
    assert image.evaluate("i => [i.naturalWidth, i.naturalHeight]") == [48, 32]
    browser.screenshot("files-image")

    # An SVG is never served where its script could run.
    svg = page.request.get(browser.base_url + files_url(exported, "image/", "/output/logo.svg"))
    assert svg.status == 200 and svg.headers["content-security-policy"].startswith("sandbox")
    assert svg.headers["x-content-type-options"] == "nosniff"

    # One file, then all of them.
    with page.expect_download() as one:
        tree.get_by_role("link", name="Download deep.txt").click()
    assert one.value.suggested_filename == "deep.txt"
    assert open(one.value.path(), "rb").read() == WRITTEN["/output/sub/deep.txt"]
    with page.expect_download() as everything:
        page.get_by_role("link", name="Download all (zip)").click()
    assert everything.value.suggested_filename == f"run-{exported.pk}-files.zip"
    with zipfile.ZipFile(io.BytesIO(open(everything.value.path(), "rb").read())) as archive:
        assert archive.testzip() is None
        expected = {path.lstrip("/"): data for path, data in {**WRITTEN, "/output/big.log": BIG_LOG}.items()}
        assert sorted(archive.namelist()) == sorted(expected)
        for name, data in expected.items():
            assert archive.read(name) == data, name


def test_a_teammate_sees_the_files_and_an_outsider_gets_404(chromium, console_url, browser, exported, bob, charlie):
    teammate = sign_in(chromium, console_url, bob)
    outsider = sign_in(chromium, console_url, charlie)
    phone = sign_in(chromium, console_url, exported.owner, width=390, height=844)
    try:
        teammate.goto(files_url(exported))
        expect(teammate.page.get_by_role("link", name="notes.txt", exact=True)).to_be_visible()
        response = teammate.page.request.get(console_url + files_url(exported, "download/", "/output/notes.txt"))
        assert response.status == 200 and response.body() == WRITTEN["/output/notes.txt"]

        for what in ("", "preview/", "download/", "image/", "all.zip"):
            url = files_url(exported, what, "/output/plot.png" if what else "")
            assert outsider.page.request.get(console_url + url).status == 404, url
        assert outsider.goto(files_url(exported)).status == 404
        outsider.screenshot("files-404")

        # A path that is not an exported file of this run is not looked up anywhere else.
        for path in ("/etc/passwd", "output/notes.txt", "/output/../output/notes.txt", "/output/sub"):
            assert browser.page.request.get(console_url + files_url(exported, "download/", path)).status == 404, path
        assert browser.goto(files_url(exported, path="/etc/passwd")).status == 404
        expect(browser.page.locator("#preview")).to_contain_text("no file at /etc/passwd")

        # A phone: the preview comes server-rendered from the address, and nothing is wider than the screen.
        for name, path, shown in (("files-390", "/output/metrics.csv", "#preview table"), ("files-text-390", "/output/notes.txt", "#preview pre")):
            phone.goto(files_url(exported, path=path))
            expect(phone.page.locator(shown)).to_be_visible()
            overflow = phone.page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
            assert overflow <= 1, f"the Files tab with {path} is {overflow}px wider than the screen"
            phone.screenshot(name)
    finally:
        for visitor in (teammate, outsider, phone):
            visitor.page.context.close()


def test_the_tree_appears_when_the_run_stops_without_a_reload(browser, alice, docker_engine):
    command = "mkdir -p /output && echo step-1 > /output/ckpt.txt && echo saved && sleep 3"
    run = create_run(user=alice, source=export_spec("finishing", command), executor="docker")
    wait_for_log(run, "saved")
    page = browser.page
    browser.goto(files_url(run))
    page.evaluate("window.__sameDocument = true")
    expect(page.locator("#files")).to_contain_text("Exports are copied when the run stops")
    browser.screenshot("files-running")
    link = page.get_by_role("link", name="ckpt.txt", exact=True)
    expect(link).to_be_visible(timeout=30000)
    assert page.evaluate("window.__sameDocument") is True
    link.click()  # the swapped-in tree works like the first one
    expect(page.locator("#preview pre")).to_have_text("step-1\n")
    wait_for(run.pk, "completed", removed=True)


def test_a_run_terminated_from_the_files_tab_keeps_its_files_marked_partial(browser, alice, docker_engine):
    command = "mkdir -p /output && echo step-1 > /output/ckpt.txt && echo saved && sleep 300"
    run = create_run(user=alice, source=export_spec("stopped", command, termination_grace="1s"), executor="docker")
    wait_for_log(run, "saved")
    page = browser.page
    browser.goto(files_url(run))
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Terminate").click()
    page.wait_for_url(f"**/runs/{run.pk}/")
    page.get_by_role("link", name="Files").click()
    expect(page.get_by_role("link", name="ckpt.txt", exact=True)).to_be_visible(timeout=30000)
    expect(page.locator(".files-summary + .notice")).to_contain_text("partial")
    expect(page.locator("#files .tree .badge.partial")).to_have_count(1)
    browser.screenshot("files-partial")
    assert wait_for(run.pk, "terminated", removed=True).exports_state == "partial"


def test_the_empty_states_say_why(browser, alice, docker_engine):
    run = wait_for(create_run(user=alice, source=export_spec("nothing", "echo no files"), executor="docker").pk, "completed", removed=True)
    assert run.exports_state == "complete"
    browser.goto(files_url(run))
    expect(browser.page.locator("#files")).to_contain_text("This run exported nothing: there was no file under /output/")
    expect(browser.page.locator("#preview")).to_be_hidden()
    browser.screenshot("files-empty")
    # An export that fails cannot be caused on demand on a healthy engine: the
    # state it leaves (engine._finalize) is written here instead.
    Run.objects.filter(pk=run.pk).update(exports_state="failed", status_reason="export /output/ failed: disk full")
    browser.goto(files_url(run))
    expect(browser.page.get_by_role("alert")).to_contain_text("The export failed")
    expect(browser.page.get_by_role("alert")).to_contain_text("export /output/ failed: disk full")
    browser.screenshot("files-export-failed")
