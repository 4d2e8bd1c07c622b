"""``calib report``: one self-contained HTML page; every section, figure and table is there, and its numbers are
those of ``calib evaluate`` and ``calib screen`` on the same inputs."""

import base64
import json
import pathlib
import re
from html.parser import HTMLParser

import ase.io
import numpy as np
import pytest
from typer.testing import CliRunner

from calib.cli.main import app

ROOT = pathlib.Path(__file__).parents[1]
HES = ROOT / "datasets" / "high-energy-states"


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.images, self.tables, self._cell, self._row, self._table = set(), [], {}, None, None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "img":
            self.images.append(a["src"])
        if tag == "table":
            self._table = a.get("id")
            self.tables.setdefault(self._table, [])
        if tag == "tr":
            self._row = []
        if tag in ("td", "th"):
            self._cell = ""

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._row is not None:
            self._row.append(self._cell.strip())
            self._cell = None
        if tag == "tr" and self._table is not None:
            self.tables[self._table].append(self._row)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    d = tmp_path_factory.mktemp("report")
    from calib.workflows.screen import screen

    eq = ase.io.read(ROOT / "datasets" / "near-equilibrium" / "near-equilibrium.extxyz", ":4")
    ase.io.write(d / "cands.extxyz", eq)
    runner = CliRunner()
    r = runner.invoke(app, ["screen", str(d / "cands.extxyz"), "-o", str(d / "s.nc"), "-q", "--json"])
    assert r.exit_code == 0, r.output
    labelled = [str(HES / "Ni.extxyz"), str(HES / "TiNiSn.extxyz")]
    r = runner.invoke(app, ["report", "-o", str(d / "r.html"), "--screen", str(d / "s.nc"), "-q", "--json",
                            *[x for p in labelled for x in ("--labelled", p)]])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    r = runner.invoke(app, ["evaluate", *labelled, "-q", "--json"])
    assert r.exit_code == 0, r.output
    p = _Page()
    p.feed((d / "r.html").read_text(encoding="utf-8"))
    return p, doc, json.loads(r.stdout), json.loads(runner.invoke(app, ["screen", str(d / "cands.extxyz"), "-o",
                                                                         str(d / "s.nc"), "--resume", "-q",
                                                                         "--json"]).stdout)


def test_every_section_and_figure_is_on_the_page(page):
    p, doc, _, _ = page
    assert doc["sections"] == ["provenance", "coverage", "quantiles", "corrections", "heldout", "screen"]
    for section in ("provenance", "coverage", "quantiles", "corrections", "heldout", "screen", "reliability",
                    "widths", "targets", "coverage-block", "coverage-chemsys", "verdict", "softening", "parity",
                    "screen-counts", "differences"):
        assert section in p.ids, section
    # periodic table, reliability, widths, two parity plots, the screen's reasons: all embedded PNGs
    assert len(p.images) == 6
    for src in p.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_tables_hold_evaluate_s_and_screen_s_numbers(page):
    p, _, ev, sc = page
    rows = {r[0]: r for r in p.tables["targets"][1:]}
    assert set(rows) == {k for k in ev if isinstance(ev[k], dict) and "coverage_1sigma" in ev[k]}
    for name, r in rows.items():
        assert int(r[2]) == ev[name]["n"]
        assert float(r[3]) == pytest.approx(ev[name]["coverage"], abs=5e-4)  # printed to 3 figures
        assert float(r[5]) == pytest.approx(ev[name]["coverage_1sigma"], abs=5e-4)
    # the force coverage by block is computed from the prediction's intervals, a second path to evaluate's
    total = [r for r in p.tables["coverage-block"] if r[0] == "all"][0]
    assert float(total[2]) == pytest.approx(ev["forces"]["coverage"], abs=5e-4)
    blocks = [r for r in p.tables["coverage-block"][1:] if r[0] != "all"]
    assert sum(int(r[1]) for r in blocks) == int(total[1]) == ev["forces"]["n"]
    assert np.isclose(sum(int(r[1]) * float(r[2]) for r in blocks) / int(total[1]), float(total[2]), atol=2e-3)
    chems = {r[0] for r in p.tables["coverage-chemsys"][1:]}
    assert chems == {"Ni", "Ti-Ni-Sn"}
    counts = {r[0]: int(r[1]) for r in p.tables["screen-counts"][1:]}
    assert counts["trusted"] == sc["n_trusted"] and counts["total"] == sc["n_total"] == 4
    verdict = {r[0][:5]: r for r in p.tables["verdict"][1:]}
    assert float(verdict["calib"][3]) == pytest.approx(ev["verdict"]["auroc"], abs=5e-4)
    assert re.match(r"^\d", p.tables["softening"][1][1])


def test_report_usage_errors_before_any_model_loads(tmp_path):
    r = CliRunner().invoke(app, ["report", "-o", str(tmp_path / "r.pdf"), "--json"])
    assert r.exit_code == 2 and "must name an .html file" in json.loads(r.stdout)["error"]
    r = CliRunner().invoke(app, ["report", "-o", str(tmp_path / "r.html"), "--screen", str(tmp_path / "no.nc"),
                                 "--json"])
    assert r.exit_code == 1 and "no such results file" in json.loads(r.stdout)["error"]
