"""README stays true: its config-group table against ``conf/``, its guide's worked example (a fusion of
one's own, trained through the real CLI exactly as the guide says), its speed summary against the
recorded benchmarks."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from conftest import CONF_DIR, ROOT, run_cli

README = ROOT / "README.md"
GUIDE = "## Adding your own fusion, encoder, dataset or task"
FOLDER = "$MYFUSE"  # the guide's name for the user's own folder


def section(heading: str, text: str | None = None) -> str:
    """The README text from ``heading`` up to the next heading of the same or a higher level."""
    text = README.read_text() if text is None else text
    assert heading + "\n" in text, f"README.md has no heading {heading!r}"
    level = heading.split(" ", 1)[0]
    body = text.split(heading + "\n", 1)[1]
    ends = [m.start() for m in re.finditer(rf"^#{{1,{len(level)}}} ", body, re.M)]
    fenced = [m.start() for m in re.finditer(r"^```", body, re.M)]
    for end in ends:  # a heading inside a code block (a shell comment) does not end the section
        if sum(f < end for f in fenced) % 2 == 0:
            return body[:end]
    return body


def ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def readme_groups() -> dict[str, list[str]]:
    """``{group: [option, ...]}`` from the table of README's "## Config groups" (the first table there)."""
    table = re.search(r"^\|.*?(?=^[^|])", section("## Config groups"), re.M | re.S).group(0)
    groups = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) >= 3:
            for group in ticked(cells[0]):
                groups[group] = ticked(cells[1])
    return groups


def conf_groups() -> dict[str, list[str]]:
    """``{group: [option, ...]}`` of ``conf/``: every folder with YAML files (``hydra/launcher`` nested)."""
    groups = {}
    for folder in sorted(p for p in CONF_DIR.rglob("*") if p.is_dir()):
        options = sorted(p.stem for p in folder.glob("*.yaml"))
        if options:
            groups[folder.relative_to(CONF_DIR).as_posix()] = options
    return groups


def test_config_group_table_lists_every_option_of_every_group_in_conf():
    listed, present = readme_groups(), conf_groups()
    assert sorted(listed) == sorted(present), (
        f"README's config-group table: groups missing {sorted(set(present) - set(listed))}, "
        f"listed but absent from conf/ {sorted(set(listed) - set(present))}")
    for group, options in present.items():
        assert len(listed[group]) == len(set(listed[group])), f"{group}: an option listed twice"
        assert sorted(listed[group]) == options, (
            f"README's `{group}` row: missing {sorted(set(options) - set(listed[group]))}, "
            f"not in conf/{group}/ {sorted(set(listed[group]) - set(options))}")


def test_the_table_parser_sees_the_fusion_row_and_the_nested_launcher_group():
    groups = readme_groups()
    assert len(groups["fusion"]) == 27 and {"image_only", "text_only", "video_only", "tfn", "nl_gate"} <= set(groups["fusion"])
    assert groups["hydra/launcher"] == ["parallel", "slurm"]
    assert conf_groups()["hydra/launcher"] == ["parallel", "slurm"]


def guide_files() -> dict[str, str]:
    """``{path under $MYFUSE: content}``: each fenced block right after a line `` `$MYFUSE/<path>`: ``."""
    pattern = re.compile(r"^`" + re.escape(FOLDER) + r"/([^`]+)`:\n\n```\w*\n(.*?)^```$", re.M | re.S)
    return {path: body for path, body in pattern.findall(section(GUIDE))}


def guide_command(folder: Path, script: str = "train.py") -> tuple[dict[str, str], list[str]]:
    """The guide's ``script`` command line with ``$MYFUSE`` = ``folder``: (its environment, its arguments)."""
    blocks = re.findall(r"^```bash\n(.*?)^```$", section(GUIDE), re.M | re.S)
    lines = [ln for b in blocks for ln in b.splitlines() if script in ln and not ln.startswith("#")]
    assert len(lines) == 1, lines
    words = shlex.split(lines[0].replace(FOLDER, str(folder)))
    env = {}
    while "=" in words[0] and not words[0].startswith("-"):
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    assert words[:2] == ["python", script], words
    return env, words[2:]


def test_the_guide_gives_one_module_one_yaml_and_the_command_that_finds_them(tmp_path):
    files = guide_files()
    assert sorted(files) == ["conf/fusion/match.yaml", "my_fusions.py"]
    config = yaml.safe_load(files["conf/fusion/match.yaml"])
    assert config == {"_target_": "my_fusions.MatchFusion", "stage": "mid", "dim": 128}
    env, args = guide_command(tmp_path)
    assert env == {"PYTHONPATH": str(tmp_path)}
    assert args == [f"hydra.searchpath=[file://{tmp_path}/conf]", "fusion=match"]
    assert guide_command(tmp_path, "eval.py") == (env, ["ckpt_path=$RUN/checkpoints/last.ckpt"])


