"""Datasets by name (recbole_align.data.download): RecBole's own download, extraction and renaming against an
HTTP server that the test starts on 127.0.0.1, one download for several waiting processes, and one line for
each failure with nothing half-extracted left behind."""

import contextlib
import io
import sys
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import tiny
from test_data_and_evaluation import generated_frame

from recbole_align.config import build_config, command_line_overrides
from recbole_align.data.download import ensure_dataset, recbole_url
from recbole_align.errors import AlignError
from recbole_align.quick_start import main, run_recbole_align


def zipped_dataset(stem="Tiny_Data"):
    """A zip in RecBole's layout: its atomic files named after the zip (RecBole renames them to the dataset's)."""
    inter = io.StringIO()
    generated_frame(n_users=30).to_csv(inter, sep="\t", index=False)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(f"{stem}.inter", inter.getvalue())
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server():
    """http://127.0.0.1:<port>/: Tiny_Data.zip, truncated.zip (half of it), big.zip (says 2 GB), anything else 404;
    ``requests`` counts the GETs (the downloads) of each path."""
    payload = zipped_dataset()
    files = {"/Tiny_Data.zip": payload, "/truncated.zip": payload[: len(payload) // 2]}
    requests = {}

    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self):  # noqa: N802 (http.server's name)
            body = files.get(self.path)
            self.send_response(200 if body is not None or self.path == "/big.zip" else 404)
            self.send_header("Content-Length", str(2 * 2**30 if self.path == "/big.zip" else len(body or b"")))
            self.end_headers()

        def do_GET(self):  # noqa: N802
            requests[self.path] = requests.get(self.path, 0) + 1
            if self.path == "/big.zip":
                self.send_response(200)
                self.send_header("Content-Length", str(2 * 2**30))
                self.end_headers()
                return
            body = files.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}", requests
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def no_command_line(monkeypatch):
    monkeypatch.setattr(sys, "argv", sys.argv[:1])  # RecBole's Config reads sys.argv


def config_of(data_path, url, **overrides):
    config, _ = build_config("BC", "tiny", config_dict={"data_path": str(data_path), "dataset_url": url, "state": "ERROR",
                                                       **overrides})
    return config


def leftovers(data_path):
    return sorted(p.name for p in Path(data_path).iterdir() if not p.name.endswith(".download.lock"))


def test_recbole_names_the_papers_datasets():
    for name in ("ml-1m", "ml-20m", "amazon-books", "netflix"):
        assert recbole_url(name).startswith("https://") and recbole_url(name).endswith(".zip")
    assert recbole_url("no-such-dataset") is None


def test_a_named_dataset_downloads_then_trains_and_evaluates(server, tmp_path, monkeypatch):
    base, requests = server
    monkeypatch.chdir(tmp_path)  # RecBole's ./log
    overrides = command_line_overrides(tiny("--topk=[10]", "--MAX_ITEM_LIST_LENGTH=5", f"--data_path={tmp_path / 'data'}",
                                            f"--dataset_url={base}/Tiny_Data.zip", f"--checkpoint_dir={tmp_path / 'saved'}"))
    results = run_recbole_align("HSTU", "tiny", config_dict=overrides)
    assert (tmp_path / "data" / "tiny" / "tiny.inter").is_file() and leftovers(tmp_path / "data") == ["tiny"]
    assert results["n_test"] == 30 and results["identity"]["data"] == {
        "tiny.inter": results["identity"]["data"]["tiny.inter"]}
    run_recbole_align("HSTU", "tiny", config_dict=overrides)  # on disk now: not downloaded again
    assert requests["/Tiny_Data.zip"] == 1


def test_processes_asking_together_download_once(server, tmp_path):
    base, requests = server
    before = requests.get("/Tiny_Data.zip", 0)
    config = config_of(tmp_path / "data", f"{base}/Tiny_Data.zip")
    threads = [threading.Thread(target=ensure_dataset, args=(config,)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert requests["/Tiny_Data.zip"] == before + 1 and (tmp_path / "data" / "tiny" / "tiny.inter").is_file()


@pytest.mark.parametrize("path, cause", [
    ("/missing.zip", "HTTPError: Not Found"), ("/truncated.zip", "BadZipFile: "), (None, "URLError: [Errno 111]"),
])
def test_a_failed_download_is_one_line_and_leaves_nothing(server, tmp_path, path, cause):
    url = f"{server[0]}{path}" if path else "http://127.0.0.1:9/Tiny_Data.zip"  # port 9 (discard): nothing listens
    (tmp_path / "data").mkdir()
    with pytest.raises(AlignError) as error:
        ensure_dataset(config_of(tmp_path / "data", url))
    message = str(error.value)
    assert message.startswith(f"cannot download dataset [tiny] from [{url}] ({cause}")
    assert f"put its atomic files in [{tmp_path / 'data' / 'tiny'}] as tiny.inter" in message and "\n" not in message
    assert leftovers(tmp_path / "data") == []


def test_a_download_over_1_gb_without_a_terminal_needs_confirm_download(server, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO())  # no terminal
    url = f"{server[0]}/big.zip"
    with pytest.raises(AlignError, match=r"\[.*/big.zip\] is 2.00 GB and no one is at a terminal to confirm it: run with "
                                         r"--confirm_download=True"):
        ensure_dataset(config_of(tmp_path / "data", url))
    assert not (tmp_path / "data" / "tiny").exists()


def test_the_command_line_reports_a_failed_download_in_one_line(server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), pytest.raises(SystemExit) as exit_status:
        main(["--model=HSTU", "--dataset=tiny", f"--data_path={tmp_path / 'data'}", f"--dataset_url={server[0]}/missing.zip"])
    lines = [line for line in stderr.getvalue().splitlines() if line.strip()]
    assert exit_status.value.code == 2 and len(lines) == 1
    assert lines[0].startswith(f"recbole-align: error: cannot download dataset [tiny] from [{server[0]}/missing.zip]")
