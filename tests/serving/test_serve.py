"""`mnist serve`: the API through Starlette's test client, a real server process (signals, a busy port,
32 concurrent clients), and the page in headless Chromium drawing a 1 and a 0 with the mouse."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import http.client
import io
import json
import math
import os
import re
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, List

import numpy as np
import pytest
from PIL import Image, ImageDraw

from conftest import bar_png, run_mnist, start_mnist

pytest.importorskip("starlette", reason="mnist serve needs the serve extra: pip install -e '.[serve]'")
pytest.importorskip("httpx", reason="starlette's test client needs httpx: pip install -e '.[dev]'")

import httpx  # noqa: E402
import torch  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from mnist_cli.config.compose import compose  # noqa: E402
from mnist_cli.datasets.images import prepare  # noqa: E402
from mnist_cli.inference.predict import CSV_COLUMNS  # noqa: E402
from mnist_cli.runs.checkpoints import load_trained  # noqa: E402
from mnist_cli.serving import serve  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")  # Debian's; .ci/run installs it. Playwright never downloads a browser here.
REFUSED = "pixels; mnist serve reads at most 200 megapixels"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("serve")


@pytest.fixture(scope="module")
def trained_run(workdir, cli_env) -> Path:
    """An mlp that reads the synthetic digits well enough to tell a drawn 1 from a drawn 0 (5 epochs, ~7 s)."""
    result = run_mnist(
        "train", "model=mlp", "epochs=5", "data.val_size=100", "batch_size=50", "device=cpu", cwd=workdir, env=cli_env
    )
    assert result.returncode == 0, result.stderr
    return workdir / result.stdout.strip().splitlines()[-1]


def drawing(points: List[tuple], size: int = 280) -> bytes:
    """A PNG as the page sends it: white strokes 20 px wide on black."""
    image = Image.new("L", (size, size))
    if points:
        ImageDraw.Draw(image).line(points, fill=255, width=20, joint="curve")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


ONE = [(140, 50), (140, 230)]
ZERO = [(140 + 60 * math.sin(a * math.pi / 15), 140 - 85 * math.cos(a * math.pi / 15)) for a in range(31)]


@pytest.fixture(scope="module")
def service(trained_run):
    torch.set_num_threads(1)  # this process is pytest's: leave the other core to the forked `mnist` processes
    cfg = compose("serve", [f"run={trained_run}", "device=cpu"])
    return serve.make_service(cfg, load_trained(cfg.run, cfg.outputs_dir, torch.device("cpu")), torch.device("cpu"))


@pytest.fixture(scope="module")
def client(service):
    with TestClient(
        serve.build_app(service), base_url="http://localhost"
    ) as client:  # one event loop for the module: the batching worker lives in it
        yield client


# ---- the API, in-process ---------------------------------------------------------------------------


def test_health_model_and_a_page_that_loads_nothing_from_elsewhere(client):
    assert client.get("/health").json() == {"status": "ok"}
    model = client.get("/model").json()
    assert (model["dataset"], model["model"], model["classes"], model["topk"]) == (
        "mnist",
        "mlp",
        list("0123456789"),
        3,
    )
    assert model["metrics"]["status"] == "completed" and model["metrics"]["best"]["val_accuracy"] > 0.5
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<canvas" in page.text and 'id="drop"' in page.text
    assert not re.search(r"(src|href)=\"(https?:)?//", page.text), "the page must not load anything from the network"
    assert "default-src 'none'" in page.headers["content-security-policy"]


def test_a_checkpoint_outside_a_run_folder_has_no_metrics(trained_run, tmp_path):
    bare = tmp_path / "any.pt"
    bare.write_bytes((trained_run / "checkpoints" / "best.pt").read_bytes())
    cfg = compose("serve", [f"run={bare}", "device=cpu"])
    service = serve.make_service(cfg, load_trained(cfg.run, cfg.outputs_dir, torch.device("cpu")), torch.device("cpu"))
    assert service.model["metrics"] is None and service.model["classes"] == list("0123456789")


@pytest.mark.slow
def test_predict_answers_what_mnist_predict_answers_for_the_same_file(client, workdir, cli_env, trained_run):
    (workdir / "one.png").write_bytes(drawing(ONE))
    result = run_mnist("predict", f"run={trained_run}", "inputs=[one.png]", "format=json", cwd=workdir, env=cli_env)
    assert result.returncode == 0, result.stderr
    (expected,) = json.loads(result.stdout)["predictions"]
    answer = client.post("/predict", content=drawing(ONE), headers={"content-type": "image/png"})
    assert answer.status_code == 200
    (row,) = answer.json()["predictions"]
    assert tuple(row) == CSV_COLUMNS  # predict's fields, in its order
    assert row == {**expected, "input": "body"} and row["predicted"] == "1"


def test_multipart_gives_a_row_per_file_and_a_path_is_only_a_name(client):
    files = [
        ("file", ("one.png", drawing(ONE), "image/png")),
        ("file", ("../../etc/passwd", drawing(ZERO), "image/png")),  # the name is echoed; the bytes are the upload's
        ("file", ("notes.txt", b"not an image\n", "text/plain")),
    ]
    answer = client.post("/predict", files=files, data={"comment": "a form field, not a file: left out"})
    assert answer.status_code == 200, answer.text
    rows = answer.json()["predictions"]
    assert [r["input"] for r in rows] == ["one.png", "../../etc/passwd", "notes.txt"]
    assert [r["predicted"] for r in rows] == ["1", "0", None]
    assert rows[2]["error"] == "not an image file" and rows[2]["topk"] == []


def test_return_image_gives_the_28x28_image_the_model_saw(client, tmp_path):
    answer = client.post("/predict?return_image=true", content=drawing(ZERO))
    (row,) = answer.json()["predictions"]
    seen = np.asarray(Image.open(io.BytesIO(base64.b64decode(row["image"]))))
    (tmp_path / "zero.png").write_bytes(drawing(ZERO))
    assert seen.shape == (28, 28) and np.array_equal(seen, prepare(tmp_path / "zero.png", "digit"))


def test_the_query_chooses_topk_and_whether_to_return_the_image(client):
    (row,) = client.post("/predict?topk=10&return_image=false", content=drawing(ONE)).json()["predictions"]
    assert len(row["topk"]) == 10 and "image" not in row
    (row,) = client.post("/predict?topk=1&return_image=1", content=drawing(ONE)).json()["predictions"]
    assert [t["class"] for t in row["topk"]] == ["1"] and row["image"]


def huge_png(tmp_path: Path) -> bytes:
    return bar_png(tmp_path / "huge.png", 20000).read_bytes()  # 400 megapixels in ~75 KB


def chunks(size: int):
    for _ in range(size // 65536 + 1):
        yield b"\0" * 65536


ERRORS = {  # name: (request, status, the error sentence or its start)
    "6 MB body": (dict(content=b"\0" * 6_000_000), 413, "the request body is over 5 MB"),
    "6 MB chunked body, no Content-Length": (dict(content=chunks(6_000_000)), 413, "the request body is over 5 MB"),
    "20000x20000 PNG": ("huge", 422, f"image is 20000×20000 {REFUSED}"),
    "a text file": (dict(content=b"hello\n", headers={"content-type": "text/plain"}), 422, "not an image file"),
    "empty body": (dict(content=b""), 422, "the request body is empty; send an image"),
    "a blank drawing": (dict(content=drawing([])), 422, "blank image: no ink found"),
    "multipart without a file": (
        dict(
            content=b'--b\r\nContent-Disposition: form-data; name="a"\r\n\r\nb\r\n--b--\r\n',
            headers={"content-type": "multipart/form-data; boundary=b"},
        ),
        422,
        "the multipart body holds no file",
    ),
    "multipart without a boundary": (
        dict(content=b"x", headers={"content-type": "multipart/form-data"}),
        422,
        "multipart/form-data without a boundary",
    ),
    "multipart, not multipart": (
        dict(content=b"garbage", headers={"content-type": "multipart/form-data; boundary=b"}),
        422,
        "the multipart body cannot be read",
    ),
    "return_image=maybe": (
        dict(content=drawing(ONE), params={"return_image": "maybe"}),
        422,
        "return_image must be true or false (got 'maybe')",
    ),
    "topk=-1": (
        dict(content=drawing(ONE), params={"topk": "-1"}),
        422,
        "topk must be a whole number from 1 to 10 (got '-1')",
    ),
    "topk=abc": (
        dict(content=drawing(ONE), params={"topk": "abc"}),
        422,
        "topk must be a whole number from 1 to 10 (got 'abc')",
    ),
    "topk with 5000 digits": (
        dict(content=drawing(ONE), params={"topk": "9" * 5000}),
        422,
        "topk must be a whole number from 1 to 10",
    ),
    "topk=11, more than the classes": (
        dict(content=drawing(ONE), params={"topk": "11"}),
        422,
        "topk must be a whole number from 1 to 10 (got '11')",
    ),
    "topk given twice": (
        dict(content=drawing(ONE), params=[("topk", "1"), ("topk", "2")]),
        422,
        "topk is given 2 times",
    ),
    "an unknown query key": (
        dict(content=drawing(ONE), params={"retrun_image": "true"}),
        422,
        "'retrun_image' is not a /predict option",
    ),
    "multipart, cut short": (
        dict(
            content=b'--b\r\nContent-Disposition: form-data; name="f"; filename="x.png"\r\n\r\n\x89PNG',
            headers={"content-type": "multipart/form-data; boundary=b"},
        ),
        422,
        "the multipart body is cut short",
    ),
}


@pytest.mark.parametrize("case", ERRORS)
def test_bad_requests_get_a_status_and_one_sentence(case, client, tmp_path):
    request, status, sentence = ERRORS[case]
    if request == "huge":
        request = dict(content=huge_png(tmp_path), headers={"content-type": "image/png"})
    answer = client.post("/predict", **request)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"].startswith(sentence)


def test_other_paths_and_methods_are_json_errors(client):
    assert client.get("/predict").status_code == 405
    answer = client.get("/nope")
    assert answer.status_code == 404 and answer.json() == {"error": "Not Found"}


async def ask_at_once(service: serve.Service, bodies: List[bytes]) -> List[str]:
    """POST every body at the same moment; the predicted class of each answer, in order."""
    transport = httpx.ASGITransport(app=serve.build_app(service))
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        answers = await asyncio.gather(*(client.post("/predict", content=body) for body in bodies))
    return [answer.json()["predictions"][0]["predicted"] for answer in answers]


def test_requests_arriving_together_share_model_calls_and_each_gets_its_own_rows(service, monkeypatch):
    calls, real = [], serve.probabilities
    monkeypatch.setattr(
        serve, "probabilities", lambda trained, images, *rest: calls.append(len(images)) or real(trained, images, *rest)
    )
    fresh = dataclasses.replace(
        service, queue=None, decoders=None, worker=None
    )  # its worker lives in asyncio.run's loop
    expected = ["1" if i % 2 else "0" for i in range(64)]
    assert (
        asyncio.run(ask_at_once(fresh, [drawing(ONE if e == "1" else ZERO) for e in expected])) == expected
    )  # none lost or swapped
    assert sum(calls) == 64 and len(calls) < 64 and max(calls) <= 32, calls


def test_a_serve_mistake_in_the_config_is_one_sentence():
    from mnist_cli.config.checks import check_config
    from mnist_cli.errors import UserError

    for override, sentence in (
        ("port=70000", "port must be in 0..65535"),
        ("max_body_mb=0", "max_body_mb must be greater than 0"),
        ("max_batch=0", "max_batch must be at least 1"),
        ("topk=0", "topk must be at least 1"),
    ):
        with pytest.raises(UserError, match=re.escape(sentence)):
            check_config(compose("serve", ["run=latest", override]), "serve", [override])


def test_binding_every_interface_is_not_loopback():
    with socket.socket() as every:
        every.bind(("0.0.0.0", 0))  # bound, never listening: nothing can connect
        assert not serve.is_loopback(every)
    with serve.open_socket("127.0.0.1", 0) as local:
        assert serve.is_loopback(local) and serve.url_of(local).startswith("http://127.0.0.1:")


# ---- the real server in a thread of this process: what a client sees on the socket ----------------------


@contextlib.contextmanager
def listening(trained_run: Path, *overrides: str, host: str = "127.0.0.1") -> Iterator[int]:
    """uvicorn as `mnist serve` runs it, for `mnist serve run=<trained_run> *overrides`, listening on a free
    port of `host` in a thread; yields the port."""
    cfg = compose("serve", [f"run={trained_run}", "device=cpu", f"host={host}", *overrides])
    listener = serve.open_socket(cfg.host, 0)
    service = serve.make_service(
        cfg, load_trained(cfg.run, cfg.outputs_dir, torch.device("cpu")), torch.device("cpu"), listener
    )
    server = serve.make_server(service)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]})
    thread.start()
    try:
        while not server.started and thread.is_alive():
            time.sleep(0.01)
        yield listener.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        listener.close()


def status_for_host(port: int, host: str) -> tuple:
    """(status, JSON answer) of GET /health sent to 127.0.0.1:port with this Host header."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/health", headers={"Host": host})
        answer = connection.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        connection.close()


