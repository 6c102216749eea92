"""What a clone must hold for its README to be true: the design document it links to, the LICENSE that
pyproject.toml promises, and the edge dependency list as pyproject.toml has it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_relative_link_of_the_readme_resolves_inside_the_repository():
    links = re.findall(r"\]\(([^)\s]+)\)", README)
    relative = [link.split("#")[0] for link in links if not re.match(r"[a-z]+:", link) and not link.startswith("#")]
    assert "docs/DESIGN.md" in relative
    for link in relative:
        target = (ROOT / link).resolve()
        assert target.is_relative_to(ROOT), f"{link} points outside the repository"
        assert target.exists(), f"{link} does not exist"


def test_the_design_document_holds_the_contract_and_no_machine_paths():
    design = (ROOT / "docs" / "DESIGN.md").read_text(encoding="utf-8")
    for fact in ("`pixels`: float32 [N, 3, H, W]", "`target`: int64 [N]", "`gradients`", "`cam_gradcam`",
                 "input_gradients.onnx", "head.onnx", "forward.onnx", "Grad-CAM++", "(m − min) / (max − min + 1e-7)"):
        assert fact in design, fact
    for machine in ("/work/", "/tmp/", "/home/", "../shared", "work session", "the team"):
        assert machine not in design, machine


def test_the_license_is_the_apache_2_0_text_pyproject_names():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"]["text"] == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text


def test_the_readme_lists_the_edge_dependencies_of_pyproject():
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.match(r"[A-Za-z0-9_.-]+", d).group(0).lower() for d in dependencies}
    sentence = " ".join(README.split("`pip install .` (no extras) installs ")[1].split("(`pyproject.toml`")[0].split())
    listed = {name.strip().lower() for name in re.split(r",| and ", sentence) if name.strip()}
    assert listed == names
