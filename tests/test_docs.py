"""docs/guides, experiments/README.md and the README stay true to the code: every command of
`autodistil` has its paragraph in cli.md and every flag named there exists; relative links resolve
(links into docs/reports/ must follow its naming, and exist once the reports are there); guides
carry no dates."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUIDES = ROOT / "docs" / "guides"
DOCS = sorted(GUIDES.glob("*.md")) + [ROOT / "experiments" / "README.md", ROOT / "README.md"]
REPORT_NAME = re.compile(r"^\d{4}-\d{2}-\d{2}-[a-z0-9][a-z0-9-]*\.md$|^README\.md$")


def _subparsers():
    import argparse
    from autodistil.cli import build_parser

    p = build_parser()
    act = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return act.choices


def _sections(text: str) -> dict:
    out, name = {}, None
    for line in text.splitlines():
        m = re.match(r"^## `autodistil ([a-z-]+)`\s*$", line)
        if m:
            name = m.group(1)
            out[name] = []
        elif line.startswith("## "):
            name = None
        elif name:
            out[name].append(line)
    return {k: "\n".join(v) for k, v in out.items()}


def test_cli_guide_has_every_command_and_only_real_flags():
    subs = _subparsers()
    sections = _sections((GUIDES / "cli.md").read_text())
    assert set(sections) == set(subs), "cli.md sections must match `autodistil` commands one to one"
    for name, text in sections.items():
        known = {o for a in subs[name]._actions for o in a.option_strings}
        named = {f for f in re.findall(r"--[a-z][a-z0-9-]*\*?", text) if not f.endswith(("*", "-"))}
        unknown = sorted(f for f in named if f not in known)
        assert not unknown, f"cli.md, `autodistil {name}`: not flags of that command: {unknown}"


def _slug(heading: str) -> str:
    s = re.sub(r"[^\w\s-]", "", heading.strip().lower().replace("`", ""))
    return re.sub(r"\s", "-", s)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc):
    reports = ROOT / "docs" / "reports"
    for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
        if re.match(r"^[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        if dest.parent == reports:
            assert REPORT_NAME.match(dest.name), f"{doc.name}: report link {target}: not YYYY-MM-DD-topic.md"
            if not reports.is_dir():
                continue  # the reports are written apart from the guides
        assert dest.exists(), f"{doc.name}: link {target} points nowhere"
        if anchor and dest.suffix == ".md":
            slugs = {_slug(h) for h in re.findall(r"^#+ (.+)$", dest.read_text(), flags=re.M)}
            assert anchor in slugs, f"{doc.name}: link {target}: no heading '{anchor}' in {dest.name}"


@pytest.mark.parametrize("guide", sorted(GUIDES.glob("*.md")), ids=lambda p: p.name)
def test_guides_carry_no_dates(guide):
    text = re.sub(r"\]\([^)]*\)", "]()", guide.read_text())  # link targets may name dated reports
    assert not re.findall(r"\b20\d\d-\d\d-\d\d\b", text), f"{guide.name}: a guide states what is true now"