REFUSED_HOST = "this server does not answer to the host name in the request's Host header"


def test_only_its_own_address_and_localhost_are_answered_so_dns_rebinding_cannot_reach_it(trained_run):
    with listening(trained_run) as port:
        for host in (
            "127.0.0.1",
            f"127.0.0.1:{port}",
            "localhost",
            f"LocalHost:{port}",
            "[::1]",
            f"[::1]:{port}",
            "localhost.",
        ):
            assert status_for_host(port, host) == (200, {"status": "ok"}), host
        for host in (
            "evil.example",
            f"evil.example:{port}",
            "127.0.0.1.nip.io",
            "localhost.evil.example",
            "192.168.1.5",
            "",
        ):
            status, answer = status_for_host(port, host)
            assert status == 421 and answer["error"].startswith(REFUSED_HOST), (host, answer)
        assert "allowed_hosts=[evil.example]" in status_for_host(port, "evil.example:80")[1]["error"]


def test_allowed_hosts_adds_names_and_star_allows_any(trained_run):
    with listening(trained_run, "allowed_hosts=[digits.lan,10.0.0.7:8000]") as port:
        assert [
            status_for_host(port, h)[0]
            for h in ("digits.lan", f"DIGITS.lan:{port}", "10.0.0.7", "localhost", "evil.example")
        ] == [200, 200, 200, 200, 421]
    with listening(trained_run, "allowed_hosts=[*]") as port:
        assert status_for_host(port, "evil.example")[0] == 200