def load_module(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_guides_fusion_trains_through_the_cli_exactly_as_written(tmp_path):
    """Save the guide's files in a folder of one's own, run its command with ``debug=fast``: the run
    completes with the guide's class as its fusion and the parameter count the guide states; the guide's
    ``eval.py`` command evaluates it, with exactly the run's validation metrics."""
    mine = tmp_path / "mine"
    for path, body in guide_files().items():
        (mine / path).parent.mkdir(parents=True, exist_ok=True)
        (mine / path).write_text(body)
    env, args = guide_command(mine)
    proc = run_cli("train.py", *args, "debug=fast", outputs=tmp_path / "out", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (tmp_path / "out" / "runs").glob("*/*")
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed" and results["choices"]["fusion"] == "match"
    saved = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    assert saved["fusion"] == {"_target_": "my_fusions.MatchFusion", "stage": "mid", "dim": 128}
    match = load_module(mine / "my_fusions.py").MatchFusion
    assert results["params"]["fusion"] == match.expected_params({"image": 64, "text": 64}) == (64 + 1) * 128 * 2 == 16640
    stated = re.search(r"`params\.fusion` is ([\d,]+)", section(GUIDE)).group(1)
    assert int(stated.replace(",", "")) == results["params"]["fusion"]
    assert results["params"]["head"] == (2 * 128 + 1) * 256 + 257  # the task's MLP head on out_dim = 2 dim
    assert results["steps"] == 8  # debug=fast: 256 images, a positive and a negative pair each, batches of 64

    env, args = guide_command(mine, "eval.py")
    args = [a.replace("$RUN", str(run_dir)) for a in args]
    proc = run_cli("eval.py", *args, outputs=tmp_path / "eval", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (evaluated,) = (json.loads(p.read_text()) for p in (tmp_path / "eval").rglob("results.json"))
    assert evaluated["status"] == "completed" and evaluated["data"]["val"] == results["data"]["val"]
    val = {k: v for k, v in results["metrics"].items() if k.startswith("val/")}
    assert val and {k: v for k, v in evaluated["metrics"].items() if k.startswith("val/")} == val


NUMBER = re.compile(r"\d+(?:[.,]\d+)*(?:-\d+(?:[.,]\d+)*)?")  # 8.6, 2,044, 1.21-1.27; not a trailing '.' or ','


def numbers(text: str) -> set[str]:
    """The figures of ``text``, each a whole token: ``8.6x``, ``1.21-1.27x``, ``2,044``, ``1.1 GB`` ->
    ``8.6``, ``1.21-1.27``, ``2,044``, ``1.1`` (``0.98`` holds no ``0.9``)."""
    return set(NUMBER.findall(text))


def unrecorded(summary: str, recorded: str) -> list[str]:
    """The figures of ``summary`` that are not figures of ``recorded``."""
    return sorted(numbers(summary) - numbers(recorded))


def speed_summary() -> str:
    return section("## Speed").split("\n### ", 1)[0]


BENCHMARKS = ROOT / "experiments" / "benchmarks" / "README.md"


def test_the_number_tokenizer_keeps_each_figure_whole():
    assert numbers("8.6x, 1.21-1.27x faster; 2,044 steps. 1.1 GB at 0.98.") == {"8.6", "1.21-1.27", "2,044", "1.1", "0.98"}
    assert unrecorded("0.9x", "0.98x") == ["0.9"]


def test_readmes_speed_summary_quotes_only_figures_the_benchmarks_record():
    summary, recorded = speed_summary(), BENCHMARKS.read_text()
    assert {"8.6", "0.98", "1.21-1.27", "715", "778", "2,044", "1.09", "710", "300-380"} <= numbers(summary)
    assert unrecorded(summary, recorded) == []
    assert "(experiments/benchmarks/README.md)" in summary


@pytest.mark.parametrize(("figure", "planted"), [("0.98", "0.9"), ("1.21-1.27", "1.21-1.2"), ("2,044", "2,04")])
def test_a_wrong_figure_planted_in_the_speed_summary_is_caught(figure, planted):
    """A copy of the summary with one figure cut short: the substring check this replaced passed these."""
    summary, recorded = speed_summary(), BENCHMARKS.read_text()
    assert figure in numbers(summary) and planted in recorded
    assert unrecorded(summary.replace(figure, planted, 1), recorded) == [planted]


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_readmes_links_to_its_own_sections_land_on_a_heading():
    text = README.read_text()
    outside_code = re.sub(r"^```.*?^```$", "", text, flags=re.M | re.S)
    headings = {anchor(h) for h in re.findall(r"^#+ (.+)$", outside_code, re.M)}
    links = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert {"feature-cache-for-frozen-encoders", "the-diagnostic-mix-and-quick-runs",
            "adding-your-own-fusion-encoder-dataset-or-task"} <= links
    assert sorted(links - headings) == []
