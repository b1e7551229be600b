"""Retake the MLflow UI screenshots in docs/img/ (a base run and two forks).

    pip install playwright                      # the Python package only: no `playwright install`
    apt-get install chromium                    # the browser it drives (Debian's /usr/bin/chromium)
    .venv/bin/python docs/screenshots.py

It builds a fresh example project in a temporary folder, runs `base` for 4 iterations,
forks it twice at the end of iteration 1 (`lr`: model.lr=0.05, `mlp`: model=mlp), serves
the project's tracking store with `mlfork ui`, and drives headless Chromium with Playwright,
opening the address `mlfork ui` prints, as a user would, with nothing set in the browser
beforehand (no local storage, no style): the check that the UI opens the experiment in its
"Model training" view by itself. It fails unless it does.

    docs/img/ui-runs.png              run list ("Model training" view), forks nested under base
    docs/img/ui-compare-accuracy.png  chart view: accuracy, f1, log loss of the three runs per step
    docs/img/ui-fork-note.png         the `lr` fork's run page: its note (fork point...) and tags

`--url URL` shoots an already running `mlfork ui` of such a demo project instead (faster;
URL is the address it printed).

Playwright is a docs-only tool: it is not a dependency of mlfork.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from mlfork.ops.mirroring.ui import TRAINING_VIEW  # noqa: E402

HERE = Path(__file__).resolve().parent
OUT = HERE / "img"
BIN = Path(sys.executable).parent
WIDTH = 1400
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars",
]
RUN_TABLE_COLUMNS_OFF = ["Dataset", "Source", "Models"]
RUN_TABLE_COLUMNS_ON = ["accuracy", "model.name", "model.lr", "mlfork.overrides"]


def sh(*args: str, cwd: Path, env: dict[str, str]) -> None:
    print("$", " ".join(args), file=sys.stderr)
    subprocess.run(args, cwd=cwd, env=env, check=True)


def api(url: str, path: str, body: dict[str, Any] | None = None, **query: str) -> dict[str, Any]:
    full = f"{url}/api/2.0/mlflow/{path}" + ("?" + urllib.parse.urlencode(query) if query else "")
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(full, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return dict(json.loads(resp.read()))


def wait_healthy(url: str, server: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"`mlfork ui` exited with code {server.returncode}")
        try:
            urllib.request.urlopen(url + "/health", timeout=5)
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"the MLflow server did not answer on {url} within {timeout:.0f}s")


def stop_group(server: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM the server's process group (`mlfork ui` and its `mlflow server` child), wait until
    it is gone, SIGKILL what is left after `timeout` seconds."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            server.poll()  # reap `mlfork ui` itself
            try:
                os.killpg(server.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
    print(f"warning: processes of group {server.pid} still there", file=sys.stderr)


def build_demo(tmp: Path, env: dict[str, str]) -> Path:
    root = tmp / "mlfork-demo"
    sh("mlfork", "init", str(root), cwd=tmp, env=env)
    sh("mlfork", "run", "--name", "base", "--iterations", "4", cwd=root, env=env)
    for name, override in (("lr", "model.lr=0.05"), ("mlp", "model=mlp")):
        sh("mlfork", "branch", "--from", "base", "--from-iteration", "1", "--name", name,
           override, "--run", cwd=root, env=env)
    return root


class Shooter:
    """One headless Chromium page on the MLflow UI at `url`."""

    def __init__(self, page: Any, url: str) -> None:
        self.page = page
        self.url = url

    def open(self, route: str, height: int) -> None:
        """`route` in the UI, in the view `mlfork ui`'s address asks for."""
        self.page.set_viewport_size({"width": WIDTH, "height": height})
        sep = "&" if "?" in route else "?"
        self.page.goto(f"{self.url}/#{route}{sep}{TRAINING_VIEW}")
        self.close_assistant()

    def close_assistant(self) -> None:
        """The MLflow Assistant side panel opens itself on a first visit: close it, as a
        user would (its close button)."""
        close = self.page.locator("button[data-component-id='mlflow.assistant.chat_panel.close']")
        try:
            close.wait_for(timeout=3000)
        except Exception:  # noqa: BLE001 - not shown: nothing to close
            return
        close.click()
        close.wait_for(state="hidden")

    def text(self, text: str) -> Any:
        return self.page.get_by_text(text, exact=True).first

    def save(self, name: str) -> None:
        self.page.mouse.move(0, 0)  # no hover effect or tooltip in the picture
        self.page.wait_for_timeout(500)  # let the last re-render and chart transitions settle
        target = OUT / name
        self.page.screenshot(path=str(target))
        print(f"wrote {target.relative_to(HERE.parent)}", file=sys.stderr)

    def check_training_view(self) -> None:
        """The page is in the UI's "Model training" view: its navigation lists Runs,
        Models and the Model registry, not GenAI's Sessions and Judges."""
        nav = self.page.locator("nav, aside, [class*=sidebar], body").first
        for item in ("Runs", "Models", "Model registry"):
            self.page.get_by_role("link", name=item, exact=True).first.wait_for()
        for item in ("Sessions", "Judges"):
            if self.page.get_by_role("link", name=item, exact=True).count():
                raise SystemExit(f"the UI did not open in its Model training view: '{item}'"
                                 f" is in its navigation ({nav.inner_text()[:200]!r})")

    def run_list(self, link: str) -> None:
        """The experiment's runs table at `link`, forks expanded under base, with a few
        useful columns. The column choice, widths and expansion persist in the page's local
        storage, so the chart view opened next shows the same nesting."""
        page = self.page
        page.set_viewport_size({"width": WIDTH, "height": 440})
        page.goto(link)
        self.close_assistant()
        self.check_training_view()
        base_row = page.locator(
            "[role=row]", has=page.get_by_role("link", name="base", exact=True)).first
        base_row.wait_for()
        page.get_by_role("button", name="Columns").click()
        search = page.get_by_placeholder("Search columns")
        for column in RUN_TABLE_COLUMNS_OFF + RUN_TABLE_COLUMNS_ON:
            search.fill(column)  # the tree is virtualised: filter it so the node is rendered
            title = page.locator(".du-bois-light-tree-title").get_by_text(column, exact=True)
            node = page.locator(".du-bois-light-tree-treenode", has=title)
            node.locator(".du-bois-light-tree-checkbox").click()
        page.keyboard.press("Escape")
        page.locator(".ag-header-cell[col-id='tags.`mlfork.overrides`']").wait_for()
        # the [+] toggle left of base's name shows the runs whose mlflow.parentRunId is base
        base_row.locator("button[data-component-id*=runnamecellrenderer]").click()
        for fork in ("lr", "mlp"):
            page.get_by_role("link", name=fork, exact=True).wait_for()
        for header in page.locator(".ag-header-cell[col-id*='.`']").all():
            header.locator(".ag-header-cell-resize").dblclick()  # fit the column to its values
        page.get_by_text("matching runs").click()  # move the focus out of the grid
        self.save("ui-runs.png")

    def chart_view(self, exp_id: str) -> None:
        self.open(f"/experiments/{exp_id}/runs?compareRunsMode=CHART", height=700)
        for run in ("base", "lr", "mlp"):
            self.text(f"{run} (accuracy)").wait_for()  # the chart legends
        system = self.text("System metrics (0)")
        if system.count():
            system.click()  # collapse the empty section
            self.text("No charts in this section").wait_for(state="hidden")
        self.save("ui-compare-accuracy.png")

    def fork_page(self, exp_id: str, run_id: str) -> None:
        self.open(f"/experiments/{exp_id}/runs/{run_id}", height=850)
        self.page.get_by_text("Forked from").wait_for()
        self.text("mlfork.overrides").wait_for()
        more = self.page.get_by_test_id("show-comment-toggle")  # "Show more" under a long note
        if more.count():
            more.first.click()
            self.text("Show less").wait_for()
        self.save("ui-fork-note.png")