def test_on_every_interface_any_address_is_answered_but_a_name_must_be_allowed(trained_run):
    with listening(trained_run, host="0.0.0.0") as port:  # an address cannot be rebound by a web page; a name can
        assert [status_for_host(port, h)[0] for h in ("192.168.1.5:8000", "[fe80::1]", "localhost", "box.lan")] == [
            200,
            200,
            200,
            421,
        ]


@pytest.mark.parametrize("chunked", [False, True], ids=["Content-Length", "chunked"])
def test_urllib_gets_the_413_for_a_body_over_the_limit_not_a_reset_connection(trained_run, chunked):
    with listening(trained_run, "max_body_mb=1") as port:
        body = b"\0" * 6_000_000
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/predict",
            data=iter([body]) if chunked else body,
            headers={"Content-Type": "image/png", **({"Transfer-Encoding": "chunked"} if chunked else {})},
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 413
        assert json.loads(refused.value.read())["error"].startswith("the request body is over 1 MB")


# ---- a real `mnist serve` process ------------------------------------------------------------------


class Served:
    """`mnist serve` started with port=0 (a free port, so parallel tests never collide); `url` from its first line."""

    def __init__(self, workdir: Path, env: dict, *args: str) -> None:
        self.stdout = Path(workdir) / f"serve-{time.monotonic_ns()}.out"
        self.process = start_mnist("serve", *args, "port=0", "device=cpu", cwd=workdir, env=env, stdout=self.stdout)
        self.url = self._wait_for_url()

    def _wait_for_url(self, timeout: float = 60) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end and self.process.poll() is None:
            found = re.search(r"at (http://\S+/) ", self.stdout.read_text() if self.stdout.exists() else "")
            if found:
                return found.group(1)
            time.sleep(0.1)
        raise AssertionError(f"mnist serve did not start: {self.stop()}")

    def stop(self, signum: int = signal.SIGINT):
        """Send `signum`; returns (exit code, stdout, stderr)."""
        self.process.send_signal(signum)
        _, err = self.process.communicate(timeout=30)
        return self.process.returncode, self.stdout.read_text(), err


