"""Build the HTML page that `dvc plots show` fills in, with vega, vega-lite and vega-embed inlined.

DVC's own page loads the three libraries from cdn.jsdelivr.net, so without internet it stays blank.
`.dvc/config` names the page this script writes (plots.html_template), and `make repro` and
`make test` build it: `python3 tools/plots_template.py .dvc/plots_offline.html`.

Standard library only, and independent of the `lottery` package: it runs before the venv exists.
"""

import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

# The exact versions DVC 3.67.1's page loads (dvc_render 1.0.2, VegaRenderer.SCRIPTS), in the order
# they must run, each with the file jsDelivr serves for it (the package's "jsdelivr" field) and the
# sha256 of the npm tarball. All three are BSD-3-Clause (University of Washington Interactive Data
# Lab): the page carries each package's LICENSE, as the licence asks of redistributions.
LIBRARIES = (
    ("vega@5.20.2", "build/vega.min.js", "d77deab01d6104b1239228720721f93003e60797d2faced7ffdd759fa70f989d"),
    ("vega-lite@5.2.0", "build/vega-lite.min.js", "f64ca4745f043447ac86b67dc9e9592ec2b85ac8b8dafc35faf970f142463e4b"),
    ("vega-embed@6.18.2", "build/vega-embed.min.js", "93aeee312e92077b0252ef026c0fe0ec8fa430c19825aeada6cd3a6804e68e1b"),
)

# DVC replaces its placeholders anywhere in the page (str.replace), and "</script" or "-->" would end
# the element a library or a licence sits in: a new version containing any of them cannot be inlined as is.
UNSAFE = ("</script", "-->", "{plot_divs}", "{scripts}", "{refresh_tag}")

# DVC's default page (dvc_render.html.PAGE_HTML) less its {scripts} placeholder, where DVC would put
# the CDN <script> tags. The charset matters: vega.min.js holds non-ASCII characters, and a file://
# page without one is not read as UTF-8.
PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {refresh_tag}
    <title>DVC Plot</title>
{libraries}
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


class BuildError(Exception):
    pass


def pack(spec, workdir):
    """The npm tarball of `spec`, downloaded into `workdir` (`npm pack` runs no package scripts)."""
    command = ["npm", "pack", spec, "--json", "--pack-destination", str(workdir), "--loglevel", "error"]
    try:
        result = subprocess.run(command, capture_output=True, text=True)
    except OSError as err:
        raise BuildError(f"npm is needed to build the plots page: {err}") from None
    if result.returncode != 0:
        raise BuildError(f"`{' '.join(command)}` failed: {result.stderr.strip()}")
    (packed,) = json.loads(result.stdout)
    return Path(workdir) / packed["filename"]


def verify(tarball, sha256):
    actual = hashlib.sha256(tarball.read_bytes()).hexdigest()
    if actual != sha256:
        raise BuildError(f"{tarball.name}: sha256 {actual}, expected {sha256}")


def read_text(tarball, member):
    with tarfile.open(tarball) as archive:
        text = archive.extractfile(f"package/{member}").read().decode("utf-8")
    for unsafe in UNSAFE:
        if unsafe in text.lower():
            raise BuildError(f"{tarball.name}: package/{member} contains {unsafe!r} and cannot be inlined")
    return text


def library_html(spec, script, sha256, workdir):
    """One library as the page carries it: its licence in a comment, then its browser build."""
    tarball = pack(spec, workdir)
    verify(tarball, sha256)
    licence = read_text(tarball, "LICENSE")
    return f"    <!-- {spec}, {script}:\n{licence}-->\n    <script>\n{read_text(tarball, script)}\n    </script>"


def build(out):
    with tempfile.TemporaryDirectory() as workdir:
        libraries = "\n".join(library_html(*library, workdir) for library in LIBRARIES)
    page = PAGE.replace("{libraries}", libraries)
    # Written whole or not at all: make takes any existing page for a finished one.
    partial = Path(f"{out}.partial")
    partial.write_text(page, encoding="utf-8")
    os.replace(partial, out)


def main(argv):
    if len(argv) != 1:
        sys.exit("usage: python3 tools/plots_template.py OUT.html")
    try:
        build(Path(argv[0]))
    except BuildError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main(sys.argv[1:])