def shoot(chromium: str, link: str) -> None:
    """The three pictures, starting from `link`, the address `mlfork ui` printed."""
    from playwright.sync_api import sync_playwright

    url, route = link.split("/#/", 1)
    exp_id = route.split("/")[1]
    runs = api(url, "runs/search", {"experiment_ids": [exp_id]})["runs"]
    ids = {next(t["value"] for t in r["data"]["tags"] if t["key"] == "mlfork.run"):
           r["info"]["run_id"] for r in runs}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(
                viewport={"width": WIDTH, "height": 850}, locale="en-US", timezone_id="UTC",
                color_scheme="light")
            context.set_default_timeout(60_000)
            shooter = Shooter(context.new_page(), url)
            shooter.run_list(link)
            shooter.chart_view(exp_id)
            shooter.fork_page(exp_id, ids["lr"])
        finally:
            browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="shoot an already running `mlfork ui` of a demo project "
                        "built as here, at the address it printed, instead of building one")
    args = parser.parse_args()
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        raise SystemExit(
            "docs/screenshots.py drives Debian's chromium with Playwright, a docs-only tool:\n"
            f"    {sys.executable} -m pip install playwright\n"
            "    apt-get install chromium\n"
            "(do not run `playwright install`: the script uses /usr/bin/chromium)") from None
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("needs Debian's chromium: apt-get install chromium")
    OUT.mkdir(exist_ok=True)
    if args.url:
        shoot(chromium, args.url)
        return
    with tempfile.TemporaryDirectory(prefix="mlfork-shots-") as tmp:
        env = {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "GIT_AUTHOR_NAME": "mlfork docs", "GIT_AUTHOR_EMAIL": "docs@mlfork.invalid",
            "DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
        }
        env.pop("MLFLOW_TRACKING_URI", None)
        root = build_demo(Path(tmp), env)

        from mlfork.ops.mirroring.ui import free_port

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(["mlfork", "ui", "--port", str(port)], cwd=root, env=env,
                                  stdout=subprocess.PIPE, text=True, start_new_session=True)
        try:
            assert server.stdout is not None
            link = server.stdout.readline().strip()  # the address a user is told to open
            wait_healthy(url, server)
            shoot(chromium, link)
        finally:
            stop_group(server)


if __name__ == "__main__":
    main()