def post(url: str, body: bytes, timeout: float = 30) -> tuple:
    """(status, JSON answer) of POST body to url."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "image/png"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.slow
def test_a_server_answers_32_concurrent_clients_and_stops_cleanly_on_sigterm_while_busy(trained_run, workdir, cli_env):
    served = Served(workdir, cli_env, "run=latest")
    with urllib.request.urlopen(served.url + "health", timeout=10) as answer:
        assert json.loads(answer.read()) == {"status": "ok"}
    bodies = [drawing(ONE), drawing(ZERO)]
    with ThreadPoolExecutor(32) as pool:  # 320 requests from 32 clients at once
        answers = list(pool.map(lambda i: post(served.url + "predict", bodies[i % 2]), range(320)))
    assert [(status, a["predictions"][0]["predicted"]) for status, a in answers] == [
        (200, "1" if i % 2 == 0 else "0") for i in range(320)
    ]

    in_flight, stop = [], threading.Event()

    def keep_asking():
        while not stop.is_set():
            try:
                in_flight.append(post(served.url + "predict", bodies[0], timeout=10)[0])
            except OSError:  # refused once the server stopped listening: not an answer
                return

    threads = [threading.Thread(target=keep_asking) for _ in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    code, out, err = served.stop(signal.SIGTERM)
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    assert code == 0, err
    assert "Traceback" not in out + err and err.strip() == ""
    assert re.fullmatch(
        r"mnist serve: stopped on SIGTERM; predict requests answered: \d+\.", out.strip().splitlines()[-1]
    )
    assert in_flight and set(in_flight) == {200}  # every request the server took was answered


@pytest.mark.slow
def test_ctrl_c_stops_the_server_with_exit_0(trained_run, workdir, cli_env):
    served = Served(workdir, cli_env, f"run={trained_run}")
    assert post(served.url + "predict", drawing(ONE))[0] == 200
    code, out, err = served.stop(signal.SIGINT)
    assert code == 0 and "Traceback" not in out + err, err
    assert out.strip().splitlines()[-1] == "mnist serve: stopped on SIGINT; predict requests answered: 1."


@pytest.mark.slow
def test_a_bad_run_or_a_busy_port_is_one_sentence_and_exit_2(trained_run, workdir, cli_env):
    result = run_mnist("serve", "run=/nope", cwd=workdir, env=cli_env)
    assert result.returncode == 2
    assert (
        result.stderr.strip() == "mnist serve: run=/nope does not exist; give a run folder, a .pt checkpoint or latest."
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_mnist("serve", "run=latest", f"port={port}", cwd=workdir, env=cli_env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        result.stderr.strip()
        == f"mnist serve: port={port} is already in use on 127.0.0.1; stop what uses it or choose another port=."
    )


# ---- the page, in a real browser ---------------------------------------------------------------------


def stroke(page, expect, points: List[tuple]) -> None:
    """Draw `points` (canvas pixels) on the page's canvas with the mouse, then wait for the last answer."""
    box = page.locator("#pad").bounding_box()
    scale = box["width"] / 280
    x, y = (box["x"] + points[0][0] * scale, box["y"] + points[0][1] * scale)
    page.mouse.move(x, y)
    page.mouse.down()
    for px, py in points[1:]:
        page.mouse.move(box["x"] + px * scale, box["y"] + py * scale, steps=4)
    page.mouse.up()  # sends the drawing: <body data-pending> is 1 until the answer is shown
    expect(page.locator("body")).to_have_attribute("data-pending", "0", timeout=30_000)  # 2 busy cores in CI
    expect(page.locator("#top")).not_to_have_text("")


