"""The README's "Prune your own model" examples are real: the Python one runs on an image
tree written here, and every command of the shell one parses with prunelab's own parser."""

import re
import shlex
from pathlib import Path

from test_cli_any_model import write_tree

from prunelab.app.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(lang: str) -> list[str]:
    text = README.read_text()
    section = text[text.index("## Prune your own model") :]
    section = section[: section.index("\n## ", 5)]
    return re.findall(rf"```{lang}\n(.*?)```", section, flags=re.S)


def test_library_example_runs(tmp_path, monkeypatch):
    (code,) = _blocks("python")
    write_tree(tmp_path / "my_images", size=32, train=16, test=6)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PRUNELAB_CACHE", str(tmp_path / "cache"))
    env: dict = {}
    exec(compile(code, "README.md", "exec"), env)
    pruner, report = env["pruner"], env["report"]
    assert report["prunable_sparsity"] == 0.5 or abs(report["prunable_sparsity"] - 0.5) < 0.01
    assert set(env["scan"]["layers"]) and len(pruner.masks) == 21  # every conv of ResNet-20
    assert (tmp_path / "pruned.pth").is_file()


def test_shell_example_commands_parse(tmp_path, monkeypatch):
    (code,) = _blocks("bash")
    commands = [shlex.split(c) for c in code.replace("\\\n", " ").splitlines() if c.strip()]
    assert len(commands) >= 6
    monkeypatch.chdir(tmp_path)  # the files the commands read, as earlier commands leave them
    for name in ("dense.pth", "pruned.pth", "ft.pth", "plan.json", "scan/sensitivity.json"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("")
    parser = build_parser()
    for argv in commands:
        assert argv[0] == "prunelab"
        args = parser.parse_args(argv[1:])  # an unknown option exits with status 2
        assert args.command == argv[1]
