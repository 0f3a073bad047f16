"""The README's commands and links stay true: every `python -m orchestrator ...` shown in a code block
names a real subcommand and parses with the real parser; every relative link of the README and of
docs/ points to a file (and heading) that exists; the README links every doc; its test command is
the one .ci/run runs.

No Ray, no data: argparse only (`--help` exits 0 before anything runs), so this takes well under a second.
"""

import re
import shlex
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.cli.args import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
OPERATORS = set("|&;<>()")  # shlex's punctuation: a token made of these ends the command
PLACEHOLDER = "placeholder"
SUBSTITUTION = "__command_substitution__"
COMMAND = re.compile(r"python[0-9.]* -m orchestrator\b")


def fenced_blocks(text: str) -> list[str]:
    """The contents of every ``` fenced block."""
    return re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)


def logical_lines(block: str) -> list[str]:
    """Lines with trailing `\\` continuations joined."""
    return block.replace("\\\n", " ").splitlines()


def commands(line: str) -> list[list[str] | str]:
    """Every `python -m orchestrator ...` of a shell line, as its argument list; or, where the line
    cannot stand for real arguments, the reason it is skipped. Tokens after a shell operator (`|`,
    `&&`, `>`, `;`) belong to another command; a quoted argument holding a command (`ray exec ...
    "cd x && python -m orchestrator report"`) is searched too. `$VAR` and `<...>` placeholders become
    a plain word; a command substitution `$(...)` cannot be guessed and is skipped."""
    if not COMMAND.search(line):
        return []
    line = re.sub(r"<[^<>\s]+>", PLACEHOLDER, line)  # <study>, <the clone>: a word
    inner = [c for sub in re.findall(r"\$\(([^()]*)\)|`([^`]*)`", line) for c in commands("".join(sub))]
    line = re.sub(r"\$\([^()]*\)|`[^`]*`", SUBSTITUTION, line)  # $(cat f): a value only the shell knows
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        tokens = list(lexer)
    except ValueError as exc:
        return [f"unparseable shell line ({exc}): {line}"]
    found: list[list[str] | str] = inner
    for i, token in enumerate(tokens):
        if token != "-m" or i == 0 or i + 1 >= len(tokens) or tokens[i + 1] != "orchestrator":
            if COMMAND.search(token) and token != line:
                found += commands(token)  # a quoted command line inside another command
            continue
        if not re.fullmatch(r"(.*/)?python[0-9.]*", tokens[i - 1]):
            continue
        argv = []
        rest = tokens[i + 2:]
        for j, arg in enumerate(rest):
            if set(arg) <= OPERATORS:
                break
            if arg.isdigit() and j + 1 < len(rest) and rest[j + 1][0] in "<>":
                break  # the 2 of 2>&1: a redirection, not an argument
            argv.append(arg)
        if any(SUBSTITUTION in arg for arg in argv):
            found.append(f"command substitution, no value to parse: {line}")
            continue
        found.append([re.sub(r"\$\{?\w+\}?", PLACEHOLDER, arg) for arg in argv])
    return found


def readme_commands() -> list[list[str] | str]:
    """Every command of the README's code blocks: an argument list, or why it cannot be parsed."""
    return [found for block in fenced_blocks(README.read_text(encoding="utf-8"))
            for line in logical_lines(block) for found in commands(line)]


FOUND = readme_commands()
COMMANDS = [argv for argv in FOUND if isinstance(argv, list)]


def test_the_readme_shows_commands_at_all():
    assert len(COMMANDS) >= 5, COMMANDS
    assert ["run", "all"] in COMMANDS  # the fresh machine's command


@pytest.mark.parametrize("subcommand", sorted({argv[0] for argv in COMMANDS if argv}))
def test_every_subcommand_the_readme_names_exists(subcommand, capsys):
    with pytest.raises(SystemExit) as exc:
        main([subcommand, "--help"])
    assert exc.value.code == 0, capsys.readouterr().err


@pytest.mark.parametrize("argv", FOUND, ids=lambda argv: " ".join(argv) if isinstance(argv, list) else "skipped")
def test_every_readme_command_parses(argv, capsys):
    if isinstance(argv, str):
        pytest.skip(argv)  # e.g. a value from $(...): the shell's, not ours to guess
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse's error: exit 2 with one line on stderr
        pytest.fail(f"`python -m orchestrator {' '.join(argv)}` does not parse: {capsys.readouterr().err.strip()}"
                    f" (exit {exc.code})")


def test_the_test_command_is_the_one_ci_runs():
    """.ci/run runs the README's test command verbatim: the two must not drift apart."""
    ci = ROOT / ".ci" / "run"
    if not ci.exists():
        pytest.skip("no .ci/run in this checkout")
    command = ". .venv/bin/activate && ORCHESTRATOR_DATA_DIR=../shared/data python -m pytest"
    first_block = fenced_blocks(README.read_text(encoding="utf-8"))[0]
    assert command in first_block.splitlines()
    assert command in ci.read_text().splitlines()


def relative_links(path: Path) -> list[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.S | re.M)  # not in code
    targets = re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", text)
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:|#", t)]  # no http:, mailto:, #anchor


def anchors(path: Path) -> set[str]:
    """GitHub's anchors of a markdown file's headings: lower case, punctuation dropped, spaces -> '-'."""
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.S | re.M)
    headings = re.findall(r"^#+\s+(.*?)\s*$", text, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: p.name)
def test_relative_links_point_to_files(path):
    links = relative_links(path)
    missing = [link for link in links if not (path.parent / link.split("#")[0]).exists()]
    assert not missing, f"{path.name} links to files that do not exist: {missing}"
    targets = [link.partition("#") for link in links]
    dangling = [f"{file}#{anchor}" for file, _, anchor in targets
                if anchor and file.endswith(".md") and anchor not in anchors(path.parent / file)]
    assert not dangling, f"{path.name} links to headings that do not exist: {dangling}"


def test_the_readme_links_every_doc():
    linked = {(README.parent / link.split("#")[0]).resolve() for link in relative_links(README)}
    assert DOCS, "docs/ holds no .md file"
    assert not [d.name for d in DOCS if d.resolve() not in linked]