@pytest.mark.slow
def test_the_page_reads_a_1_and_a_0_drawn_with_the_mouse(trained_run, workdir, cli_env, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e '.[dev]'")
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium (.ci/run does) to run the browser test")
    served = Served(workdir, cli_env, "run=latest")
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
            page = browser.new_page(viewport={"width": 800, "height": 560})
            page.goto(served.url)
            sync_api.expect(page.locator("#about")).to_contain_text(
                "trained on mnist"
            )  # (locators: the page's CSP forbids eval)
            stroke(page, sync_api.expect, [(140, 50 + 6 * i) for i in range(31)])
            one = page.locator("#top").text_content()
            assert page.locator("#bars .bar").count() == 3
            assert page.locator("#seen").get_attribute("src").startswith("data:image/png;base64,")
            page.click("#clear")
            assert page.locator("#top").text_content() == ""
            stroke(page, sync_api.expect, ZERO)
            zero = page.locator("#top").text_content()
            page.screenshot(path=os.environ.get("MNIST_SCREENSHOT") or str(tmp_path / "serve.png"))
            (tmp_path / "dropped.png").write_bytes(drawing(ONE))
            page.set_input_files("#file", str(tmp_path / "dropped.png"))  # what the drop zone sends
            sync_api.expect(page.locator("#top")).to_have_text("1", timeout=30_000)
            browser.close()
    finally:
        code, out, err = served.stop()
    assert (one, zero) == ("1", "0")
    assert code == 0, err
