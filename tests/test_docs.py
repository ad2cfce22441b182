"""The documentation keeps up with the code: the flag reference of docs/usage.md is what Config's own metadata
generates (every setting, its default, its help), every part name the docs pass to a flag is one the command line
accepts, the README stays the door (≤ 12 KB), and every dated results entry names its command, commit and CPU."""
import re
from pathlib import Path

import pytest

from pyro_ncl.cli import BEGIN, END, flag_reference
from pyro_ncl.config import FIELD_NAMES, GROUPS

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_the_flag_reference_is_generated_from_config_and_covers_every_setting():
    """Fails when a setting is added, removed or re-described without `python -m pyro_ncl.cli --reference
    docs/usage.md`."""
    grouped = [name for names in GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(FIELD_NAMES)  # every setting in exactly one group
    text = (ROOT / "docs" / "usage.md").read_text()
    section = text.split(BEGIN, 1)[1].split(END, 1)[0]
    assert section.strip() == flag_reference().strip()
    for name in FIELD_NAMES:
        assert f"`--{name.replace('_', '-')}" in section, name


def test_every_part_name_the_docs_pass_to_a_flag_is_accepted():
    from guides import GUIDES
    from models import PRIORS
    from pyro_ncl.backbones import BACKBONES
    from pyro_ncl.config import METHODS
    from pyro_ncl.data import DATASETS
    from pyro_ncl.likelihoods import LIKELIHOODS
    from pyro_ncl.non_negativity import NON_NEGATIVITY
    from pyro_ncl.presets import preset_names, recipe_names
    known = {"guide": GUIDES.names(), "prior": PRIORS.names(), "likelihood": LIKELIHOODS.names(),
             "dataset": DATASETS.names(), "backbone": BACKBONES.names(), "non-neg": NON_NEGATIVITY.names(),
             "method": list(METHODS), "preset": preset_names(), "recipe": ["auto", "none", *recipe_names()]}
    flag = re.compile(r"--(" + "|".join(known) + r")[ =]([a-z0-9][a-z0-9_\-.]*)")
    code = re.compile(r"```.*?```|`[^`\n]+`", re.S)  # commands are written as code
    unknown = sorted({(page.name, name, value) for page in PAGES for span in code.findall(page.read_text())
                      for name, value in flag.findall(span)
                      if value not in known[name] and not value.endswith((".yaml", ".py"))})
    assert not unknown, unknown


def test_the_readme_is_the_door():
    assert len((ROOT / "README.md").read_bytes()) <= 12 * 1024


@pytest.mark.parametrize("page", sorted((ROOT / "docs" / "results").glob("*.md")), ids=lambda p: p.name)
def test_every_dated_results_entry_names_its_command_commit_and_cpu(page):
    entries = re.split(r"^## (?=\d{4}-\d{2}-\d{2})", page.read_text(), flags=re.M)[1:]
    assert entries, f"{page.name} has no dated entry"
    for entry in entries:
        head = entry.splitlines()[0]
        assert re.search(r"[Cc]ommand|```bash\n[^`]*python experiments/", entry), (page.name, head)
        assert re.search(r"[Cc]ommit", entry), (page.name, head)
        assert re.search(r"CPU|GPU|hardware", entry), (page.name, head)
