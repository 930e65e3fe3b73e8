"""`dvc plots show` renders the project's plots with no network: the page .dvc/config names
(plots.html_template, built by tools/plots_template.py) carries vega, vega-lite and vega-embed.

A real `dvc plots show` over the project's plot definitions and committed plot data, then the page
loaded in headless Chromium with every connection refused. DVC's default page, which loads the
libraries from a CDN, is loaded the same way and must stay blank: that shows the check can fail.
Skips only where no Chromium binary is found.
"""

import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from tests.conftest import PROJECT, sh

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# No connection leaves the browser, even where a network exists: every request goes to a "proxy" on
# the discard port, which serves no HTTP, and no host name resolves.
NO_NETWORK = ("--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND")
# vega-embed draws asynchronously; virtual time lets the page's work finish before the DOM is dumped.
SETTLE = "--virtual-time-budget=10000"


def chromium():
    found = next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)
    if found is None:
        pytest.skip(f"no Chromium binary ({', '.join(CHROMIUM_NAMES)}) on PATH; .ci/run installs the Debian package chromium")
    return found


class VegaMarks(HTMLParser):
    """The ids of the given divs that hold a Vega scenegraph: the <canvas class="marks"> (or <svg>)
    that vega draws into, not vega-embed's menu icon."""

    def __init__(self, ids):
        super().__init__()
        self.ids = ids
        self.current, self.depth = None, 0
        self.rendered = set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "div" and self.current:
            self.depth += 1
        elif tag == "div" and attrs.get("id") in self.ids:
            self.current, self.depth = attrs["id"], 1
        elif tag in ("canvas", "svg") and "marks" in (attrs.get("class") or "").split() and self.current:
            self.rendered.add(self.current)

    def handle_endtag(self, tag):
        if tag == "div" and self.current:
            self.depth -= 1
            if self.depth == 0:
                self.current = None


def load_offline(browser, page, profile):
    """The page's DOM after it settled, and its console messages, with no network."""
    command = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}", *NO_NETWORK, SETTLE]
    command += ["--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri()]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    return result.stdout, console


def rendered_plots(page, dom):
    """The page's Vega plots (the divs DVC calls vegaEmbed on), and those of them that hold a drawing."""
    ids = set(re.findall(r"vegaEmbed\('#([^']+)'", page.read_text()))
    parser = VegaMarks(ids)
    parser.feed(dom)
    return ids, parser.rendered


def project_plot_repo(repo):
    """A DVC repository holding the project's plot definitions (dvc.yaml `plots:`) and plot data."""
    plots = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["plots"]
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"plots": plots}, sort_keys=False))
    shutil.copytree(PROJECT / "plots", repo / "plots")
    sh(repo, "dvc", "init", "-q", "--no-scm")
    (repo / ".dvc" / "config").write_text("[core]\n    analytics = false\n")  # as `dvc config` writes it, 0.7 s sooner
    return repo, [name for plot in plots if isinstance(plot, dict) for name in plot]


def use_project_config(repo):
    """The project's committed .dvc/config in `repo`, with the page it names where DVC looks for it
    (relative to .dvc/); `make` builds that page, and so does this when the checkout lacks it."""
    shutil.copy(PROJECT / ".dvc" / "config", repo / ".dvc" / "config")
    name = sh(repo, "dvc", "config", "plots.html_template").strip()
    built = PROJECT / ".dvc" / name
    if not built.exists():
        subprocess.run([sys.executable, str(PROJECT / "tools" / "plots_template.py"), str(built)], check=True)
    return shutil.copy(built, repo / ".dvc" / name)


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    """DVC's default page and the project's page over the same plots, each loaded with no network:
    {"cdn"|"offline": (page, DOM, console)}, the repository, its Vega plots and the template in it."""
    browser = chromium()
    repo, vega_plots = project_plot_repo(tmp_path_factory.mktemp("plots"))
    sh(repo, "dvc", "plots", "show", "-o", "cdn")
    template = use_project_config(repo)
    sh(repo, "dvc", "plots", "show")  # to dvc_plots/, with the page .dvc/config names
    found = {"repo": repo, "vega_plots": set(vega_plots), "template": template}
    for name, page in (("cdn", repo / "cdn" / "index.html"), ("offline", repo / "dvc_plots" / "index.html")):
        dom, console = load_offline(browser, page, tmp_path_factory.mktemp(f"profile_{name}"))
        found[name] = (page, dom, console)
    return found


def test_the_projects_plots_render_with_no_network(pages):
    page, dom, console = pages["offline"]
    assert not re.search(r"<script[^>]*\bsrc=", page.read_text())  # nothing to fetch
    ids, rendered = rendered_plots(page, dom)
    assert ids and ids == pages["vega_plots"]
    assert rendered == ids
    assert not [line for line in console if "Error" in line], console


def test_dvcs_default_page_stays_blank_with_no_network(pages):
    page, dom, console = pages["cdn"]
    ids, rendered = rendered_plots(page, dom)
    assert ids == pages["vega_plots"]
    assert rendered == set()
    # Blank because the libraries never arrived, not because the page or the check broke.
    assert any("vegaEmbed is not defined" in line for line in console), console


def test_the_page_inlines_the_versions_dvcs_page_loads(pages):
    cdn_versions = re.findall(r'<script src="https://cdn.jsdelivr.net/npm/([^"]+)">', pages["cdn"][0].read_text())
    inlined = re.findall(r"<!-- (\S+@[^,]+), build/", pages["offline"][0].read_text())
    assert cdn_versions == inlined == ["vega@5.20.2", "vega-lite@5.2.0", "vega-embed@6.18.2"]


def test_without_the_built_page_dvc_plots_show_fails_and_says_so(pages):
    # A checkout before `make` built the page: DVC reads the missing path as the template's text.
    Path(pages["template"]).unlink()
    dvc = Path(sys.executable).parent / "dvc"
    result = subprocess.run([dvc, "plots", "show", "-o", "missing"], cwd=pages["repo"], capture_output=True, text=True)
    assert result.returncode != 0
    assert "HTML template has to contain '{plot_divs}'" in result.stderr
    assert not (pages["repo"] / "missing" / "index.html").exists()
